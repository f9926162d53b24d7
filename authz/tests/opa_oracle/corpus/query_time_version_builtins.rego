# Re-encodes the caller's query with urlquery (Go's url.QueryEscape and ParseQuery rules),
# reads an RFC 3339 expiry header with time.parse_rfc3339_ns and a client version header with
# semver.is_valid, as OPA does.
package vigil.authz

import rego.v1

headers := input.attributes.request.http.headers

query := object.get(input.attributes.request.http, "query", "")

default allow := false

allow := {
	"allowed": expiry_ok,
	"headers": {
		"x-query": urlquery.encode_object(input.parsed_query),
		"x-path": urlquery.encode(input.attributes.request.http.path),
		"x-decoded": decoded,
		"x-version-ok": version_ok,
	},
}

default decoded := "undecodable"

decoded := concat(",", object.keys(urlquery.decode_object(split(input.attributes.request.http.path, "?")[1])))

default expiry_ok := false

expiry_ok if time.parse_rfc3339_ns(headers["x-expires"]) > 1700000000000000000

default version_ok := "absent"

version_ok := sprintf("%v", [semver.is_valid(headers["x-client-version"])])
