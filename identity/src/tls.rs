//! The one place rustls configs are made: TLS 1.3 only, the aws-lc-rs provider with
//! X25519MLKEM768 key exchange first ([`crate::provider`]), SVID verification.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;

use crate::provider;
use crate::spiffe::SpiffeId;
use crate::store::{SvidStore, TrustStore};
use crate::verify::{SvidClientVerifier, SvidServerVerifier};

/// The fixed server name handed to TLS connectors (see [`server_name_for`]).
pub const PLACEHOLDER_SERVER_NAME: &str = "vigil.svc";

/// Knobs shared by all configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Most certificates a peer may present, leaf included (default 3: leaf, intermediate, root).
    pub max_chain_depth: usize,
    /// ALPN protocols, most preferred first (empty: no ALPN).
    pub alpn: Vec<Vec<u8>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            max_chain_depth: 3,
            alpn: Vec::new(),
        }
    }
}

/// Server that requires and verifies a client SVID from our trust domain (inbound 15006,
/// discovery 15010).
pub fn mtls_server_config(
    svid: Arc<SvidStore>,
    trust: Arc<TrustStore>,
    opts: &TlsOptions,
) -> Arc<ServerConfig> {
    let verifier = Arc::new(SvidClientVerifier {
        trust,
        max_chain_depth: opts.max_chain_depth,
    });
    let config = server_builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(svid);
    finish_server(config, opts)
}

/// Server that does not ask for a client certificate (identity service 15012, where proxies
/// have no SVID yet).
pub fn server_config(svid: Arc<SvidStore>, opts: &TlsOptions) -> Arc<ServerConfig> {
    let config = server_builder()
        .with_no_client_auth()
        .with_cert_resolver(svid);
    finish_server(config, opts)
}

/// Client that presents its SVID (when `svid` is `Some`) and accepts only a server whose
/// verified SVID carries exactly `expected`; anything else fails the handshake.
pub fn mtls_client_config(
    svid: Option<Arc<SvidStore>>,
    trust: Arc<TrustStore>,
    expected: SpiffeId,
    opts: &TlsOptions,
) -> Arc<ClientConfig> {
    let verifier = Arc::new(SvidServerVerifier {
        trust,
        expected,
        max_chain_depth: opts.max_chain_depth,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The aws-lc-rs provider always supports TLS 1.3; failure here is a build-time bug.
        .expect("aws-lc-rs provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match svid {
        Some(store) => builder.with_client_cert_resolver(store),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.clone();
    // No resumption: every connection re-verifies the peer against the current bundle and
    // presents the current SVID.
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The server name to pass to the TLS connector. SVIDs carry no DNS name and the verifier
/// checks the SPIFFE ID instead, so this is a fixed valid name that is ignored.
pub fn server_name_for(_expected: &SpiffeId) -> ServerName<'static> {
    ServerName::try_from(PLACEHOLDER_SERVER_NAME)
        .expect("PLACEHOLDER_SERVER_NAME is a valid DNS name")
}

fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The aws-lc-rs provider always supports TLS 1.3; failure here is a build-time bug.
        .expect("aws-lc-rs provider supports TLS 1.3")
}

fn finish_server(mut config: ServerConfig, opts: &TlsOptions) -> Arc<ServerConfig> {
    config.alpn_protocols = opts.alpn.clone();
    // No resumption: a resumed session would skip client-certificate verification against the
    // current bundle and keep an identity alive past SVID expiry or CA rotation.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_name_is_valid() {
        let id = SpiffeId::parse("spiffe://td/x").unwrap();
        assert_eq!(server_name_for(&id).to_str(), PLACEHOLDER_SERVER_NAME);
    }
}
