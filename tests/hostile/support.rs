//! What the hostile tests share: a proxy pair with a recording app, a well-behaved
//! client running beside every attack, raw socket exchanges and TLS clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_e2e::*;
use vigil_identity::{CertificateAuthority, SpiffeId, SvidStore, TlsOptions, TrustStore};

/// One hostile test at a time (see the crate docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

// ---- The application behind the server proxy ----

/// An app that records, per path, the requests whose head arrived and those whose body
/// arrived complete; answers after `delay_ms`; streams `tick` lines on `/stream` and
/// [`BIG_BODY`] bytes on `/big`.
#[derive(Default)]
pub struct TargetApp {
    started: Mutex<HashMap<String, u64>>,
    completed: Mutex<HashMap<String, u64>>,
    pub delay_ms: AtomicU64,
}

impl TargetApp {
    /// Requests for `path` that reached the app at all.
    pub fn started(&self, path: &str) -> u64 {
        count(&self.started, path)
    }

    /// Requests for `path` whose whole body reached the app.
    pub fn completed(&self, path: &str) -> u64 {
        count(&self.completed, path)
    }

    /// Every path the app has seen, for failure messages.
    pub fn seen(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .started
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        paths.sort();
        paths
    }
}

fn count(map: &Mutex<HashMap<String, u64>>, path: &str) -> u64 {
    map.lock()
        .map(|m| m.get(path).copied().unwrap_or(0))
        .unwrap_or(0)
}

fn bump(map: &Mutex<HashMap<String, u64>>, path: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(path.to_string()).or_default() += 1;
    }
}

type AppBody = BoxBody<Bytes, Infallible>;

/// Size of the app's `/big` answer.
pub const BIG_BODY: usize = 256 * 1024 * 1024;

pub async fn start_target_app(port: u16) -> Arc<TargetApp> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the app's port is free");
    let app = Arc::new(TargetApp::default());
    let shared = app.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let app = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(answer(&app, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    app
}

async fn answer(app: &TargetApp, req: Request<hyper::body::Incoming>) -> Response<AppBody> {
    let path = req.uri().path().to_string();
    bump(&app.started, &path);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let mut r = Response::new(Full::new(Bytes::from("incomplete body")).boxed());
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            return r;
        }
    };
    bump(&app.completed, &path);
    let delay = app.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if path.starts_with("/big") {
        // 256 MiB in 64 KiB chunks, made as they are sent.
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures::stream::iter(
            (0..BIG_BODY / chunk.len())
                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        return Response::new(StreamBody::new(chunks).boxed());
    }
    if path.starts_with("/stream") {
        // A tick every 50 ms for at most two minutes: long enough to outlive any test step.
        let ticks = futures::stream::unfold(0u32, |n| async move {
            if n >= 2400 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("tick {n}\n")))),
                n + 1,
            ))
        });
        return Response::new(StreamBody::new(ticks).boxed());
    }
    let text = serde_json::json!({"path": path, "body_len": body.len()}).to_string();
    Response::new(Full::new(Bytes::from(text)).boxed())
}

// ---- The mesh ----

/// Proxy flags and an optional third workload for a [`Pair`].
#[derive(Default)]
pub struct PairOptions {
    pub client_args: Vec<String>,
    pub server_args: Vec<String>,
    /// Adds workload and service `bystander` (an echo app), so a client can keep calling
    /// something while the server is attacked or killed.
    pub bystander: bool,
}

impl PairOptions {
    /// The defaults, with `args` for the client proxy.
    pub fn client(args: &[&str]) -> PairOptions {
        PairOptions {
            client_args: args.iter().map(|a| a.to_string()).collect(),
            ..PairOptions::default()
        }
    }
}

/// A control plane, a client and a server proxy, and the server's [`TargetApp`].
pub struct Pair {
    pub mesh: Mesh,
    pub client: WorkloadSpec,
    pub server: WorkloadSpec,
    pub app: Arc<TargetApp>,
}

impl Pair {
    pub async fn start(options: PairOptions) -> Pair {
        let mut client = WorkloadSpec::new("client", "demo");
        client.extra_args = options.client_args;
        let mut server = WorkloadSpec::new("server", "demo");
        server.extra_args = options.server_args;
        let mut workloads = vec![client.clone(), server.clone()];
        if options.bystander {
            workloads.push(WorkloadSpec::new("bystander", "demo"));
        }
        let mut spec = MeshSpec::new(workloads).service("server", "http", &["server"], None);
        if options.bystander {
            spec = spec.service("bystander", "http", &["bystander"], None);
        }
        let mut mesh = Mesh::start(spec).await.expect("control plane starts");
        let app = start_target_app(server.app_port).await;
        let mut names = vec!["client", "server"];
        if options.bystander {
            let port = mesh.spec.workload("bystander").app_port;
            start_echo_app(port, "bystander")
                .await
                .expect("bystander app");
            names.push("bystander");
        }
        for name in names {
            if let Err(e) = mesh.start_proxy(name).await {
                panic!("{name} proxy did not start: {e}\n{}", mesh.logs());
            }
        }
        Pair {
            mesh,
            client,
            server,
            app,
        }
    }

    /// The running proxy process of `workload`.
    pub fn proxy(&mut self, workload: &str) -> &mut Process {
        let prefix = format!("proxy-{workload}-");
        self.mesh
            .proxies
            .iter_mut()
            .find(|p| p.name.starts_with(&prefix))
            .expect("the workload's proxy was started")
    }

    /// The control plane's CA, as the proxies' certificates were issued by it.
    pub fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::load_or_generate(&self.mesh.data_dir().join("ca"), TRUST_DOMAIN)
            .expect("the control plane's CA")
    }
}

// ---- The well-behaved client ----

/// A client calling `host` through a proxy every 20 ms, from start to [`Steady::finish`].
pub struct Steady {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<SteadyReport>,
}

#[derive(Debug, Default)]
pub struct SteadyReport {
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

impl Steady {
    pub fn start(via: SocketAddr, host: &'static str) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = pooled_client();
            let mut report = SteadyReport::default();
            while !flag.load(Ordering::Relaxed) {
                let outcome = tokio::time::timeout(
                    Duration::from_secs(10),
                    call(&client, via, host, "/steady"),
                )
                .await;
                match outcome {
                    Ok(Ok(r)) if r.status == 200 => report.ok += 1,
                    other => {
                        report.failed += 1;
                        if report.failures.len() < 5 {
                            report.failures.push(format!("{other:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            report
        });
        Steady { stop, task }
    }

    /// Stops the client and asserts that none of its requests failed.
    pub async fn finish(self, logs: impl FnOnce() -> String) -> SteadyReport {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.task.await.expect("the steady client task");
        assert!(
            report.failed == 0 && report.ok > 0,
            "the well-behaved client beside the attack saw {} failures ({} ok): {:?}\n{}",
            report.failed,
            report.ok,
            report.failures,
            logs()
        );
        report
    }
}

// ---- Raw exchanges ----

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The server closed (or reset) the connection.
    pub closed: bool,
}

impl Exchange {
    /// The status of the first response, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let rest = text.strip_prefix("HTTP/1.1 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// How many responses came (status lines at the start of a line).
    pub fn responses(&self) -> usize {
        let text = String::from_utf8_lossy(&self.bytes);
        usize::from(text.starts_with("HTTP/1.")) + text.matches("\nHTTP/1.").count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` on a fresh connection and reads until the server closes or stays
/// quiet for 5 s.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(request).await;
    read_until_closed(&mut tcp, Duration::from_secs(5)).await
}

/// Reads until EOF or a reset (closed), or until `quiet` passes with nothing read.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    quiet: Duration,
) -> Exchange {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                }
            }
        }
    }
}

// ---- TLS ----

/// A TLS 1.3 client of the mesh presenting `credential` (or no certificate), expecting
/// the server proxy's SPIFFE ID, offering `alpn`.
pub fn mesh_client(
    credential: Option<Arc<rustls::sign::CertifiedKey>>,
    pair: &Pair,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let store = credential.map(|key| {
        let s = SvidStore::new();
        s.set(key);
        s
    });
    let trust = TrustStore::new(TRUST_DOMAIN, pair.ca().trust_bundle()).expect("trust store");
    let expected = SpiffeId::parse(&pair.server.spiffe_id()).expect("id");
    vigil_identity::mtls_client_config(
        store,
        trust,
        expected,
        &TlsOptions {
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            ..TlsOptions::default()
        },
    )
}

/// A valid SVID for the client workload, minted by the mesh CA.
pub fn client_svid(pair: &Pair) -> Arc<rustls::sign::CertifiedKey> {
    let me = SpiffeId::parse(&pair.client.spiffe_id()).expect("id");
    vigil_identity::testing::valid_leaf(&pair.ca(), &me)
        .expect("valid leaf")
        .certified_key()
        .expect("key")
}

pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(vigil_identity::PLACEHOLDER_SERVER_NAME)
        .expect("valid name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// `vigil_tls_handshake_failures_total{reason}` on a proxy's metrics port.
pub async fn handshake_failures(metrics_addr: SocketAddr, reason: &str) -> f64 {
    metric_value(
        &metrics(metrics_addr).await,
        &format!("vigil_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
    )
}

/// The handshake failure count for `reason` once it reaches `expected`, or whatever it
/// is after 5 s: the proxy closes a refused connection a moment before counting it.
pub async fn settled_failures(metrics_addr: SocketAddr, reason: &str, expected: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = handshake_failures(metrics_addr, reason).await;
        if now >= expected || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- Processes ----

/// A process's resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's open-file limit (children inherit it) to `wanted`, or as far as
/// the hard limit allows when not privileged. Returns the new soft limit.
pub fn raise_open_files(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(wanted), hard);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}
