# Namespace isolation: a workload may call workloads of its own namespace (same trust domain),
# plus the namespace pairs listed in data.vigil.namespace_isolation.allowed_pairs.
package vigil.authz

import rego.v1

default allow := false

allow if {
	source.trust_domain == destination.trust_domain
	source.namespace == destination.namespace
}

allow if {
	source.trust_domain == destination.trust_domain
	some pair in data.vigil.namespace_isolation.allowed_pairs
	pair.from == source.namespace
	pair.to == destination.namespace
}

source := workload(input.attributes.source.principal)

destination := workload(input.attributes.destination.principal)

# spiffe://<trust domain>/ns/<namespace>/sa/<service account>; anything else is no workload,
# so a caller without an identity (or with another ID scheme) never matches.
workload(id) := {"trust_domain": parts[2], "namespace": parts[4], "service_account": parts[6]} if {
	parts := split(id, "/")
	count(parts) == 7
	parts[0] == "spiffe:"
	parts[1] == ""
	parts[3] == "ns"
	parts[5] == "sa"
}
