//! `vigil policy test --coverage` against OPA's own coverage of the same tests (through the
//! `opa-golib-python-bindings` package the differential suite uses, tests/opa_oracle/).
//!
//! The policy avoids the two places the counts are known to differ (docs/policy.md, "Coverage"):
//! statements OPA's rule index lets it skip (`input.x == "const"`, `input.x in {...}`), and a
//! `default` line in a run where the default value is never the one used.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use vigil_authz::{run_tests_with, TestFilter, TestFormat, TestOptions};

const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	startswith(input.path, "/public/")
}

allow if {
	lower(input.role) in {"admin", "auditor"}
	input.method != "DELETE"
}

deny_reason := "writes need admin" if {
	input.method != "GET"
	input.role != "admin"
}
"#;

const TESTS: &str = r#"package vigil.authz

import rego.v1

test_public_allowed if {
	allow with input as {"path": "/public/a", "role": "guest", "method": "GET"}
}

test_private_denied if {
	not allow with input as {"path": "/a", "role": "guest", "method": "GET"}
}

test_auditor_reads if {
	allow with input as {"path": "/a", "role": "auditor", "method": "GET"}
}
"#;

const TEST_NAMES: [&str; 3] = [
    "data.vigil.authz.test_public_allowed",
    "data.vigil.authz.test_private_denied",
    "data.vigil.authz.test_auditor_reads",
];

/// OPA's covered and not covered rows per file, for the tests matching `run`.
fn opa_coverage(dir: &Path, run: &TestFilter) -> Value {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/opa_oracle/coverage_driver.py");
    let tests = TEST_NAMES.iter().filter(|t| run.is_match(t));
    let out = Command::new("python3")
        .arg(driver)
        .arg(dir)
        .args(tests)
        .output()
        .expect("python3 runs (install OPA for Python: pip3 install opa-golib-python-bindings)");
    assert!(
        out.status.success(),
        "OPA coverage driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("driver prints JSON")
}

/// Vigil's report in the driver's shape (rows, not ranges).
fn vigil_coverage(dir: &Path, run: &TestFilter) -> Value {
    let options = TestOptions {
        coverage: true,
        format: TestFormat::Json,
        run: Some(run.clone()),
        ..TestOptions::default()
    };
    let mut out = Vec::new();
    run_tests_with(dir, &mut out, &options).expect("tests run");
    let report: Value = serde_json::from_slice(&out).expect("JSON report");
    let rows = |ranges: &Value| -> Vec<u64> {
        let mut rows = Vec::new();
        for r in ranges.as_array().into_iter().flatten() {
            let (start, end) = (r["start"]["row"].as_u64(), r["end"]["row"].as_u64());
            if let (Some(start), Some(end)) = (start, end) {
                rows.extend(start..=end);
            }
        }
        rows
    };
    let mut files = serde_json::Map::new();
    for (path, file) in report["files"].as_object().expect("files") {
        files.insert(
            path.clone(),
            json!({"covered": rows(&file["covered"]), "not_covered": rows(&file["not_covered"])}),
        );
    }
    Value::Object(files)
}

#[test]
fn coverage_matches_opa() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.rego"), POLICY).expect("write policy");
    std::fs::write(dir.path().join("policy_test.rego"), TESTS).expect("write tests");
    for run in [".", "public|denied"] {
        let run = TestFilter::new(run).expect("regex");
        let opa = opa_coverage(dir.path(), &run);
        let vigil = vigil_coverage(dir.path(), &run);
        assert_eq!(vigil, opa, "--run {run}");
    }
}
