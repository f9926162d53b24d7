//! Deliberately bad (and one good) credentials for hostile-input tests (feature `testing`).
//!
//! Unlike the rest of the crate these helpers hand out private keys as PEM and can write them
//! to files: test fixtures only, never for a production build.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{write_atomic, CaError, CertificateAuthority};
use crate::provider;
use crate::spiffe::SpiffeId;
use crate::trust::{certs_from_pem, certs_to_pem};
use crate::workload_key::KeyError;

/// A certificate chain (leaf first, PEM) and its private key (PKCS#8 PEM).
#[derive(Clone)]
pub struct TestCredential {
    /// Leaf first, then any intermediates.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TestCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCredential")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

impl TestCredential {
    /// The chain as DER, leaf first.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        certs_from_pem(&self.chain_pem).unwrap_or_default()
    }

    /// The credential as a rustls `CertifiedKey`, e.g. to put into an [`crate::SvidStore`].
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        let key = provider()
            .key_provider
            .load_private_key(der)
            .map_err(KeyError::Load)?;
        let chain = self.chain_der();
        if chain.is_empty() {
            return Err(KeyError::EmptyChain);
        }
        Ok(Arc::new(CertifiedKey::new(chain, key)))
    }

    /// Writes `<dir>/<stem>.pem` (chain) and `<dir>/<stem>-key.pem` (key, mode 0600).
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_atomic(&cert, self.chain_pem.as_bytes(), 0o644)?;
        write_atomic(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

const LIFETIME: Duration = Duration::from_secs(3600);

fn credential(
    ca: &CertificateAuthority,
    params: &rcgen::CertificateParams,
) -> Result<TestCredential, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let chain = ca.issue_custom(params, &key)?;
    Ok(TestCredential {
        chain_pem: certs_to_pem(&chain),
        key_pem: key.serialize_pem(),
    })
}

/// A correct SVID for `id` from `ca` (the baseline the bad ones deviate from).
pub fn valid_leaf(ca: &CertificateAuthority, id: &SpiffeId) -> Result<TestCredential, CaError> {
    credential(ca, &ca.svid_params(id, &[], LIFETIME)?)
}

/// A well-formed SVID for `id` signed by a brand-new CA that nobody trusts.
pub fn foreign_ca_leaf(id: &SpiffeId) -> Result<TestCredential, CaError> {
    let foreign = CertificateAuthority::generate(id.trust_domain())?;
    valid_leaf(&foreign, id)
}

/// An SVID for `id` from `ca` whose notAfter is an hour in the past.
pub fn expired_leaf(ca: &CertificateAuthority, id: &SpiffeId) -> Result<TestCredential, CaError> {
    let mut params = ca.svid_params(id, &[], LIFETIME)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(2 * 3600);
    params.not_after = now - Duration::from_secs(3600);
    credential(ca, &params)
}

/// An SVID from `ca` carrying two URI SANs: `id` and `second`.
pub fn two_uri_sans_leaf(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    second: &SpiffeId,
) -> Result<TestCredential, CaError> {
    let mut params = ca.svid_params(id, &[], LIFETIME)?;
    params
        .subject_alt_names
        .push(SanType::URI(Ia5String::try_from(second.to_string())?));
    credential(ca, &params)
}

/// A CA certificate (cA=true, keyCertSign) for `id`, signed by `ca`, to be presented as a leaf.
pub fn ca_as_leaf(ca: &CertificateAuthority, id: &SpiffeId) -> Result<TestCredential, CaError> {
    let mut params = ca.svid_params(id, &[], LIFETIME)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    credential(ca, &params)
}

/// An SVID signed by `ca` (so it chains to a trusted root) for `id` in *another* trust domain.
pub fn other_trust_domain_leaf(
    ca: &CertificateAuthority,
    id: &SpiffeId,
) -> Result<TestCredential, CaError> {
    if id.trust_domain() == ca.trust_domain() {
        return Err(CaError::Identity {
            id: id.to_string(),
            why: "other_trust_domain_leaf needs an ID outside the CA's trust domain".into(),
        });
    }
    credential(ca, &ca.svid_params(id, &[], LIFETIME)?)
}
