# Allows callers from internal ranges with net.cidr_contains, which Vigil's engine evaluates
# differently from OPA for IPv4-mapped IPv6 addresses: refused at compile time.
package vigil.authz

internal_ranges := ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]

default allow := false

allow if {
	some cidr in internal_ranges
	net.cidr_contains(cidr, input.attributes.source.address.socketAddress.address)
}
