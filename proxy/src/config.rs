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
    pub identity_address: SocketAddr,
    pub discovery_address: SocketAddr,
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
    /// Connections each traffic listener takes, in total and per source address.
    pub limits: crate::listener::ConnectionLimits,
    /// Largest request head (line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send its request head (slowloris).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish once draining starts.
    pub drain_timeout: Duration,
    /// OpenTelemetry export; tracing is off when absent.
    pub trace: Option<crate::trace::TraceConfig>,
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

    /// The control plane's identity, checked on every connection to it.
    pub fn control_plane_id(&self) -> Result<SpiffeId, vigil_identity::SpiffeIdError> {
        SpiffeId::workload(&self.trust_domain, "vigil-system", "vigil-control-plane")
    }
}
