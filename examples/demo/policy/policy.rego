# The demo shop's policy: each service names the workloads that may call it
# (data.demo.callers), nobody reaches /admin through the mesh, and health checks and
# metrics scrapes are open. A denial is a 403 whose reason names the rule that said no, so
# the dashboard's policy view and the decision log show why.
package vigil.authz

import rego.v1

allow := {"allowed": true} if {
	count(denials) == 0
}

allow := {
	"allowed": false,
	"http_status": 403,
	"body": concat("", [reason, "\n"]),
	"headers": {"content-type": "text/plain"},
	"reason": reason,
} if {
	count(denials) > 0
	reason := sort(denials)[0]
}

# Rule no_admin: administrative paths are for operators on the host, not for mesh callers.
denials contains "no_admin: /admin is not reachable through the mesh" if {
	input.parsed_path[0] == "admin"
}

# Rule allowed_callers: the callee's list in data.demo.callers must name the caller.
denials contains msg if {
	not public_endpoint
	not caller_allowed
	msg := concat(" ", ["allowed_callers:", caller, "may not call", callee])
}

caller_allowed if {
	mesh_identity
	caller in data.demo.callers[callee]
}

mesh_identity if {
	startswith(input.attributes.source.principal, concat("", ["spiffe://", data.demo.trust_domain, "/"]))
}

# The last segment of a SPIFFE ID (spiffe://td/ns/<ns>/sa/<sa>) is the service account,
# which the demo's mesh file sets to the workload name.
default caller := "a caller without a mesh identity"

caller := service_account(input.attributes.source.principal) if {
	mesh_identity
}

default callee := "this workload"

callee := service_account(input.attributes.destination.principal) if {
	startswith(input.attributes.destination.principal, "spiffe://")
}

service_account(id) := parts[count(parts) - 1] if {
	parts := split(id, "/")
}

# Probes and Prometheus scrapes carry no mesh identity.
public_endpoint if {
	input.attributes.request.http.method == "GET"
	input.parsed_path in {["healthz"], ["readyz"], ["livez"], ["metrics"]}
}
