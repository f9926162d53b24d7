# `some ... in` over objects, arrays and sets, with keys and values.
package vigil.authz

flagged contains name if {
	some name, values in input.parsed_query
	some v in values
	v in {"1", "true", "yes"}
}

numbers contains n if {
	some v in input.parsed_query.n
	n := count(v)
}

first_admin_index := i if {
	some i, segment in input.parsed_path
	segment == "admin"
}

allow := {
	"allowed": count(flagged & {"debug"}) == 0,
	"dynamic_metadata": {
		"x-flags": concat(",", sort([f | some f in flagged])),
		"x-total": sum([n | some n in numbers]),
		"x-admin-at": object.get({"i": first_admin_index}, "i", -1),
	},
}
