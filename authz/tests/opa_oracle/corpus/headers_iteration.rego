# Iterating over all request headers: custom headers, sizes, and forbidden ones.
package vigil.authz

custom := {name: value | some name, value in input.attributes.request.http.headers; startswith(name, "x-")}

forbidden contains name if {
	some name, _ in input.attributes.request.http.headers
	name in {"x-internal", "x-debug", "x-forwarded-host"}
}

oversized contains name if {
	some name, value in input.attributes.request.http.headers
	count(value) > 64
}

allow := {
	"allowed": count(forbidden) + count(oversized) == 0,
	"dynamic_metadata": {"x-custom": custom, "x-forbidden": forbidden},
}
