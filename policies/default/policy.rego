# Vigil's default policy: mesh workloads may call each other, anyone may reach health and
# metrics endpoints, everything else is denied.
package vigil.authz

import rego.v1

default allow := false

# Any workload of the mesh: its mTLS-verified SPIFFE ID is in our trust domain.
allow if mesh_identity

# Kubelet probes and Prometheus scrapes carry no mesh identity.
allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path in public_endpoints
}

# Paths compared as decoded segments, so "/healthz?full=1" matches and "/healthz/../admin" does not.
public_endpoints := {
	["healthz"],
	["readyz"],
	["livez"],
	["ready"],
	["live"],
	["metrics"],
}

# With data.vigil.trust_domain set (data.json ships "vigil.local"), only that trust domain.
mesh_identity if {
	startswith(input.attributes.source.principal, concat("", ["spiffe://", data.vigil.trust_domain, "/"]))
}

# Without it, any SPIFFE identity: the proxy only sets the principal after verifying the peer's
# certificate against the mesh's trust bundle.
mesh_identity if {
	not data.vigil.trust_domain
	startswith(input.attributes.source.principal, "spiffe://")
}
