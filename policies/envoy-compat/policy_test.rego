package envoy.authz

import rego.v1

public_get := {
	"attributes": {"request": {"http": {"method": "GET", "path": "/api/public/status", "headers": {}}}},
	"parsed_path": ["api", "public", "status"],
	"parsed_query": {},
}

order(principal, quantity) := {
	"attributes": {
		"source": {"principal": principal},
		"request": {"http": {"method": "POST", "path": "/api/orders", "headers": {"content-type": "application/json"}}},
	},
	"parsed_path": ["api", "orders"],
	"parsed_body": {"quantity": quantity},
}

test_public_get_allowed if {
	d := allow with input as public_get
	d.allowed == true
	d.headers["x-ext-auth-allow"] == "yes"
}

test_public_post_denied if {
	d := allow with input as {
		"attributes": {"request": {"http": {"method": "POST", "path": "/api/public/status"}}},
		"parsed_path": ["api", "public", "status"],
	}
	d.allowed == false
	d.http_status == 403
	d.body == "Unauthorized Request"
}

test_private_path_denied if {
	not allow.allowed with input as {
		"attributes": {"request": {"http": {"method": "GET", "path": "/api/private/x"}}},
		"parsed_path": ["api", "private", "x"],
	}
}

test_small_order_from_shop_allowed if {
	allow.allowed with input as order("spiffe://vigil.local/ns/shop/sa/web", 3)
}

test_large_order_denied if {
	not allow.allowed with input as order("spiffe://vigil.local/ns/shop/sa/web", 500)
}

test_order_from_other_namespace_denied if {
	not allow.allowed with input as order("spiffe://vigil.local/ns/billing/sa/api", 1)
}
