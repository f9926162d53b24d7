//! `vigil demo`: the whole product on one machine with one command. A small shop —
//! `loadgen → web → orders → payments, inventory` — each workload behind its own sidecar,
//! a policy that denies some calls (web may not call payments; nobody reaches `/admin`),
//! a flaky inventory (20% 503s) for the retries and the circuit breaker, and the
//! dashboard. The mesh file and the policy are embedded in the binary and written to the
//! data directory, then run by the same launcher as `vigil up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::demo_mesh::{default_data_dir, mesh_path, MESH_YAML, POLICY_FILES};
use crate::launcher::{self, LaunchOptions};

/// Writes the mesh file and the policy into `data_dir`; returns the mesh file's path.
pub fn write_files(data_dir: &Path) -> anyhow::Result<PathBuf> {
    launcher::private_data_dir(data_dir)?;
    let policy_dir = data_dir.join("policy");
    std::fs::create_dir_all(&policy_dir).with_context(|| {
        format!(
            "creating {} (pass a writable --data-dir)",
            policy_dir.display()
        )
    })?;
    for (name, contents) in POLICY_FILES {
        let path = policy_dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("writing {} (pass a writable --data-dir)", path.display()))?;
    }
    let mesh = mesh_path(data_dir);
    std::fs::write(&mesh, MESH_YAML)
        .with_context(|| format!("writing {} (pass a writable --data-dir)", mesh.display()))?;
    Ok(mesh)
}

/// Runs the demo until Ctrl-C or `duration`.
pub async fn run(
    data_dir: Option<PathBuf>,
    duration: Option<Duration>,
    dashboard: crate::dashboard::DashboardAccess,
) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("locating the directory of the vigil binary")?;
    let app = bin_dir.join("vigil-demo-app");
    if !app.exists() {
        anyhow::bail!(
            "{} not found next to vigil; build the demo with `cargo build --release --bins` (or run `bash scripts/demo.sh`)",
            app.display()
        );
    }
    let mesh_file = write_files(&data_dir)?;
    eprintln!(
        "Vigil demo: loadgen → web → orders → payments, inventory — each behind its own sidecar"
    );
    eprintln!("  policy: only orders may call payments (web's /quick-pay shortcut is denied), /admin is closed");
    eprintln!(
        "  inventory fails 20% of requests with 503: watch the retries and the success rates"
    );
    eprintln!("  files: {}", data_dir.display());
    launcher::up(LaunchOptions {
        mesh_file,
        data_dir,
        duration,
        dashboard,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshFile;

    #[test]
    fn the_embedded_mesh_is_valid_and_stays_off_the_default_ports() {
        let mesh = MeshFile::parse(MESH_YAML).expect("the demo mesh parses");
        assert!(mesh.workloads.len() >= 5, "loadgen and four services");
        let mut ports = vec![
            mesh.control_plane.identity.port(),
            mesh.control_plane.discovery.port(),
            mesh.control_plane.dashboard.port(),
            mesh.control_plane.webhook.port(),
        ];
        for w in &mesh.workloads {
            assert!(!w.command.is_empty(), "{} has a command", w.name);
            ports.extend([
                w.proxy.inbound.port(),
                w.proxy.outbound.port(),
                w.proxy.admin.port(),
                w.proxy.metrics.port(),
                w.app_port,
            ]);
        }
        for p in &ports {
            assert!(
                (16000..18000).contains(p),
                "port {p} is outside 16xxx/17xxx"
            );
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "every port is used once");
    }

    #[test]
    fn the_written_policy_compiles_and_its_tests_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh_file = write_files(dir.path()).expect("written");
        let mesh = MeshFile::load(&mesh_file).expect("loads from the data dir");
        crate::policy_source::load(mesh.policy.as_ref(), &mesh.trust_domain)
            .expect("the demo policy compiles");
        let mut out = Vec::new();
        let summary =
            vigil_authz::run_tests(&dir.path().join("policy"), &mut out, false).expect("tests run");
        assert!(summary.success(), "{}", String::from_utf8_lossy(&out));
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    /// The demo's data directory holds every proxy's decision log: it is the user's
    /// alone, whether it is new or was left readable by an earlier run.
    #[test]
    fn the_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("new/vigil-demo");
        write_files(&fresh).expect("written");
        assert_eq!(mode(&fresh), 0o700);

        let old = dir.path().join("old");
        std::fs::create_dir(&old).expect("mkdir");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        write_files(&old).expect("written");
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn a_data_directory_of_another_user_is_refused() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test gives a directory to another user, which takes root: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let err = write_files(&theirs).expect_err("refused").to_string();
        assert!(err.contains("belongs to uid 65534"), "{err}");
        assert!(err.contains("--data-dir of your own"), "{err}");
    }
}
