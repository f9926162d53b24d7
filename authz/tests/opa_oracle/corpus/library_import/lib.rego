# Helpers in their own package, imported by the policy; roles come from data.json.
package lib

import rego.v1

tenant(principal) := parts[4] if {
	parts := split(principal, "/")
	parts[3] == "ns"
} else := "none"

has_role(ns, role) if role in data.roles[ns]

depth := count(input.parsed_path)
