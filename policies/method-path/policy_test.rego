package vigil.authz

import rego.v1

web := "spiffe://vigil.local/ns/shop/sa/web"

admin := "spiffe://vigil.local/ns/ops/sa/admin"

req(principal, method, path) := {
	"attributes": {
		"source": {"principal": principal},
		"request": {"http": {"method": method, "path": path}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

test_get_order_allowed if {
	allow.allowed with input as req(web, "GET", "/orders/42")
}

test_list_orders_allowed if {
	allow.allowed with input as req(web, "GET", "/orders")
}

test_create_order_allowed if {
	allow.allowed with input as req(web, "POST", "/orders")
}

test_delete_order_denied_with_reason if {
	d := allow with input as req(web, "DELETE", "/orders/42")
	d.allowed == false
	d.http_status == 403
	d.body == "no route allows DELETE /orders/42 for spiffe://vigil.local/ns/shop/sa/web"
}

test_star_matches_one_segment_only if {
	not allow.allowed with input as req(web, "GET", "/orders/42/items")
}

test_double_star_matches_any_depth if {
	allow.allowed with input as req(admin, "DELETE", "/admin/users/7/sessions")
	allow.allowed with input as req(admin, "GET", "/admin")
}

test_other_caller_denied if {
	d := allow with input as req("spiffe://vigil.local/ns/billing/sa/api", "GET", "/orders/1")
	d.allowed == false
	d.body == "no route allows GET /orders/1 for spiffe://vigil.local/ns/billing/sa/api"
}

test_health_from_anyone if {
	allow.allowed with input as {
		"attributes": {"request": {"http": {"method": "GET", "path": "/healthz"}}},
		"parsed_path": ["healthz"],
	}
}

test_unauthenticated_caller_named_in_reason if {
	d := allow with input as {
		"attributes": {"request": {"http": {"method": "GET", "path": "/orders"}}},
		"parsed_path": ["orders"],
	}
	d.body == "no route allows GET /orders for an unauthenticated caller"
}

test_tcp_denied if {
	d := allow with input as {"attributes": {"source": {"principal": web}}}
	d.allowed == false
	d.body == "no route allows TCP connections for spiffe://vigil.local/ns/shop/sa/web (routes cover HTTP only)"
}

test_routes_from_data if {
	allow.allowed with input as req(web, "PUT", "/carts/1")
		with data.vigil.routes as [{"source": web, "methods": ["PUT"], "paths": ["/carts/*"]}]
}

test_wildcard_in_the_middle if {
	routes := [{"source": web, "methods": ["GET"], "paths": ["/users/*/orders"]}]
	allow.allowed with input as req(web, "GET", "/users/7/orders") with data.vigil.routes as routes
	not allow.allowed with input as req(web, "GET", "/users/7/carts") with data.vigil.routes as routes
	not allow.allowed with input as req(web, "GET", "/users/7/orders/1") with data.vigil.routes as routes
}

test_any_method_and_any_path if {
	routes := [{"source": admin, "methods": ["*"], "paths": ["/**"]}]
	allow.allowed with input as req(admin, "PATCH", "/") with data.vigil.routes as routes
	allow.allowed with input as req(admin, "PATCH", "/a/b/c") with data.vigil.routes as routes
	not allow.allowed with input as req(web, "GET", "/") with data.vigil.routes as routes
}
