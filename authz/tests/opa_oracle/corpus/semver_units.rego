# Client versions compared with semver and sizes parsed with units.
package vigil.authz

version := trim_prefix(object.get(input.attributes.request.http.headers, "x-client-version", "v0.0.0"), "v")

size := units.parse_bytes(object.get(input.attributes.request.http.headers, "x-size", "0"))

allow := {
	"allowed": semver.compare(version, "1.2.0") >= 0,
	"dynamic_metadata": {"x-size": size, "x-valid": true},
} if regex.match(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`, version)

else := {"allowed": false, "http_status": 400, "body": "bad version"}
