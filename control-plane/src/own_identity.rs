//! Who the control plane is: where it is installed in a cluster (namespace and Service
//! names), its SPIFFE ID, and its own serving certificate, kept fresh.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use vigil_identity::{CertificateAuthority, SpiffeId, SvidStore};

/// Where `manifests/` install the control plane unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "vigil-system";
/// The control plane's Service and ServiceAccount (`manifests/base/control-plane.yaml`).
pub const NAME: &str = "vigil-control-plane";

/// The control plane's own identity, presented on 15012, 15010 and 15017:
/// `spiffe://<trust domain>/ns/<namespace>/sa/vigil-control-plane`.
pub fn control_plane_id(trust_domain: &str, namespace: &str) -> anyhow::Result<SpiffeId> {
    SpiffeId::workload(trust_domain, namespace, NAME).with_context(|| {
        format!("building the control plane's SPIFFE ID from trust domain {trust_domain:?} and namespace {namespace:?} (both must be DNS labels)")
    })
}

/// The control plane's Service host in `namespace`, which proxies dial and the API server
/// calls the webhook on.
pub fn service_host(namespace: &str) -> String {
    format!("{NAME}.{namespace}.svc")
}

/// The control plane's serving certificate: its SPIFFE ID, and the DNS names of its
/// Service in the namespace that ID names, which the API server verifies when it calls the
/// injection webhook.
pub(crate) fn issue_own(
    ca: &CertificateAuthority,
    id: &SpiffeId,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let mut names = vec!["localhost".to_string(), NAME.to_string()];
    if let Some(namespace) = id.namespace() {
        names.extend([format!("{NAME}.{namespace}"), service_host(namespace)]);
    }
    ca.issue_own(id, &names, Duration::from_secs(24 * 3600))
        .context("issuing the control plane's own certificate")
}

/// Renews the control plane's own serving certificate well before it expires.
pub(crate) async fn renew_own(
    ca: Arc<ArcSwap<CertificateAuthority>>,
    id: SpiffeId,
    store: Arc<SvidStore>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(12 * 3600)).await;
        match issue_own(&ca.load(), &id) {
            Ok(key) => store.set(key),
            Err(e) => {
                tracing::error!(error = %e, "renewing the control plane certificate failed; retrying in 12 h")
            }
        }
    }
}
