package vigil.authz

import rego.v1

id(sa) := sprintf("spiffe://vigil.local/ns/shop/sa/%s", [sa])

req(from, to, path) := {
	"attributes": {
		"source": {"principal": from},
		"destination": {"principal": to},
		"request": {"http": {"method": "GET", "path": path}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

test_the_shop_chain_is_allowed if {
	allow.allowed with input as req(id("loadgen"), id("web"), "/checkout")
	allow.allowed with input as req(id("web"), id("orders"), "/checkout")
	allow.allowed with input as req(id("orders"), id("payments"), "/checkout")
	allow.allowed with input as req(id("orders"), id("inventory"), "/")
}

test_web_may_not_call_payments_directly if {
	d := allow with input as req(id("web"), id("payments"), "/quick-pay")
	d.allowed == false
	d.http_status == 403
	d.reason == "allowed_callers: web may not call payments"
}

test_admin_is_denied_even_to_allowed_callers if {
	d := allow with input as req(id("loadgen"), id("web"), "/admin")
	d.allowed == false
	d.reason == "no_admin: /admin is not reachable through the mesh"
}

test_callers_from_another_trust_domain_are_denied if {
	d := allow with input as req("spiffe://evil.example/ns/shop/sa/web", id("orders"), "/")
	d.allowed == false
	d.reason == "allowed_callers: a caller without a mesh identity may not call orders"
}

test_metrics_and_health_are_open_to_anyone if {
	allow.allowed with input as req("", id("orders"), "/metrics")
	allow.allowed with input as req("", id("orders"), "/healthz")
}

test_unauthenticated_callers_are_denied if {
	d := allow with input as req("", id("orders"), "/")
	d.allowed == false
}
