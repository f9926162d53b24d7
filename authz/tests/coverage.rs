//! `vigil policy test --coverage`: the lines of a policy its tests evaluated, counted as
//! `opa test --coverage` counts them (a rule head once the rule produced a value, each
//! statement once evaluated), accumulated over the tests that ran.
//!
//! The expected lines below were worked out by hand from those rules for an evaluation that
//! tries every body. OPA itself would skip the bodies its rule index rules out (`input.role ==
//! "auditor"` for a guest) and report line 12 not covered; `coverage_opa.rs` compares with OPA
//! directly, on a policy its index does not apply to.

use std::path::Path;

use serde_json::{json, Value};
use vigil_authz::{run_tests_with, TestFilter, TestFormat, TestOptions, TestSummary};

/// Lines counted: 5 (default), 7 and 11 (heads), 8, 12 and 13 (statements).
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	input.role == "admin"
}

allow if {
	input.role == "auditor"
	input.method == "GET"
}
"#;

/// Neither test makes the auditor rule produce a value: its head (11) and second statement
/// (13) are never evaluated.
const TESTS: &str = r#"package vigil.authz

import rego.v1

test_admin_allowed if {
	allow with input as {"role": "admin"}
}

test_guest_denied if {
	not allow with input as {"role": "guest", "method": "GET"}
}
"#;

const AUDITOR_TEST: &str = r#"
test_auditor_reads if {
	allow with input as {"role": "auditor", "method": "GET"}
}
"#;

fn write_bundle(dir: &Path, tests: &str) {
    std::fs::create_dir_all(dir).expect("bundle dir");
    std::fs::write(dir.join("policy.rego"), POLICY).expect("write policy");
    std::fs::write(dir.join("policy_test.rego"), tests).expect("write tests");
}

fn run(dir: &Path, options: TestOptions) -> (TestSummary, String) {
    let mut out = Vec::new();
    let summary = run_tests_with(dir, &mut out, &options).expect("tests run");
    (summary, String::from_utf8(out).expect("UTF-8 output"))
}

fn json_coverage(dir: &Path, run_only: Option<&str>) -> (TestSummary, Value) {
    let options = TestOptions {
        coverage: true,
        format: TestFormat::Json,
        run: run_only.map(|r| TestFilter::new(r).expect("regex")),
        ..TestOptions::default()
    };
    let (summary, out) = run(dir, options);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (summary, report)
}

fn range(start: u32, end: u32) -> Value {
    json!({"start": {"row": start}, "end": {"row": end}})
}

#[test]
fn an_unexercised_rule_is_reported_not_covered() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(dir.path(), TESTS);
    let (summary, report) = json_coverage(dir.path(), None);
    assert!(summary.success(), "{summary:?}");

    let policy = &report["files"]["policy.rego"];
    assert_eq!(
        policy["covered"],
        json!([range(5, 5), range(7, 8), range(12, 12)])
    );
    assert_eq!(policy["not_covered"], json!([range(11, 11), range(13, 13)]));
    assert_eq!(policy["covered_lines"], 4);
    assert_eq!(policy["not_covered_lines"], 2);
    assert_eq!(policy["coverage"].as_f64(), Some(400.0 / 6.0));

    // The tests' own lines are counted too, as OPA does; all of them ran.
    let tests = &report["files"]["policy_test.rego"];
    assert_eq!(tests["covered"], json!([range(5, 6), range(9, 10)]));
    assert!(tests.get("not_covered").is_none(), "{tests}");
    assert_eq!(tests["coverage"], 100);

    assert_eq!(report["covered_lines"], 8);
    assert_eq!(report["not_covered_lines"], 2);
    assert_eq!(report["coverage"], 80);
    assert_eq!(summary.coverage, Some(80.0));
}

#[test]
fn a_test_exercising_the_rule_covers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(dir.path(), &format!("{TESTS}{AUDITOR_TEST}"));
    let (summary, report) = json_coverage(dir.path(), None);
    assert_eq!(summary.passed, 3);

    let policy = &report["files"]["policy.rego"];
    assert_eq!(
        policy["covered"],
        json!([range(5, 5), range(7, 8), range(11, 13)])
    );
    assert!(policy.get("not_covered").is_none(), "{policy}");
    assert_eq!(report["covered_lines"], 12);
    assert_eq!(report["coverage"], 100);
}

#[test]
fn run_counts_only_the_selected_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(dir.path(), TESTS);
    let (summary, report) = json_coverage(dir.path(), Some("guest"));
    assert_eq!(summary.passed, 1);

    // Only a denied request: the admin rule's statement ran but the rule never allowed.
    let policy = &report["files"]["policy.rego"];
    assert_eq!(
        policy["covered"],
        json!([range(5, 5), range(8, 8), range(12, 12)])
    );
    assert_eq!(
        policy["not_covered"],
        json!([range(7, 7), range(11, 11), range(13, 13)])
    );
    let tests = &report["files"]["policy_test.rego"];
    assert_eq!(tests["not_covered"], json!([range(5, 6)]));
    // 3 of 6 policy lines and 2 of 4 test lines.
    assert_eq!(report["coverage"], 50);
}

#[test]
fn coverage_below_the_threshold_fails_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(dir.path(), TESTS);
    let options = |threshold| TestOptions {
        coverage: true,
        threshold: Some(threshold),
        ..TestOptions::default()
    };

    let (summary, out) = run(dir.path(), options(90.0));
    assert!(summary.below_threshold, "{out}");
    assert!(!summary.success(), "{out}");
    assert!(
        out.contains("FAIL: coverage 80.00% is below the threshold of 90.00%"),
        "{out}"
    );

    let (summary, out) = run(dir.path(), options(80.0));
    assert!(summary.success(), "{out}");
}

#[test]
fn pretty_output_lists_the_lines_not_covered() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(dir.path(), TESTS);
    let options = TestOptions {
        coverage: true,
        ..TestOptions::default()
    };
    let (summary, out) = run(dir.path(), options);
    assert!(summary.success(), "{out}");
    assert!(out.contains("PASS: 2/2"), "{out}");
    assert!(out.contains("COVERAGE: 80.00% (8/10 lines)"), "{out}");
    let policy_line = out
        .lines()
        .find(|l| l.contains(" policy.rego"))
        .unwrap_or_else(|| panic!("no line for policy.rego: {out}"));
    assert!(policy_line.contains("66.67%"), "{out}");
    assert!(policy_line.contains("4/6"), "{out}");
    assert!(policy_line.ends_with("not covered: 11, 13"), "{out}");
}

#[test]
fn each_bundle_is_reported_under_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_bundle(&dir.path().join("frontend"), TESTS);
    write_bundle(
        &dir.path().join("payments"),
        &format!("{TESTS}{AUDITOR_TEST}"),
    );
    let (_, report) = json_coverage(dir.path(), None);
    let files = report["files"].as_object().expect("files");
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "frontend/policy.rego",
            "frontend/policy_test.rego",
            "payments/policy.rego",
            "payments/policy_test.rego",
        ]
    );
    assert_eq!(files["frontend/policy.rego"]["covered_lines"], 4);
    assert_eq!(files["payments/policy.rego"]["covered_lines"], 6);
    assert_eq!(report["covered_lines"], 8 + 12);
}

#[test]
fn a_failing_test_replaces_the_json_report_with_the_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = format!(
        "{TESTS}\ntest_guest_wrongly_allowed if {{\n\tallow with input as {{\"role\": \"guest\"}}\n}}\n"
    );
    write_bundle(dir.path(), &failing);
    let options = TestOptions {
        coverage: true,
        format: TestFormat::Json,
        ..TestOptions::default()
    };
    let (summary, out) = run(dir.path(), options);
    assert!(!summary.success());
    assert!(
        out.contains("FAIL data.vigil.authz.test_guest_wrongly_allowed"),
        "{out}"
    );
    assert!(out.contains("FAIL: 1/3"), "{out}");
    assert!(serde_json::from_str::<Value>(&out).is_err(), "{out}");
}

#[test]
fn coverage_does_not_change_test_outcomes() {
    // Heads without a value are given one while measuring; functions, partial sets and
    // rules with values must evaluate as before.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("lib.rego"),
        r#"package lib

import rego.v1

admin(user) if user.role == "admin"

trusted(user) if {
	admin(user)
}

reasons contains "no role" if not input.role

level := 2 if {
	input.role == "admin"
} else := 1
"#,
    )
    .expect("write lib");
    std::fs::write(
        dir.path().join("lib_test.rego"),
        r#"package lib

import rego.v1

test_function if {
	trusted({"role": "admin"})
	not trusted({"role": "guest"})
}

test_set if {
	reasons == {"no role"} with input as {}
	count(reasons) == 0 with input as {"role": "x"}
}

test_value if level == 2 with input as {"role": "admin"}

test_value_else if level == 1 with input as {}
"#,
    )
    .expect("write tests");
    for coverage in [false, true] {
        let options = TestOptions {
            coverage,
            ..TestOptions::default()
        };
        let (summary, out) = run(dir.path(), options);
        assert_eq!(summary.passed, 4, "coverage {coverage}: {out}");
        assert!(summary.success(), "coverage {coverage}: {out}");
    }
    let (_, report) = json_coverage(dir.path(), None);
    let lib = &report["files"]["lib.rego"];
    assert!(lib.get("not_covered").is_none(), "{report}");
    assert_eq!(
        lib["covered"],
        json!([range(5, 5), range(7, 8), range(11, 11), range(13, 15)])
    );

    // Without the test that takes it, the `else` line is not covered.
    let (_, report) = json_coverage(dir.path(), Some("test_(function|set|value)$"));
    assert_eq!(
        report["files"]["lib.rego"]["not_covered"],
        json!([range(15, 15)])
    );
}
