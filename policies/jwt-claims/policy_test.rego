package vigil.authz

import rego.v1

jwt(claims) := concat(".", [
	base64url.encode_no_pad(json.marshal({"alg": "HS256", "typ": "JWT"})),
	base64url.encode_no_pad(json.marshal(claims)),
	"c2lnbmF0dXJl",
])

# 2100-01-01T00:00:00Z
far_future := 4102444800

req(token, tenant) := {
	"attributes": {
		"source": {"principal": "spiffe://vigil.local/ns/acme/sa/console"},
		"request": {"http": {
			"method": "GET",
			"path": "/reports",
			"headers": {
				"authorization": concat(" ", ["Bearer", token]),
				"x-tenant": tenant,
			},
		}},
	},
	"parsed_path": ["reports"],
}

test_admin_of_own_tenant_allowed if {
	allow with input as req(jwt({"sub": "alice", "role": "admin", "exp": far_future}), "acme")
}

test_claims_decoded if {
	c := claims with input as req(jwt({"sub": "alice", "role": "admin", "exp": far_future}), "acme")
	c.sub == "alice"
}

test_non_admin_denied if {
	not allow with input as req(jwt({"sub": "bob", "role": "viewer", "exp": far_future}), "acme")
}

test_other_tenant_denied if {
	not allow with input as req(jwt({"sub": "alice", "role": "admin", "exp": far_future}), "globex")
}

test_expired_token_denied if {
	not allow with input as req(jwt({"sub": "alice", "role": "admin", "exp": 1000}), "acme")
}

test_token_without_expiry_denied if {
	not allow with input as req(jwt({"sub": "alice", "role": "admin"}), "acme")
}

test_garbage_token_denied if {
	not allow with input as req("not-a-jwt", "acme")
}

test_missing_authorization_denied if {
	not allow with input as {
		"attributes": {
			"source": {"principal": "spiffe://vigil.local/ns/acme/sa/console"},
			"request": {"http": {"method": "GET", "headers": {"x-tenant": "acme"}}},
		},
		"parsed_path": ["reports"],
	}
}
