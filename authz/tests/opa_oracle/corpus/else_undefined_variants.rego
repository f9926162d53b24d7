# More bodies that fail on undefined values before an else: iteration over a missing
# collection, a missing nested field, a failed comparison after an assignment, a function
# whose body assigns from an undefined value.
package vigil.authz

first_item := x if {
	some x in input.parsed_body.items
} else := "none"

user := u if {
	u := input.parsed_body.user.name
	u != ""
} else := "anonymous"

tenant(headers) := t if {
	t := headers["x-tenant"]
} else := "default"

method_class := "read" if {
	m := input.attributes.request.http.method
	m in {"GET", "HEAD"}
} else := "write" if {
	m := input.attributes.request.http.method
	m in {"POST", "PUT", "PATCH", "DELETE"}
} else := "other"

allow := {
	"allowed": user != "anonymous",
	"dynamic_metadata": {
		"x-first": first_item,
		"x-user": user,
		"x-tenant": tenant(input.attributes.request.http.headers),
		"x-class": method_class,
	},
}
