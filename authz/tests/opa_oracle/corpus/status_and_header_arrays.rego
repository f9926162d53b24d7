# Denials with statuses computed from the request and headers given as an array of objects.
package envoy.authz
# decision: data.envoy.authz.allow

status := 404 if input.parsed_path[0] == "secret"

else := 405 if not input.attributes.request.http.method in {"GET", "POST"}

else := 403

reason := "not found" if status == 404

else := "method not allowed" if status == 405

else := "forbidden"

allow := {"allowed": true, "response_headers_to_add": [{"x-cache": "miss"}, {"x-cache": "checked"}]} if {
	input.parsed_path[0] == "public"
}

else := {
	"allowed": false,
	"http_status": status,
	"headers": [{"content-type": "text/plain"}, {"x-reason": reason}],
	"body": concat(" ", ["refused:", reason]),
}
