# Serializes the caller's query with json.marshal, whose output differs from OPA's for strings
# holding <, > or &: refused at compile time, naming the function.
package vigil.authz

allow := {
	"allowed": true,
	"headers": {"x-query": json.marshal(input.parsed_query)},
}
