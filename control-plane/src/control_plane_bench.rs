//! `vigil bench control-plane`: a real control plane under a simulated fleet of proxies.
//!
//! The simulator writes a mesh file of `--proxies` workloads and `--services` services
//! (two endpoints each), starts `vigil control-plane` on it as a child process, and acts
//! as every proxy: a real `Identity.Sign` per proxy (its own key and CSR, over one shared
//! channel), then a real mutual-TLS `Discovery.Watch` stream per proxy on its own
//! connection. It measures what an operator sizes a control plane by: the snapshot each
//! proxy receives, the control plane's memory and CPU (read from `/proc`, so CPU-seconds
//! stay meaningful on a shared machine), how long an endpoint change takes to reach every
//! proxy, issuance throughput, and how long the fleet takes to resynchronise after the
//! control plane is killed and restarted.
//!
//! No crate simulates SPIFFE proxies against a gRPC control plane; this one drives the
//! same generated clients and TLS configurations the proxy uses.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustBundle, TrustStore, WorkloadKey};

use crate::control_plane::trust_bundle_path;
use crate::own_identity::{control_plane_id, DEFAULT_NAMESPACE};

const TRUST_DOMAIN: &str = "bench.local";
const NAMESPACE: &str = "bench";

/// What to simulate.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Simulated proxies (one workload each).
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Services, each with two of the workloads as endpoints.
    #[arg(long, default_value_t = 500)]
    pub services: usize,
    /// Services each workload declares it calls (`calls:`), so its proxy is sent only
    /// those; 0 declares nothing and every proxy gets every service.
    #[arg(long, default_value_t = 0)]
    pub calls: usize,
    /// Endpoint changes to time (each moves one service to other workloads).
    #[arg(long, default_value_t = 3)]
    pub changes: usize,
    /// Signing requests in flight at once on the shared channel.
    #[arg(long, default_value_t = 64)]
    pub sign_concurrency: usize,
    /// Discovery streams opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Skip the reconnect storm (killing and restarting the control plane).
    #[arg(long)]
    pub no_restart: bool,
    /// Keep the mesh file, data directory and control-plane log here instead of a
    /// temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Default, Serialize)]
pub struct BenchResult {
    pub proxies: usize,
    pub services: usize,
    /// Services each workload declared it calls (0: none declared, every proxy gets all).
    pub calls: usize,
    pub svids_per_second: f64,
    /// The control plane's CPU time per certificate issued, in microseconds.
    pub signing_cpu_us: f64,
    pub connect_seconds: f64,
    pub snapshot_bytes: usize,
    pub idle_rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Per endpoint change: seconds until the median and the last proxy had it, and the
    /// control plane's CPU-seconds meanwhile.
    pub changes: Vec<ChangeResult>,
    pub restart: Option<RestartResult>,
    pub streams_failed: u64,
}

#[derive(Debug, Serialize)]
pub struct ChangeResult {
    /// The largest message a proxy received for the change.
    pub message_bytes: usize,
    /// Proxies that hold a service the change moved, which it must reach.
    pub receivers: usize,
    /// Proxies that do not hold it and were sent something anyway.
    pub sent_needlessly: usize,
    pub p50_seconds: f64,
    pub max_seconds: f64,
    pub cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RestartResult {
    /// From the restarted control plane's start to every stream watching again.
    pub resync_seconds: f64,
    pub reconnected: usize,
    pub peak_rss_mib: f64,
}

/// One simulated proxy's view: the last snapshot version and when it arrived.
#[derive(Default)]
struct ProxyView {
    version: Mutex<(String, Option<Instant>)>,
    watching: std::sync::atomic::AtomicBool,
}

/// Runs the simulation and prints the results as it goes.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchResult> {
    raise_fd_limit((opts.proxies * 2 + 1024) as u64);
    let temp;
    let dir = match &opts.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let addresses = Addresses::free()?;
    let seed = format!("{:?}", std::time::SystemTime::now());
    let tokens: Vec<String> = (0..opts.proxies).map(|i| token(&seed, i)).collect();
    let mesh_file = dir.join("mesh.yaml");
    write_mesh(&mesh_file, &opts, &addresses, &tokens, 0)?;
    let data_dir = dir.join("data");
    let log = dir.join("control-plane.log");
    eprintln!(
        "starting the control plane on {} proxies and {} services (log: {})",
        opts.proxies,
        opts.services,
        log.display()
    );
    let mut cp = ControlPlane::start(&mesh_file, &data_dir, &log, &addresses).await?;
    let mut result = BenchResult {
        proxies: opts.proxies,
        services: opts.services,
        calls: opts.calls,
        ..BenchResult::default()
    };

    let pem = std::fs::read_to_string(trust_bundle_path(&data_dir))?;
    let trust = TrustStore::new(TRUST_DOMAIN, TrustBundle::from_pem(&pem)?)?;
    let cp_id = control_plane_id(TRUST_DOMAIN, DEFAULT_NAMESPACE)?;

    // Issuance: every proxy's key and CSR made first (a real proxy makes its own, on its
    // own machine), then signed over one shared channel, timed.
    eprintln!("making {} keys and CSRs...", opts.proxies);
    let requests: Vec<(WorkloadKey, Vec<u8>, String)> = tokens
        .iter()
        .map(|token| {
            let key = WorkloadKey::generate()?;
            let csr = key.csr_der()?;
            Ok((key, csr, token.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("signing {} certificates...", opts.proxies);
    let tls = vigil_identity::mtls_client_config(None, trust.clone(), cp_id.clone(), &h2());
    let identity = connect(addresses.identity, tls, &cp_id).await?;
    let started = Instant::now();
    let cpu = cp.cpu_seconds();
    let svids: Vec<anyhow::Result<Arc<SvidStore>>> =
        futures::stream::iter(requests.into_iter().map(|(key, csr_der, token)| {
            let mut client = vigil_api::identity::IdentityClient::new(identity.clone());
            async move {
                let response = client
                    .sign(vigil_api::SignRequest {
                        csr_der,
                        token,
                        kind: vigil_api::TokenKind::Join as i32,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("sign: {}: {}", s.code(), s.message()))?
                    .into_inner();
                let chain = response
                    .cert_chain_der
                    .into_iter()
                    .map(rustls_pki_types::CertificateDer::from)
                    .collect();
                let store = SvidStore::new();
                store.set(key.certified(chain)?);
                Ok(store)
            }
        }))
        .buffered(opts.sign_concurrency.max(1))
        .collect()
        .await;
    let svids: Vec<Arc<SvidStore>> = svids.into_iter().collect::<anyhow::Result<_>>()?;
    result.svids_per_second = opts.proxies as f64 / started.elapsed().as_secs_f64();
    result.signing_cpu_us = (cp.cpu_seconds() - cpu) * 1e6 / opts.proxies.max(1) as f64;
    eprintln!(
        "  {:.0} SVIDs/s; the control plane spent {:.0} µs of CPU on each",
        result.svids_per_second, result.signing_cpu_us
    );

    // Discovery: one mutual-TLS stream per proxy, each on its own connection.
    eprintln!("opening {} discovery streams...", opts.proxies);
    let views: Arc<Vec<ProxyView>> =
        Arc::new((0..opts.proxies).map(|_| ProxyView::default()).collect());
    let snapshot_bytes = Arc::new(AtomicUsize::new(0));
    let delta_bytes = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let opening = futures::stream::iter(svids.iter().enumerate().map(|(i, svid)| {
        let stream = ProxyStream {
            index: i,
            discovery: addresses.discovery,
            tls: vigil_identity::mtls_client_config(
                Some(svid.clone()),
                trust.clone(),
                cp_id.clone(),
                &h2(),
            ),
            cp_id: cp_id.clone(),
            views: views.clone(),
            snapshot_bytes: snapshot_bytes.clone(),
            delta_bytes: delta_bytes.clone(),
            failed: failed.clone(),
        };
        async move { stream.spawn_after_first().await }
    }))
    .buffer_unordered(opts.connect_concurrency.max(1))
    .collect::<Vec<()>>();
    opening.await;
    wait_until(
        Duration::from_secs(600),
        "every proxy has a snapshot",
        || views.iter().all(|v| lock(&v.version).1.is_some()),
    )
    .await?;
    result.connect_seconds = started.elapsed().as_secs_f64();
    result.snapshot_bytes = snapshot_bytes.load(Ordering::Relaxed);
    eprintln!(
        "  all watching after {:.1} s; snapshot {} bytes",
        result.connect_seconds, result.snapshot_bytes
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    result.idle_rss_mib = cp.rss_mib("VmRSS");

    // Endpoint changes: one service moves to other workloads; every proxy is timed.
    for change in 1..=opts.changes {
        let before: Vec<String> = views.iter().map(|v| lock(&v.version).0.clone()).collect();
        let cpu = cp.cpu_seconds();
        delta_bytes.store(0, Ordering::Relaxed);
        let whole_before = snapshot_bytes.swap(0, Ordering::Relaxed);
        write_mesh(&mesh_file, &opts, &addresses, &tokens, change)?;
        let written = Instant::now();
        // This change moves one service and puts back the one the previous change moved.
        let services = opts.services.max(1);
        let moved = [(change - 1) % services, (change + services - 2) % services];
        let needs: Vec<bool> = (0..opts.proxies)
            .map(|i| holds(&opts, i, moved[0]) || (change > 1 && holds(&opts, i, moved[1])))
            .collect();
        let receivers = needs.iter().filter(|n| **n).count();
        wait_until(
            Duration::from_secs(600),
            "every proxy that holds the service has the change",
            || {
                views
                    .iter()
                    .zip(&before)
                    .zip(&needs)
                    .all(|((v, old), needs)| !needs || lock(&v.version).0 != *old)
            },
        )
        .await?;
        // Give needless messages time to arrive before counting them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent_needlessly = views
            .iter()
            .zip(&before)
            .zip(&needs)
            .filter(|((v, old), needs)| !**needs && lock(&v.version).0 != **old)
            .count();
        let mut arrivals: Vec<f64> = views
            .iter()
            .zip(&needs)
            .filter(|(_, needs)| **needs)
            .filter_map(|(v, _)| lock(&v.version).1)
            .map(|at| at.saturating_duration_since(written).as_secs_f64())
            .collect();
        arrivals.sort_by(f64::total_cmp);
        let p50 = arrivals.get(arrivals.len() / 2).copied().unwrap_or(0.0);
        let max = arrivals.last().copied().unwrap_or(0.0);
        let spent = cp.cpu_seconds() - cpu;
        // Whole snapshots during a change mean a proxy could not take the delta.
        let message_bytes = snapshot_bytes
            .swap(whole_before, Ordering::Relaxed)
            .max(delta_bytes.load(Ordering::Relaxed));
        eprintln!(
            "  change {change}: to {receivers} proxies, p50 {p50:.2} s, max {max:.2} s, {spent:.2} CPU-s, largest message {message_bytes} bytes, {sent_needlessly} sent to proxies without the service"
        );
        result.changes.push(ChangeResult {
            message_bytes,
            receivers,
            sent_needlessly,
            p50_seconds: p50,
            max_seconds: max,
            cpu_seconds: spent,
        });
    }
    result.peak_rss_mib = cp.rss_mib("VmHWM");

    if !opts.no_restart {
        eprintln!("killing and restarting the control plane...");
        cp.kill();
        wait_until(Duration::from_secs(60), "every stream notices", || {
            views.iter().all(|v| !v.watching.load(Ordering::Relaxed))
        })
        .await?;
        let restarted = Instant::now();
        cp = ControlPlane::start(&mesh_file, &data_dir, &log, &addresses).await?;
        let resync = wait_until(
            Duration::from_secs(600),
            "every proxy watches again",
            || views.iter().all(|v| v.watching.load(Ordering::Relaxed)),
        )
        .await;
        let reconnected = views
            .iter()
            .filter(|v| v.watching.load(Ordering::Relaxed))
            .count();
        let restart = RestartResult {
            resync_seconds: restarted.elapsed().as_secs_f64(),
            reconnected,
            peak_rss_mib: cp.rss_mib("VmHWM"),
        };
        eprintln!(
            "  {} of {} watching again after {:.1} s",
            restart.reconnected, opts.proxies, restart.resync_seconds
        );
        result.restart = Some(restart);
        resync?;
    }
    result.streams_failed = failed.load(Ordering::Relaxed);
    cp.kill();
    print_table(&result, &mut std::io::stdout())?;
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn h2() -> TlsOptions {
    TlsOptions {
        alpn: vec![b"h2".to_vec()],
        ..TlsOptions::default()
    }
}

/// A join token zxcvbn rates as random: 32 hex digits of a hash.
fn token(seed: &str, i: usize) -> String {
    let digest = Sha256::digest(format!("{seed}/{i}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The control plane's ports, chosen free.
struct Addresses {
    identity: SocketAddr,
    discovery: SocketAddr,
    dashboard: SocketAddr,
    webhook: SocketAddr,
}

impl Addresses {
    fn free() -> anyhow::Result<Addresses> {
        let free = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        Ok(Addresses {
            identity: free()?,
            discovery: free()?,
            dashboard: free()?,
            webhook: free()?,
        })
    }
}

/// The workload's inbound address: one per workload, never dialled by the simulation.
fn inbound(i: usize) -> String {
    format!(
        "10.{}.{}.{}:15006",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

/// The services workload `i` declares it calls: the `calls` after its own index.
fn calls_of(opts: &BenchOptions, i: usize) -> impl Iterator<Item = usize> {
    let services = opts.services.max(1);
    (0..opts.calls.min(services)).map(move |j| (i + j) % services)
}

/// Whether workload `i`'s proxy holds service `s`.
fn holds(opts: &BenchOptions, i: usize, s: usize) -> bool {
    opts.calls == 0 || calls_of(opts, i).any(|c| c == s)
}

/// Writes the mesh file; `generation` moves service `generation - 1` to other endpoints.
fn write_mesh(
    path: &Path,
    opts: &BenchOptions,
    addresses: &Addresses,
    tokens: &[String],
    generation: usize,
) -> anyhow::Result<()> {
    let n = opts.proxies.max(1);
    let mut y = format!(
        "trust_domain: {TRUST_DOMAIN}\ncontrol_plane:\n  identity: \"{}\"\n  discovery: \"{}\"\n  dashboard: \"{}\"\n  webhook: \"{}\"\nworkloads:\n",
        addresses.identity, addresses.discovery, addresses.dashboard, addresses.webhook
    );
    for (i, token) in tokens.iter().enumerate() {
        // Admin and metrics on the discard port: nothing answers, as for proxies that
        // are not real processes.
        let calls = if opts.calls == 0 {
            String::new()
        } else {
            let names: Vec<String> = calls_of(opts, i).map(|s| format!("s{s}")).collect();
            format!(", calls: [{}]", names.join(", "))
        };
        let _ = writeln!(
            y,
            "  - {{ name: w{i}, namespace: {NAMESPACE}, join_token: \"{token}\", app_port: 8080{calls}, proxy: {{ inbound: \"{}\", admin: \"127.0.0.1:9\", metrics: \"127.0.0.1:9\" }} }}",
            inbound(i)
        );
    }
    y += "services:\n";
    for s in 0..opts.services {
        let shift = if generation > 0 && s == (generation - 1) % opts.services.max(1) {
            generation * 2
        } else {
            0
        };
        let (a, b) = ((2 * s + shift) % n, (2 * s + 1 + shift) % n);
        let _ = writeln!(
            y,
            "  - {{ name: s{s}, namespace: {NAMESPACE}, port: 80, endpoints: [w{a}, w{b}] }}"
        );
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, y).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The control plane under test, a child process.
struct ControlPlane {
    child: std::process::Child,
}

impl ControlPlane {
    async fn start(
        mesh: &Path,
        data_dir: &Path,
        log: &Path,
        addresses: &Addresses,
    ) -> anyhow::Result<ControlPlane> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("control-plane")
            .arg("--mesh")
            .arg(mesh)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--reload-interval", "200ms"])
            .env("RUST_LOG", "warn")
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting vigil control-plane")?;
        let mut cp = ControlPlane { child };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = cp.child.try_wait()? {
                bail!("the control plane exited ({status}); see {}", log.display());
            }
            if TcpStream::connect(addresses.discovery).await.is_ok()
                && trust_bundle_path(data_dir).exists()
            {
                return Ok(cp);
            }
            if Instant::now() > deadline {
                cp.kill();
                bail!("the control plane did not listen within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    /// A `/proc/PID/status` memory line (`VmRSS`, `VmHWM`) in MiB.
    fn rss_mib(&self, field: &str) -> f64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// User and system CPU time so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = self.proc_file("stat");
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15, the 12th and 13th after the name; the
        // kernel counts them in USER_HZ, 100 on Linux.
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One simulated proxy's discovery stream, reconnecting with jitter like a proxy.
#[derive(Clone)]
struct ProxyStream {
    index: usize,
    discovery: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    cp_id: SpiffeId,
    views: Arc<Vec<ProxyView>>,
    snapshot_bytes: Arc<AtomicUsize>,
    /// The largest incremental message received since last reset.
    delta_bytes: Arc<AtomicUsize>,
    failed: Arc<AtomicU64>,
}

impl ProxyStream {
    /// Opens the stream and returns once it is accepted; the stream then runs on its own
    /// task for the rest of the run.
    async fn spawn_after_first(self) {
        let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(self.run(Some(accepted_tx)));
        let _ = accepted_rx.await;
    }

    async fn run(self, mut accepted: Option<tokio::sync::oneshot::Sender<()>>) {
        let view = &self.views[self.index];
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.watch(&mut accepted).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(_) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            view.watching.store(false, Ordering::Relaxed);
            // A proxy's reconnect: exponential backoff with jitter spread by index, so a
            // fleet does not come back in one instant.
            let jitter = (self.index as u64 * 7919) % (backoff.as_millis() as u64).max(1);
            tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn watch(
        &self,
        accepted: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> anyhow::Result<()> {
        let view = &self.views[self.index];
        let channel = connect(self.discovery, self.tls.clone(), &self.cp_id).await?;
        let mut client = vigil_api::discovery::DiscoveryClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024);
        let mut request = tonic::Request::new(vigil_api::WatchRequest {
            known_version: lock(&view.version).0.clone(),
            policy_version: String::new(),
            also_wanted: Vec::new(),
        });
        if let Ok(name) = format!("w{}", self.index).parse() {
            request.metadata_mut().insert("x-vigil-workload", name);
        }
        let mut stream = client.watch(request).await?.into_inner();
        view.watching.store(true, Ordering::Relaxed);
        if let Some(tx) = accepted.take() {
            let _ = tx.send(());
        }
        // A snapshot may come in several messages (`more`): it has arrived with the last.
        let (mut size, mut incremental) = (0, false);
        while let Some(message) = stream.message().await? {
            if size == 0 {
                incremental = message.incremental;
            }
            size += message.encoded_len();
            if message.more {
                continue;
            }
            let now = Instant::now();
            let bytes = if incremental {
                &self.delta_bytes
            } else {
                &self.snapshot_bytes
            };
            bytes.fetch_max(size, Ordering::Relaxed);
            size = 0;
            *lock(&view.version) = (message.version, Some(now));
        }
        Ok(())
    }
}

/// A gRPC channel to the control plane, verified as `expected`.
async fn connect(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
) -> anyhow::Result<Channel> {
    let server_name = vigil_identity::server_name_for(expected);
    let connector = TlsConnector::from(tls);
    let channel = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}

/// Polls `done` every 20 ms until it holds; the time it took.
async fn wait_until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            bail!("gave up waiting after {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// Lets this process (and the control plane it starts) hold `wanted` descriptors when the
/// hard limit allows.
fn raise_fd_limit(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(wanted).max(soft), hard);
        }
    }
}

fn print_table(r: &BenchResult, out: &mut dyn Write) -> std::io::Result<()> {
    let median = |f: &dyn Fn(&ChangeResult) -> f64| {
        let mut v: Vec<f64> = r.changes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    writeln!(
        out,
        "| proxies (services) | calls | snapshot per proxy | change message | CP RSS idle (peak) | endpoint change: proxies, p50 / max | CP CPU per change | SVIDs/s (CP CPU each) | all watching after | resync after restart |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    let restart = r.restart.as_ref().map_or("not run".to_string(), |s| {
        format!(
            "{:.1} s ({} of {}; peak {:.0} MB)",
            s.resync_seconds, s.reconnected, r.proxies, s.peak_rss_mib
        )
    });
    writeln!(
        out,
        "| {} ({}) | {} | {} KB | {} B | {:.0} MB ({:.0} MB) | {}, {:.2} / {:.2} s | {:.2} s | {:.0} ({:.0} µs) | {:.1} s | {} |",
        r.proxies,
        r.services,
        if r.calls == 0 { "all".to_string() } else { r.calls.to_string() },
        r.snapshot_bytes / 1000,
        r.changes.iter().map(|c| c.message_bytes).max().unwrap_or(0),
        r.idle_rss_mib,
        r.peak_rss_mib,
        median(&|c| c.receivers as f64),
        median(&|c| c.p50_seconds),
        median(&|c| c.max_seconds),
        median(&|c| c.cpu_seconds),
        r.svids_per_second,
        r.signing_cpu_us,
        r.connect_seconds,
        restart
    )?;
    if r.streams_failed > 0 {
        writeln!(
            out,
            "stream errors (the restart's included), each followed by a reconnect: {}",
            r.streams_failed
        )?;
    }
    Ok(())
}
