# Functions with else clauses, several definitions, and arguments that may be undefined.
package vigil.authz

classify(segments) := "public" if {
	segments[0] == "public"
} else := "admin" if {
	segments[0] == "admin"
} else := kind if {
	kind := input.attributes.request.http.headers["x-kind"]
} else := "other"

weight(method) := 1 if method == "GET"

weight(method) := 2 if method in {"POST", "PUT"}

weight(method) := 5 if method == "DELETE"

kind := classify(input.parsed_path)

allow := {
	"allowed": kind in {"public", "internal"},
	"dynamic_metadata": {"x-kind": kind, "x-weight": object.get({"w": weight(input.attributes.request.http.method)}, "w", 0)},
}
