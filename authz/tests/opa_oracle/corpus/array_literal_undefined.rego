# Array and object literals holding a possibly undefined value: the whole literal is
# undefined in OPA when one element is.
package vigil.authz

pair := [input.attributes.request.http.headers["x-a"], input.attributes.request.http.headers["x-b"]]

labelled := {"tenant": input.attributes.request.http.headers["x-tenant"], "method": input.attributes.request.http.method}

default has_pair := false

has_pair if count(pair) == 2

default has_labels := false

has_labels if labelled.method

allow := {
	"allowed": has_pair,
	"dynamic_metadata": {"x-has-labels": has_labels},
}
