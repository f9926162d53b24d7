# Routes by caller: data.vigil.routes lists which SPIFFE IDs may use which methods on which
# paths. Anything no route allows is denied with a 403 whose body says what was refused.
#
# Route fields:
#   source:  a SPIFFE ID, or "*" for any caller (including ones without a mesh identity)
#   methods: HTTP methods, or ["*"] for any
#   paths:   globs over path segments: "*" matches exactly one segment, a trailing "**" matches
#            any number of segments (including none): "/orders/*", "/admin/**", "/healthz".
#
# Segment matching is written in Rego rather than with glob.match: regorus compiles the glob on
# every call, which would cost more than the whole decision.
package vigil.authz

import rego.v1

allow := {"allowed": true} if {
	route_allows
} else := {
	"allowed": false,
	"http_status": 403,
	"body": deny_reason,
	"headers": {"content-type": "text/plain"},
}

route_allows if input.parsed_path in request_routes.exact

# Literal segments are compared by counting the ones that differ, not with
# `every i, segment in glob.literals`: regorus's RVM iterates `input.parsed_path[i]` inside
# such an `every` instead of looking it up (Vigil would then run this policy on the slower
# interpreter).
route_allows if {
	some glob in request_routes.wildcard
	count(input.parsed_path) == glob.length
	count([i | some i, segment in glob.literals; input.parsed_path[i] != segment]) == 0
}

route_allows if {
	some glob in request_routes.prefix
	count(input.parsed_path) >= glob.length
	count([i | some i, segment in glob.literals; input.parsed_path[i] != segment]) == 0
}

# The routes for this caller and method: two lookups in route_index.
request_routes := object.get(by_method, input.attributes.request.http.method, by_method["*"]) if {
	index := route_index
	by_method := object.get(index, object.get(input, ["attributes", "source", "principal"], "*"), index["*"])
}

# data.vigil.routes indexed by caller and method. This rule reads only data, so Vigil evaluates
# it once, when the bundle is compiled. route_index[caller][method] holds the path patterns of
# every route for that caller (or for "*") and that method (or "*"), split into segments and
# sorted by kind; unknown callers use route_index["*"] and unknown methods the "*" entry.
route_index := {source: {method: routes_for(source, method) | some method in route_methods} |
	some source in route_sources
}

routes_for(source, method) := {
	"exact": {glob | some glob in globs; not "*" in glob; not "**" in glob},
	"wildcard": [glob_pattern(glob) | some glob in globs; "*" in glob; not "**" in glob],
	"prefix": [glob_pattern(array.slice(glob, 0, count(glob) - 1)) | some glob in globs; glob[count(glob) - 1] == "**"],
} if {
	globs := [split(trim_prefix(pattern, "/"), "/") |
		some route in data.vigil.routes
		route.source in {source, "*"}
		route_has_method(route, method)
		some pattern in route.paths
	]
}

# A segment glob as its length and its literal (non-"*") segments by position.
glob_pattern(glob) := {"length": count(glob), "literals": {i: segment | some i, segment in glob; segment != "*"}}

route_sources := {route.source | some route in data.vigil.routes} | {"*"}

route_methods := {method | some route in data.vigil.routes; some method in route.methods} | {"*"}

route_has_method(route, _) if "*" in route.methods

route_has_method(route, method) if method in route.methods

# Built with concat rather than sprintf, which Vigil refuses (its formatting differs from
# OPA's for some arguments).
deny_reason := concat(" ", ["no route allows", input.attributes.request.http.method, request_path, "for", caller]) if {
	input.attributes.request.http
} else := concat("", ["no route allows TCP connections for ", caller, " (routes cover HTTP only)"])

request_path := concat("/", array.concat([""], input.parsed_path))

default caller := "an unauthenticated caller"

caller := input.attributes.source.principal
