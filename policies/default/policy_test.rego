package vigil.authz

import rego.v1

http_input(principal, method, path) := {
	"attributes": {
		"source": {
			"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 40000}},
			"principal": principal,
		},
		"request": {"http": {"method": method, "path": path}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

anonymous_input(method, path) := {
	"attributes": {"request": {"http": {"method": method, "path": path}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

# The trust domain the control plane gives every bundle.
mesh := {"trust_domain": "vigil.local"}

test_mesh_identity_allowed if {
	allow with input as http_input("spiffe://vigil.local/ns/shop/sa/web", "POST", "/orders")
		with data.vigil.mesh as mesh
}

test_other_trust_domain_denied if {
	not allow with input as http_input("spiffe://evil.example/ns/shop/sa/web", "GET", "/orders")
		with data.vigil.mesh as mesh
}

test_trust_domain_prefix_is_not_enough if {
	not allow with input as http_input("spiffe://vigil.local.evil.example/ns/a/sa/b", "GET", "/")
		with data.vigil.mesh as mesh
}

test_any_trust_domain_the_mesh_names if {
	allow with input as http_input("spiffe://cluster.local/ns/a/sa/b", "GET", "/x")
		with data.vigil.mesh as {"trust_domain": "cluster.local"}
	not allow with input as http_input("spiffe://vigil.local/ns/a/sa/b", "GET", "/x")
		with data.vigil.mesh as {"trust_domain": "cluster.local"}
}

test_without_a_trust_domain_any_verified_spiffe_id if {
	allow with input as http_input("spiffe://anywhere.example/ns/a/sa/b", "GET", "/x")
}

test_trust_domain_from_data_wins_over_the_mesh if {
	allow with input as http_input("spiffe://other.example/ns/a/sa/b", "GET", "/x")
		with data.vigil.trust_domain as "other.example"
		with data.vigil.mesh as mesh
	not allow with input as http_input("spiffe://vigil.local/ns/a/sa/b", "GET", "/x")
		with data.vigil.trust_domain as "other.example"
		with data.vigil.mesh as mesh
}

test_anonymous_denied if {
	not allow with input as anonymous_input("GET", "/orders")
}

test_non_spiffe_principal_denied if {
	not allow with input as http_input("CN=web", "GET", "/orders")
}

test_health_checks_allowed if {
	every path in ["/healthz", "/readyz", "/livez", "/ready", "/live", "/metrics"] {
		allow with input as anonymous_input("GET", path)
	}
}

test_health_check_post_denied if {
	not allow with input as anonymous_input("POST", "/healthz")
}

test_health_check_subpath_denied if {
	not allow with input as anonymous_input("GET", "/healthz/admin")
}

test_tcp_mesh_identity_allowed if {
	allow with input as {"attributes": {"source": {"principal": "spiffe://vigil.local/ns/db/sa/app"}}}
}

test_tcp_anonymous_denied if {
	not allow with input as {"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.9", "portValue": 1}}}}}
}
