# Verifies an HS256 JWT with io.jwt.decode_verify and a shared secret; the requests' tokens
# are unsigned or malformed, so OPA and Vigil must agree on every way one fails.
package envoy.authz
# decision: data.envoy.authz.allow

default allow := false

allow if {
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"secret": "secret"})
	valid
	payload.role == "admin"
}
