package vigil.authz

import rego.v1

test_denies_mesh_identity if {
	not allow.allowed with input as {"attributes": {"source": {"principal": "spiffe://vigil.local/ns/a/sa/b"}}}
}

test_denies_health_checks if {
	d := allow with input as {
		"attributes": {"request": {"http": {"method": "GET", "path": "/healthz"}}},
		"parsed_path": ["healthz"],
	}
	d.allowed == false
	d.http_status == 403
	d.body == "denied by deny-all policy"
}
