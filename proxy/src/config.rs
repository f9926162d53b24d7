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
}

impl ProxyConfig {
    /// The control plane's identity, checked on every connection to it.
    pub fn control_plane_id(&self) -> Result<SpiffeId, vigil_identity::SpiffeIdError> {
        SpiffeId::workload(&self.trust_domain, "vigil-system", "vigil-control-plane")
    }
}
