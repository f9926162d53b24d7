# Refuses every request and connection: a safe starting point while writing a real policy,
# and a kill switch during an incident.
package vigil.authz

import rego.v1

allow := {
	"allowed": false,
	"http_status": 403,
	"body": "denied by deny-all policy",
	"headers": {"content-type": "text/plain"},
}
