# Negated calls and comparisons over values that may be undefined: OPA evaluates the operands
# of a call before negating it, so an undefined operand makes the statement fail.
package vigil.authz

checks := {
	"no-evil-prefix": no_evil_prefix,
	"method-not-get": method_not_get,
	"short-path": short_path,
	"tenant-not-acme": tenant_not_acme,
	"not-in-admins": not_in_admins,
	"no-role": no_role,
	"role-not-admin": role_not_admin,
	"role-upper-not-x": role_trimmed_not_x,
}

default no_evil_prefix := false

no_evil_prefix if not startswith(input.attributes.source.principal, "spiffe://evil")

default method_not_get := false

method_not_get if not input.attributes.request.http.method in {"GET"}

default short_path := false

short_path if not count(input.parsed_path) > 2

default tenant_not_acme := false

tenant_not_acme if not input.attributes.request.http.headers["x-tenant"] == "acme"

default not_in_admins := false

not_in_admins if not input.attributes.source.principal in data.vigil.admins

default no_role := false

no_role if not input.attributes.request.http.headers["x-role"]

default role_not_admin := false

role_not_admin if not input.attributes.request.http.headers["x-role"] == "admin"

default role_trimmed_not_x := false

role_trimmed_not_x if not trim_space(input.attributes.request.http.headers["x-role"]) == "x"

allow := {"allowed": no_evil_prefix, "dynamic_metadata": checks}
