//! Harness for Vigil's end-to-end tests: builds the real binaries, writes a mesh file
//! with free loopback ports, and runs the control plane and proxies as child processes
//! that are killed when the test ends. Applications are small servers in the test.
#![forbid(unsafe_code)]

pub mod fake_kube;
pub mod netns;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TRUST_DOMAIN: &str = "vigil.local";

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Path of a Vigil binary in the target directory this test was built into.
///
/// `cargo test --workspace` builds them: the `vigil`, `vigil-proxy` and
/// `vigil-demo-apps` packages each have an integration test, which makes cargo build
/// their binaries before any test runs.
///
/// `VIGIL_E2E_BIN_DIR` points elsewhere, e.g. `target/release` to measure release builds.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("VIGIL_E2E_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        })
        .unwrap_or_else(|| workspace_root().join("target").join("debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; good enough on a test machine).
///
/// Ports come from 20000–31999, below Linux's ephemeral range (32768+), so an outgoing
/// connection can never be handed one between the check and the child's bind; a
/// per-process counter keeps tests running in parallel from picking the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 120) * 100;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + n) % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 31999")
}

/// A loopback address on a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A child process killed (and reaped) when dropped.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `program` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env(
                "VIGIL_LOG",
                std::env::var("VIGIL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One workload of a test mesh with its proxy's addresses.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub token: String,
    pub app_port: u16,
    pub tcp_ports: Vec<u16>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub upstreams: Vec<(SocketAddr, String)>,
    /// Extra command-line flags for this workload's proxy (e.g. a short
    /// `--header-read-timeout`), appended after the harness's own.
    pub extra_args: Vec<String>,
    /// The services the workload declares it calls (`calls:`); `None` leaves it out.
    pub calls: Option<Vec<String>>,
}

/// 128 random bits in hex, as `openssl rand -hex 16` makes them: the control plane refuses
/// join tokens that could be guessed.
fn random_join_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    format!("{:016x}{:016x}", random(), random())
}

impl WorkloadSpec {
    pub fn new(name: &str, namespace: &str) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            namespace: namespace.into(),
            token: random_join_token(),
            app_port: free_port(),
            tcp_ports: vec![],
            inbound: free_addr(),
            outbound: free_addr(),
            admin: free_addr(),
            metrics: free_addr(),
            upstreams: vec![],
            extra_args: vec![],
            calls: None,
        }
    }

    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.name
        )
    }
}

/// A service of a test mesh: (name, namespace, protocol, endpoint workload names,
/// target port).
pub type ServiceSpec = (String, String, String, Vec<String>, Option<u16>);

/// A test mesh: workloads, services and the mesh file text.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    pub lifetime: String,
    pub identity: SocketAddr,
    pub discovery: SocketAddr,
    pub dashboard: SocketAddr,
    pub workloads: Vec<WorkloadSpec>,
    pub services: Vec<ServiceSpec>,
    pub policy_dir: Option<PathBuf>,
    pub policy_rule: Option<String>,
    /// `policy.request_body_bytes`: how much body the policy sees.
    pub policy_body_bytes: u32,
    /// Further `policy:` settings, as YAML lines indented by two spaces.
    pub policy_extra: String,
    /// Further top-level mesh file sections, as YAML.
    pub extra_yaml: String,
    /// Further control-plane replicas (`control_plane.replicas`): identity, discovery and
    /// dashboard addresses of each. Proxies are given them all.
    pub replicas: Vec<[SocketAddr; 3]>,
}

impl MeshSpec {
    pub fn new(workloads: Vec<WorkloadSpec>) -> MeshSpec {
        MeshSpec {
            lifetime: "1h".into(),
            identity: free_addr(),
            discovery: free_addr(),
            dashboard: free_addr(),
            workloads,
            services: vec![],
            policy_dir: None,
            policy_rule: None,
            policy_body_bytes: 0,
            policy_extra: String::new(),
            extra_yaml: String::new(),
            replicas: vec![],
        }
    }

    /// Adds `n` more control-plane replicas, each on addresses of its own.
    pub fn with_replicas(mut self, n: usize) -> Self {
        for _ in 0..n {
            self.replicas.push([free_addr(), free_addr(), free_addr()]);
        }
        self
    }

    /// Identity addresses of every replica, as the proxy's --identity-addr takes them.
    pub fn identity_addresses(&self) -> String {
        std::iter::once(self.identity)
            .chain(self.replicas.iter().map(|r| r[0]))
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Discovery addresses of every replica, as the proxy's --discovery-addr takes them.
    pub fn discovery_addresses(&self) -> String {
        std::iter::once(self.discovery)
            .chain(self.replicas.iter().map(|r| r[1]))
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn service(
        mut self,
        name: &str,
        protocol: &str,
        endpoints: &[&str],
        target_port: Option<u16>,
    ) -> Self {
        let ns = self
            .workloads
            .iter()
            .find(|w| w.name == endpoints[0])
            .map(|w| w.namespace.clone())
            .unwrap_or_else(|| "default".into());
        self.services.push((
            name.into(),
            ns,
            protocol.into(),
            endpoints.iter().map(|s| s.to_string()).collect(),
            target_port,
        ));
        self
    }

    pub fn workload(&self, name: &str) -> &WorkloadSpec {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .expect("workload in the test mesh")
    }

    /// The mesh file.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "trust_domain: {TRUST_DOMAIN}\ncertificate_lifetime: {}\ncontrol_plane:\n  identity: \"{}\"\n  discovery: \"{}\"\n  dashboard: \"{}\"\n",
            self.lifetime, self.identity, self.discovery, self.dashboard
        );
        if !self.replicas.is_empty() {
            y += "  replicas:\n";
            for [identity, discovery, dashboard] in &self.replicas {
                y += &format!(
                    "    - {{identity: \"{identity}\", discovery: \"{discovery}\", dashboard: \"{dashboard}\"}}\n"
                );
            }
        }
        if let Some(dir) = &self.policy_dir {
            y += &format!("policy:\n  dir: \"{}\"\n", dir.display());
            if let Some(rule) = &self.policy_rule {
                y += &format!("  rule: \"{rule}\"\n");
            }
            y += &format!("  request_body_bytes: {}\n", self.policy_body_bytes);
            y += &self.policy_extra;
        }
        y += &self.extra_yaml;
        y += "workloads:\n";
        for w in &self.workloads {
            y += &format!(
                "  - name: {}\n    namespace: {}\n    join_token: \"{}\"\n    app_port: {}\n    tcp_ports: {:?}\n    proxy:\n      inbound: \"{}\"\n      outbound: \"{}\"\n      admin: \"{}\"\n      metrics: \"{}\"\n",
                w.name, w.namespace, w.token, w.app_port, w.tcp_ports, w.inbound, w.outbound, w.admin, w.metrics
            );
            if let Some(calls) = &w.calls {
                y += &format!("    calls: {calls:?}\n");
            }
        }
        y += "services:\n";
        for (name, ns, protocol, endpoints, target) in &self.services {
            y += &format!(
                "  - name: {name}\n    namespace: {ns}\n    protocol: {protocol}\n    endpoints: [{}]\n",
                endpoints.join(", ")
            );
            if let Some(p) = target {
                y += &format!("    target_port: {p}\n");
            }
        }
        y
    }
}

/// A running mesh: control plane and proxies as processes.
pub struct Mesh {
    pub spec: MeshSpec,
    pub dir: tempfile::TempDir,
    pub control_plane: Process,
    pub proxies: Vec<Process>,
}

impl Mesh {
    /// Writes the mesh file and starts the control plane.
    pub async fn start(spec: MeshSpec) -> anyhow::Result<Mesh> {
        let yaml = spec.yaml();
        Mesh::start_with_yaml(spec, &yaml).await
    }

    /// Like [`Mesh::start`], with a mesh file written by the test (`spec`'s, changed).
    pub async fn start_with_yaml(spec: MeshSpec, yaml: &str) -> anyhow::Result<Mesh> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("mesh.yaml"), yaml)?;
        let control_plane = start_control_plane(dir.path(), &spec).await?;
        Ok(Mesh {
            spec,
            dir,
            control_plane,
            proxies: vec![],
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the control plane (proxies keep running).
    pub fn stop_control_plane(&mut self) {
        self.control_plane.kill();
    }

    /// Starts the control plane again on the same data directory.
    pub async fn restart_control_plane(&mut self) -> anyhow::Result<()> {
        self.control_plane.kill();
        self.control_plane = start_control_plane(self.dir.path(), &self.spec).await?;
        Ok(())
    }

    /// Starts the proxy of `workload` and waits until it is ready.
    pub async fn start_proxy(&mut self, workload: &str) -> anyhow::Result<()> {
        let w = self.spec.workload(workload).clone();
        self.start_proxy_as(&w, w.inbound).await
    }

    /// Starts `w`'s proxy with its inbound listener on `inbound` (to impersonate an
    /// endpoint in identity tests).
    pub async fn start_proxy_as(
        &mut self,
        w: &WorkloadSpec,
        inbound: SocketAddr,
    ) -> anyhow::Result<()> {
        let mut args = vec![
            "--trust-domain".to_string(),
            TRUST_DOMAIN.into(),
            "--token".into(),
            w.token.clone(),
            "--trust-bundle".into(),
            self.data_dir()
                .join("trust-bundle.pem")
                .display()
                .to_string(),
            "--identity-addr".into(),
            self.spec.identity_addresses(),
            "--discovery-addr".into(),
            self.spec.discovery_addresses(),
            "--inbound".into(),
            inbound.to_string(),
            "--outbound".into(),
            w.outbound.to_string(),
            "--admin".into(),
            w.admin.to_string(),
            "--metrics".into(),
            w.metrics.to_string(),
            "--decision-log".into(),
            self.dir
                .path()
                .join(format!("{}-decisions.log", w.name))
                .display()
                .to_string(),
        ];
        for (addr, service) in &w.upstreams {
            args.push("--upstream".into());
            args.push(format!("{addr}={service}"));
        }
        args.extend(w.extra_args.iter().cloned());
        let name = format!("proxy-{}-{}", w.name, self.proxies.len());
        let mut p = Process::spawn(&name, self.dir.path(), &binary("vigil-proxy"), &args)?;
        wait_ready(&mut p, w.admin).await?;
        self.proxies.push(p);
        Ok(())
    }

    /// Everything the processes printed, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- control plane ---\n{}\n", self.control_plane.output());
        for p in &self.proxies {
            out += &format!("--- {} ---\n{}\n", p.name, p.output());
        }
        out
    }
}

/// Starts replica `n` of the mesh's control plane (0: the `control_plane:` addresses) on
/// the mesh's file and data directory, and waits until its discovery port answers.
pub async fn start_control_plane_replica(
    dir: &Path,
    spec: &MeshSpec,
    n: usize,
) -> anyhow::Result<Process> {
    let discovery = match n {
        0 => spec.discovery,
        n => spec.replicas[n - 1][1],
    };
    let args = vec![
        "control-plane".to_string(),
        "--mesh".into(),
        dir.join("mesh.yaml").display().to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--reload-interval".into(),
        "200ms".into(),
        "--replica".into(),
        n.to_string(),
    ];
    let name = match n {
        0 => "control-plane".to_string(),
        n => format!("control-plane-{n}"),
    };
    let mut p = Process::spawn(&name, dir, &binary("vigil"), &args)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(discovery).await.is_err() {
        if !p.running() || Instant::now() > deadline {
            bail!("control plane replica {n} did not start:\n{}", p.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(p)
}

async fn start_control_plane(dir: &Path, spec: &MeshSpec) -> anyhow::Result<Process> {
    start_control_plane_replica(dir, spec, 0).await
}

/// Waits for a proxy's `/ready`.
pub async fn wait_ready(p: &mut Process, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((status, _)) = get(admin, "/ready").await {
            if status == 200 {
                return Ok(());
            }
        }
        if !p.running() || Instant::now() > deadline {
            bail!("{} did not become ready:\n{}", p.name, p.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy's Prometheus exposition.
pub async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// A plain HTTP/1.1 GET to `addr` (the admin port), returning status and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let r = http1(addr, "localhost", path, &[]).await?;
    Ok((r.status, r.body))
}

/// A response as the test sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection to `addr` with the given Host header.
pub async fn http1(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    send1(addr, "GET", host, path, headers, Bytes::new()).await
}

/// One HTTP/1.1 request with a method and body on a fresh connection.
pub async fn send1(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Reply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender.send_request(req.body(Full::new(body))?).await?;
    reply(res).await
}

/// One HTTP/2 (prior knowledge) request on a fresh connection to `addr`.
pub async fn http2(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{host}{path}"))
        .body(Full::new(Bytes::new()))?;
    let res = sender.send_request(req).await?;
    reply(res).await
}

async fn reply(res: Response<hyper::body::Incoming>) -> anyhow::Result<Reply> {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A keep-alive HTTP/1.1 client for steady traffic through a proxy.
pub fn pooled_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a GET through `client` to `via` with Host `host`.
pub async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    via: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    let req = Request::builder()
        .uri(format!("http://{via}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    reply(client.request(req).await?).await
}

/// An application: answers every request with a JSON echo of what it received
/// (method, path, the peer-identity header, all headers) and counts requests.
pub async fn start_echo_app(
    port: u16,
    name: &'static str,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicU64>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async move {
                            // A repeated header's values, joined with commas.
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .keys()
                                .map(|k| {
                                    let values: Vec<&str> = req
                                        .headers()
                                        .get_all(k)
                                        .iter()
                                        .map(|v| v.to_str().unwrap_or(""))
                                        .collect();
                                    (k.to_string(), serde_json::Value::from(values.join(",")))
                                })
                                .collect();
                            let body = serde_json::json!({
                                "app": name,
                                "method": req.method().as_str(),
                                "path": req.uri().to_string(),
                                "version": format!("{:?}", req.version()),
                                "peer": req.headers().get("x-vigil-peer-identity").and_then(|v| v.to_str().ok()),
                                "headers": headers,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(hits)
}

/// A raw TCP echo application.
/// A running pair with a TCP service `echo` on the server workload (a TCP echo app behind
/// it), reached through an upstream listener of the client proxy, which also gets
/// `client_args`. Returns the mesh and that listener's address.
pub async fn tcp_echo_mesh(client_args: &[&str]) -> anyhow::Result<(Mesh, SocketAddr)> {
    let mut client = WorkloadSpec::new("client", "demo");
    let mut server = WorkloadSpec::new("server", "demo");
    let echo_port = free_port();
    server.tcp_ports = vec![echo_port];
    let upstream = free_addr();
    client.upstreams = vec![(upstream, "echo".into())];
    client.extra_args = client_args.iter().map(|a| a.to_string()).collect();
    let spec = MeshSpec::new(vec![client, server])
        .service("server", "http", &["server"], None)
        .service("echo", "tcp", &["server"], Some(echo_port));
    let mut mesh = Mesh::start(spec).await?;
    start_tcp_echo(echo_port).await?;
    mesh.start_proxy("client").await?;
    mesh.start_proxy("server").await?;
    Ok((mesh, upstream))
}

pub async fn start_tcp_echo(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

// ---- Resilience: traffic policies, controllable apps, endpoints that come and go ----

/// `spec`'s mesh file with a `traffic:` section for each named service. The policy is
/// written as JSON, which YAML reads as a flow mapping.
pub fn yaml_with_traffic(spec: &MeshSpec, traffic: &[(&str, serde_json::Value)]) -> String {
    let mut yaml = spec.yaml();
    for (service, policy) in traffic {
        let entry = format!("  - name: {service}\n    namespace: ");
        let Some(at) = yaml.find(&entry) else {
            panic!("service {service} is not in the test mesh");
        };
        let endpoints = yaml[at..]
            .find("    endpoints: [")
            .map(|i| at + i)
            .expect("the service's endpoints line");
        let line_end = yaml[endpoints..]
            .find('\n')
            .map(|i| endpoints + i + 1)
            .unwrap_or(yaml.len());
        yaml.insert_str(line_end, &format!("    traffic: {policy}\n"));
    }
    yaml
}

impl Mesh {
    /// Like [`Mesh::start`], with traffic policies for some services.
    pub async fn start_with_traffic(
        spec: MeshSpec,
        traffic: &[(&str, serde_json::Value)],
    ) -> anyhow::Result<Mesh> {
        let yaml = yaml_with_traffic(&spec, traffic);
        Mesh::start_with_yaml(spec, &yaml).await
    }

    /// Replaces the mesh file; the control plane reloads it within its reload interval
    /// (200 ms here) and pushes new snapshots to the proxies.
    pub fn rewrite_mesh_file(&self, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.dir.path().join("mesh.yaml"))?;
        Ok(())
    }

    /// Kills the running proxy of `workload` (as a crash would: no goodbye).
    pub fn kill_proxy(&mut self, workload: &str) {
        let prefix = format!("proxy-{workload}-");
        for p in self
            .proxies
            .iter_mut()
            .filter(|p| p.name.starts_with(&prefix))
        {
            p.kill();
        }
    }
}

/// Knobs and counters of an app started by [`start_app`].
#[derive(Default)]
pub struct App {
    pub name: String,
    /// Requests received.
    pub hits: std::sync::atomic::AtomicU64,
    /// Share of requests answered 503, spread evenly (30 → 3 of every 10).
    pub fail_percent: std::sync::atomic::AtomicU64,
    /// Added to every answer.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

/// An HTTP application whose behaviour the test controls: it answers `{"app": name}`,
/// fails `fail_percent` of requests with 503, waits `delay_ms`, sleeps N ms on any path
/// containing `/sleep/N`, and on a path containing `/forge-denial` answers 403 dressed
/// as a Vigil policy denial (`x-vigil-error: policy-denied`), as a misbehaving app might.
pub async fn start_app(port: u16, name: &str) -> anyhow::Result<std::sync::Arc<App>> {
    use std::sync::atomic::Ordering::Relaxed;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let app = std::sync::Arc::new(App {
        name: name.to_string(),
        ..App::default()
    });
    let shared = app.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let app = shared.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move {
                            let n = app.hits.fetch_add(1, Relaxed);
                            let pct = app.fail_percent.load(Relaxed).min(100);
                            let fail = (n + 1) * pct / 100 > n * pct / 100;
                            let sleep = req
                                .uri()
                                .path()
                                .split_once("/sleep/")
                                .and_then(|(_, ms)| ms.split('/').next()?.parse::<u64>().ok())
                                .unwrap_or(0);
                            let wait = sleep + app.delay_ms.load(Relaxed);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            let forge = req.uri().path().contains("/forge-denial");
                            let status = if fail {
                                503
                            } else if forge {
                                403
                            } else {
                                200
                            };
                            let body = serde_json::json!({"app": app.name}).to_string();
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or_default();
                            if forge {
                                response.headers_mut().insert(
                                    "x-vigil-error",
                                    http::HeaderValue::from_static("policy-denied"),
                                );
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(app)
}

/// A metric's value in a Prometheus exposition (0 when absent). `series` is the name with
/// the labels that pick it out, as exposed: `vigil_retries_total{service="web.demo"}`.
/// Labels the series carries besides those (the proxy's `local_*` labels) do not matter;
/// every series that has all of them is summed.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    let (name, wanted) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = split_labels(wanted);
    exposition
        .lines()
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let labels = match head.split_once('{') {
                Some((n, rest)) if n == name => rest.trim_end_matches('}'),
                None if head == name => "",
                _ => return None,
            };
            let have = split_labels(labels);
            wanted
                .iter()
                .all(|w| have.contains(w))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `a="x",b="y,z"` as `["a=\"x\"", "b=\"y,z\""]`: commas inside quotes do not split.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

// ---- The dashboard: `vigil demo` as a process, headless Chromium ----

impl Process {
    /// The child's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would.
    pub fn interrupt(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
    }

    /// Sends SIGTERM, as a kubelet stopping the pod would.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the process to exit on its own; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Debian's headless-capable Chromium. Tests that need it fail (never skip) without it.
pub fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is missing: install Debian's chromium package (apt-get install chromium), or run the tests with scripts/test.sh which does"
    );
    path
}

/// Runs headless Chromium on `url` with a fresh profile and `extra` arguments (e.g.
/// `--dump-dom`, `--screenshot=PATH`); its standard output.
pub fn headless_chromium(url: &str, extra: &[String]) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running chromium")?;
    if !out.status.success() {
        bail!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where tests keep files for people to look at (`target/test-artifacts`).
pub fn artifacts_dir() -> PathBuf {
    let dir = workspace_root().join("target").join("test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The opening tags in `html` that carry every one of `attributes` (`data-node="web"`).
pub fn tags_with<'a>(html: &'a str, attributes: &[&str]) -> Vec<&'a str> {
    html.split('<')
        .filter_map(|t| t.split('>').next())
        .filter(|t| attributes.iter().all(|a| t.contains(a)))
        .collect()
}

/// An attribute's value in one opening tag.
pub fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

// ---- Process memory, for the bounded-memory checks ----

impl Process {
    /// Resident set size in KiB (VmRSS), 0 once the process is gone.
    pub fn rss_kib(&self) -> u64 {
        self.child
            .as_ref()
            .and_then(|c| std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok())
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

// ---- Applications written in Python with real protocol libraries (grpcio, websockets) ----

/// Fails (never skips) when `python3` cannot import `module`, naming the package to install.
pub fn require_python_module(module: &str, package: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 with {package} is needed: run `bash scripts/test.sh`, which installs it, or `pip3 install {package}`"
    );
}

/// Starts `python3 SCRIPT serve PORT NAME` (logging into `dir`) and waits until it prints
/// `serving`.
pub async fn start_python_app(
    dir: &Path,
    name: &str,
    script: &Path,
    port: u16,
) -> anyhow::Result<Process> {
    let app = Process::spawn(
        name,
        dir,
        Path::new("python3"),
        &[
            script.display().to_string(),
            "serve".into(),
            port.to_string(),
            name.to_string(),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.output().contains("serving") {
        if Instant::now() > deadline {
            bail!("{name} did not start: {}", app.output());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(app)
}

/// The first line of the file at `path` that `wanted` accepts, waiting up to `limit` for
/// it: logs written by a thread of their own (decision and access logs) lag the request.
pub async fn wait_for_line(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
    limit: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| wanted(l)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "no such line in {} after {limit:?}:\n{text}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- Prometheus itself, to check what the proxies expose against the real thing ----

/// Debian's `prometheus` or `promtool` binary; fails (never skips) when it is missing,
/// saying how to install it.
pub fn prometheus_tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: install Debian's prometheus package (apt-get install prometheus), or run the tests with scripts/test.sh which does"
    );
    path
}

// ---- `vigil demo`, whose dashboard and proxies listen on fixed ports ----

/// `vigil demo` that is stopped with SIGINT, as a person would, even when the test fails:
/// a SIGKILL would leave its proxies and apps running.
pub struct RunningDemo(pub Process);

impl Drop for RunningDemo {
    fn drop(&mut self) {
        self.0.interrupt();
        if self.0.wait_exit(Duration::from_secs(20)).is_none() {
            self.0.kill();
        }
    }
}

/// Starts `vigil demo` for five minutes, run from `dir`, keeping its mesh in `data`.
pub fn start_demo(dir: &Path, data: &Path) -> RunningDemo {
    RunningDemo(
        Process::spawn(
            "demo",
            dir,
            &binary("vigil"),
            &[
                "demo".into(),
                "--duration".into(),
                "5m".into(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        )
        .expect("vigil demo starts"),
    )
}

// ---- The smallest mesh: a client calling an echo server over mutual TLS ----

/// Workloads `client` and `server` (namespace `demo`), with service `server` (HTTP).
pub fn echo_pair() -> MeshSpec {
    MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
    ])
    .service("server", "http", &["server"], None)
}

/// [`echo_pair`] running: control plane, the server's echo app and both proxies ready.
pub async fn running_echo_pair() -> Mesh {
    running_echo_pair_of(echo_pair()).await
}

/// Like [`running_echo_pair`], for a variant of [`echo_pair`]'s spec (other flags, policy
/// or lifetimes).
pub async fn running_echo_pair_of(spec: MeshSpec) -> Mesh {
    let mut mesh = Mesh::start(spec).await.expect("control plane starts");
    start_echo_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("server app");
    for w in ["client", "server"] {
        mesh.start_proxy(w)
            .await
            .unwrap_or_else(|e| panic!("{w} proxy start: {e}"));
    }
    mesh
}
