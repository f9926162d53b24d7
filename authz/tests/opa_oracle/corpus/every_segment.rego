# `every` over path segments and query values.
package vigil.authz

default allow := false

allow if {
	count(input.parsed_path) <= 4
	every segment in input.parsed_path {
		regex.match(`^[a-z0-9._-]*$`, segment)
	}
	every name, values in input.parsed_query {
		not startswith(name, "_")
		every v in values {
			count(v) < 16
		}
	}
}
