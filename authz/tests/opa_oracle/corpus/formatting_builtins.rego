# An OPA-Envoy policy using builtins Vigil evaluates itself: sprintf for headers (with strings,
# numbers, arrays, objects and sets), upper/lower to normalize, indexof and strings.count.
package vigil.authz

import rego.v1

method := upper(input.attributes.request.http.method)

path := lower(input.attributes.request.http.path)

depth := strings.count(path, "/")

default allow := false

allow := {
	"allowed": method in {"GET", "HEAD"},
	"headers": {
		"x-summary": sprintf("%s %q depth=%d dot=%v", [method, path, depth, indexof(path, ".")]),
		"x-path-segments": sprintf("%v", [input.parsed_path]),
		"x-query": sprintf("%v|%s", [input.parsed_query, object.keys(input.parsed_query)]),
		"x-ratio": sprintf("%v %d %s", [depth / 3, depth * 2, depth]),
		"x-missing": sprintf("%s %s", [method]),
	},
}
