package vigil.authz

import rego.v1

# Tokens signed with the keys of data.json (the ES256 keys "2026-06" and "2026-12"); their
# private halves were thrown away once these were made. Each expires in 2100 unless the test
# says otherwise.
tokens := {
	"admin": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.emQwlucJcH_aiLcY7iBAQrLT7On9lqxTlNixgfCIgfMa7slFh0jHvD6uiVLyaQy4_GtYJBcbSXecMRIGrvpFug",
	"admin_previous_key": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMDYifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.pi4xxE3nc8fVCJnBb0F8GziG8rWeBw1pT9vZVQENsBO3ilPl0tasJciVE1Wvd0Qx5mC6a0znWRoCoABueoiqOQ",
	"viewer": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYm9iIiwicm9sZSI6InZpZXdlciIsImV4cCI6NDEwMjQ0NDgwMH0.f6AtmeB2_nqxRJ_Pzd1g8vwExGKqy3ec-Hzw7BH2mpm1Cy4nfXVJz3bonyWhps4BMFDwQ_aoJQXCFHIRlhZLOA",
	"expired": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjEwMDB9.S33jipzKBExwX9aTiYqQS2HxGWgwYYMevBZX_tK_7h2fLgoLd7S2fqqNKYG0R7QuSgaeXa1jO2gjc0pOHx8TJw",
	"no_expiry": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4ifQ.moRSBc2cL0JLDayybDAMweSgAX3pURN0Pktsp44xWkQhUFavvFQbI0_Q6YJAYHfwlO9bRbTgf3Pax5RqRwBtCw",
	"not_yet_valid": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6NDEwMjQ0NDgwMH0.bBOINzkfY8EdgJmvifehGlp3JvNO5Ez4cJC2dHHuryWyxmvBUQzmFcswyjyaPEBKW1OFJMJ1kg-0rE6fqMfHDg",
	"other_issuer": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2V2aWwuZXhhbXBsZSIsImF1ZCI6InJlcG9ydHMiLCJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiIsImV4cCI6NDEwMjQ0NDgwMH0.c3gELI9azP2EFTO2fwnCAP8T3j1vTuBhqsOUUa_8y7pRuqtZsuVw0CPEEBfka-ggF-Dy_uYDHGKt-8YVquGFbA",
	"other_audience": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJiaWxsaW5nIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.iZVwShNY0So5hOysDjVnq7Cvrsqe-gbuY1Wt6wyTB9Z5NU273Lnx62GtGr5Vkn1JcefbssgoF0v4gSmQlsoHaw",
	"unknown_key": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.JebHVGYbHSGbDgh75jXAxJ2_1tfe-pd8Kypdo-27kvZBeg4JI9EzV41b0XIFVcNN1q0t4Rz7F0k_3rQFDgYyyA",
	"tampered": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYm9iIiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MTAyNDQ0ODAwfQ.f6AtmeB2_nqxRJ_Pzd1g8vwExGKqy3ec-Hzw7BH2mpm1Cy4nfXVJz3bonyWhps4BMFDwQ_aoJQXCFHIRlhZLOA",
	"alg_none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.",
	"hs256_with_jwks_as_secret": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2xvZ2luLnZpZ2lsLmV4YW1wbGUiLCJhdWQiOiJyZXBvcnRzIiwic3ViIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.EMwPdiQoAeK3UzMkgEXu6ZYc6k2Eze-Am64DAK2SiTY",
}

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
	allow with input as req(tokens.admin, "acme")
}

test_token_of_the_previous_key_still_allowed if {
	allow with input as req(tokens.admin_previous_key, "acme")
}

test_claims_are_those_of_a_verified_token if {
	c := claims with input as req(tokens.admin, "acme")
	c.sub == "alice"
	c.role == "admin"
}

test_non_admin_denied if {
	not allow with input as req(tokens.viewer, "acme")
}

test_other_tenant_denied if {
	not allow with input as req(tokens.admin, "globex")
}

test_expired_token_denied if {
	not allow with input as req(tokens.expired, "acme")
}

test_token_not_yet_valid_denied if {
	not allow with input as req(tokens.not_yet_valid, "acme")
}

test_token_without_expiry_denied if {
	not allow with input as req(tokens.no_expiry, "acme")
}

test_other_issuer_denied if {
	not allow with input as req(tokens.other_issuer, "acme")
}

test_other_audience_denied if {
	not allow with input as req(tokens.other_audience, "acme")
}

test_token_signed_by_an_unknown_key_denied if {
	not allow with input as req(tokens.unknown_key, "acme")
}

test_tampered_payload_denied if {
	not allow with input as req(tokens.tampered, "acme")
	not claims with input as req(tokens.tampered, "acme")
}

test_unsigned_token_denied if {
	not allow with input as req(tokens.alg_none, "acme")
}

test_hmac_token_keyed_with_the_public_keys_denied if {
	not allow with input as req(tokens.hs256_with_jwks_as_secret, "acme")
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
