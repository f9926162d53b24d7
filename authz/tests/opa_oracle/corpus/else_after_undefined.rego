# An `else` after a body that fails on an assignment from an undefined value: OPA takes the
# `else`, so a request without x-role is a guest and may not reach /admin.
package vigil.authz

role := r if {
	r := input.attributes.request.http.headers["x-role"]
} else := "guest"

deny if {
	role == "guest"
	input.parsed_path[0] == "admin"
}

allow if not deny
