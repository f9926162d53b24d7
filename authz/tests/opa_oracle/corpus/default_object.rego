# A default decision object overridden by rules, with statuses taken from the request.
package envoy.authz
# decision: data.envoy.authz.allow

default allow := {
	"allowed": false,
	"http_status": 401,
	"headers": {"www-authenticate": "Bearer realm=\"vigil\""},
	"body": "authentication required",
}

allow := {"allowed": true} if {
	input.attributes.request.http.headers.authorization == "Bearer letmein"
}

allow := {"allowed": false, "http_status": 429, "body": "slow down"} if {
	input.attributes.request.http.headers["x-rate"] == "exceeded"
	not input.attributes.request.http.headers.authorization
}
