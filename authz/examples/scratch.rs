use regorus::{Engine, Value};
fn main() {
    let mut e = Engine::new();
    e.add_policy("p.rego".into(), r#"package vigil.authz
mesh_identity if {
	not data.vigil.trust_domain
	startswith(input.p, "spiffe://")
}
t1 if { mesh_identity with input as {"p": "spiffe://x"} with data.vigil as {} }
t2 if { mesh_identity with data.vigil as {} with input as {"p": "spiffe://x"} }
t3 := x if { x := data.vigil with data.vigil as {} }
t4 := x if { x := data.vigil.trust_domain with data.vigil as {} }
t5 if { not data.vigil.trust_domain with data.vigil as {} }
td := data.vigil.trust_domain
t6 := x if { x := td with data.vigil.trust_domain as "other" }
t7 := x if { x := td with data.vigil as {"trust_domain": "o2"} }
nt if not data.vigil.trust_domain
t8 := x if { x := nt with data.vigil as {"a": 1} }
t9 := x if { x := nt with data.vigil.trust_domain as false }
"#.into()).unwrap();
    e.add_data(Value::from_json_str(r#"{"vigil": {"trust_domain": "vigil.local"}}"#).unwrap()).unwrap();
    for r in ["t1","t2","t3","t4","t5","t6","t7","t8","t9"] {
        println!("{r}: {:?}", e.eval_rule(format!("data.vigil.authz.{r}")));
    }
}
