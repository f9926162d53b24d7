# Object builtins on headers and the body.
package vigil.authz

headers := input.attributes.request.http.headers

public := object.remove(headers, ["authorization", "cookie"])

allow := {
	"allowed": object.get(headers, "x-tenant", "") != "",
	"dynamic_metadata": {
		"x-union": object.union({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}}),
		"x-filter": object.filter(headers, ["x-tenant", "accept"]),
		"x-deep": object.get(input, ["attributes", "source", "principal"], "none"),
		"x-keys": sort([k | some k, _ in public; startswith(k, "x-")]),
		"x-json-remove": json.remove({"a": {"b": 1, "c": 2}}, ["a/b"]),
		"x-object-keys": object.keys({"x": 1, "y": 2}),
		"x-union-n": object.union_n([{"a": 1}, {"a": 2, "b": 3}]),
	},
}
