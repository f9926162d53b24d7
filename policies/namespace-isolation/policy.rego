# Namespace isolation: a workload may call workloads of its own namespace (same trust domain),
# plus the namespace pairs listed in data.vigil.namespace_isolation.allowed_pairs.
package vigil.authz

import rego.v1

default allow := false

# Both identities are split as spiffe://<trust domain>/ns/<namespace>/sa/<service account>;
# a caller without an identity, or with any other ID shape, never matches. (The checks are
# written out rather than in a helper function: function calls are the costliest thing on the
# request path.)
allow if {
	caller := split(input.attributes.source.principal, "/")
	callee := split(input.attributes.destination.principal, "/")
	count(caller) == 7
	count(callee) == 7
	caller[0] == "spiffe:"
	caller[3] == "ns"
	caller[5] == "sa"
	callee[0] == "spiffe:"
	callee[3] == "ns"
	callee[5] == "sa"
	caller[2] == callee[2]
	may_call(caller[4], callee[4])
}

may_call(from, to) if from == to

may_call(from, to) if [from, to] in allowed_pairs

# [from, to] pairs. It reads only data, so Vigil computes it once per bundle.
allowed_pairs := {[pair.from, pair.to] | some pair in data.vigil.namespace_isolation.allowed_pairs}
