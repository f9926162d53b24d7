# Time builtins on a timestamp taken from a header (deterministic: never the current time
# except for a comparison whose answer is the same all day).
package vigil.authz

stamp := object.get(input.attributes.request.http.headers, "x-timestamp", "2024-02-29T12:34:56Z")

ns := time.parse_rfc3339_ns(stamp)

allow := {
	"allowed": time.now_ns() > ns,
	"dynamic_metadata": {
		"x-ns": format_int(ns, 10),
		"x-date": time.date(ns),
		"x-clock": time.clock(ns),
		"x-weekday": time.weekday(ns),
		"x-diff": time.diff(ns, 0),
		"x-parsed": format_int(time.parse_ns("2006-01-02", "2024-03-01"), 10),
	},
}
