# Claims from a verified bearer token plus a header rule: admins (role=admin in the JWT) may
# call the workload, but only for their own tenant: the x-tenant header must name the
# caller's namespace.
#
# The token's signature is checked against the issuer's keys, a JWKS kept in the bundle's data
# (data.vigil.jwt.jwks, as the JSON text OPA's io.jwt.decode_verify takes), with its issuer,
# audience, expiry and not-before time. Rotate keys by adding the new one to the JWKS before
# the issuer signs with it, and removing the old one once its tokens have expired.
package vigil.authz

import rego.v1

default allow := false

allow if {
	claims.role == "admin"
	tenant_matches
}

bearer_token := trim_prefix(header, "Bearer ") if {
	header := input.attributes.request.http.headers.authorization
	startswith(header, "Bearer ")
}

# The payload of a token whose signature, issuer, audience and validity period check out;
# undefined otherwise (decode_verify gives [false, {}, {}] for a bad token and fails on one
# that is not a JWT at all). A token without an expiry is refused too.
claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer_token, {
		"cert": data.vigil.jwt.jwks,
		"iss": data.vigil.jwt.issuer,
		"aud": data.vigil.jwt.audience,
	})
	valid
	is_number(payload.exp)
}

# spiffe://<trust domain>/ns/<namespace>/sa/<service account>
caller_namespace := parts[4] if {
	parts := split(input.attributes.source.principal, "/")
	parts[0] == "spiffe:"
	parts[3] == "ns"
}

tenant_matches if input.attributes.request.http.headers["x-tenant"] == caller_namespace
