//! `vigil policy import istio` as scripts use it: the bundle is written and its generated
//! tests pass under `vigil policy test`; anything not translated is listed and exits with 3
//! without writing, unless `--allow-partial`.

use std::path::Path;
use std::process::Command;

const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-dev
  namespace: istio-system
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["dev"]
"#;

const CUSTOM: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: istio-system
spec:
  action: CUSTOM
  provider:
    name: "my-custom-authz"
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
"#;

/// Runs `vigil` with `args`: (exit code, stdout, stderr).
fn vigil(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .expect("vigil runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "vigil panicked: {stderr}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn import(yaml_file: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec![
        "policy",
        "import",
        "istio",
        "-f",
        yaml_file.to_str().expect("utf-8 path"),
        "-o",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    vigil(&args)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-import-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn import_writes_a_bundle_whose_tests_pass() {
    let dir = temp_dir("ok");
    let yaml = dir.join("policies.yaml");
    std::fs::write(&yaml, POLICIES).expect("write yaml");
    let bundle = dir.join("bundle");

    let (code, _, stderr) = import(&yaml, &bundle, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("imported 2 AuthorizationPolicy"),
        "{stderr}"
    );
    assert!(bundle.join("policy.rego").is_file());
    assert!(bundle.join("policy_test.rego").is_file());

    let (code, stdout, stderr) = vigil(&["policy", "test", bundle.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("PASS: "), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn custom_action_exits_3_and_names_the_field() {
    let dir = temp_dir("custom");
    let yaml = dir.join("custom.yaml");
    std::fs::write(&yaml, CUSTOM).expect("write yaml");
    let bundle = dir.join("bundle");

    let (code, _, stderr) = import(&yaml, &bundle, &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("istio-system/ext-authz: spec.action: CUSTOM"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-partial"), "{stderr}");
    assert!(
        !bundle.exists(),
        "nothing is written without --allow-partial"
    );

    let (code, _, stderr) = import(&yaml, &bundle, &["--allow-partial"]);
    assert_eq!(code, Some(0), "{stderr}");
    let policy = std::fs::read_to_string(bundle.join("policy.rego")).expect("written");
    assert!(policy.contains("NOT TRANSLATED"), "{policy}");
    assert!(policy.contains("spec.action"), "{policy}");
    let (code, stdout, stderr) = vigil(&["policy", "test", bundle.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_yaml_is_an_error() {
    let dir = temp_dir("bad");
    let yaml = dir.join("bad.yaml");
    std::fs::write(&yaml, "spec: [").expect("write yaml");
    let (code, _, stderr) = import(&yaml, &dir.join("bundle"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not parse"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
