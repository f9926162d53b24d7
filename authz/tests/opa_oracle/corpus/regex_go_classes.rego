# Route patterns using \d, \w and \s, which are ASCII-only in OPA (Go's RE2) and Unicode in
# regorus: a path with an Arabic-Indic digit (/api/v٣/...) must not match `v\d+`. Vigil gives
# the patterns Go's meaning, written in the policy or read from a rule.
package vigil.authz

import rego.v1

patterns := [`^/api/v\d+/[\w-]+$`, `^/caf\w/`]

default allow := false

allow if regex.match(`^/api/v\d+/orders$`, concat("", ["/", concat("/", input.parsed_path)]))

allow if {
	some p in patterns
	regex.match(p, input.attributes.request.http.path)
}

allow if regex.match(`^/public/\S+$`, input.attributes.request.http.path)
