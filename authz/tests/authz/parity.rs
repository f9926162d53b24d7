//! Decisions equal OPA's, or the bundle is refused: the refusals, the engine choice and the
//! OPA-Envoy decision interface, as a policy author sees them (the differential suite against
//! OPA itself is tests/opa_oracle.rs).

use http::{HeaderMap, HeaderValue};
use vigil_authz::{
    run_tests, upstream_path_and_query, AuthzInput, Backend, Decision, DecisionRecord,
    HttpAttributes, InputKind, PolicyBundle, PolicyOptions,
};

use crate::{addr, file};

fn compile(rule: &str, rego: &str) -> Result<PolicyBundle, String> {
    let options = PolicyOptions {
        rule: rule.to_string(),
        ..PolicyOptions::default()
    };
    PolicyBundle::compile(vec![file("policy.rego", rego)], options).map_err(|e| e.to_string())
}

fn request<'a>(
    headers: &'a HeaderMap,
    path: &'a str,
    principal: Option<&'a str>,
) -> AuthzInput<'a> {
    AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: "req-1",
            method: "GET",
            path,
            host: "svc",
            scheme: "http",
            protocol: "HTTP/1.1",
            headers,
            body: None,
        }),
        source_address: addr("10.0.0.1:1234"),
        destination_address: addr("10.0.0.2:80"),
        source_principal: principal,
        destination_principal: None,
    }
}

#[test]
fn functions_vigil_cannot_evaluate_like_opa_are_refused_by_name() {
    for (call, expected) in [
        (
            "io.jwt.encode_sign({\"alg\": \"HS256\"}, {}, input.t)",
            "policy.rego:4:8: io.jwt.encode_sign is an OPA builtin that Vigil does not implement",
        ),
        (
            "crypto.x509.parse_certificates(input.t)",
            "policy.rego:4:8: crypto.x509.parse_certificates is refused because Vigil would not",
        ),
        (
            "http.send({\"method\": \"GET\", \"url\": input.t})",
            "policy.rego:4:8: http.send is not supported in the Vigil sidecar",
        ),
        (
            "json.marshal(input.t)",
            "policy.rego:4:8: json.marshal is refused because Vigil would not evaluate it exactly",
        ),
        (
            "glob.match(input.p, [\"/\"], input.t)",
            "policy.rego:4:8: glob.match is accepted only with a pattern written in the policy",
        ),
        (
            "not_a_function(input.t)",
            "policy.rego:4:8: unknown function not_a_function",
        ),
    ] {
        let rego = format!("package vigil.authz\n\nallow if {{\n  x := {call}\n  x\n}}\n");
        let error = compile("data.vigil.authz.allow", &rego).expect_err(call);
        assert!(error.starts_with(expected), "{call}: {error}");
    }
    // Functions the bundle defines, in any of its packages, are fine.
    let bundle = PolicyBundle::compile(
        vec![
            file("lib.rego", "package lib\n\nclean(x) := trim_space(x)\n"),
            file(
                "policy.rego",
                "package vigil.authz\n\nimport data.lib\n\nallow if lib.clean(\" a \") == \"a\"\n",
            ),
        ],
        PolicyOptions::default(),
    );
    assert!(bundle.is_ok(), "{bundle:?}");
}

#[test]
fn the_test_runner_refuses_what_the_proxy_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("policy.rego"),
        "package vigil.authz\n\nallow if io.jwt.encode_sign_raw(input.a, input.b, input.c)\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("policy_test.rego"),
        "package vigil.authz\n\ntest_x if allow with input as {}\n",
    )
    .expect("write");
    let error = run_tests(dir.path(), &mut Vec::new(), false).expect_err("refused");
    assert!(
        error
            .to_string()
            .starts_with("policy.rego:3:10: io.jwt.encode_sign_raw"),
        "{error}"
    );
}

/// Builtins Vigil evaluates itself (sprintf, upper, net.cidr_contains, ...) run on the VM with
/// OPA's results, and a regex `\d` matches only ASCII digits, as in Go.
#[test]
fn opa_semantics_builtins_run_on_the_vm() {
    let bundle = compile(
        "data.vigil.authz.allow",
        r#"package vigil.authz
greeting := sprintf("%s:%v:%d", [upper(input.parsed_path[0]), input.parsed_path, count(input.parsed_path)])
allow if {
  greeting == `STRAßE:["straße", "v٣"]:2`
  net.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3")
  not regex.match(`^v\d$`, input.parsed_path[1])
}
"#,
    )
    .expect("compiles");
    assert_eq!(bundle.backend(), &Backend::Rvm);
    let headers = HeaderMap::new();
    let decision = bundle.evaluate(&request(&headers, "/stra%C3%9Fe/v%D9%A3", None));
    assert!(decision.allowed(), "{decision:?}");
}

/// The finding that started the differential suite: OPA takes the `else` when the body fails
/// on an assignment from an undefined value, so a request without x-role is a guest.
#[test]
fn else_after_an_undefined_assignment_is_taken_on_the_vm() {
    let bundle = compile(
        "data.vigil.authz.allow",
        r#"package vigil.authz
role := r if { r := input.attributes.request.http.headers["x-role"] } else := "guest"
deny if { role == "guest"; input.parsed_path[0] == "admin" }
allow if not deny
"#,
    )
    .expect("compiles");
    assert_eq!(bundle.backend(), &Backend::Rvm);
    let mut headers = HeaderMap::new();
    let decision = bundle.evaluate(&request(&headers, "/admin/users", None));
    assert_eq!(decision.outcome(), "error", "{decision:?}"); // allow is undefined, as in OPA
    headers.insert("x-role", HeaderValue::from_static("admin"));
    assert!(bundle
        .evaluate(&request(&headers, "/admin/users", None))
        .allowed());
}

/// OPA evaluates the operands of a call under `not` first: with no principal,
/// `not startswith(principal, ...)` fails instead of holding.
#[test]
fn negation_over_an_undefined_operand_fails_as_in_opa() {
    let rego = r#"package vigil.authz
default allow := false
allow if not startswith(input.attributes.source.principal, "spiffe://evil/")
"#;
    let h = HeaderMap::new();
    for preference in [
        vigil_authz::BackendPreference::Rvm,
        vigil_authz::BackendPreference::Interpreter,
    ] {
        let bundle = PolicyBundle::compile_with(
            vec![file("policy.rego", rego)],
            PolicyOptions::default(),
            preference,
        )
        .expect("compiles");
        assert!(!bundle.evaluate(&request(&h, "/", None)).allowed());
        assert!(bundle
            .evaluate(&request(&h, "/", Some("spiffe://vigil.local/ns/a/sa/b")))
            .allowed());
    }
}

#[test]
fn constructs_the_vm_gets_wrong_run_on_the_interpreter_and_say_why() {
    let every = compile(
        "data.vigil.authz.allow",
        "package vigil.authz\n\nallow if {\n  every i, s in [\"a\"] {\n    input.parsed_path[i] == s\n  }\n}\n",
    )
    .expect("compiles");
    let reason = every.backend().reason().expect("interpreter");
    assert!(
        reason.starts_with("policy.rego:5:5: `input.parsed_path[i]` inside `every`"),
        "{reason}"
    );
    // The interpreter looks the segment up, as OPA does.
    let h = HeaderMap::new();
    assert!(!every.evaluate(&request(&h, "/b/a", None)).allowed());
    assert!(every.evaluate(&request(&h, "/a", None)).allowed());

    let conflict = compile(
        "data.vigil.authz.allow",
        "package vigil.authz\n\nlevel := 1 if input.x\n\nlevel := 2 if input.y\n\nallow if not level\n",
    )
    .expect("compiles");
    let reason = conflict.backend().reason().expect("interpreter");
    assert!(
        reason.starts_with("policy.rego:3:1: rule vigil.authz.level has definitions"),
        "{reason}"
    );
    assert_eq!(conflict.backend().name(), "interpreter");
    assert!(conflict
        .backend()
        .to_string()
        .starts_with("interpreter (policy.rego:3:1: rule vigil.authz.level"));
}

#[test]
fn opa_envoy_result_object_with_every_decision_field() {
    let bundle = compile(
        "data.envoy.authz.result",
        r#"package envoy.authz

default allow := false

allow if input.attributes.request.http.method == "GET"

result["allowed"] := allow

result["headers"] := [{"x-one": "1"}, {"x-two": ["2a", "2b"]}]

result["response_headers_to_add"] := {"x-policy": "result"}

result["query_parameters_to_remove"] := ["token"]

result["query_parameters_to_set"] := [{"key": "via", "value": "vigil"}]

result["dynamic_metadata"] := {"caller": input.attributes.source.principal, "depth": count(input.parsed_path)}
"#,
    )
    .expect("the result form is accepted");
    let h = HeaderMap::new();
    let input = request(&h, "/orders/7?token=s3cr3t&page=2", Some("spiffe://a/b"));
    let decision = bundle.evaluate(&input);
    let Decision::Allow {
        request_headers_to_add,
        response_headers_to_add,
        query_parameters_to_remove,
        query_parameters_to_set,
        dynamic_metadata,
        ..
    } = &decision
    else {
        panic!("{decision:?}");
    };
    assert_eq!(
        request_headers_to_add,
        &[
            ("x-one".to_string(), "1".to_string()),
            ("x-two".to_string(), "2a".to_string()),
            ("x-two".to_string(), "2b".to_string())
        ]
    );
    assert_eq!(
        response_headers_to_add,
        &[("x-policy".to_string(), "result".to_string())]
    );
    assert_eq!(query_parameters_to_remove, &["token".to_string()]);
    assert_eq!(
        query_parameters_to_set,
        &[("via".to_string(), "vigil".to_string())]
    );
    assert_eq!(
        serde_json::Value::Object(dynamic_metadata.clone().expect("metadata")),
        serde_json::json!({"caller": "spiffe://a/b", "depth": 2})
    );
    assert_eq!(
        upstream_path_and_query("/orders/7?token=s3cr3t&page=2", &decision),
        "/orders/7?page=2&via=vigil"
    );
    // The decision log records the metadata, and not the token.
    let line = DecisionRecord::new(&bundle, &input, &decision).to_json_line();
    let line: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(line["dynamic_metadata"]["caller"], "spiffe://a/b");
    assert_eq!(line["path"], "/orders/7?token=REDACTED&page=REDACTED");

    // A decision path with no rule under it is refused, naming the rule.
    let error = compile(
        "data.envoy.authz.nothing",
        "package envoy.authz\n\nallow := true\n",
    )
    .expect_err("no such rule");
    assert!(error.contains("data.envoy.authz.nothing"), "{error}");
}

#[test]
fn malformed_decision_fields_are_errors_as_in_opa_envoy() {
    let h = HeaderMap::new();
    for field in [
        r#""headers": "x""#,
        r#""headers": [{"x": 1}]"#,
        r#""query_parameters_to_remove": "token""#,
        r#""query_parameters_to_set": [{"key": "a"}]"#,
        r#""dynamic_metadata": [1]"#,
    ] {
        let bundle = compile(
            "data.vigil.authz.allow",
            &format!("package vigil.authz\n\nallow := {{\"allowed\": true, {field}}}\n"),
        )
        .expect("compiles");
        let decision = bundle.evaluate(&request(&h, "/", None));
        assert_eq!(decision.outcome(), "error", "{field}: {decision:?}");
    }
}
