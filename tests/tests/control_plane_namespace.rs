//! A control plane installed in a namespace of the operator's choosing: it presents
//! `spiffe://…/ns/mesh-ops/sa/vigil-control-plane`, and a proxy told that namespace (as the
//! injector tells it, through `VIGIL_CONTROL_PLANE_NAMESPACE`) gets its certificate and
//! snapshot from it, while a proxy expecting the default namespace refuses it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_e2e::*;

const NAMESPACE: &str = "mesh-ops";

/// A child process killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[String], env: &[(&str, &str)], log: &Path) -> Running {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(binary(program));
    // Whatever the test runner's environment says, only what this test sets counts.
    cmd.env_remove("POD_NAMESPACE")
        .env_remove("VIGIL_CONTROL_PLANE_NAMESPACE");
    cmd.args(args)
        .envs(env.iter().copied())
        .env("VIGIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Running(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}")),
    )
}

fn proxy_args(mesh: &MeshSpec, dir: &Path, w: &WorkloadSpec) -> Vec<String> {
    [
        "--trust-domain",
        TRUST_DOMAIN,
        "--token",
        &w.token,
        "--trust-bundle",
        &dir.join("data/trust-bundle.pem").display().to_string(),
        "--identity-addr",
        &mesh.identity.to_string(),
        "--discovery-addr",
        &mesh.discovery.to_string(),
        "--inbound",
        &w.inbound.to_string(),
        "--outbound",
        &w.outbound.to_string(),
        "--admin",
        &w.admin.to_string(),
        "--metrics",
        &w.metrics.to_string(),
        "--decision-log",
        &dir.join(format!("{}-decisions.log", w.name))
            .display()
            .to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn ready(admin: std::net::SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(admin, "/ready").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not become ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_told_the_namespace_accepts_a_control_plane_installed_there() {
    let trusting = WorkloadSpec::new("web", "shop");
    let expecting_default = WorkloadSpec::new("api", "shop");
    let mesh = MeshSpec::new(vec![trusting.clone(), expecting_default.clone()]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh.yaml()).expect("mesh file");

    let cp_log = dir.path().join("control-plane.log");
    let _control_plane = spawn(
        "vigil",
        &[
            "control-plane".to_string(),
            "--mesh".into(),
            dir.path().join("mesh.yaml").display().to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        &[("POD_NAMESPACE", NAMESPACE)],
        &cp_log,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(mesh.discovery)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "control plane did not start:\n{}",
            std::fs::read_to_string(&cp_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log = dir.path().join("proxy-web.log");
    let _proxy = spawn(
        "vigil-proxy",
        &proxy_args(&mesh, dir.path(), &trusting),
        &[("VIGIL_CONTROL_PLANE_NAMESPACE", NAMESPACE)],
        &log,
    );
    ready(trusting.admin, &log).await;
    let (status, body) = get(trusting.admin, "/certs").await.expect("admin /certs");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&trusting.spiffe_id()),
        "the proxy holds its own certificate, issued by the control plane in mesh-ops:\n{body}"
    );

    // Without the namespace the proxy expects vigil-system and will not talk to it.
    let refusing_log = dir.path().join("proxy-api.log");
    let _refusing = spawn(
        "vigil-proxy",
        &proxy_args(&mesh, dir.path(), &expecting_default),
        &[],
        &refusing_log,
    );
    wait_for_line(
        &refusing_log,
        |l| l.contains("cannot get a workload certificate yet"),
        Duration::from_secs(30),
    )
    .await
    .expect("the proxy reports that it has no certificate");
    let (status, body) = get(expecting_default.admin, "/ready").await.expect("admin");
    assert_eq!(
        status, 503,
        "a proxy that refused the control plane is not ready: {body}"
    );
    let control_plane = std::fs::read_to_string(&cp_log).unwrap_or_default();
    assert!(
        control_plane.contains("handshake"),
        "the control plane saw the refused handshake:\n{control_plane}"
    );
}
