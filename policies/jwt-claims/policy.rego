# Claims from a bearer token plus a header rule: admins (role=admin in the JWT) may call the
# workload, but only for their own tenant: the x-tenant header must name the caller's namespace.
#
# SIGNATURE NOT VERIFIED: regorus, the Rego engine embedded in Vigil, has no io.jwt.* builtins
# (no io.jwt.decode, no io.jwt.verify_hs256), so this policy decodes the token's payload itself
# and trusts it. Use it only where tokens were verified upstream (e.g. by an ingress gateway);
# the caller itself is still authenticated by its mTLS SPIFFE identity.
package vigil.authz

import rego.v1

default allow := false

allow if {
	claims.role == "admin"
	claims.exp > time.now_ns() / 1000000000
	tenant_matches
}

bearer_token := trim_prefix(header, "Bearer ") if {
	header := input.attributes.request.http.headers.authorization
	startswith(header, "Bearer ")
}

# The payload of header.payload.signature, base64url without padding.
claims := payload if {
	parts := split(bearer_token, ".")
	count(parts) == 3
	payload := json.unmarshal(base64url.decode(parts[1]))
}

# spiffe://<trust domain>/ns/<namespace>/sa/<service account>
caller_namespace := parts[4] if {
	parts := split(input.attributes.source.principal, "/")
	parts[0] == "spiffe:"
	parts[3] == "ns"
}

tenant_matches if input.attributes.request.http.headers["x-tenant"] == caller_namespace
