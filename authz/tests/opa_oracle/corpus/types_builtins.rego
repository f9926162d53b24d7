# Type checks on whatever the JSON body holds.
package vigil.authz

body := object.get(input, "parsed_body", null)

kind := type_name(body)

allow := {
	"allowed": kind in {"object", "null"},
	"dynamic_metadata": {
		"x-kind": kind,
		"x-checks": [is_string(body), is_number(body), is_boolean(body), is_array(body), is_object(body), is_null(body), is_set(body)],
		"x-fields": {k: type_name(v) | some k, v in body},
	},
}
