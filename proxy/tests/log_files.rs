//! The real `vigil-proxy` keeps its decision and access logs to its own user: files it
//! creates are 0600, directories it creates for them 0700, a readable existing log is
//! tightened (its lines kept), and a log someone else owns is refused with the reason.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

/// A trust bundle the proxy accepts; nothing is listening for it to talk to.
fn trust_bundle(dir: &Path) -> std::path::PathBuf {
    let ca = vigil_identity::CertificateAuthority::load_or_generate(&dir.join("ca"), "vigil.local")
        .expect("a CA");
    let path = dir.join("trust-bundle.pem");
    std::fs::write(&path, ca.trust_bundle().to_pem()).expect("bundle");
    path
}

/// Starts the proxy with the given logs; output goes to `<dir>/proxy.out`.
fn proxy(dir: &Path, decision_log: &Path, access_log: &Path) -> Child {
    let out = std::fs::File::create(dir.join("proxy.out")).expect("output file");
    let bundle = trust_bundle(dir);
    Command::new(env!("CARGO_BIN_EXE_vigil-proxy"))
        .args([
            "--token",
            "7f1e0c9a3b5d42e8a6c4f0b2d9e7a1c3",
            "--trust-bundle",
        ])
        .arg(&bundle)
        .args([
            "--identity-addr",
            "127.0.0.1:1",
            "--discovery-addr",
            "127.0.0.1:1",
            "--inbound",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--decision-log",
        ])
        .arg(decision_log)
        .arg("--access-log")
        .arg(access_log)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("output file"))
        .stderr(out)
        .spawn()
        .expect("vigil-proxy starts")
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("proxy.out")).unwrap_or_default()
}

#[test]
fn logs_are_private_and_a_readable_one_is_tightened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let decisions = dir.path().join("logs/proxy/decisions.log");
    let access = dir.path().join("access.log");
    std::fs::write(&access, "an earlier line\n").expect("access log");
    std::fs::set_permissions(&access, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let mut child = proxy(dir.path(), &decisions, &access);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(decisions.exists() && mode(&access) == 0o600) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vigil-proxy stopped ({status}):\n{}", output(dir.path()));
        }
        assert!(
            Instant::now() < deadline,
            "logs not opened after 60 s:\n{}",
            output(dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(mode(&decisions), 0o600, "decision log");
    assert_eq!(mode(&dir.path().join("logs/proxy")), 0o700);
    assert_eq!(mode(&dir.path().join("logs")), 0o700);
    assert_eq!(mode(&access), 0o600, "access log");
    assert!(
        std::fs::read_to_string(&access)
            .expect("access log")
            .starts_with("an earlier line\n"),
        "the existing lines are kept"
    );
    assert!(
        output(dir.path()).contains("readable by other users; it is now mode 600"),
        "{}",
        output(dir.path())
    );
}

#[test]
fn a_log_owned_by_another_user_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test gives a log file to another user, which takes root: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    std::fs::write(&access, "").expect("access log");
    std::os::unix::fs::chown(&access, Some(65534), Some(65534)).expect("chown");
    let mut child = proxy(dir.path(), &dir.path().join("decisions.log"), &access);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vigil-proxy kept running with a log another user owns:\n{}",
                output(dir.path())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let out = output(dir.path());
    assert!(
        out.contains("--access-log") && out.contains("belongs to uid 65534"),
        "{out}"
    );
}
