# glob.match as route patterns, written in the policy, with path and dot delimiters.
package vigil.authz

path := input.attributes.request.http.path

routes := {
	"api-one": glob.match("/api/*", ["/"], path),
	"api-items": glob.match("/api/*/items", ["/"], path),
	"json": glob.match("/public/*/*.json", ["/"], path),
	"health": glob.match("/{healthz,readyz}", ["/"], path),
	"short": glob.match("/a?c", ["/"], path),
	"range": glob.match("/[a-c]*", ["/"], path),
	"dots": glob.match("/api/*.*", ["."], path),
	"not-admin": glob.match("/[!a]*", ["/"], path),
}

allow := {
	"allowed": routes["api-one"],
	"dynamic_metadata": {
		"routes": routes,
		"host": glob.match("*.vigil.local", ["."], input.attributes.request.http.host),
	},
}
