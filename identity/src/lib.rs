//! SPIFFE identities for Vigil: SPIFFE IDs, the certificate authority, workload keys and CSRs,
//! X.509-SVID verification, and the one place rustls configs are built.
//!
//! Defaults are closed: TLS 1.3 only, the aws-lc-rs provider passed explicitly (never the
//! process default), post-quantum hybrid key exchange first, no session resumption, private
//! keys never leave the process that made them.
//!
//! ```
//! use std::time::Duration;
//! use vigil_identity::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Control plane: a CA for the trust domain.
//! let ca = CertificateAuthority::generate("cluster.local")?;
//!
//! // Proxy: a key that never leaves the process, and a CSR for it.
//! let key = WorkloadKey::generate()?;
//! let id = SpiffeId::workload("cluster.local", "default", "web")?;
//! let chain = ca.sign_csr(&key.csr_der()?, &id, Duration::from_secs(3600))?;
//!
//! // Live stores: configs are built once; renewal is `svid.set(..)`.
//! let svid = SvidStore::new();
//! svid.set(key.certified(chain)?);
//! let trust = TrustStore::new("cluster.local", ca.trust_bundle())?;
//! let _server = mtls_server_config(svid.clone(), trust.clone(), &TlsOptions::default());
//! let peer = SpiffeId::workload("cluster.local", "default", "db")?;
//! let _client = mtls_client_config(Some(svid), trust, peer, &TlsOptions::default());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

mod ca;
mod jwt_svid;
mod rotation;
mod spiffe;
mod store;
mod svid;
mod tls;
mod trust;
mod verify;
mod workload_key;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use ca::{write_atomic, CaError, CertificateAuthority, CA_CERT_FILE, CA_KEY_FILE};
pub use jwt_svid::{validate_jwt_svid, JwtSvidError, JwtSvidSigner};
pub use rotation::{
    chain_root, root_name, CaDirectory, LoadedCa, RotationPhase, NEXT_CERT_FILE, NEXT_KEY_FILE,
    PREVIOUS_CERT_FILE,
};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use store::{SvidStore, TrustStore};
pub use svid::{check_svid_leaf, peer_identity, peer_spiffe_id, SvidError, SvidInfo};
pub use tls::{
    mtls_client_config, mtls_server_config, server_config, server_name_for, TlsOptions,
    PLACEHOLDER_SERVER_NAME,
};
pub use trust::{certs_to_pem, TrustBundle};
pub use verify::{reason_of, svid_error_to_rustls};
pub use workload_key::{KeyError, WorkloadKey};

/// The aws-lc-rs crypto provider every config and verifier in this crate uses, built once.
///
/// Passed explicitly everywhere so behaviour never depends on a process-wide default. Key
/// exchange offers the post-quantum hybrid X25519MLKEM768 first, so traffic recorded today
/// cannot be decrypted by a future quantum computer, and still accepts plain X25519 from a
/// peer without ML-KEM: these two groups, in this order, are the only key-exchange
/// preference in Vigil.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        use rustls::crypto::aws_lc_rs::{self, kx_group};
        Arc::new(CryptoProvider {
            kx_groups: vec![kx_group::X25519MLKEM768, kx_group::X25519],
            ..aws_lc_rs::default_provider()
        })
    }))
}
