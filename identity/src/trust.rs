//! Trust bundles: the set of root certificates a trust domain's SVIDs chain to.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::svid::{parse_cert, SvidError};

/// The roots of a trust domain. Several roots are normal during CA rotation.
///
/// Cheap to clone (the roots are shared).
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Arc<Vec<CertificateDer<'static>>>,
}

impl TrustBundle {
    /// A bundle of DER roots; each must parse as a certificate, duplicates are dropped.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<TrustBundle, SvidError> {
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        for root in roots {
            parse_cert(&root)?;
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        if unique.is_empty() {
            return Err(SvidError::EmptyBundle);
        }
        Ok(TrustBundle {
            roots: Arc::new(unique),
        })
    }

    /// A bundle from roots the caller has already parsed and deduplicated (never empty).
    pub(crate) fn from_checked(roots: Vec<CertificateDer<'static>>) -> TrustBundle {
        TrustBundle {
            roots: Arc::new(roots),
        }
    }

    /// A bundle from concatenated `CERTIFICATE` PEM blocks (other block types are ignored).
    pub fn from_pem(pem: &str) -> Result<TrustBundle, SvidError> {
        Self::from_der(certs_from_pem(pem).map_err(SvidError::Malformed)?)
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as concatenated PEM, e.g. to hand to a workload or write to disk.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Subjects are enough to tell bundles apart in logs; the DER is noise.
        let subjects: Vec<String> = self
            .roots
            .iter()
            .map(|r| match parse_cert(r) {
                Ok(c) => c.subject().to_string(),
                Err(_) => "<unparseable>".into(),
            })
            .collect();
        f.debug_struct("TrustBundle")
            .field("roots", &subjects)
            .finish()
    }
}

/// Encodes certificates as concatenated `CERTIFICATE` PEM blocks (LF line endings).
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    certs
        .iter()
        .map(|c| pem::encode_config(&pem::Pem::new("CERTIFICATE", c.as_ref()), cfg))
        .collect()
}

/// Decodes every `CERTIFICATE` block in `pem` (other block types are skipped).
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}
