# A policy written for the OPA-Envoy plugin, unchanged: it reads the ext_authz v3 input that
# Vigil builds the same way OPA-Envoy does, and answers with an OPA-Envoy decision object.
# Run it with the decision rule data.envoy.authz.allow.
package envoy.authz

import input.attributes.request.http as http_request
import rego.v1

default allow := {
	"allowed": false,
	"http_status": 403,
	"headers": {"x-ext-auth-allow": "no"},
	"body": "Unauthorized Request",
}

# Public API: GET /api/public/<anything> from anyone.
allow := {
	"allowed": true,
	"headers": {"x-ext-auth-allow": "yes", "x-validated-by": "vigil"},
	"response_headers_to_add": {"x-policy": "envoy-compat"},
	"request_headers_to_remove": ["x-debug"],
} if {
	http_request.method == "GET"
	input.parsed_path = ["api", "public", _]
}

# Orders: small POSTs from the shop namespace, checked against the parsed JSON body.
allow := {"allowed": true, "headers": {"x-ext-auth-allow": "yes"}} if {
	http_request.method == "POST"
	input.parsed_path == ["api", "orders"]
	startswith(input.attributes.source.principal, "spiffe://vigil.local/ns/shop/")
	input.parsed_body.quantity <= 10
}
