//! The proxy's static configuration: where the control plane is, how to prove who it
//! is, and where to listen. Everything live (services, endpoints, policy, certificates)
//! comes later from the control plane.

use std::net::SocketAddr;
use std::time::Duration;

use vigil_identity::{SpiffeId, TrustBundle};

/// Start-up configuration of one sidecar.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub trust_domain: String,
    /// Bootstrap credential for the identity service.
    pub token: String,
    /// Where the token came from; re-read for every CSR, because the kubelet rotates
    /// projected ServiceAccount tokens and an expired one would fail the next renewal.
    pub token_file: Option<std::path::PathBuf>,
    pub token_kind: vigil_api::TokenKind,
    /// Roots that vouch for the control plane before the proxy has a bundle of its own.
    pub bootstrap_trust: TrustBundle,
    /// The control plane's identity service, one address per replica.
    pub identity_addresses: Vec<SocketAddr>,
    /// The control plane's discovery service, one address per replica.
    pub discovery_addresses: Vec<SocketAddr>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// Prometheus `/metrics`.
    pub metrics: SocketAddr,
    /// Extra outbound listeners, each bound to one service.
    pub upstreams: Vec<(SocketAddr, String)>,
    pub connect_timeout: Duration,
    /// How long outbound waits for a client's first bytes before calling it opaque TCP.
    pub detect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Most certificates a peer may present, leaf included; longer chains are refused
    /// with `reason="chain-too-long"`.
    pub max_chain_depth: usize,
    /// Threads that carry traffic, each with its own runtime and connections.
    pub worker_threads: usize,
    /// Where the control plane runs, which its expected identity names.
    pub control_plane: ControlPlaneIdentity,
    /// Connections each traffic listener takes, in total and per source address.
    pub limits: crate::transport::listener::ConnectionLimits,
    /// Largest request head (line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Request line, header count and body limits checked on every request.
    pub request_limits: RequestLimits,
    /// HTTP/2 stream limits and reset-flood protection.
    pub http2: Http2Limits,
    /// How long a connection may carry nothing (no request in flight, no tunnel bytes)
    /// before it is closed: HTTP/2 with GOAWAY, HTTP/1 and tunnels by closing.
    pub idle_timeout: Duration,
    /// How long a write to a client may make no progress (it stopped reading) before
    /// its connection is closed.
    pub write_stall_timeout: Duration,
    /// How long a client may take to send its request head (slowloris).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish once draining starts.
    pub drain_timeout: Duration,
    /// What intercepted traffic to an address outside the mesh gets.
    pub egress: Egress,
    /// Whether the inbound port also takes plaintext (during a migration to the mesh).
    pub inbound_mode: InboundMode,
    /// OpenTelemetry export; tracing is off when absent.
    pub trace: Option<crate::telemetry::trace::TraceConfig>,
    /// The app's kubelet probes, answered at `/app-health/...` on the metrics port.
    pub app_probes: crate::admin::probes::AppProbes,
    /// Where to serve the SPIFFE Workload API to the application (off when `None`).
    pub workload_api_socket: Option<std::path::PathBuf>,
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

/// Limits on one request, applied on both traffic listeners. The command line is
/// derived from these fields (one source for each setting).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RequestLimits {
    /// Longest request line (method and target, bytes); longer requests get 414.
    #[arg(long, env = "VIGIL_MAX_REQUEST_LINE_BYTES", default_value_t = 16 * 1024)]
    pub max_request_line_bytes: usize,
    /// Most header fields in a request; more get 431.
    #[arg(long, env = "VIGIL_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Largest request body (bytes); larger requests get 413. No limit unless given.
    #[arg(long = "max-request-body-bytes", env = "VIGIL_MAX_REQUEST_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_request_line_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: None,
        }
    }
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

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 1024,
            max_pending_resets: 64,
        }
    }
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
            .unwrap_or_else(|| self.token.clone())
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
