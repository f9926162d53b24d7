# Denial reasons collected in a partial set; the decision lists them in the body.
package vigil.authz

deny contains "no identity" if not input.attributes.source.principal

deny contains "foreign trust domain" if {
	p := input.attributes.source.principal
	not startswith(p, "spiffe://vigil.local/")
}

deny contains concat(" ", ["method", m, "not allowed"]) if {
	m := input.attributes.request.http.method
	not m in {"GET", "HEAD", "POST"}
}

deny contains "debug flag" if input.parsed_query.debug

deny contains concat(" ", ["segment after", input.parsed_path[i - 1], "is empty"]) if {
	some i, seg in input.parsed_path
	i > 0
	seg == ""
}

allow := {"allowed": true} if count(deny) == 0

else := {
	"allowed": false,
	"http_status": 403,
	"body": concat("; ", sort([r | some r in deny])),
}
