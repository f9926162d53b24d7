# A complete rule that can produce two values: OPA reports a conflict error for such requests.
package vigil.authz

level := "high" if input.attributes.request.http.headers["x-priority"] == "urgent"

level := "low" if input.attributes.request.http.method == "GET"

default allow := false

allow if level == "high"

allow if {
	not level
	input.attributes.request.http.method == "POST"
}
