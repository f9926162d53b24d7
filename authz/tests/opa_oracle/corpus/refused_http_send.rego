# Asks an external service with http.send, which the sidecar does not support: refused at
# compile time.
package vigil.authz

default allow := false

allow if {
	response := http.send({"method": "GET", "url": "http://opa-helper.local/check", "timeout": "1s"})
	response.status_code == 200
	response.body.allowed
}
