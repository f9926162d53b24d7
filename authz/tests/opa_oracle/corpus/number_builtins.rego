# Reads a page size from the query with to_number (Go's strconv.ParseFloat rules: " 12" and
# "Inf" fail, "1e3", "0x1p4" and "1_000" are numbers) and derives values from it with
# format_int and ceil, as OPA does.
package vigil.authz

import rego.v1

limit := to_number(input.parsed_query.limit[0])

default allow := false

allow := {
	"allowed": limit <= 100,
	"headers": {
		"x-limit-hex": format_int(limit, 16),
		"x-limit-bin": format_int(limit, 2),
		"x-pages": format_int(ceil(limit / 7), 10),
	},
}
