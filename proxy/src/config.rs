//! The proxy's static configuration: where the control plane is, how to prove who it
//! is, and where to listen. Everything live (services, endpoints, policy, certificates)
//! comes later from the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use vigil_identity::{SpiffeId, TrustBundle};

use crate::http::limits::RequestLimits;

/// Start-up configuration of one sidecar, and the command line that sets it: each field
/// is one flag (and environment variable), so a setting is declared once, here or, for
/// the groups flattened in (request limits, tracing), beside the code that applies them.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyConfig {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "VIGIL_TRUST_DOMAIN", default_value = "vigil.local")]
    pub trust_domain: String,
    /// Bootstrap credential: the workload's join token (local mode).
    #[arg(
        long,
        env = "VIGIL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file",
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bootstrap credential (e.g. a projected ServiceAccount token).
    /// Re-read for every CSR, because the kubelet rotates projected tokens and an expired
    /// one would fail the next renewal.
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// What kind of credential the token is.
    #[arg(long, env = "VIGIL_TOKEN_KIND", value_enum, default_value = "join")]
    pub token_kind: CredentialKind,
    /// PEM roots that vouch for the control plane (its data dir's trust-bundle.pem),
    /// trusted until the proxy holds a bundle of its own.
    #[arg(long, env = "VIGIL_TRUST_BUNDLE")]
    pub trust_bundle: PathBuf,
    /// Control plane identity service (CSR signing): HOST:PORT, or a comma-separated list
    /// of the replicas of a control plane run more than once; a name that resolves to
    /// several addresses names them all.
    #[arg(long = "identity-addr", env = "VIGIL_IDENTITY_ADDR", default_value = "127.0.0.1:15012", value_parser = resolve_replicas)]
    pub identity_addresses: Replicas,
    /// Control plane discovery service, one address or several as for --identity-addr.
    #[arg(long = "discovery-addr", env = "VIGIL_DISCOVERY_ADDR", default_value = "127.0.0.1:15010", value_parser = resolve_replicas)]
    pub discovery_addresses: Replicas,
    /// Inbound mTLS listener.
    #[arg(long, env = "VIGIL_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Outbound listener for the application's plain traffic.
    #[arg(long, env = "VIGIL_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Admin listener; must be a loopback address.
    #[arg(long, env = "VIGIL_ADMIN", default_value = "127.0.0.1:15000", value_parser = loopback)]
    pub admin: SocketAddr,
    /// Prometheus metrics listener (/metrics).
    #[arg(long, env = "VIGIL_METRICS", default_value = "0.0.0.0:15090")]
    pub metrics: SocketAddr,
    /// Extra outbound listener bound to one service, as ADDRESS=SERVICE (repeatable).
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<(SocketAddr, String)>,
    /// Timeout for connecting to peers and the application.
    #[arg(long, env = "VIGIL_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long outbound waits for a client's first bytes before calling it opaque TCP.
    #[arg(skip = Duration::from_secs(1))]
    pub detect_timeout: Duration,
    /// How long a client may take to finish its TLS handshake on the inbound port.
    #[arg(long, env = "VIGIL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most certificates a peer may present, leaf included (leaf, intermediates, root);
    /// longer chains are refused with `reason="chain-too-long"`.
    #[arg(long, env = "VIGIL_MAX_CHAIN_DEPTH", default_value_t = 3)]
    pub max_chain_depth: usize,
    /// Threads that carry traffic. Each runs its own single-threaded runtime and owns
    /// the connections it accepted, with their peer and app connections, so a request
    /// never crosses threads; connections are spread over them round robin. One thread
    /// carries about 25,000 req/s on the 2-core bench machine with the least CPU per
    /// request (a second one there added 11-42% CPU per request, with the same p99 at
    /// 1,000 req/s); raise it for a workload that needs more than one core of proxying.
    #[arg(
        long,
        env = "VIGIL_WORKER_THREADS",
        default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    pub worker_threads: usize,
    #[command(flatten)]
    pub control_plane: ControlPlaneIdentity,
    #[command(flatten)]
    pub limits: ConnectionLimits,
    /// Largest request head accepted (bytes); larger requests get 431.
    #[arg(long, env = "VIGIL_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    #[command(flatten)]
    pub request_limits: RequestLimits,
    #[command(flatten)]
    pub http2: Http2Limits,
    /// How long a connection may carry nothing (no request in flight, no tunnel bytes)
    /// before it is closed (HTTP/2 gets GOAWAY).
    #[arg(long, env = "VIGIL_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// How long a write to a client may make no progress (a client that stopped reading)
    /// before its connection is closed.
    #[arg(long, env = "VIGIL_WRITE_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub write_stall_timeout: Duration,
    /// How long a client may take to send a request head (slowloris).
    #[arg(long, env = "VIGIL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "VIGIL_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Intercepted traffic to an address that is no mesh service: `deny` refuses it
    /// (HTTP gets 403 `egress-denied`), `allow` sends it there directly.
    #[arg(long, env = "VIGIL_EGRESS", value_enum, default_value = "deny")]
    pub egress: Egress,
    /// `strict` takes only mutual TLS from mesh peers on the inbound port; `permissive`
    /// also serves plaintext HTTP from callers outside the mesh, with no identity, while
    /// a workload migrates (counted in vigil_inbound_plaintext_connections_total).
    #[arg(long, env = "VIGIL_INBOUND_MODE", value_enum, default_value = "strict")]
    pub inbound_mode: InboundMode,
    #[command(flatten)]
    pub trace: crate::telemetry::trace::TraceConfig,
    /// The app's kubelet probes as JSON (the injector writes it), answered at
    /// /app-health/<container>/<probe> on the metrics listener.
    #[arg(
        long,
        env = "VIGIL_APP_PROBES",
        hide_env_values = true,
        default_value = "{}",
        hide_default_value = true,
        value_parser = crate::probes::AppProbes::from_json
    )]
    pub app_probes: crate::probes::AppProbes,
    /// Serve the SPIFFE Workload API on this Unix socket, so the application can fetch an
    /// X.509-SVID, JWT-SVIDs and the bundles of its own identity (mode 0600: only the
    /// proxy's user, and the app if it runs as the same one, may connect). Off by default:
    /// an X.509-SVID handed to the app comes with a private key, made for the app alone.
    #[arg(long, env = "VIGIL_WORKLOAD_API_SOCKET")]
    pub workload_api_socket: Option<PathBuf>,
}

/// The kind of bootstrap credential a proxy presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialKind {
    /// A join token from the mesh file (local mode).
    Join,
    /// A projected Kubernetes ServiceAccount token (cluster mode).
    Kubernetes,
}

impl CredentialKind {
    /// The kind as the identity API names it.
    pub fn api(self) -> vigil_api::TokenKind {
        match self {
            CredentialKind::Join => vigil_api::TokenKind::Join,
            CredentialKind::Kubernetes => vigil_api::TokenKind::KubernetesServiceAccount,
        }
    }
}

/// The addresses of a control plane's replicas.
#[derive(Debug, Clone)]
pub struct Replicas(pub Vec<SocketAddr>);

/// `HOST:PORT[,HOST:PORT...]`, each name resolved once, at start, to every address it has
/// (on Kubernetes the control plane is a Service name whose ClusterIP does not change
/// while the Service exists), duplicates dropped.
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

/// The admin port answers unauthenticated requests that change the proxy, so it listens
/// on loopback only.
fn loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; the admin port must stay local (use 127.0.0.1)"
        ));
    }
    Ok(addr)
}

/// Intercepted connections to an address that is no mesh service: refused (the closed
/// default: a workload reaches only what the mesh knows, and its operator opens the rest
/// on purpose), or sent there directly from the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Egress {
    #[default]
    Deny,
    Allow,
}

/// What the inbound port accepts. Strict (the default) takes mutual TLS from mesh peers
/// only; permissive also serves plaintext HTTP from callers outside the mesh, with no
/// identity (policy sees no source principal), so a workload can join the mesh before
/// all its callers have. Plaintext connections are counted so an operator sees when
/// none arrive any more and strict can be turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InboundMode {
    #[default]
    Strict,
    Permissive,
}

/// How many connections a listener takes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnectionLimits {
    /// Most connections each traffic listener accepts.
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS", default_value_t = ConnectionLimits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// Most connections from one source address per listener.
    #[arg(
        long = "max-connections-per-source",
        env = "VIGIL_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = ConnectionLimits::DEFAULT.max_per_source
    )]
    pub max_per_source: usize,
}

impl ConnectionLimits {
    /// The flags' defaults, also what the admin listener takes (it has no flags of its own).
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max_connections: 100_000,
        max_per_source: 50_000,
    };
}

/// HTTP/2 server limits.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Http2Limits {
    /// HTTP/2 streams one client may have open at once.
    #[arg(
        long = "http2-max-concurrent-streams",
        env = "VIGIL_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before the server accepts them; past
    /// this the connection is closed as a rapid-reset flood (CVE-2023-44487).
    #[arg(
        long = "http2-max-pending-resets",
        env = "VIGIL_HTTP2_MAX_PENDING_RESETS",
        default_value_t = 64
    )]
    pub max_pending_resets: usize,
}

impl ProxyConfig {
    /// The bootstrap credential to present now: the token file's current contents, or the
    /// start-up token when there is no file or it cannot be read.
    pub fn current_token(&self) -> String {
        self.token_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone())
            .unwrap_or_default()
    }

    /// The roots in `--trust-bundle`, read now.
    pub fn bootstrap_trust(&self) -> anyhow::Result<TrustBundle> {
        use anyhow::Context;
        let path = self.trust_bundle.display();
        let pem = std::fs::read_to_string(&self.trust_bundle).with_context(|| {
            format!("reading --trust-bundle {path} (the control plane writes it to its data dir as trust-bundle.pem)")
        })?;
        TrustBundle::from_pem(&pem).with_context(|| format!("parsing --trust-bundle {path}"))
    }

    /// TLS settings for every config this proxy builds, offering `alpn`.
    pub fn tls_options(&self, alpn: &[&[u8]]) -> vigil_identity::TlsOptions {
        vigil_identity::TlsOptions {
            max_chain_depth: self.max_chain_depth,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        }
    }

    /// The control plane's identity, checked on every connection to it: the namespace
    /// comes from [`ControlPlaneIdentity`], the trust domain is the proxy's own.
    pub fn control_plane_id(&self) -> Result<SpiffeId, ControlPlaneIdError> {
        self.control_plane.spiffe_id(&self.trust_domain)
    }
}

/// Where the control plane was installed, which its SPIFFE ID names. The injector sets
/// `VIGIL_CONTROL_PLANE_NAMESPACE` on the proxy container; a mesh installed in the
/// default namespace needs nothing.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ControlPlaneIdentity {
    /// Namespace of the control plane: the proxy accepts only
    /// `spiffe://<trust domain>/ns/<this>/sa/vigil-control-plane` on the identity and
    /// discovery ports.
    #[arg(
        long = "control-plane-namespace",
        env = "VIGIL_CONTROL_PLANE_NAMESPACE",
        default_value = "vigil-system"
    )]
    pub namespace: String,
}

/// The control plane's expected identity cannot be formed.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneIdError {
    #[error("the control plane's namespace and the trust domain do not form a SPIFFE ID: {0} (check VIGIL_CONTROL_PLANE_NAMESPACE and --trust-domain)")]
    SpiffeId(#[from] vigil_identity::SpiffeIdError),
}

impl ControlPlaneIdentity {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/vigil-control-plane`.
    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, ControlPlaneIdError> {
        Ok(SpiffeId::workload(
            trust_domain,
            &self.namespace,
            "vigil-control-plane",
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ProxyConfig,
    }

    fn parse(args: &[&str]) -> Result<ProxyConfig, clap::Error> {
        let argv = ["vigil-proxy", "--trust-bundle", "/roots.pem"];
        Cli::try_parse_from(argv.iter().chain(args)).map(|cli| cli.config)
    }

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_need_only_a_credential_and_the_roots() {
        let config = parse(&["--token", "t"]).expect("parses");
        assert_eq!(config.current_token(), "t");
        assert_eq!(config.admin, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(
            config.identity_addresses.0,
            ["127.0.0.1:15012".parse().unwrap()]
        );
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.inbound_mode, InboundMode::Strict);
        assert_eq!(config.egress, Egress::Deny);
        assert!(config.trace.endpoint.is_none());
        assert_eq!(config.token_kind.api(), vigil_api::TokenKind::Join);
    }

    #[test]
    fn a_credential_is_required_and_only_one() {
        let missing = parse(&[]).expect_err("refused").to_string();
        assert!(missing.contains("--token"), "{missing}");
        let both = parse(&["--token", "t", "--token-file", "/t"])
            .expect_err("refused")
            .to_string();
        assert!(both.contains("cannot be used with"), "{both}");
    }

    #[test]
    fn settings_that_need_no_io_are_checked_while_parsing() {
        let admin = parse(&["--token", "t", "--admin", "0.0.0.0:15000"])
            .expect_err("refused")
            .to_string();
        assert!(admin.contains("not a loopback address"), "{admin}");
        let workers = parse(&["--token", "t", "--worker-threads", "0"])
            .expect_err("refused")
            .to_string();
        assert!(workers.contains("--worker-threads"), "{workers}");
        let replicas = parse(&[
            "--token",
            "t",
            "--discovery-addr",
            "10.0.0.1:15010, 10.0.0.2:15010,10.0.0.1:15010",
        ])
        .expect("parses");
        assert_eq!(
            replicas.discovery_addresses.0,
            [
                "10.0.0.1:15010".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:15010".parse().unwrap()
            ],
            "each replica once, in order"
        );
    }

    #[test]
    fn a_token_file_is_read_again_and_the_start_up_token_is_the_fallback() {
        let dir = std::env::temp_dir().join(format!("vigil-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first\n").unwrap();
        let mut config = parse(&["--token-file", file.to_str().unwrap()]).expect("parses");
        config.token = Some("start-up".into());
        assert_eq!(config.current_token(), "first");
        std::fs::write(&file, "rotated").unwrap();
        assert_eq!(config.current_token(), "rotated");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(config.current_token(), "start-up");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
