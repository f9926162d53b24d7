# Regular expressions (RE2 syntax) on the path, query and headers.
package vigil.authz

req := input.attributes.request.http

ids := regex.find_n(`[0-9]+`, req.path, -1)

allow := {
	"allowed": regex.match(`^/(api|public)(/[a-z0-9]+)*/?$`, req.path),
	"dynamic_metadata": {
		"x-ids": concat(",", ids),
		"x-first-two": regex.find_n(`[a-z]+`, req.path, 2),
		"x-replaced": regex.replace(req.path, `[0-9]+`, "N"),
		"x-valid": regex.is_valid(object.get(req.headers, "x-pattern", "(")),
		"x-groups": regex.find_all_string_submatch_n(`/([a-z]+)/([0-9]+)`, req.path, -1),
		"x-user-match": regex.match(`^Mozilla/\d`, object.get(req.headers, "user-agent", "")),
	},
}
