# The documented OPA-Envoy `result` object form as the decision.
package envoy.authz
# decision: data.envoy.authz.result

import input.attributes.request.http as http_request

default allow := false

allow if {
	http_request.method == "GET"
	input.parsed_path[0] == "public"
}

allow if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/ns/shop/")
}

result["allowed"] := allow

result["headers"] := {"x-ext-auth-allow": "yes"} if allow

result["headers"] := {"x-ext-auth-allow": "no"} if not allow

result["request_headers_to_remove"] := ["x-debug"]

result["http_status"] := 401 if {
	not allow
	not input.attributes.source.principal
}

result["body"] := "denied" if not allow
