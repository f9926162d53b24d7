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

route_allows if {
	some route in data.vigil.routes
	source_matches(route.source)
	method_matches(route.methods)
	some pattern in route.paths
	path_matches(pattern)
}

source_matches(source) if source == "*"

source_matches(source) if source == input.attributes.source.principal

method_matches(methods) if "*" in methods

method_matches(methods) if input.attributes.request.http.method in methods

path_matches(pattern) if {
	globs := split(trim_prefix(pattern, "/"), "/")
	count(globs) == count(input.parsed_path)
	every i, glob in globs {
		segment_matches(glob, input.parsed_path[i])
	}
}

path_matches(pattern) if {
	globs := split(trim_prefix(pattern, "/"), "/")
	last := count(globs) - 1
	globs[last] == "**"
	count(input.parsed_path) >= last
	every i, glob in array.slice(globs, 0, last) {
		segment_matches(glob, input.parsed_path[i])
	}
}

segment_matches(glob, _) if glob == "*"

segment_matches(glob, segment) if glob == segment

# The HTTP test comes first as a condition: regorus's RVM (0.14) does not take an `else` when a
# body fails on an assignment from an undefined value, only when a condition fails.
deny_reason := msg if {
	input.attributes.request.http
	msg := sprintf("no route allows %s %s for %s", [input.attributes.request.http.method, request_path, caller])
} else := sprintf("no route allows TCP connections for %s (routes cover HTTP only)", [caller])

request_path := concat("/", array.concat([""], input.parsed_path))

default caller := "an unauthenticated caller"

caller := input.attributes.source.principal
