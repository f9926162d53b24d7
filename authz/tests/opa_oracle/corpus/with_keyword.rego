# `with` outside tests: a helper evaluated against a rewritten input.
package vigil.authz

is_admin_path if input.parsed_path[0] == "admin"

default would_be_admin := false

would_be_admin if is_admin_path with input.parsed_path as array.slice(input.parsed_path, 1, 100)

allow := {
	"allowed": allowed,
	"dynamic_metadata": {"x-nested-admin": would_be_admin},
} if true

default allowed := false

allowed if not is_admin_path
