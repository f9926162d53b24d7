//! `vigil policy test --coverage` as CI uses it: OPA's JSON coverage report on standard output,
//! a per-file table in the pretty format, and exit code 2 when `--threshold` is not met.

use std::path::Path;
use std::process::Command;

const POLICY: &str = "package vigil.authz

import rego.v1

default allow := false

allow if {
\tinput.role == \"admin\"
}

allow if {
\tinput.role == \"auditor\"
\tinput.method == \"GET\"
}
";

const TESTS: &str = "package vigil.authz

import rego.v1

test_admin_allowed if {
\tallow with input as {\"role\": \"admin\"}
}

test_guest_denied if {
\tnot allow with input as {\"role\": \"guest\", \"method\": \"GET\"}
}
";

fn vigil_test(dir: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["policy", "test"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("vigil runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.rego"), POLICY).expect("write policy");
    std::fs::write(dir.path().join("policy_test.rego"), TESTS).expect("write tests");
    dir
}

#[test]
fn json_coverage_is_opa_report() {
    let dir = bundle();
    let (code, out, err) = vigil_test(dir.path(), &["--coverage", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let policy = &report["files"]["policy.rego"];
    assert_eq!(
        policy["not_covered"],
        serde_json::json!([
            {"start": {"row": 11}, "end": {"row": 11}},
            {"start": {"row": 13}, "end": {"row": 13}},
        ])
    );
    assert_eq!(policy["covered_lines"], 4);
    assert_eq!(report["covered_lines"], 8);
    assert_eq!(report["not_covered_lines"], 2);
    assert_eq!(report["coverage"], 80);
}

#[test]
fn pretty_coverage_lists_uncovered_lines() {
    let dir = bundle();
    let (code, out, err) = vigil_test(dir.path(), &["-c"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("PASS: 2/2"), "{out}");
    assert!(out.contains("COVERAGE: 80.00% (8/10 lines)"), "{out}");
    assert!(out.contains("not covered: 11, 13"), "{out}");
}

#[test]
fn coverage_below_threshold_exits_2() {
    let dir = bundle();
    let (code, out, err) = vigil_test(dir.path(), &["--coverage", "--threshold", "90"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("coverage threshold not met: got 80.00% instead of 90.00%"),
        "{err}"
    );

    let (code, out, err) = vigil_test(dir.path(), &["--coverage", "--threshold", "80"]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A threshold means nothing without coverage.
    let (code, _, err) = vigil_test(dir.path(), &["--threshold", "80"]);
    assert_eq!(code, Some(2), "{err}");
}
