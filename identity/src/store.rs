//! Live, swappable identity state. rustls configs hold these stores, so renewing an SVID or
//! rotating the trust bundle never rebuilds a config and never disturbs open connections.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use crate::provider;
use crate::spiffe::validate_trust_domain;
use crate::svid::{peer_spiffe_id, SvidError};
use crate::trust::TrustBundle;

/// The current SVID (certificate chain + key) of this process; empty until the first issuance.
pub struct SvidStore {
    current: ArcSwapOption<CertifiedKey>,
}

impl SvidStore {
    /// An empty store, shared by every config that presents this identity.
    pub fn new() -> Arc<SvidStore> {
        Arc::new(SvidStore {
            current: ArcSwapOption::empty(),
        })
    }

    /// Replaces the SVID; handshakes started afterwards present the new one.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    /// The SVID handshakes present right now, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the identity: the key stays out of logs.
        let id = self.current().map(|k| match peer_spiffe_id(&k.cert) {
            Ok(id) => id.to_string(),
            Err(e) => format!("<{}>", e.reason()),
        });
        f.debug_struct("SvidStore").field("spiffe_id", &id).finish()
    }
}

impl ResolvesServerCert for SvidStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// The trust bundle of our trust domain plus what is derived from it (root store and client
/// verifier), rebuilt only when [`TrustStore::set`] is called.
pub struct TrustStore {
    trust_domain: String,
    state: ArcSwap<TrustState>,
}

/// One consistent generation of derived trust state.
pub(crate) struct TrustState {
    pub(crate) bundle: TrustBundle,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl TrustStore {
    /// A store for `trust_domain` starting with `bundle`.
    pub fn new(trust_domain: &str, bundle: TrustBundle) -> Result<Arc<TrustStore>, SvidError> {
        validate_trust_domain(trust_domain).map_err(|e| SvidError::NotSpiffe {
            uri: trust_domain.to_owned(),
            why: e.to_string(),
        })?;
        let state = TrustState::build(bundle)?;
        Ok(Arc::new(TrustStore {
            trust_domain: trust_domain.to_owned(),
            state: ArcSwap::from_pointee(state),
        }))
    }

    /// Replaces the bundle; handshakes verified afterwards use it. On error nothing changes.
    pub fn set(&self, bundle: TrustBundle) -> Result<(), SvidError> {
        let state = TrustState::build(bundle)?;
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// The current bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.state.load().bundle.clone()
    }

    /// Our trust domain: client SVIDs from any other are refused.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn state(&self) -> Arc<TrustState> {
        self.state.load_full()
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("trust_domain", &self.trust_domain)
            .field("bundle", &self.state.load().bundle)
            .finish()
    }
}

impl TrustState {
    fn build(bundle: TrustBundle) -> Result<TrustState, SvidError> {
        let mut roots = RootCertStore::empty();
        for root in bundle.roots() {
            roots
                .add(root.clone())
                .map_err(|e| SvidError::Malformed(format!("trust anchor: {e}")))?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
                .build()
                .map_err(|e| SvidError::Malformed(format!("client verifier: {e}")))?;
        Ok(TrustState {
            bundle,
            roots,
            client_verifier,
        })
    }
}
