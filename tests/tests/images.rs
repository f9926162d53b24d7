//! Vigil's OCI images, built by `scripts/images.sh` and run with podman: each binary
//! starts in its image, vigil-init writes its iptables rules in a container's own network
//! namespace, and a proxy in its image gets ready against a control plane in its image.
//!
//! The images are built from this test's own (debug) binaries, their debug info stripped
//! by the script, so the suite does not wait for a release build.
//!
//! This machine's kernel gives podman's default runtime (crun) a cgroup v1 hierarchy with
//! an empty v2 mount beside it, which crun refuses, and root here lacks CAP_SYS_RESOURCE,
//! so podman's default file and process limits cannot be raised: the containers run with
//! runc and limits no higher than the current ones.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vigil_e2e::*;

const TAG: &str = "e2e";

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install -y {package}` (scripts/test.sh does)"
    );
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman")
}

/// `podman run` as this machine allows (see the module doc).
fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    args.extend_from_slice(extra);
    args
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A detached container removed when the test ends.
struct Container(String);

impl Container {
    fn start(name: &str, extra: &[&str]) -> Container {
        let _ = podman(&["rm", "-f", name]);
        let mut args = run_args(&["-d", "--name", name, "--network", "host"]);
        args.extend_from_slice(extra);
        let out = podman(&args);
        assert!(out.status.success(), "podman run {name}: {}", text(&out));
        Container(name.to_string())
    }

    fn logs(&self) -> String {
        text(&podman(&["logs", &self.0]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

fn build_images() {
    let bin_dir = binary("vigil")
        .parent()
        .map(Path::to_path_buf)
        .expect("the binaries' directory");
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/images.sh"))
        .args(["--tag", TAG])
        .env("VIGIL_IMAGE_BIN_DIR", &bin_dir)
        .output()
        .expect("running scripts/images.sh");
    assert!(
        out.status.success(),
        "scripts/images.sh failed:\n{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_run_their_binaries_and_a_proxy_gets_ready_against_the_control_plane() {
    require("podman", "podman");
    require("buildah", "buildah");
    require("runc", "runc");
    require("strip", "binutils");
    build_images();
    let proxy_image = format!("vigil/proxy:{TAG}");
    let cp_image = format!("vigil/control-plane:{TAG}");

    for (entrypoint, image, expected) in [
        ("vigil-proxy", &proxy_image, "vigil-proxy "),
        ("vigil-init", &proxy_image, "vigil-init "),
        ("vigil-cni", &proxy_image, "vigil-cni "),
        ("vigil", &cp_image, "vigil "),
    ] {
        let out = podman(&run_args(&[
            "--rm",
            "--entrypoint",
            entrypoint,
            image,
            "--version",
        ]));
        assert!(
            out.status.success() && text(&out).starts_with(expected),
            "{entrypoint} --version in {image}: {}",
            text(&out)
        );
    }
    let out = podman(&run_args(&["--rm", "--entrypoint", "id", &proxy_image]));
    assert!(
        !out.status.success(),
        "the images hold nothing but Vigil (no coreutils): {}",
        text(&out)
    );

    // vigil-init as the injector runs it: root, NET_ADMIN and NET_RAW, in the pod's own
    // network namespace, with the image's iptables and its extensions.
    let out = podman(&run_args(&[
        "--rm",
        "--network",
        "none",
        "--user",
        "0",
        "--cap-drop",
        "all",
        "--cap-add",
        "NET_ADMIN,NET_RAW",
        "--entrypoint",
        "vigil-init",
        &proxy_image,
        "--proxy-uid",
        "1337",
    ]));
    assert!(
        out.status.success(),
        "vigil-init in its image: {}",
        text(&out)
    );

    // A control plane in its image and a proxy in its image, on the host's network.
    let w = WorkloadSpec::new("web", "shop");
    let mesh = MeshSpec::new(vec![w.clone()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::write(shared.join("mesh.yaml"), mesh.yaml()).expect("mesh file");
    let chown = Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(&shared)
        .status()
        .expect("chown");
    assert!(
        chown.success(),
        "the control plane's user owns its directory"
    );
    use std::os::unix::fs::PermissionsExt;
    for path in [dir.path(), shared.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let volume = format!("{}:/shared", shared.display());
    let suffix = std::process::id().to_string();
    let control_plane = Container::start(
        &format!("vigil-control-plane-{suffix}"),
        &[
            "-v",
            &volume,
            &cp_image,
            "control-plane",
            "--mesh",
            "/shared/mesh.yaml",
            "--data-dir",
            "/shared/data",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = get(mesh.dashboard, "/metrics").await {
            assert!(body.contains("vigil_"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane's /metrics did not answer:\n{}",
            control_plane.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let readonly = format!("{}:/shared:ro", shared.display());
    let proxy = Container::start(
        &format!("vigil-proxy-{suffix}"),
        &[
            "-v",
            &readonly,
            "-e",
            &format!("VIGIL_TOKEN={}", w.token),
            &proxy_image,
            "--trust-domain",
            TRUST_DOMAIN,
            "--trust-bundle",
            "/shared/data/trust-bundle.pem",
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
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = get(w.admin, "/ready").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy in its image did not become ready:\n{}\n--- control plane ---\n{}",
            proxy.logs(),
            control_plane.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, certs) = get(w.admin, "/certs").await.expect("/certs");
    assert_eq!(status, 200, "{certs}");
    assert!(certs.contains(&w.spiffe_id()), "{certs}");
}
