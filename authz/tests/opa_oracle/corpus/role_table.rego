# Role-based access from a table written in the policy: roles from the caller's namespace,
# permissions per role, checked against method and first path segment.
package vigil.authz

namespace_roles := {
	"shop": ["reader", "writer"],
	"ops": ["admin"],
	"frontend": ["reader"],
}

role_permissions := {
	"reader": [{"method": "GET", "resource": "orders"}, {"method": "GET", "resource": "products"}],
	"writer": [{"method": "POST", "resource": "orders"}],
	"admin": [{"method": "*", "resource": "*"}],
}

caller_namespace := ns if {
	parts := split(input.attributes.source.principal, "/")
	parts[3] == "ns"
	ns := parts[4]
}

permitted if {
	some role in namespace_roles[caller_namespace]
	some permission in role_permissions[role]
	permission.method in {"*", input.attributes.request.http.method}
	permission.resource in {"*", input.parsed_path[0]}
}

default allow := false

allow if permitted
