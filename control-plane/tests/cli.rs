//! The `vigil` binary refuses bad input with an error that says what to do.

use std::process::Command;

fn vigil(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .expect("vigil runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn a_missing_mesh_file_is_named_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let (ok, out) = vigil(&[
        "control-plane",
        "--mesh",
        missing.to_str().expect("utf-8"),
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(out.contains("nope.yaml") && out.contains("--mesh"), "{out}");
}

#[test]
fn an_inconsistent_mesh_file_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "trust_domain: vigil.local\nworkloads:\n  - name: a\n    join_token: short\n    app_port: 8080\n",
    )
    .expect("write");
    let (ok, out) = vigil(&[
        "control-plane",
        "--mesh",
        mesh.to_str().expect("utf-8"),
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(out.contains("shorter than 16 characters"), "{out}");
}

#[test]
fn a_guessable_join_token_is_refused_with_how_to_make_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "trust_domain: vigil.local\nworkloads:\n  - name: a\n    join_token: aaaaaaaaaaaaaaaa\n    app_port: 8080\n",
    )
    .expect("write");
    let (ok, out) = vigil(&[
        "control-plane",
        "--mesh",
        mesh.to_str().expect("utf-8"),
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        out.contains("\"a\" has a join token that is too easy to guess"),
        "{out}"
    );
    assert!(out.contains("openssl rand -hex 16"), "{out}");
    assert!(
        !out.contains("aaaaaaaaaaaaaaaa"),
        "the token is repeated: {out}"
    );
}
