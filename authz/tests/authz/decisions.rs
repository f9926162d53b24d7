use http::HeaderMap;
use vigil_authz::{
    AuthzInput, BundleError, Decision, DecisionRecord, HttpAttributes, InputKind, PolicyBundle,
    PolicyOptions, QueryLogging, Value,
};

use crate::{addr, bundle, file};

fn request<'a>(headers: &'a HeaderMap, method: &'a str, path: &'a str) -> AuthzInput<'a> {
    AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: "req-9",
            method,
            path,
            host: "svc",
            scheme: "http",
            protocol: "HTTP/1.1",
            headers,
            body: None,
        }),
        source_address: addr("10.0.0.1:1234"),
        destination_address: addr("10.0.0.2:80"),
        source_principal: Some("spiffe://vigil.local/ns/a/sa/b"),
        destination_principal: None,
    }
}

#[test]
fn remembered_decisions_follow_everything_the_policy_observes() {
    let h = HeaderMap::new();
    let by_id = bundle(
        "package vigil.authz\nimport rego.v1\nallow if input.attributes.request.http.id == \"req-1\"",
    );
    assert!(by_id.remembers_decisions());
    let with_id = |id| AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id,
            ..http_attributes(&h, "GET", "/x")
        }),
        ..request(&h, "GET", "/x")
    };
    for (id, allowed) in [("req-1", true), ("req-2", false), ("req-1", true)] {
        assert_eq!(by_id.evaluate(&with_id(id)).allowed(), allowed, "id {id}");
    }
    let by_path =
        bundle("package vigil.authz\nimport rego.v1\nallow if input.parsed_path == [\"a\"]");
    for (path, allowed) in [("/a", true), ("/b", false), ("/a?x=1", true), ("/b", false)] {
        assert_eq!(
            by_path.evaluate(&request(&h, "GET", path)).allowed(),
            allowed,
            "path {path}"
        );
    }
}

#[test]
fn decisions_that_depend_on_the_clock_or_print_are_never_remembered() {
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/default/policy.rego"
    ))
    .expect("the default policy");
    assert!(bundle(&default).remembers_decisions());
    for call in [
        "time.now_ns() > 0",
        "print(\"checked\")",
        "io.jwt.decode_verify(input.attributes.request.http.headers.t, {\"secret\": \"s\"})[0]",
    ] {
        let b = bundle(&format!(
            "package vigil.authz\nimport rego.v1\nallow if {call}"
        ));
        assert!(!b.remembers_decisions(), "{call}");
    }
}

fn http_attributes<'a>(
    headers: &'a HeaderMap,
    method: &'a str,
    path: &'a str,
) -> HttpAttributes<'a> {
    match request(headers, method, path).kind {
        InputKind::Http(http) => http,
        _ => unreachable!("request() is HTTP"),
    }
}

fn decide(rego: &str) -> Decision {
    let h = HeaderMap::new();
    bundle(rego).evaluate(&request(&h, "GET", "/x"))
}

#[test]
fn boolean_decisions() {
    assert_eq!(
        decide("package vigil.authz\nallow := true"),
        Decision::allow()
    );
    let d = decide("package vigil.authz\nallow := false");
    assert_eq!(d.outcome(), "deny");
    assert_eq!(d.http_status(), Some(403));
    assert!(!d.allowed());
}

#[test]
fn object_decisions() {
    let d = decide(
        r#"package vigil.authz
        allow := {
            "allowed": true,
            "headers": {"x-user": "alice", "x-groups": ["a", "b"]},
            "request_headers_to_remove": ["x-debug"],
            "response_headers_to_add": {"x-policy": "p"},
        }"#,
    );
    assert_eq!(
        d,
        Decision::Allow {
            request_headers_to_add: vec![
                ("x-groups".into(), "a".into()),
                ("x-groups".into(), "b".into()),
                ("x-user".into(), "alice".into()),
            ],
            request_headers_to_remove: vec!["x-debug".into()],
            response_headers_to_add: vec![("x-policy".into(), "p".into())],
            query_parameters_to_remove: vec![],
            query_parameters_to_set: vec![],
            dynamic_metadata: None,
        }
    );

    let d = decide(
        r#"package vigil.authz
        allow := {"allowed": false, "http_status": 401, "body": "login first", "headers": {"www-authenticate": "Bearer"}}"#,
    );
    assert_eq!(
        d,
        Decision::Deny {
            status: 401,
            body: "login first".into(),
            headers: vec![("www-authenticate".into(), "Bearer".into())],
            reason: "login first".into(),
            dynamic_metadata: None,
        }
    );

    // Denied without a status: 403.
    let d = decide(
        r#"package vigil.authz
        allow := {"allowed": false}"#,
    );
    assert_eq!(d.http_status(), Some(403));
}

#[test]
fn malformed_decisions_are_errors() {
    for (rego, needle) in [
        ("package vigil.authz\nallow if input.nope", "undefined"),
        ("package vigil.authz\nallow := 1", "boolean or an object"),
        (
            "package vigil.authz\nallow := \"yes\"",
            "boolean or an object",
        ),
        (
            "package vigil.authz\nallow := {\"status\": 200}",
            "\"allowed\"",
        ),
        (
            "package vigil.authz\nallow := {\"allowed\": \"yes\"}",
            "\"allowed\"",
        ),
        (
            "package vigil.authz\nallow := {\"allowed\": false, \"http_status\": 99}",
            "http_status",
        ),
        (
            "package vigil.authz\nallow := {\"allowed\": true, \"headers\": [1]}",
            "headers",
        ),
    ] {
        let d = decide(rego);
        assert_eq!(d.outcome(), "error", "{rego}");
        assert!(d.reason().contains(needle), "{rego}: {}", d.reason());
        assert!(
            d.reason().contains("data.vigil.authz.allow"),
            "{}",
            d.reason()
        );
    }
}

#[test]
fn runtime_errors_are_errors() {
    // Two complete definitions producing different values is an evaluation error in Rego.
    let d = decide(
        r#"package vigil.authz
        allow := true if input.attributes.request.http.method == "GET"
        allow := false if input.attributes.request.http.path == "/x""#,
    );
    assert_eq!(d.outcome(), "error", "{d:?}");
}

#[test]
fn dry_run_enforce_and_logging() {
    let rego = "package vigil.authz\nallow := false";
    let options = PolicyOptions {
        dry_run: true,
        ..PolicyOptions::default()
    };
    let dry = PolicyBundle::compile(vec![file("p.rego", rego)], options).expect("compiles");
    let h = HeaderMap::new();
    let input = request(&h, "DELETE", "/things/1?force=1");
    let decision = dry.evaluate(&input);
    assert_eq!(decision.outcome(), "deny");
    assert!(dry.should_log(&decision));

    let record = DecisionRecord::new(&dry, &input, &decision);
    assert_eq!(dry.enforce(decision.clone()), Decision::allow());
    assert_eq!(
        dry.enforce(Decision::Error { reason: "x".into() }),
        Decision::allow()
    );
    assert_eq!(record.result, "deny");
    assert!(record.dry_run);
    assert_eq!(record.http_status, Some(403));
    assert_eq!(record.decision_id, "req-9");
    assert_eq!(record.bundle_version, dry.version());
    let line: serde_json::Value =
        serde_json::from_str(&record.to_json_line()).expect("record is JSON");
    assert_eq!(line["method"], "DELETE");
    // Query values are redacted unless the log is set to keep them.
    assert_eq!(line["path"], "/things/1?force=REDACTED");
    let kept = DecisionRecord::with_query_logging(&dry, &input, &decision, QueryLogging::Kept);
    assert_eq!(kept.path.as_deref(), Some("/things/1?force=1"));
    assert_eq!(line["source_principal"], "spiffe://vigil.local/ns/a/sa/b");
    assert_eq!(line["source_address"], "10.0.0.1:1234");
    assert!(line["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 24));

    // Enforcing: decisions pass through; allows are logged only with log_allows.
    let enforcing = bundle(rego);
    assert_eq!(enforcing.enforce(decision.clone()), decision);
    assert!(!enforcing.should_log(&Decision::allow()));
    let logging = PolicyBundle::compile(
        vec![file("p.rego", rego)],
        PolicyOptions {
            log_allows: true,
            ..PolicyOptions::default()
        },
    )
    .expect("compiles");
    assert!(logging.should_log(&Decision::allow()));
    assert_ne!(logging.version(), enforcing.version());
}

#[test]
fn syntax_error_names_file_and_line() {
    let files = vec![
        file("a/ok.rego", "package vigil.authz\nallow := true\n"),
        file(
            "b/broken.rego",
            "package vigil.authz\n\nhelper if {\n  input.x ==\n}\n",
        ),
    ];
    let err = PolicyBundle::compile(files, PolicyOptions::default()).expect_err("refused");
    match &err {
        BundleError::Compile { file, line, .. } => {
            assert_eq!(file, "b/broken.rego");
            assert_eq!(*line, 5, "{err}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().starts_with("b/broken.rego:5:"), "{err}");

    // Several broken files: one problem per file.
    let files = vec![
        file("x.rego", "package vigil.authz\nallow if {"),
        file("y.rego", "package\n"),
    ];
    let err = PolicyBundle::compile(files, PolicyOptions::default()).expect_err("refused");
    assert_eq!(err.problems().len(), 2, "{err}");
    assert!(err.to_string().contains("x.rego:"), "{err}");
    assert!(err.to_string().contains("\ny.rego:"), "{err}");
}

#[test]
fn semantic_errors_are_located() {
    let files = vec![file(
        "p.rego",
        "package vigil.authz\n\nallow if {\n  x == 1\n}\n",
    )];
    let err = PolicyBundle::compile(files, PolicyOptions::default()).expect_err("unsafe var");
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].file, "p.rego", "{err}");
    assert_eq!(problems[0].line, 4, "{err}");
}

#[test]
fn missing_rule_is_refused() {
    let err = PolicyBundle::compile(
        vec![file("p.rego", "package vigil.authz\nhelper := true")],
        PolicyOptions::default(),
    )
    .expect_err("missing rule");
    assert!(matches!(err, BundleError::MissingRule(ref r) if r == "data.vigil.authz.allow"));
    assert!(err.to_string().contains("data.vigil.authz.allow"));

    // A default is a declaration.
    let b = bundle("package vigil.authz\ndefault allow := false");
    assert_eq!(b.options().rule, "data.vigil.authz.allow");
}

#[test]
fn data_files_merge_at_their_directory() {
    let files = vec![
        file("data.json", r#"{"vigil": {"trust_domain": "td"}}"#),
        file("vigil/limits/data.yaml", "max: 3\n"),
        file(
            "p.rego",
            "package vigil.authz\nallow if { data.vigil.trust_domain == \"td\"; data.vigil.limits.max == 3 }",
        ),
    ];
    let b = PolicyBundle::compile(files, PolicyOptions::default()).expect("compiles");
    assert_eq!(b.eval_raw(Value::new_object()), Ok(Value::from(true)));

    let err = PolicyBundle::compile(
        vec![
            file("p.rego", "package vigil.authz\nallow := true"),
            file("bad/data.json", "{nope"),
        ],
        PolicyOptions::default(),
    )
    .expect_err("bad data");
    assert!(matches!(err, BundleError::Data { ref file, .. } if file == "bad/data.json"));
}

#[test]
fn version_is_stable_and_content_addressed() {
    let a = PolicyBundle::compile(
        vec![
            file("b.rego", "package x\ny := 1"),
            file("a.rego", "package vigil.authz\nallow := true"),
        ],
        PolicyOptions::default(),
    )
    .expect("compiles");
    let b = PolicyBundle::compile(
        vec![
            file("a.rego", "package vigil.authz\nallow := true"),
            file("b.rego", "package x\ny := 1"),
        ],
        PolicyOptions::default(),
    )
    .expect("compiles");
    assert_eq!(a.version(), b.version());
    assert!(a.version().starts_with("sha256:") && a.version().len() == 23);
    assert_eq!(a.files()[0].path, "a.rego");
}

#[test]
fn v0_policies_still_load() {
    let b = bundle(
        "package vigil.authz\ndefault allow = false\nallow { input.attributes.source.principal }",
    );
    let h = HeaderMap::new();
    assert!(b.evaluate(&request(&h, "GET", "/")).allowed());
}

#[test]
fn request_independent_rules_are_folded_once_per_bundle() {
    let rego = r#"package vigil.authz

import input.attributes.request.http as req

allow if {
	req.method in allowed_methods
	input.parsed_path[0] in public_roots
	not blocked[input.parsed_path[0]]
	count(admins) == 2
	not never_defined
}

allow if {
	input.parsed_path[0] == "limits"
	limits.max > 2
	quota == 10
}

# Request-independent: folded.
allowed_methods := {m | some m in data.cfg.methods}
public_roots contains root if some root in ["x", "y"]
blocked[name] := true if some name in data.cfg.blocked
admins := [a | some a in data.cfg.admins]
limits := {"max": 3} if data.cfg.strict else := {"max": 1}
never_defined if false
default quota := 5
quota := 10 if data.cfg.strict

# Request-dependent (directly, through an alias, through another rule, or not deterministic).
method := input.attributes.request.http.method
via_alias := req.path
via_rule := concat("", [method, "!"])
clock := time.now_ns()
helper(x) := x + 1
"#;
    let data = r#"{"cfg": {"methods": ["GET", "HEAD"], "blocked": ["y"], "admins": ["a", "b"], "strict": true}}"#;
    let b = PolicyBundle::compile(
        vec![file("p.rego", rego), file("data.json", data)],
        PolicyOptions::default(),
    )
    .expect("compiles");
    assert_eq!(b.backend().name(), "rvm");
    let folded = b.folded_rules();
    for rule in [
        "allowed_methods",
        "public_roots",
        "blocked",
        "admins",
        "limits",
        "never_defined",
        "quota",
    ] {
        assert!(
            folded.contains(&format!("vigil.authz.{rule}")),
            "{rule} not folded: {folded:?}"
        );
    }
    for rule in [
        "allow",
        "method",
        "via_alias",
        "via_rule",
        "clock",
        "helper",
    ] {
        assert!(
            !folded.contains(&format!("vigil.authz.{rule}")),
            "{rule} folded: {folded:?}"
        );
    }

    // The VM over the folded bundle agrees with the interpreter over the bundle as written.
    let h = HeaderMap::new();
    for (method, path) in [
        ("GET", "/x"),
        ("GET", "/y"),
        ("POST", "/x"),
        ("GET", "/limits"),
        ("GET", "/z"),
    ] {
        let input = request(&h, method, path).to_value();
        assert_eq!(
            b.eval_raw(input.clone()),
            b.eval_raw_interpreted(input),
            "{method} {path}"
        );
    }
    assert!(b.evaluate(&request(&h, "GET", "/x")).allowed());
    assert!(!b.evaluate(&request(&h, "GET", "/y")).allowed());
    assert!(b.evaluate(&request(&h, "GET", "/limits")).allowed());
}
