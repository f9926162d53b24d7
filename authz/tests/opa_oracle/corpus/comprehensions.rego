# Array, set and object comprehensions over headers, query and path.
package vigil.authz

header_names := sort([name | some name, _ in input.attributes.request.http.headers; not startswith(name, ":")])

query_sizes := {name: count(values) | some name, values in input.parsed_query}

segments := {s | some s in input.parsed_path; s != ""}

long := [s | some s in input.parsed_path; count(s) > 5]

allow := {
	"allowed": count(long) == 0,
	"dynamic_metadata": {
		"x-header-count": count(header_names),
		"x-segments": concat("/", sort(segments)),
		"x-query": query_sizes,
	},
}
