use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use vigil_authz::{
    run_tests, AuthzInput, Backend, BackendPreference, BodyInput, HttpAttributes, InputKind,
    PolicyBundle, PolicyFile, PolicyOptions, Value,
};

use crate::{addr, policies_dir};

/// (directory, decision rule) of every shipped policy.
pub const SHIPPED: &[(&str, &str)] = &[
    ("default", "data.vigil.authz.allow"),
    ("deny-all", "data.vigil.authz.allow"),
    ("namespace-isolation", "data.vigil.authz.allow"),
    ("method-path", "data.vigil.authz.allow"),
    ("jwt-claims", "data.vigil.authz.allow"),
    ("envoy-compat", "data.envoy.authz.allow"),
];

pub fn shipped(name: &str, rule: &str) -> PolicyBundle {
    let dir = policies_dir().join(name);
    let options = PolicyOptions {
        rule: rule.to_string(),
        ..PolicyOptions::default()
    };
    PolicyBundle::compile(PolicyBundle::read_dir(&dir).expect("readable"), options)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_shipped_policy_passes_its_tests() {
    for (name, _) in SHIPPED {
        let mut out = Vec::new();
        let summary = run_tests(&policies_dir().join(name), &mut out, true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = String::from_utf8_lossy(&out);
        assert!(summary.success(), "{name}:\n{text}");
        assert!(summary.passed >= 2, "{name}:\n{text}");
        assert!(
            text.contains(&format!("PASS: {}/{}", summary.passed, summary.passed)),
            "{text}"
        );
    }
}

#[test]
fn whole_library_runs_as_separate_bundles() {
    let mut out = Vec::new();
    let summary = run_tests(&policies_dir(), &mut out, false).expect("runs");
    let text = String::from_utf8_lossy(&out);
    assert!(summary.success(), "{text}");
    for (name, _) in SHIPPED {
        assert!(text.contains(&format!("{name}:")), "{text}");
    }
    assert!(
        text.contains("PASS data.envoy.authz.test_public_get_allowed ("),
        "{text}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("readdir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[test]
fn broken_test_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir().join("default"), tmp.path());
    let test_file = tmp.path().join("policy_test.rego");
    let text = std::fs::read_to_string(&test_file).expect("read");
    // Flip one expectation: health checks must now be denied.
    let broken = text.replace(
        "test_health_check_post_denied if {\n\tnot allow",
        "test_health_check_post_denied if {\n\tallow",
    );
    assert_ne!(text, broken);
    // And add a test whose evaluation errors (conflicting values for a complete rule).
    let broken = format!(
        "{broken}\nconflict := 1 if input.x\nconflict := 2 if input.x\n\
         test_errors if {{\n\tconflict with input as {{\"x\": true}}\n}}\n"
    );
    std::fs::write(&test_file, broken).expect("write");

    let mut out = Vec::new();
    let summary = run_tests(tmp.path(), &mut out, false).expect("runs");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(summary.failed, 1, "{text}");
    assert_eq!(summary.errored, 1, "{text}");
    assert!(
        text.contains("ERROR data.vigil.authz.test_errors ("),
        "{text}"
    );
    assert!(
        text.contains(&format!("ERROR: 1/{}", summary.total())),
        "{text}"
    );
    assert!(!summary.success());
    assert!(
        text.contains("FAIL data.vigil.authz.test_health_check_post_denied ("),
        "{text}"
    );
    assert!(
        text.contains(&format!("FAIL: 1/{}", summary.total())),
        "{text}"
    );
    assert!(
        text.contains("PASS data.vigil.authz.test_mesh_identity_allowed ("),
        "{text}"
    );
}

#[test]
fn test_runner_reports_compile_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("p.rego"), "package p\nallow if {\n").expect("write");
    let err = run_tests(tmp.path(), &mut Vec::new(), false).expect_err("broken");
    assert!(err.to_string().starts_with("p.rego:"), "{err}");
}

#[test]
fn default_policy_accepts_any_spiffe_id_without_trust_domain() {
    let files = PolicyBundle::read_dir(&policies_dir().join("default")).expect("readable");
    let b = PolicyBundle::compile(files.clone(), PolicyOptions::default()).expect("compiles");
    let tcp = |principal| AuthzInput {
        kind: InputKind::Tcp,
        source_address: addr("10.0.0.1:1"),
        destination_address: addr("10.0.0.2:2"),
        source_principal: principal,
        destination_principal: None,
    };
    assert!(b
        .evaluate(&tcp(Some("spiffe://elsewhere/ns/a/sa/b")))
        .allowed());
    assert!(!b.evaluate(&tcp(Some("elsewhere"))).allowed());
    assert!(!b.evaluate(&tcp(None)).allowed());
    // With the trust domain the control plane adds to every bundle, only that one.
    let mut with_mesh = files;
    with_mesh.push(PolicyFile {
        path: "vigil/mesh/data.json".into(),
        contents: r#"{"trust_domain": "vigil.local"}"#.into(),
    });
    let b = PolicyBundle::compile(with_mesh, PolicyOptions::default()).expect("compiles");
    assert!(!b
        .evaluate(&tcp(Some("spiffe://elsewhere/ns/a/sa/b")))
        .allowed());
    assert!(b
        .evaluate(&tcp(Some("spiffe://vigil.local/ns/a/sa/b")))
        .allowed());
}

#[test]
fn interpreter_backend_on_request() {
    let dir = policies_dir().join("method-path");
    let b = PolicyBundle::compile_with(
        PolicyBundle::read_dir(&dir).expect("readable"),
        PolicyOptions::default(),
        BackendPreference::Interpreter,
    )
    .expect("compiles");
    assert_eq!(b.backend().name(), "interpreter");
    let vm = shipped("method-path", "data.vigil.authz.allow");
    for input in sample_inputs().into_iter().step_by(11) {
        assert_eq!(b.evaluate_value(input.clone()), vm.evaluate_value(input));
    }
}

#[test]
fn shipped_policies_run_on_the_vm() {
    for (name, rule) in SHIPPED {
        let b = shipped(name, rule);
        assert_eq!(b.backend(), &Backend::Rvm, "{name}");
    }
    // Data-only rules are evaluated once per bundle.
    let folded = shipped("method-path", "data.vigil.authz.allow");
    assert!(folded
        .folded_rules()
        .contains(&"vigil.authz.route_index".to_string()));
    let folded = shipped("default", "data.vigil.authz.allow");
    assert_eq!(
        folded.folded_rules(),
        ["vigil.authz.public_endpoints", "vigil.authz.trust_domain"]
    );
}

/// A bearer token of `policies/jwt-claims`'s tests, signed with the keys of its data.
fn jwt(name: &str) -> String {
    let tests = std::fs::read_to_string(policies_dir().join("jwt-claims/policy_test.rego"))
        .expect("jwt-claims tests");
    let prefix = format!("\t\"{name}\": \"");
    let token = tests
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.strip_suffix("\","))
        .unwrap_or_else(|| panic!("no token {name} in jwt-claims/policy_test.rego"));
    format!("Bearer {token}")
}

/// Calls `f` with inputs covering allow and deny paths of every shipped policy.
fn for_each_sample(mut f: impl FnMut(&AuthzInput<'_>)) {
    let principals = [
        None,
        Some("spiffe://vigil.local/ns/shop/sa/web"),
        Some("spiffe://vigil.local/ns/ops/sa/admin"),
        Some("spiffe://vigil.local/ns/frontend/sa/ui"),
        Some("spiffe://vigil.local/ns/acme/sa/console"),
        Some("spiffe://evil.example/ns/shop/sa/web"),
        Some("spiffe://vigil.local/bogus"),
    ];
    let destinations = [None, Some("spiffe://vigil.local/ns/shop/sa/orders")];
    let requests = [
        ("GET", "/healthz"),
        ("POST", "/healthz"),
        ("GET", "/metrics?x=1"),
        ("GET", "/orders"),
        ("GET", "/orders/42"),
        ("DELETE", "/orders/42"),
        ("GET", "/orders/42/items"),
        ("POST", "/admin/users/7"),
        ("GET", "/api/public/status"),
        ("POST", "/api/orders"),
        ("GET", "/reports"),
        ("GET", "/%2e%2e/x%20y"),
    ];
    let mut headers = Vec::new();
    headers.push(HeaderMap::new());
    for (token, tenant) in [
        (jwt("admin"), "acme"),
        (jwt("admin"), "globex"),
        (jwt("viewer"), "acme"),
        (jwt("expired"), "acme"),
        (jwt("tampered"), "acme"),
        ("Bearer garbage".to_string(), "acme"),
    ] {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&token).expect("header"),
        );
        h.insert("x-tenant", HeaderValue::from_str(tenant).expect("header"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        headers.push(h);
    }
    let bodies: [&[u8]; 2] = [br#"{"quantity": 3}"#, br#"{"quantity": 300}"#];

    for source in principals {
        for destination in destinations {
            f(&AuthzInput {
                kind: InputKind::Tcp,
                source_address: addr("10.0.0.1:1000"),
                destination_address: addr("10.0.0.2:2000"),
                source_principal: source,
                destination_principal: destination,
            });
            for (method, path) in requests {
                for h in &headers {
                    for body in bodies {
                        let input = AuthzInput {
                            kind: InputKind::Http(HttpAttributes {
                                id: "id",
                                method,
                                path,
                                host: "svc",
                                scheme: "http",
                                protocol: "HTTP/1.1",
                                headers: h,
                                body: Some(BodyInput {
                                    bytes: body,
                                    truncated: false,
                                    content_type: Some("application/json"),
                                }),
                            }),
                            source_address: addr("10.0.0.1:1000"),
                            destination_address: addr("10.0.0.2:2000"),
                            source_principal: source,
                            destination_principal: destination,
                        };
                        f(&input);
                    }
                }
            }
        }
    }
}

fn sample_inputs() -> Vec<Value> {
    let mut values = Vec::new();
    for_each_sample(|input| values.push(input.to_value()));
    values
}

#[test]
fn vm_agrees_with_interpreter_on_shipped_policies() {
    let inputs = sample_inputs();
    for (name, rule) in SHIPPED {
        let b = shipped(name, rule);
        let (mut allows, mut denies) = (0, 0);
        for input in &inputs {
            let vm = b.eval_raw(input.clone());
            let tree = b.eval_raw_interpreted(input.clone());
            assert_eq!(vm, tree, "{name}: input {input}");
            let decision = b.evaluate_value(input.clone());
            assert_ne!(
                decision.outcome(),
                "error",
                "{name}: {decision:?} for {input}"
            );
            if decision.allowed() {
                allows += 1;
            } else {
                denies += 1;
            }
        }
        // The inputs exercise both outcomes (deny-all only denies).
        assert!(denies > 0, "{name}");
        assert!(allows > 0 || *name == "deny-all", "{name}");
    }
}

#[test]
fn inputs_trimmed_to_what_the_policy_reads_decide_the_same() {
    for (name, rule) in SHIPPED {
        let b = shipped(name, rule);
        for_each_sample(|input| {
            assert_eq!(
                b.evaluate(input),
                b.evaluate_value(input.to_value()),
                "{name}: {input:?}"
            );
        });
    }
}

#[test]
fn concurrent_evaluation_on_one_bundle() {
    let b = Arc::new(shipped("method-path", "data.vigil.authz.allow"));
    let reference = {
        let inputs = sample_inputs();
        inputs
            .into_iter()
            .step_by(7)
            .map(|i| {
                let d = b.evaluate_value(i.clone());
                (i, d)
            })
            .collect::<Vec<_>>()
    };
    let reference = Arc::new(reference);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let b = Arc::clone(&b);
            let reference = Arc::clone(&reference);
            std::thread::spawn(move || {
                for round in 0..20 {
                    for (i, (input, expected)) in reference.iter().enumerate() {
                        if (i + t + round) % 3 == 0 {
                            assert_eq!(&b.evaluate_value(input.clone()), expected);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}
