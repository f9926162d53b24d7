# Time builtins on a timestamp chosen by a header (deterministic: never the current time
# except for a comparison whose answer is the same all day).
package vigil.authz

# Timestamps by name: Vigil refuses OPA's time parsers (they accept times OPA rejects).
stamps := {
	"leap-day": 1709210096000000000,
	"new-year-eve": 1704059999500000000,
	"epoch": 0,
	"before-epoch": -86400000000001,
}

ns := stamps[object.get(input.attributes.request.http.headers, "x-stamp", "leap-day")]

allow := {
	"allowed": time.now_ns() > ns,
	"dynamic_metadata": {
		"x-ns": ns,
		"x-date": time.date(ns),
		"x-clock": time.clock(ns),
		"x-weekday": time.weekday(ns),
		"x-diff": time.diff(ns, 0),
	},
}
