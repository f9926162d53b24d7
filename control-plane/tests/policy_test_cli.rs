//! `vigil policy test` behaves like `opa test` where scripts and CI depend on it: exit code 2
//! when a test fails, `todo_test_*` rules skipped, `--run` to pick tests, `--format json`, and
//! the expression a failing test stopped at.

use std::path::Path;
use std::process::Command;

const POLICY: &str = "package vigil.authz

import rego.v1

default allow := false

allow if input.role == \"admin\"
";

const TESTS: &str = "package vigil.authz

import rego.v1

test_admin_allowed if {
\tallow with input as {\"role\": \"admin\"}
}

test_guest_denied if {
\tnot allow with input as {\"role\": \"guest\"}
}

test_wrongly_expects_guest_allowed if {
\tx := 1
\tx == 1
\tallow with input as {\"role\": \"guest\"}
}

todo_test_auditors_allowed if {
\tallow with input as {\"role\": \"auditor\"}
}
";

fn policy_dir(tests: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.rego"), POLICY).expect("write policy");
    std::fs::write(dir.path().join("policy_test.rego"), tests).expect("write tests");
    dir
}

fn vigil_test(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["policy", "test"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("vigil runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "vigil policy test panicked: {stderr}"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_failing_test_exits_2_and_shows_where_it_stopped() {
    let dir = policy_dir(TESTS);
    let (code, out) = vigil_test(dir.path(), &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("FAIL data.vigil.authz.test_wrongly_expects_guest_allowed"),
        "{out}"
    );
    assert!(
        out.contains("  failed at policy_test.rego:16: allow with input as {\"role\": \"guest\"}"),
        "{out}"
    );
    assert!(
        out.contains("SKIPPED data.vigil.authz.todo_test_auditors_allowed"),
        "{out}"
    );
    assert!(out.contains("PASS: 2/4"), "{out}");
    assert!(out.contains("FAIL: 1/4"), "{out}");
    assert!(out.contains("SKIPPED: 1/4"), "{out}");
}

#[test]
fn run_selects_tests_by_regular_expression() {
    let dir = policy_dir(TESTS);
    let (code, out) = vigil_test(dir.path(), &["--run", "admin|guest_denied$"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("PASS data.vigil.authz.test_admin_allowed"),
        "{out}"
    );
    assert!(
        out.contains("PASS data.vigil.authz.test_guest_denied"),
        "{out}"
    );
    assert!(!out.contains("wrongly"), "{out}");
    assert!(out.contains("PASS: 2/2"), "{out}");

    let (code, out) = vigil_test(dir.path(), &["--run", "("]);
    assert_eq!(code, Some(2), "{out}");
}

#[test]
fn json_format_is_opa_test_result_array() {
    let dir = policy_dir(TESTS);
    let (code, out) = vigil_test(dir.path(), &["--format", "json"]);
    assert_eq!(code, Some(2), "{out}");
    let results: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    let results = results.as_array().expect("an array of results");
    assert_eq!(results.len(), 4, "{out}");
    let by_name = |name: &str| {
        results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {out}"))
    };
    let passed = by_name("test_admin_allowed");
    assert_eq!(passed["package"], "data.vigil.authz");
    assert_eq!(passed["location"]["file"], "policy_test.rego");
    assert_eq!(passed["location"]["row"], 5);
    assert!(passed["duration"].as_u64().is_some(), "{passed}");
    assert!(passed.get("fail").is_none(), "{passed}");

    let failed = by_name("test_wrongly_expects_guest_allowed");
    assert_eq!(failed["fail"], true);
    assert_eq!(failed["failed_at"]["location"]["row"], 16);

    let skipped = by_name("todo_test_auditors_allowed");
    assert_eq!(skipped["skip"], true);
}
