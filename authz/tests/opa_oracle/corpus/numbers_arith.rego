# Arithmetic and aggregates over numbers from the JSON body and the query.
package vigil.authz

body := input.parsed_body

quantities := [q | some item in body.items; q := item.quantity]

total := sum(quantities)

allow := {
	"allowed": total <= 100,
	"dynamic_metadata": {
		"x-total": total,
		"x-max": max(quantities),
		"x-min": min(quantities),
		"x-product": product(quantities),
		"x-avg": total / count(quantities),
		"x-rounded": [round(total / 3), floor(total / 3), abs(0 - total)],
		"x-mod": total % 7,
		"x-range": numbers.range(1, min([count(quantities), 5])),
		"x-bits": [bits.and(total, 6), bits.or(total, 1), bits.lsh(total, 2)],
	},
} if is_array(body.items)
