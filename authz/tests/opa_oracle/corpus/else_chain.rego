# A three-step else chain whose bodies fail in different ways (a condition, an assignment from
# an undefined reference, a builtin on a missing value).
package vigil.authz

tier := "admin" if {
	input.attributes.request.http.headers["x-role"] == "admin"
} else := t if {
	t := input.parsed_query.tier[0]
} else := "mesh" if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/")
} else := "anonymous"

allow := {
	"allowed": tier != "anonymous",
	"headers": {"x-tier": tier},
}
