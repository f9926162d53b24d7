# Headers to add built as a partial object, and one removed, in an OPA-Envoy decision.
package envoy.authz
# decision: data.envoy.authz.allow

import input.attributes.request.http as req

added[name] := value if {
	some name, value in req.headers
	startswith(name, "x-forward-")
}

added["x-caller"] := input.attributes.source.principal

added["x-path-shape"] := "deep" if count(input.parsed_path) > 2

default allow := {"allowed": false, "http_status": 401, "body": "who are you?"}

allow := {
	"allowed": true,
	"headers": added,
	"request_headers_to_remove": ["x-debug", "x-internal"],
} if {
	req.method in {"GET", "POST"}
	input.attributes.source.principal
}
