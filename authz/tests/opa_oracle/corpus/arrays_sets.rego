# Array and set operations on the path and the query.
package vigil.authz

path_set := {s | some s in input.parsed_path}

query_names := {n | some n, _ in input.parsed_query}

allowed_names := {"page", "limit", "sort", "q"}

allow := {
	"allowed": count(query_names - allowed_names) == 0,
	"dynamic_metadata": {
		"x-concat": array.concat(input.parsed_path, ["end"]),
		"x-slice": array.slice(input.parsed_path, 1, 3),
		"x-reverse": array.reverse(input.parsed_path),
		"x-union": path_set | {"root"},
		"x-inter": path_set & {"api", "admin", "v1"},
		"x-unknown": query_names - allowed_names,
		"x-intersection": intersection({path_set, {"api", "orders"}}),
		"x-union-all": union({path_set, query_names}),
		"x-sorted": sort(input.parsed_path),
		"x-in": "api" in input.parsed_path,
	},
}
