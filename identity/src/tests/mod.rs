//! Crate tests that need several modules together: CA files, issuance, real handshakes.

mod ca;
mod handshake;
mod rotation;

use std::sync::Arc;
use std::time::Duration;

use crate::{CertificateAuthority, SpiffeId, SvidStore, TrustStore, WorkloadKey};

pub(crate) const TD: &str = "cluster.local";

pub(crate) fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload(TD, ns, sa).unwrap()
}

pub(crate) fn test_ca() -> CertificateAuthority {
    CertificateAuthority::generate(TD).unwrap()
}

/// A store holding a fresh SVID for `id`, issued through the real CSR path.
pub(crate) fn svid_store(ca: &CertificateAuthority, id: &SpiffeId) -> Arc<SvidStore> {
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(&key.csr_der().unwrap(), id, Duration::from_secs(3600))
        .unwrap();
    let store = SvidStore::new();
    store.set(key.certified(chain).unwrap());
    store
}

pub(crate) fn trust(ca: &CertificateAuthority) -> Arc<TrustStore> {
    TrustStore::new(TD, ca.trust_bundle()).unwrap()
}
