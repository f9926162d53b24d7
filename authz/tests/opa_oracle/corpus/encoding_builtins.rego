# Encodings: base64, base64url, hex, and JSON validity.
package vigil.authz

req := input.attributes.request.http

raw := object.get(req.headers, "x-data", "")

allow := {
	"allowed": true,
	"dynamic_metadata": {
		"x-b64": base64.encode(req.path),
		"x-b64-decoded": base64.is_valid(raw),
		"x-b64url": base64url.encode(req.path),
		"x-b64url-nopad": base64url.encode_no_pad(req.path),
		"x-hex": hex.encode(req.method),
		"x-json-valid": json.is_valid(raw),
	},
}
