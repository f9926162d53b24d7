package vigil.authz

import rego.v1

call(from, to) := {"attributes": {
	"source": {"principal": from},
	"destination": {"principal": to},
}}

test_same_namespace_allowed if {
	allow with input as call("spiffe://vigil.local/ns/shop/sa/web", "spiffe://vigil.local/ns/shop/sa/orders")
}

test_other_namespace_denied if {
	not allow with input as call("spiffe://vigil.local/ns/billing/sa/api", "spiffe://vigil.local/ns/shop/sa/orders")
}

test_allowed_pair if {
	allow with input as call("spiffe://vigil.local/ns/frontend/sa/ui", "spiffe://vigil.local/ns/shop/sa/orders")
}

test_pairs_are_directional if {
	not allow with input as call("spiffe://vigil.local/ns/shop/sa/orders", "spiffe://vigil.local/ns/frontend/sa/ui")
}

test_pairs_from_data if {
	allow with input as call("spiffe://vigil.local/ns/billing/sa/api", "spiffe://vigil.local/ns/shop/sa/orders")
		with data.vigil.namespace_isolation.allowed_pairs as [{"from": "billing", "to": "shop"}]
}

test_other_trust_domain_denied if {
	not allow with input as call("spiffe://other.example/ns/shop/sa/web", "spiffe://vigil.local/ns/shop/sa/orders")
}

test_missing_source_identity_denied if {
	not allow with input as {"attributes": {"destination": {"principal": "spiffe://vigil.local/ns/shop/sa/orders"}}}
}

test_malformed_identity_denied if {
	not allow with input as call("spiffe://vigil.local/shop", "spiffe://vigil.local/shop")
}

test_allowed_pairs_from_data if {
	allowed_pairs == {["frontend", "shop"], ["monitoring", "shop"]}
}

test_missing_destination_identity_denied if {
	not allow with input as {"attributes": {"source": {"principal": "spiffe://vigil.local/ns/shop/sa/web"}}}
}

test_extra_path_segments_denied if {
	not allow with input as call("spiffe://vigil.local/ns/shop/sa/web/extra", "spiffe://vigil.local/ns/shop/sa/orders")
}
