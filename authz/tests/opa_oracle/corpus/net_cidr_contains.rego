# Allows callers from internal ranges with net.cidr_contains, which Vigil evaluates itself
# because regorus's does not match IPv4-mapped IPv6 addresses against IPv4 ranges as OPA does.
package vigil.authz

internal_ranges := ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]

default allow := false

allow if {
	some cidr in internal_ranges
	net.cidr_contains(cidr, input.attributes.source.address.socketAddress.address)
}
