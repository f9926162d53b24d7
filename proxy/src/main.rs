//! `vigil-proxy`: the sidecar binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vigil_proxy::config::ProxyConfig;

mod log_file;

#[derive(Parser)]
#[command(
    name = "vigil-proxy",
    version,
    about = "Vigil sidecar proxy: mTLS, policy and resilience for one workload"
)]
struct Args {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "VIGIL_TRUST_DOMAIN", default_value = "vigil.local")]
    trust_domain: String,
    /// Bootstrap credential: the workload's join token (local mode).
    #[arg(
        long,
        env = "VIGIL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the bootstrap credential (e.g. a projected ServiceAccount token).
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// What kind of credential the token is.
    #[arg(long, env = "VIGIL_TOKEN_KIND", value_enum, default_value = "join")]
    token_kind: TokenKindArg,
    /// PEM roots that vouch for the control plane (its data dir's trust-bundle.pem).
    #[arg(long, env = "VIGIL_TRUST_BUNDLE")]
    trust_bundle: PathBuf,
    /// Control plane identity service (CSR signing): HOST:PORT, or a comma-separated list
    /// of the replicas of a control plane run more than once; a name that resolves to
    /// several addresses names them all.
    #[arg(long, env = "VIGIL_IDENTITY_ADDR", default_value = "127.0.0.1:15012", value_parser = resolve_replicas)]
    identity_addr: Replicas,
    /// Control plane discovery service, one address or several as for --identity-addr.
    #[arg(long, env = "VIGIL_DISCOVERY_ADDR", default_value = "127.0.0.1:15010", value_parser = resolve_replicas)]
    discovery_addr: Replicas,
    /// Inbound mTLS listener.
    #[arg(long, env = "VIGIL_INBOUND", default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// Outbound listener for the application's plain traffic.
    #[arg(long, env = "VIGIL_OUTBOUND", default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// Admin listener; must be a loopback address.
    #[arg(long, env = "VIGIL_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Prometheus metrics listener (/metrics).
    #[arg(long, env = "VIGIL_METRICS", default_value = "0.0.0.0:15090")]
    metrics: SocketAddr,
    /// Extra outbound listener bound to one service, as ADDRESS=SERVICE (repeatable).
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<(SocketAddr, String)>,
    /// Timeout for connecting to peers and the application.
    #[arg(long, env = "VIGIL_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    #[command(flatten)]
    control_plane: vigil_proxy::config::ControlPlaneIdentity,
    #[command(flatten)]
    connection_limits: vigil_proxy::transport::listener::ConnectionLimits,
    #[command(flatten)]
    request_limits: vigil_proxy::config::RequestLimits,
    #[command(flatten)]
    http2: vigil_proxy::config::Http2Limits,
    /// Largest request head accepted (bytes); larger requests get 431.
    #[arg(long, env = "VIGIL_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// How long a client may take to finish its TLS handshake on the inbound port.
    #[arg(long, env = "VIGIL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Most certificates a peer may present, leaf included (leaf, intermediates, root).
    #[arg(long, env = "VIGIL_MAX_CHAIN_DEPTH", default_value_t = 3)]
    max_chain_depth: usize,
    /// How long a connection may carry nothing before it is closed (HTTP/2 gets GOAWAY).
    #[arg(long, env = "VIGIL_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How long a write to a client may make no progress (a client that stopped reading)
    /// before its connection is closed.
    #[arg(long, env = "VIGIL_WRITE_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    write_stall_timeout: Duration,
    /// How long a client may take to send a request head.
    #[arg(long, env = "VIGIL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "VIGIL_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Threads that carry traffic. Each runs its own single-threaded runtime and owns
    /// the connections it accepted, with their peer and app connections, so a request
    /// never crosses threads; connections are spread over them round robin. One thread
    /// carries about 25,000 req/s on the 2-core bench machine with the least CPU per
    /// request (a second one there added 25% CPU per request, with the same p99 at
    /// 1,000 req/s); raise it for a workload that needs more than one core of proxying.
    #[arg(long, env = "VIGIL_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
    /// Intercepted traffic to an address that is no mesh service: `deny` refuses it
    /// (HTTP gets 403 `egress-denied`), `allow` sends it there directly.
    #[arg(long, env = "VIGIL_EGRESS", value_enum, default_value = "deny")]
    egress: vigil_proxy::config::Egress,
    /// `strict` takes only mutual TLS from mesh peers on the inbound port; `permissive`
    /// also serves plaintext HTTP from callers outside the mesh, with no identity, while
    /// a workload migrates (counted in vigil_inbound_plaintext_connections_total).
    #[arg(long, env = "VIGIL_INBOUND_MODE", value_enum, default_value = "strict")]
    inbound_mode: vigil_proxy::config::InboundMode,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); tracing is off without it.
    #[arg(long, env = "VIGIL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces to sample, 0.0 to 1.0.
    #[arg(long, env = "VIGIL_TRACE_SAMPLING", default_value_t = 1.0)]
    trace_sampling: f64,
    /// Decision log destination: a file path, or "-" for standard output. A file is
    /// created mode 600 (its directory 700) and an existing one is made 600.
    #[arg(long, env = "VIGIL_DECISION_LOG", default_value = "-")]
    decision_log: String,
    /// JSON access log, one line per request: a file path or "-" for standard output.
    /// Off unless given. Files are kept private like the decision log's.
    #[arg(long, env = "VIGIL_ACCESS_LOG")]
    access_log: Option<String>,
    /// Keep query strings in the access log (and the tap). Without it a record keeps the
    /// path and the access log says `"query": "redacted"`: queries often carry tokens and
    /// personal data.
    #[arg(long, env = "VIGIL_LOG_QUERY_STRINGS", requires = "access_log")]
    log_query_strings: bool,
    /// The app's kubelet probes as JSON (the injector writes it), answered at
    /// /app-health/<container>/<probe> on the metrics listener.
    #[arg(long, env = "VIGIL_APP_PROBES", hide_env_values = true, value_parser = vigil_proxy::admin::probes::AppProbes::from_json)]
    app_probes: Option<vigil_proxy::admin::probes::AppProbes>,
    /// Serve the SPIFFE Workload API on this Unix socket, so the application can fetch an
    /// X.509-SVID, JWT-SVIDs and the bundles of its own identity (mode 0600: only the
    /// proxy's user, and the app if it runs as the same one, may connect). Off by default:
    /// an X.509-SVID handed to the app comes with a private key, made for the app alone.
    #[arg(long, env = "VIGIL_WORKLOAD_API_SOCKET")]
    workload_api_socket: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenKindArg {
    Join,
    Kubernetes,
}

/// `ip:port`, or `host:port` resolved once at start: on Kubernetes the control plane is a
/// Service name whose ClusterIP does not change while the Service exists.
/// The addresses of a control plane's replicas.
#[derive(Debug, Clone)]
struct Replicas(Vec<SocketAddr>);

/// `HOST:PORT[,HOST:PORT...]`, each name resolved to every address it has, duplicates
/// dropped.
fn resolve_replicas(s: &str) -> Result<Replicas, String> {
    use std::net::ToSocketAddrs;
    let mut all: Vec<SocketAddr> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let found: Vec<SocketAddr> = match item.parse() {
            Ok(addr) => vec![addr],
            Err(_) => item
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {item:?}: {e} (give HOST:PORT)"))?
                .collect(),
        };
        if found.is_empty() {
            return Err(format!("{item:?} resolves to no address"));
        }
        for addr in found {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    if all.is_empty() {
        return Err("no address given: pass HOST:PORT, or several separated by commas".into());
    }
    Ok(Replicas(all))
}

fn parse_upstream(s: &str) -> Result<(SocketAddr, String), String> {
    let (addr, service) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ADDRESS=SERVICE, got {s:?}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((addr, service.to_string()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_proxy::telemetry::logging::init();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    if !args.admin.ip().is_loopback() {
        anyhow::bail!(
            "--admin {} is not a loopback address; the admin port must stay local (use 127.0.0.1)",
            args.admin
        );
    }
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("no bootstrap credential: pass --token or --token-file"),
    };
    let pem = std::fs::read_to_string(&args.trust_bundle).with_context(|| {
        format!(
            "reading --trust-bundle {} (the control plane writes it to its data dir as trust-bundle.pem)",
            args.trust_bundle.display()
        )
    })?;
    let bootstrap_trust = vigil_identity::TrustBundle::from_pem(&pem)
        .with_context(|| format!("parsing --trust-bundle {}", args.trust_bundle.display()))?;
    let config = ProxyConfig {
        trust_domain: args.trust_domain,
        token,
        token_file: args.token_file.clone(),
        token_kind: match args.token_kind {
            TokenKindArg::Join => vigil_api::TokenKind::Join,
            TokenKindArg::Kubernetes => vigil_api::TokenKind::KubernetesServiceAccount,
        },
        bootstrap_trust,
        identity_addresses: args.identity_addr.0,
        discovery_addresses: args.discovery_addr.0,
        inbound: args.inbound,
        outbound: args.outbound,
        admin: args.admin,
        metrics: args.metrics,
        upstreams: args.upstreams,
        connect_timeout: args.connect_timeout,
        detect_timeout: Duration::from_secs(1),
        handshake_timeout: args.handshake_timeout,
        max_chain_depth: args.max_chain_depth,
        limits: args.connection_limits,
        worker_threads: args.worker_threads.max(1),
        control_plane: args.control_plane,
        max_header_bytes: args.max_header_bytes,
        request_limits: args.request_limits,
        http2: args.http2,
        idle_timeout: args.idle_timeout,
        write_stall_timeout: args.write_stall_timeout,
        header_read_timeout: args.header_read_timeout,
        drain_timeout: args.drain_timeout,
        egress: args.egress,
        inbound_mode: args.inbound_mode,
        trace: args
            .otlp_endpoint
            .map(|endpoint| vigil_proxy::telemetry::trace::TraceConfig {
                endpoint,
                sampling: args.trace_sampling,
            }),
        app_probes: args.app_probes.unwrap_or_default(),
        workload_api_socket: args.workload_api_socket.clone(),
    };
    let log = open_log(&args.decision_log, "--decision-log")?;
    let access_log = args
        .access_log
        .as_deref()
        .map(|path| open_log(path, "--access-log"))
        .transpose()?
        .map(|writer| {
            vigil_proxy::telemetry::observe::AccessLog::new(writer, args.log_query_strings)
        });
    // This thread is traffic worker 0 and also runs the listeners, discovery and the
    // admin port; `run` starts the other workers (see `transport::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(vigil_proxy::run(config, log, access_log))
}

/// A log destination: "-" for standard output, otherwise a file appended to, readable
/// by this user only.
fn open_log(path: &str, flag: &'static str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = log_file::open_private(std::path::Path::new(path), flag)?;
    Ok(Box::new(file))
}
