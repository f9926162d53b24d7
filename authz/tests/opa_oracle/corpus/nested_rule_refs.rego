# Rules whose heads are references (a.b.c := ...), an imported input alias, and rules that
# read other packages' rules through data.
package vigil.authz

import input.attributes.request.http as req

routes.public.paths := {"healthz", "status"}

routes.private.paths contains p if {
	some p in ["orders", "users"]
}

route_kind := k if {
	some k, r in routes
	input.parsed_path[0] in r.paths
}

default route_kind := "unknown"

allow := {
	"allowed": route_kind == "public",
	"dynamic_metadata": {"x-route": route_kind, "x-method": req.method, "x-self": data.vigil.authz.routes.public.paths},
}
