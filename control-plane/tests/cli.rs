//! The `vigil` binary refuses bad input with an error that says what to do.

use std::process::Command;

fn vigil(args: &[&str]) -> (bool, String) {
    run(Command::new(env!("CARGO_BIN_EXE_vigil")).args(args))
}

/// Whether `command` succeeded, and its standard error followed by its standard output.
fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().expect("vigil runs");
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

/// `vigil` with `TMPDIR` pointing at `temp`, where running meshes are recorded.
fn vigil_in(temp: &std::path::Path, args: &[&str]) -> (bool, String) {
    run(Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("TMPDIR", temp)
        .env_remove("VIGIL_MESH"))
}

#[test]
fn check_stat_and_tap_find_no_mesh_alike_and_never_read_an_earlier_demos_file() {
    let temp = tempfile::tempdir().expect("tempdir");
    for command in ["check", "stat", "tap"] {
        let (ok, out) = vigil_in(temp.path(), &[command]);
        assert!(!ok, "{command}: {out}");
        assert!(
            out.contains("no --mesh given and no vigil up or vigil demo is running")
                && out.contains("pass the mesh file of the running mesh with --mesh"),
            "{command}: {out}"
        );
    }
    // A demo that has stopped left its mesh file behind: named, and not read.
    let stale = temp.path().join("vigil-demo");
    std::fs::create_dir(&stale).expect("dir");
    std::fs::write(stale.join("mesh.yaml"), "trust_domain: vigil.local\n").expect("mesh");
    for command in ["check", "stat", "tap"] {
        let (ok, out) = vigil_in(temp.path(), &[command]);
        assert!(!ok, "{command}: {out}");
        assert!(
            out.contains("vigil-demo/mesh.yaml is left from an earlier demo, not read"),
            "{command}: {out}"
        );
    }
    // Given with --mesh, each says which file it read before anything else.
    let mesh = stale.join("mesh.yaml");
    let mesh = mesh.to_str().expect("utf-8");
    for command in ["check", "stat", "tap"] {
        let (_, out) = vigil_in(temp.path(), &[command, "--mesh", mesh]);
        assert!(
            out.starts_with(&format!("mesh: {mesh} (data: not known; from --mesh)")),
            "{command}: {out}"
        );
    }
}
