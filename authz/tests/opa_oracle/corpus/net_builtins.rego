# CIDR validation and expansion, with ranges chosen per request.
package vigil.authz

source_ip := input.attributes.source.address.socketAddress.address

requested_range := object.get(input.attributes.request.http.headers, "x-cidr", "192.168.1.0/30")

allow := {
	"allowed": net.cidr_is_valid(requested_range),
	"dynamic_metadata": {
		"x-source": source_ip,
		"x-source-is-range": net.cidr_is_valid(source_ip),
		"x-expanded": net.cidr_expand("10.0.0.0/30"),
		"x-v6": net.cidr_expand("fd00::/127"),
	},
}
