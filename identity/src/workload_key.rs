//! The proxy's own key: generated in-process, used for its CSR and its TLS handshakes,
//! never exported.

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::provider;

/// Why a workload key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed (no randomness, unsupported algorithm).
    #[error("generating the workload key: {0}")]
    Generate(#[source] rcgen::Error),
    /// rustls could not load the generated key.
    #[error("loading the workload key into rustls: {0}")]
    Load(#[source] rustls::Error),
    /// Building the CSR failed.
    #[error("building the CSR: {0}")]
    Csr(#[source] rcgen::Error),
    /// The issued chain is empty.
    #[error("the issued certificate chain is empty")]
    EmptyChain,
    /// The issued leaf certifies some other key.
    #[error("the issued leaf certificate does not match this workload key")]
    KeyMismatch,
    /// The issued leaf cannot be parsed.
    #[error("the issued leaf certificate is malformed: {0}")]
    Malformed(String),
}

/// An ECDSA P-256 key generated in this process.
///
/// There is deliberately no way to get the private key out: it only signs CSRs and handshakes.
pub struct WorkloadKey {
    /// rcgen's view, used to sign CSRs (and, for the CA's own identity, nothing else).
    keypair: KeyPair,
    /// rustls's view of the same key, used in handshakes.
    signer: Arc<dyn SigningKey>,
}

impl WorkloadKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<WorkloadKey, KeyError> {
        let keypair =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(KeyError::Generate)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keypair.serialized_der()));
        let signer = provider()
            .key_provider
            .load_private_key(der.clone_key())
            .map_err(KeyError::Load)?;
        Ok(WorkloadKey { keypair, signer })
    }

    /// A DER PKCS#10 CSR for this key. The subject CN is informational only: the CA decides
    /// the identity from the authenticated caller, not from the CSR.
    pub fn csr_der(&self) -> Result<Vec<u8>, KeyError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "vigil workload");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.keypair)
            .map_err(KeyError::Csr)?;
        Ok(csr.der().to_vec())
    }

    /// This key's SubjectPublicKeyInfo (DER), e.g. to match against an issued leaf.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.keypair.subject_public_key_info()
    }

    /// Pairs an issued chain (leaf first) with this key, after checking the leaf certifies it.
    pub fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, KeyError> {
        let leaf = chain.first().ok_or(KeyError::EmptyChain)?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        if cert.public_key().raw != self.public_key_der().as_slice() {
            return Err(KeyError::KeyMismatch);
        }
        let key = CertifiedKey::new(chain, Arc::clone(&self.signer));
        // Belt and braces: rustls's own consistency check over the same SPKI.
        key.keys_match().map_err(|_| KeyError::KeyMismatch)?;
        Ok(Arc::new(key))
    }

    /// rcgen's handle on the key, for signing CSRs and (CA-internal) certificates.
    pub(crate) fn keypair(&self) -> &KeyPair {
        &self.keypair
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: only the algorithm.
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = WorkloadKey::generate().unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("P-256"));
        assert!(!dbg.contains("serialized_der"));
        assert!(dbg.len() < 80, "{dbg}");
    }

    #[test]
    fn csr_is_signed_by_the_key() {
        use x509_parser::prelude::FromDer;
        let key = WorkloadKey::generate().unwrap();
        let der = key.csr_der().unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            key.public_key_der().as_slice()
        );
    }

    #[test]
    fn certified_refuses_empty_or_foreign_chain() {
        let key = WorkloadKey::generate().unwrap();
        assert!(matches!(key.certified(vec![]), Err(KeyError::EmptyChain)));
        let other = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
        assert!(matches!(
            key.certified(vec![other.cert.der().clone()]),
            Err(KeyError::KeyMismatch)
        ));
    }
}
