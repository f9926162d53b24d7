# String builtins on request fields, reported in the decision so every value is compared.
package vigil.authz

req := input.attributes.request.http

agent := object.get(req.headers, "user-agent", "")

allow := {
	"allowed": true,
	"dynamic_metadata": {
		"x-split": split(req.path, "/"),
		"x-trim": trim(req.path, "/"),
		"x-trim-left": trim_left(req.path, "/a"),
		"x-trim-prefix": trim_prefix(req.path, "/api"),
		"x-trim-suffix": trim_suffix(req.path, "/"),
		"x-trim-space": trim_space(agent),
		"x-replace": replace(req.path, "/", "|"),
		"x-replace-n": strings.replace_n({"a": "A", "/": "\\"}, req.path),
		"x-index-n": indexof_n(req.path, "/"),
		"x-substring": substring(req.path, 1, 4),
		"x-contains": contains(req.path, "api"),
		"x-starts": startswith(req.path, "/api"),
		"x-ends": endswith(req.path, "/"),
		"x-concat": concat(",", input.parsed_path),
		"x-reverse": strings.reverse(agent),
		"x-count": count(agent),
		"x-any-prefix": strings.any_prefix_match(req.path, ["/api", "/admin"]),
		"x-any-suffix": strings.any_suffix_match(req.path, [".json", "/"]),
	},
}
