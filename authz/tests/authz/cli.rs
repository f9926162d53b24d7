use vigil_authz::{eval_command, explain, ExplainRequest};

use crate::policies_dir;

#[test]
fn eval_prints_value_and_decision() {
    let input = r#"{
        "attributes": {"request": {"http": {"method": "GET", "path": "/api/public/x"}}},
        "parsed_path": ["api", "public", "x"]
    }"#;
    let mut out = Vec::new();
    let d = eval_command(
        &policies_dir().join("envoy-compat"),
        input,
        Some("data.envoy.authz.allow"),
        &mut out,
    )
    .expect("evaluates");
    assert!(d.allowed());
    let printed: serde_json::Value = serde_json::from_slice(&out).expect("pretty JSON");
    assert_eq!(printed["value"]["allowed"], true);
    assert_eq!(printed["decision"]["result"], "allow");
    assert_eq!(printed["backend"], "rvm");

    let err = eval_command(
        &policies_dir().join("default"),
        "{nope",
        None,
        &mut Vec::new(),
    )
    .expect_err("bad JSON");
    assert!(err.to_string().starts_with("invalid input"), "{err}");

    let err = eval_command(
        &policies_dir().join("default"),
        "{}",
        Some("data.nope.allow"),
        &mut Vec::new(),
    )
    .expect_err("missing rule");
    assert!(err.to_string().contains("data.nope.allow"), "{err}");
}

#[test]
fn explain_says_which_rule_decided() {
    let request = ExplainRequest {
        source: Some("spiffe://vigil.local/ns/billing/sa/api".into()),
        destination: Some("spiffe://vigil.local/ns/shop/sa/orders".into()),
        method: "DELETE".into(),
        path: "/orders/42".into(),
        headers: vec![("X-Tenant".into(), "billing".into())],
        host: "orders".into(),
    };
    let mut out = Vec::new();
    let d =
        explain(&policies_dir().join("method-path"), request, None, &mut out).expect("explains");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(d.outcome(), "deny", "{text}");
    assert!(
        text.contains("decision: DENY 403: no route allows DELETE /orders/42"),
        "{text}"
    );
    assert!(text.contains("header       x-tenant: billing"), "{text}");
    assert!(text.contains("route_allows"), "{text}");
    assert!(text.contains("  no match   policy.rego:"), "{text}");
    assert!(text.contains("stopped at policy.rego:"), "{text}");
    assert!(text.contains("matched    policy.rego:"), "{text}"); // the else branch
    assert!(!text.contains("warning"), "{text}");

    // An allowed health check on the default policy names the matching body.
    let request = ExplainRequest {
        method: "GET".into(),
        path: "/healthz".into(),
        host: "svc".into(),
        ..ExplainRequest::default()
    };
    let mut out = Vec::new();
    let d = explain(&policies_dir().join("default"), request, None, &mut out).expect("explains");
    let text = String::from_utf8_lossy(&out);
    assert!(d.allowed(), "{text}");
    assert!(text.contains("decision: ALLOW"), "{text}");
    assert!(text.contains("mesh_identity"), "{text}");
    assert!(
        text.contains("  matched    policy.rego:13  allow if {"),
        "{text}"
    );
    assert!(
        text.contains("  no match   policy.rego:10  allow if mesh_identity"),
        "{text}"
    );
    assert!(
        text.contains("  default    policy.rego:7  default allow := false"),
        "{text}"
    );
}
