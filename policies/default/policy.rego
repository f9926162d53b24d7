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

# The mesh's trust domain: data.vigil.trust_domain when the bundle sets one, else the one the
# control plane gives every bundle (data.vigil.mesh.trust_domain).
trust_domain := data.vigil.trust_domain

trust_domain := data.vigil.mesh.trust_domain if not data.vigil.trust_domain

# With a trust domain known, only identities of that trust domain.
mesh_identity if {
	startswith(input.attributes.source.principal, concat("", ["spiffe://", trust_domain, "/"]))
}

# Without one (the bundle evaluated outside a mesh), any SPIFFE identity: the proxy only
# sets the principal after verifying the peer's certificate against the mesh's trust bundle.
mesh_identity if {
	not trust_domain
	startswith(input.attributes.source.principal, "spiffe://")
}
