//! `vigil up`: runs a whole local mesh from one mesh file on one machine — the control
//! plane (and its dashboard) in this process, a `vigil-proxy` per workload and each
//! workload's `command` — and stops every one of them on Ctrl-C, SIGTERM or after
//! `--duration`. Each child's pid is written to `<data-dir>/pids/<name>.pid` while it runs,
//! and the run is recorded for `vigil check`, `stat` and `tap` to find
//! ([`crate::mesh_location`]). Each run starts its proxies' decision logs empty, keeping
//! the previous run's beside them, so the dashboard's recent denials are this run's.
//!
//! Every start-up step races the components already started: when the control plane
//! stops (a policy that does not compile, a CA it cannot load) or a proxy exits, `vigil
//! up` stops at once with that component's own error instead of waiting for a step that
//! can no longer succeed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::control_plane::{self, ControlPlaneOptions};
use crate::mesh::{MeshFile, WorkloadEntry};

/// How `vigil up` runs.
pub struct LaunchOptions {
    pub mesh_file: PathBuf,
    pub data_dir: PathBuf,
    /// Stop after this long; run until Ctrl-C when absent.
    pub duration: Option<Duration>,
    /// Who may read the dashboard besides loopback.
    pub dashboard: crate::dashboard::DashboardAccess,
}

/// Starts everything, waits, stops everything.
pub async fn up(opts: LaunchOptions) -> anyhow::Result<()> {
    let mesh = MeshFile::load(&opts.mesh_file)?;
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("locating the directory of the vigil binary")?;
    let proxy_bin = bin_dir.join("vigil-proxy");
    if !proxy_bin.exists() {
        bail!(
            "{} not found next to vigil; build it with `cargo build --release --bins`",
            proxy_bin.display()
        );
    }
    check_ports(&mesh, &opts.mesh_file)?;
    private_data_dir(&opts.data_dir)?;
    let pid_dir = opts.data_dir.join("pids");
    std::fs::create_dir_all(&pid_dir).with_context(|| {
        format!(
            "creating {} (pass a writable --data-dir)",
            pid_dir.display()
        )
    })?;
    clear_pid_files(&pid_dir);
    write_pid(&pid_dir, "vigil", std::process::id());
    start_decision_logs(&opts.data_dir, &mesh);
    let _running = crate::mesh_location::record_running(&opts.mesh_file, &opts.data_dir);

    let total = 2 + mesh.workloads.len() * 2;
    let mut step = 0;
    let mut progress = |what: String| {
        step += 1;
        eprintln!("[{step}/{total}] {what}");
    };

    let cp_opts = ControlPlaneOptions {
        mesh_file: opts.mesh_file.clone(),
        data_dir: opts.data_dir.clone(),
        ca_cert: None,
        ca_key: None,
        ca_chain: None,
        reload_interval: Duration::from_secs(1),
        namespace: crate::own_identity::DEFAULT_NAMESPACE.to_string(),
        replica: 0,
        dashboard: crate::dashboard::DashboardOptions {
            access: opts.dashboard.clone(),
            ..Default::default()
        },
    };
    let bundle = control_plane::trust_bundle_path(&opts.data_dir);
    let _ = std::fs::remove_file(&bundle);
    let control_plane = ControlPlaneTask::spawn(cp_opts);
    control_plane
        .during(wait_serving(&bundle, mesh.control_plane.identity))
        .await?;
    progress(format!(
        "control plane up: identity {}, discovery {}",
        mesh.control_plane.identity, mesh.control_plane.discovery
    ));
    for (n, r) in mesh.control_plane.replicas.iter().enumerate() {
        eprintln!(
            "  replica {} (identity {}, discovery {}) is not started here; proxies use it once it runs: vigil control-plane --mesh {} --data-dir {} --replica {}",
            n + 1,
            r.identity,
            r.discovery,
            opts.mesh_file.display(),
            opts.data_dir.display(),
            n + 1
        );
    }

    let mut children: Vec<(String, Child)> = Vec::new();
    let result = async {
        for w in &mesh.workloads {
            let mut child = spawn_proxy(&proxy_bin, &mesh, w, &bundle, &opts.data_dir)?;
            let name = format!("proxy-{}", w.name);
            if let Some(pid) = child.id() {
                write_pid(&pid_dir, &name, pid);
            }
            // A proxy that fails here is killed (kill_on_drop) with the error returned.
            control_plane.during(wait_ready(w, &mut child)).await?;
            children.push((name, child));
            progress(format!(
                "proxy for {} ready: inbound {}, outbound {}, admin http://{}",
                w.name, w.proxy.inbound, w.proxy.outbound, w.proxy.admin
            ));
        }
        for w in &mesh.workloads {
            if w.command.is_empty() {
                progress(format!(
                    "{}: no command in the mesh file; start it yourself",
                    w.name
                ));
                continue;
            }
            let child = spawn_app(&bin_dir, w)?;
            let name = format!("app-{}", w.name);
            if let Some(pid) = child.id() {
                write_pid(&pid_dir, &name, pid);
            }
            children.push((name, child));
            progress(format!("{} started: {}", w.name, w.command.join(" ")));
        }
        let dashboard = mesh.control_plane.dashboard;
        control_plane.during(wait_dashboard(dashboard)).await?;
        progress(format!("dashboard serving on http://{dashboard}/"));
        eprintln!();
        eprintln!("  dashboard:  http://{dashboard}/");
        let vigil = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "vigil".into());
        eprintln!(
            "  check it:   {vigil} check --mesh {}",
            opts.mesh_file.display()
        );
        eprintln!(
            "  watch it:   {vigil} tap --mesh {} --filter policy=deny",
            opts.mesh_file.display()
        );
        eprintln!("  logs, pids: {}", opts.data_dir.display());
        eprintln!();
        eprintln!("mesh running; press Ctrl-C to stop");
        let stop = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop => {},
            why = control_plane.ended() => bail!("the control plane stopped: {why}"),
            _ = report_exits(&mut children) => {},
        }
        Ok(())
    };
    // Ctrl-C or SIGTERM at any point, starting included, stops everything started so far.
    let result = tokio::select! {
        r = result => r,
        _ = stop_signal() => Ok(()),
    };

    eprintln!("stopping {} processes", children.len());
    for (name, mut child) in children {
        if let Err(e) = child.kill().await {
            eprintln!("could not stop {name}: {e}");
        }
    }
    control_plane.handle.abort();
    clear_pid_files(&pid_dir);
    eprintln!("stopped; nothing left running");
    result
}

/// Creates `dir` (and any missing parent) readable by this user only (0700), or makes an
/// existing one so: it holds the mesh's CA, every proxy's decision log and the pid files.
/// One that belongs to another user is refused, since its owner can read it whatever its
/// mode.
pub fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {} (pass a writable --data-dir)", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        bail!(
            "the data directory {} belongs to uid {}, not to you (uid {uid}); its owner could read the mesh's logs and CA key there. Pass a --data-dir of your own",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "{} has mode {mode:o}, readable by other users, and cannot be made 700; run `chmod 700 {}` or pass another --data-dir",
                    dir.display(),
                    dir.display()
                )
            },
        )?;
        eprintln!(
            "note: {} was readable by other users (mode {mode:o}); it holds the mesh's logs and CA, so it is now 700",
            dir.display()
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Says when a child stops on its own; the rest keeps running. Never returns.
async fn report_exits(children: &mut [(String, Child)]) {
    let mut reported = vec![false; children.len()];
    loop {
        for (i, (name, child)) in children.iter_mut().enumerate() {
            if reported[i] {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                reported[i] = true;
                eprintln!("{name} stopped ({status}); the rest of the mesh keeps running");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fails, naming the port and what it is for, when an address the mesh needs is taken.
fn check_ports(mesh: &MeshFile, mesh_file: &Path) -> anyhow::Result<()> {
    let mut wanted: Vec<(std::net::SocketAddr, String)> = vec![
        (mesh.control_plane.identity, "control plane identity".into()),
        (
            mesh.control_plane.discovery,
            "control plane discovery".into(),
        ),
        (mesh.control_plane.dashboard, "dashboard".into()),
    ];
    for w in &mesh.workloads {
        let p = &w.proxy;
        wanted.push((p.inbound, format!("{} proxy inbound", w.name)));
        wanted.push((p.outbound, format!("{} proxy outbound", w.name)));
        wanted.push((p.admin, format!("{} proxy admin", w.name)));
        wanted.push((p.metrics, format!("{} proxy metrics", w.name)));
        for addr in p.upstreams.keys() {
            wanted.push((*addr, format!("{} proxy upstream", w.name)));
        }
        if !w.command.is_empty() {
            wanted.push((
                std::net::SocketAddr::from(([127, 0, 0, 1], w.app_port)),
                format!("{} application", w.name),
            ));
        }
    }
    for (addr, what) in wanted {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let running = match crate::mesh_location::running_mesh(
                &crate::mesh_location::running_record_path(),
            ) {
                Some(r) => format!(
                    "`vigil up`/`vigil demo` (pid {}, mesh {}) is running: stop it with `kill -INT {}`",
                    r.pid,
                    r.mesh_file.display(),
                    r.pid
                ),
                None => "Is another `vigil demo` or `vigil up` running? Stop it".to_string(),
            };
            // The demo writes its mesh file afresh on every start: editing it changes
            // nothing, so the way to other ports is a copy run with `vigil up`.
            let is_demo = std::fs::read_to_string(mesh_file)
                .is_ok_and(|text| text == crate::demo_mesh::MESH_YAML);
            let elsewhere = if is_demo {
                format!(
                    "or run the demo on other ports: copy {} (vigil demo rewrites it on every start), change the ports, and run `vigil up --mesh <the copy>`",
                    mesh_file.display()
                )
            } else {
                format!("or change the address in {}", mesh_file.display())
            };
            bail!(
                "port {addr} ({what}) is not free: {e}. {running}, find the owner with `ss -ltnp 'sport = :{}'`, {elsewhere}",
                addr.port(),
            );
        }
    }
    Ok(())
}

/// Where a workload's proxy writes its decision log in a run's data directory.
pub fn decision_log_path(data_dir: &Path, workload: &str) -> PathBuf {
    data_dir.join(format!("{workload}-decisions.log"))
}

/// Moves the last run's decision logs aside (`<workload>-decisions.log.previous`, one run
/// kept): the proxies append, and the dashboard reads each log from its start.
fn start_decision_logs(data_dir: &Path, mesh: &MeshFile) {
    for w in &mesh.workloads {
        let log = decision_log_path(data_dir, &w.name);
        if log.exists() {
            let previous = log.with_extension("log.previous");
            if let Err(e) = std::fs::rename(&log, &previous) {
                tracing::warn!(log = %log.display(), error = %e, "cannot move the last run's decision log aside; its denials will show in this run's dashboard");
            }
        }
    }
}

fn write_pid(dir: &Path, name: &str, pid: u32) {
    let path = dir.join(format!("{name}.pid"));
    if let Err(e) = std::fs::write(&path, format!("{pid}\n")) {
        eprintln!("warning: cannot write {}: {e}", path.display());
    }
}

fn clear_pid_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

async fn wait_dashboard(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(200) = crate::admin_client::get_status(addr, "/api/overview").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the dashboard did not answer on http://{addr}/ within 10 s; is control_plane.dashboard free?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The control plane running inside `vigil up`, and why it stopped once it has.
struct ControlPlaneTask {
    handle: tokio::task::JoinHandle<()>,
    stopped: watch::Receiver<Option<String>>,
}

impl ControlPlaneTask {
    fn spawn(opts: ControlPlaneOptions) -> ControlPlaneTask {
        let (tx, stopped) = watch::channel(None);
        let handle = tokio::spawn(async move {
            let why = match control_plane::run(opts).await {
                Ok(()) => "it returned without an error".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = tx.send(Some(why));
        });
        ControlPlaneTask { handle, stopped }
    }

    /// Resolves once the control plane has stopped, with its error.
    async fn ended(&self) -> String {
        let mut stopped = self.stopped.clone();
        let why = match stopped.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The task ended without a word: it panicked, and the panic was printed.
            Err(_) => "it crashed; its panic message is above".to_string(),
        };
        why
    }

    /// Runs one start-up step, failing with the control plane's error as soon as the
    /// control plane stops, rather than when the step times out.
    async fn during<T>(&self, step: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::select! {
            r = step => r,
            why = self.ended() => Err(anyhow!("the control plane could not start: {why}")),
        }
    }
}

/// Waits until the control plane has written the trust bundle and accepts connections on
/// its identity port: by then its policy compiled and its listeners are bound.
async fn wait_serving(bundle: &Path, identity: std::net::SocketAddr) -> anyhow::Result<()> {
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    loop {
        if bundle.exists() && tokio::net::TcpStream::connect(identity).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the control plane did not serve on {identity} within {limit:?}; its messages are above");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `a,b,c`, as the proxy's --identity-addr and --discovery-addr take several replicas.
fn join_addresses(addresses: &[std::net::SocketAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn spawn_proxy(
    bin: &Path,
    mesh: &MeshFile,
    w: &WorkloadEntry,
    bundle: &Path,
    data_dir: &Path,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg("--trust-domain")
        .arg(&mesh.trust_domain)
        .arg("--trust-bundle")
        .arg(bundle)
        .arg("--identity-addr")
        .arg(join_addresses(&mesh.control_plane.identity_addresses()))
        .arg("--discovery-addr")
        .arg(join_addresses(&mesh.control_plane.discovery_addresses()))
        .arg("--inbound")
        .arg(w.proxy.inbound.to_string())
        .arg("--outbound")
        .arg(w.proxy.outbound.to_string())
        .arg("--admin")
        .arg(w.proxy.admin.to_string())
        .arg("--metrics")
        .arg(w.proxy.metrics.to_string())
        .arg("--decision-log")
        .arg(decision_log_path(data_dir, &w.name))
        .env("VIGIL_TOKEN", &w.join_token)
        .env(
            "VIGIL_LOG",
            std::env::var("VIGIL_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (addr, service) in &w.proxy.upstreams {
        cmd.arg("--upstream").arg(format!("{addr}={service}"));
    }
    spawn_prefixed(cmd, format!("proxy/{}", w.name))
}

fn spawn_app(bin_dir: &Path, w: &WorkloadEntry) -> anyhow::Result<Child> {
    let program = &w.command[0];
    // A bare name that is one of Vigil's own binaries runs from beside `vigil`.
    let local = bin_dir.join(program);
    let mut cmd = if !program.contains('/') && local.exists() {
        Command::new(local)
    } else {
        Command::new(program)
    };
    cmd.args(&w.command[1..]);
    spawn_prefixed(cmd, w.name.clone())
}

/// Starts a child whose output lines are printed with its name in front.
fn spawn_prefixed(mut cmd: Command, name: String) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let name = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{name:>16} | {line}");
            }
        });
    }
    Ok(child)
}

/// Waits until the proxy of `w` says it is ready, failing at once if it exits.
async fn wait_ready(w: &WorkloadEntry, proxy: &mut Child) -> anyhow::Result<()> {
    let admin = w.proxy.admin;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = crate::admin_client::get_status(admin, "/ready").await {
            if status == 200 {
                return Ok(());
            }
        }
        if let Some(status) = proxy
            .try_wait()
            .with_context(|| format!("watching the proxy for {}", w.name))?
        {
            bail!(
                "the proxy for {} exited during start-up ({status}); its messages are above, prefixed proxy/{}",
                w.name,
                w.name
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the proxy for {} did not become ready within 30 s; its messages are above (is port {} free?)",
                w.name,
                w.proxy.inbound
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
