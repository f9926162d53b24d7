# Verifies a JWT with io.jwt.decode_verify, which Vigil does not evaluate: refused at compile
# time, naming the function.
package envoy.authz
# decision: data.envoy.authz.allow

default allow := false

allow if {
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"secret": "secret"})
	valid
	payload.role == "admin"
}
