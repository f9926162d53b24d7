//! `vigil up` stops at once, with the failing component's own error, when a component
//! cannot start — instead of waiting for a step that can no longer succeed and then
//! blaming a proxy. And the data directory it fills with logs is the user's alone.
//!
//! `vigil up` runs `vigil-proxy` from beside `vigil`. That binary belongs to another
//! package, so each test runs a hard link of the `vigil` under test from a directory of
//! its own, beside a stand-in `vigil-proxy` script that records that it was started and
//! then either waits (like a proxy that never gets ready) or fails like a proxy that
//! cannot start.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// A directory holding `vigil` and the stand-in `vigil-proxy`.
struct Bin {
    dir: tempfile::TempDir,
}

impl Bin {
    fn new() -> Bin {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let vigil = dir.path().join("vigil");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_vigil"), &vigil).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_vigil"), &vigil).expect("copy vigil");
        }
        let proxy = dir.path().join("vigil-proxy");
        std::fs::write(
            &proxy,
            "#!/bin/sh\n\
             touch \"$(dirname \"$0\")/proxy-started\"\n\
             if [ \"$STAND_IN_PROXY\" = fail ]; then\n\
               echo 'error: binding the inbound listener on 127.0.0.1:15006: Address in use' >&2\n\
               exit 3\n\
             fi\n\
             exec sleep 600\n",
        )
        .expect("stand-in proxy");
        std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Bin { dir }
    }

    fn proxy_started(&self) -> bool {
        self.dir.path().join("proxy-started").exists()
    }

    /// Runs `vigil up` to its end; returns whether it succeeded and all it printed.
    fn up(&self, mesh: &Path, data: &Path, env: &[(&str, &str)]) -> (bool, String) {
        let out = self.dir.path().join("up.out");
        let file = std::fs::File::create(&out).expect("output file");
        let mut child = Command::new(self.dir.path().join("vigil"))
            .arg("up")
            .arg("--mesh")
            .arg(mesh)
            .arg("--data-dir")
            .arg(data)
            .args(["--duration", "300s"])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()
            .expect("vigil up starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vigil up still running after 180 s:\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (
            status.success(),
            std::fs::read_to_string(&out).unwrap_or_default(),
        )
    }
}

/// A mesh file of one workload, `web`, with `policy` as its policy directory's one file.
fn mesh(dir: &Path, policy: &str) -> PathBuf {
    let policy_dir = dir.join("policy");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("policy.rego"), policy).expect("policy");
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        format!(
            "trust_domain: vigil.local\n{}policy:\n  dir: policy\nworkloads:\n  - name: web\n    join_token: \"{}\"\n    app_port: {}\n    proxy: {{ inbound: \"{}\", outbound: \"{}\", admin: \"{}\", metrics: \"{}\" }}\n",
            ControlPlaneAddresses::free().yaml(),
            random_token(),
            free_addr().port(),
            free_addr(),
            free_addr(),
            free_addr(),
            free_addr(),
        ),
    )
    .expect("mesh file");
    path
}

const GOOD_POLICY: &str = "package vigil.authz\n\ndefault allow := true\n";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[test]
fn a_policy_syntax_error_stops_vigil_up_at_once_with_the_error() {
    let bin = Bin::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = mesh(dir.path(), "package vigil.authz\n\nallow if {\n");
    // A data directory an earlier run left readable by everyone.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let (ok, out) = bin.up(&mesh, &data, &[]);
    assert!(!ok, "vigil up succeeded:\n{out}");
    assert!(
        out.contains("the control plane could not start: policy bundle refused: policy.rego"),
        "{out}"
    );
    assert!(!out.contains("did not become ready"), "{out}");
    assert!(!bin.proxy_started(), "a proxy was started:\n{out}");
    assert_eq!(mode(&data), 0o700, "the data directory was left readable");
}

#[test]
fn a_ca_the_control_plane_refuses_stops_vigil_up_with_its_reason() {
    let bin = Bin::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = mesh(dir.path(), GOOD_POLICY);
    let data = dir.path().join("data");
    vigil_identity::CertificateAuthority::load_or_generate(&data.join("ca"), "vigil.local")
        .expect("a CA");
    let key = data.join("ca").join(vigil_identity::CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let (ok, out) = bin.up(&mesh, &data, &[]);
    assert!(!ok, "vigil up succeeded:\n{out}");
    assert!(out.contains("the control plane could not start"), "{out}");
    assert!(
        out.contains(&format!("chmod 600 {}", key.display())),
        "{out}"
    );
    assert!(!bin.proxy_started(), "a proxy was started:\n{out}");
}

#[test]
fn a_proxy_that_exits_at_start_up_stops_vigil_up_with_its_status() {
    let bin = Bin::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = mesh(dir.path(), GOOD_POLICY);
    let data = dir.path().join("data");

    let (ok, out) = bin.up(&mesh, &data, &[("STAND_IN_PROXY", "fail")]);
    assert!(!ok, "vigil up succeeded:\n{out}");
    assert!(bin.proxy_started());
    assert!(
        out.contains("the proxy for web exited during start-up (exit status: 3)"),
        "{out}"
    );
    // Its own message was shown, with its name in front.
    assert!(
        out.contains("proxy/web | error: binding the inbound listener"),
        "{out}"
    );
    assert!(!out.contains("did not become ready"), "{out}");
}
