# Claims decoded by hand from a bearer token (signature not checked: the pattern of the
# shipped jwt-claims policy), including malformed tokens.
package vigil.authz

token := t if {
	header := input.attributes.request.http.headers.authorization
	startswith(header, "Bearer ")
	t := substring(header, 7, -1)
}

claims := c if {
	[_, payload, _] := split(token, ".")
	c := json.unmarshal(base64url.decode(payload))
}

default allow := false

allow if {
	claims.role == "admin"
	claims.exp > 1700000000
}

allow if {
	"read" in claims.scopes
	input.attributes.request.http.method == "GET"
}
