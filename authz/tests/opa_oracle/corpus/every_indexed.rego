# `every` indexing the request by its key: Vigil runs this on the interpreter, which looks the
# segment up as OPA does.
package vigil.authz

prefix := ["api", "orders"]

default allow := false

allow if {
	count(input.parsed_path) >= count(prefix)
	every i, segment in prefix {
		input.parsed_path[i] == segment
	}
}
