//! `vigil policy explain --input FILE` explains an input document as given (one copied from a
//! decision log, or written for OPA), not only a request described by flags.

use std::process::Command;

const POLICY: &str = "package vigil.authz

import rego.v1

default allow := false

allow if {
\tinput.attributes.request.http.method == \"GET\"
\tstartswith(input.attributes.source.principal, \"spiffe://vigil.local/ns/shop/\")
}
";

fn input(method: &str) -> String {
    serde_json::json!({
        "attributes": {
            "source": {"principal": "spiffe://vigil.local/ns/shop/sa/web"},
            "request": {"http": {"method": method, "path": "/orders", "headers": {}}},
        },
        "parsed_path": ["orders"],
    })
    .to_string()
}

fn explain(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["policy", "explain"])
        .args(args)
        .output()
        .expect("vigil runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn an_input_document_is_explained_with_the_statement_that_stopped_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.rego"), POLICY).expect("policy");
    let policy = dir.path().to_str().expect("utf-8");
    // Inputs outside the policy directory, whose JSON files are the bundle's data.
    let inputs = tempfile::tempdir().expect("tempdir");

    let allowed = inputs.path().join("get.json");
    std::fs::write(&allowed, input("GET")).expect("input");
    let (code, out) = explain(&[
        "--policy",
        policy,
        "--input",
        allowed.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("input (as given):"), "{out}");
    assert!(out.contains("\"GET\""), "{out}");
    assert!(out.contains("  matched    policy.rego:7"), "{out}");

    let denied = inputs.path().join("delete.json");
    std::fs::write(&denied, input("DELETE")).expect("input");
    let (code, out) = explain(&[
        "--policy",
        policy,
        "--input",
        denied.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("  no match   policy.rego:7"), "{out}");
    assert!(
        out.contains("stopped at policy.rego:8: input.attributes.request.http.method == \"GET\""),
        "{out}"
    );

    // The document and a request described by flags are two ways to say the same thing.
    let (code, out) = explain(&[
        "--policy",
        policy,
        "--input",
        denied.to_str().expect("utf-8"),
        "--method",
        "GET",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
}
