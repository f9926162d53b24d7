# Every field of an OPA-Envoy decision: headers as an array of objects, query parameters to
# set and to remove, response headers and dynamic metadata.
package envoy.authz
# decision: data.envoy.authz.result

default allow := false

allow if input.attributes.request.http.method in {"GET", "HEAD"}

result := {
	"allowed": allow,
	"headers": [{"x-one": "1"}, {"x-two": ["2a", "2b"]}],
	"response_headers_to_add": [{"x-policy": "result-full"}],
	"request_headers_to_remove": {"x-debug"},
	"query_parameters_to_remove": ["token", "debug"],
	"query_parameters_to_set": {"via": "vigil", "tags": ["a", "b"]},
	"dynamic_metadata": {
		"caller": object.get(input.attributes.source, "principal", null),
		"depth": count(input.parsed_path),
		"query": input.parsed_query,
	},
}
