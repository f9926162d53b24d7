//! The `vigil-proxy` binary refuses unsafe or incomplete configuration at start-up.

use std::process::Command;

fn proxy(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-proxy"))
        .args(args)
        .output()
        .expect("vigil-proxy runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_port_must_stay_on_loopback() {
    let (ok, err) = proxy(&[
        "--token",
        "t",
        "--trust-bundle",
        "/nonexistent",
        "--admin",
        "0.0.0.0:15000",
    ]);
    assert!(!ok);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn a_missing_trust_bundle_says_where_to_find_one() {
    let (ok, err) = proxy(&["--token", "t", "--trust-bundle", "/nonexistent/bundle.pem"]);
    assert!(!ok);
    assert!(err.contains("trust-bundle.pem"), "{err}");
}
