# Negation over undefined and null values; parsed_body may be absent or null.
package vigil.authz

no_body if not input.parsed_body

null_body if input.parsed_body == null

no_tenant if not input.attributes.request.http.headers["x-tenant"]

allow := {
	"allowed": not_denied,
	"dynamic_metadata": {
		"x-no-body": no_body,
		"x-null-body": null_body,
		"x-no-tenant": no_tenant,
		"x-truncated": object.get(input, "truncated_body", "absent"),
	},
} if true

default no_body := false

default null_body := false

default no_tenant := false

default not_denied := false

not_denied if not input.parsed_query.deny
