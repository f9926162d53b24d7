# decision: data.vigil.authz.allow
# A policy built from an imported library, a data document and a function reached by its
# full path.
package vigil.authz

import data.lib
import data.lib.tenant as tenant_of

import rego.v1

caller := tenant_of(object.get(input.attributes.source, "principal", ""))

allow := {
	"allowed": lib.has_role(caller, "reader"),
	"dynamic_metadata": {
		"tenant": caller,
		"writer": data.lib.has_role(caller, "writer"),
		"depth": lib.depth,
	},
}
