//! The certificate authority that issues X.509-SVIDs for one trust domain.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::provider;
use crate::spiffe::{validate_trust_domain, SpiffeId, SpiffeIdError};
use crate::svid::parse_cert;
use crate::trust::{certs_from_pem, TrustBundle};
use crate::workload_key::{KeyError, WorkloadKey};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Validity of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this far in the past so peers with slightly slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a CA file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA key file is readable by group or others.
    #[error("CA key file {path} has mode {mode:04o}, which lets other users read the CA key; run `chmod 600 {path}`", path = .path.display())]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Only one of certificate and key exists; generating over it could orphan a live CA.
    #[error("found {} but not {}; refusing to generate a new CA over a partial one (restore the missing file or remove both)", .present.display(), .missing.display())]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The trust domain name is invalid.
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[source] SpiffeIdError),
    /// The CA certificate names another trust domain than requested.
    #[error("CA certificate is for trust domain {found:?}, not {expected:?}")]
    TrustDomainMismatch {
        /// The trust domain asked for.
        expected: String,
        /// The trust domain in the certificate's `spiffe://` URI SAN.
        found: String,
    },
    /// [`CertificateAuthority::from_pem`] needs a `spiffe://<td>` URI SAN to know the trust domain.
    #[error("CA certificate has no spiffe://<trust-domain> URI SAN; use CertificateAuthority::from_pem_with_trust_domain")]
    NoTrustDomain,
    /// PEM input holds no usable certificate.
    #[error("certificate PEM: {0}")]
    Pem(String),
    /// The CA key cannot be used.
    #[error("CA key: {0}")]
    Key(String),
    /// The key does not belong to the CA certificate.
    #[error("CA key does not match the CA certificate")]
    KeyMismatch,
    /// A certificate that must be a CA is not one.
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    /// The chain does not lead from the signing certificate to a root.
    #[error("CA chain: {0}")]
    Chain(String),
    /// The CSR cannot be parsed.
    #[error("CSR: {0}")]
    Csr(String),
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// The CSR's key type is not accepted.
    #[error("CSR public key type not accepted (use ECDSA P-256/P-384 or Ed25519)")]
    UnsupportedKey,
    /// The requested identity is not one this CA may issue.
    #[error("cannot issue {id}: {why}")]
    Identity {
        /// The requested SPIFFE ID.
        id: String,
        /// Why it is refused.
        why: String,
    },
    /// A DNS name for [`CertificateAuthority::issue_own`] is invalid.
    #[error("invalid DNS name {0:?}")]
    DnsName(String),
    /// The requested lifetime is unusable (zero, or the CA itself has expired).
    #[error("lifetime: {0}")]
    Lifetime(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// Building or signing a certificate failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    /// Generating or certifying the CA's own serving key failed.
    #[error(transparent)]
    WorkloadKey(#[from] KeyError),
}

/// Issues X.509-SVIDs for one trust domain, from a self-signed root or an operator's intermediate.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates that follow the leaf in issued chains (signing cert if it is not a root,
    /// then other intermediates). Empty when a root signs directly.
    chain: Vec<CertificateDer<'static>>,
    /// Trust anchors: self-signed certificates from the input plus added roots.
    roots: Vec<CertificateDer<'static>>,
    /// Earliest notAfter over the signing certificate and intermediates: no SVID outlives it.
    not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Loads `<dir>/ca.pem` + `<dir>/ca-key.pem`, or on first start generates a self-signed ECDSA
    /// P-256 root for `trust_domain` (10 years) and writes both (key: mode 0600, atomic).
    ///
    /// Refuses a key file readable by group or others, and a directory holding only one file.
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &str,
    ) -> Result<CertificateAuthority, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let exists = |p: &Path| {
            p.try_exists().map_err(|source| CaError::Io {
                path: p.to_owned(),
                source,
            })
        };
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(&cert_path, &key_path, trust_domain),
            (false, false) => {
                let (ca, cert_pem, key_pem) = Self::generate_inner(trust_domain)?;
                create_dir_private(dir)?;
                // Key first: a crash between the two writes leaves a state `Incomplete` reports,
                // never a certificate whose key is lost.
                write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
                write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
                tracing::info!(trust_domain, dir = %dir.display(), "generated a new root CA");
                Ok(ca)
            }
            (true, false) => Err(CaError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CaError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// A fresh self-signed root for `trust_domain`, kept in memory only (tests, ephemeral meshes).
    pub fn generate(trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        Ok(Self::generate_inner(trust_domain)?.0)
    }

    /// An operator-supplied CA or intermediate: its certificate PEM, its PKCS#8 key PEM, and a
    /// bundle PEM with the chain up to and including the root(s). The trust domain is taken
    /// from the certificate's `spiffe://<td>` URI SAN.
    ///
    /// Intermediates go into issued chains, self-signed roots into the trust bundle. Checks that
    /// the key matches, the certificate is a CA, and that an issued SVID verifies to a root.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
    ) -> Result<CertificateAuthority, CaError> {
        let certs = certs_from_pem(cert_pem).map_err(CaError::Pem)?;
        let signing = certs
            .first()
            .ok_or_else(|| CaError::Pem("no CERTIFICATE block".into()))?;
        let parsed = parse_cert(signing).map_err(|e| CaError::Pem(e.to_string()))?;
        let td = spiffe_trust_domain(&parsed)?.ok_or(CaError::NoTrustDomain)?;
        Self::from_pem_with_trust_domain(&td, cert_pem, key_pem, chain_pem)
    }

    /// Like [`CertificateAuthority::from_pem`], for a CA certificate that does not name its
    /// trust domain in a URI SAN.
    pub fn from_pem_with_trust_domain(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
    ) -> Result<CertificateAuthority, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let mut certs = certs_from_pem(cert_pem).map_err(CaError::Pem)?;
        if certs.is_empty() {
            return Err(CaError::Pem("no CERTIFICATE block".into()));
        }
        let signing = certs.remove(0);
        if let Some(chain_pem) = chain_pem {
            certs.extend(certs_from_pem(chain_pem).map_err(CaError::Pem)?);
        }
        let key = parse_key(key_pem)?;
        Self::assemble(trust_domain, signing, key, certs)
    }

    /// Adds further trusted roots (CA rotation: old and new roots side by side in the bundle).
    pub fn add_trust_roots_pem(&mut self, pem: &str) -> Result<(), CaError> {
        let certs = certs_from_pem(pem).map_err(CaError::Pem)?;
        if certs.is_empty() {
            return Err(CaError::Pem("no CERTIFICATE block".into()));
        }
        for cert in &certs {
            let parsed = parse_cert(cert).map_err(|e| CaError::Pem(e.to_string()))?;
            require_ca(&parsed)?;
        }
        for cert in certs {
            if !self.roots.contains(&cert) {
                self.roots.push(cert);
            }
        }
        Ok(())
    }

    /// Trusts the self-signed certificates among `certs` too, after the ones already trusted
    /// (the active root stays first in the bundle).
    pub(crate) fn add_roots(&mut self, certs: &[CertificateDer<'static>]) -> Result<(), CaError> {
        for cert in certs {
            let parsed = parse_cert(cert).map_err(|e| CaError::Pem(e.to_string()))?;
            if is_self_signed(&parsed) && !self.roots.contains(cert) {
                require_ca(&parsed)?;
                self.roots.push(cert.clone());
            }
        }
        Ok(())
    }

    /// Signs an X.509-SVID for `id` over the public key of a DER PKCS#10 CSR.
    ///
    /// Only the CSR's key is used (after its self-signature is checked); the subject, SANs and
    /// extensions it asks for are ignored. Returns the chain leaf first, without the root.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.sign_csr_for_workload(csr_der, id, "", lifetime)
    }

    /// Like [`sign_csr`](Self::sign_csr), and names `workload` (when not empty) as the
    /// subject's common name: the workload the control plane issued the SVID to, which
    /// peers read back from the verified certificate for their metrics' `peer_workload`
    /// label. The identity stays the URI SAN alone; nothing authorizes by this name.
    pub fn sign_csr_for_workload(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        workload: &str,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.check_issuable(id)?;
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|e| CaError::Csr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaError::Csr("trailing data after the CSR".into()));
        }
        // Proof of possession: without it anyone could get a certificate for someone else's key.
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|_| CaError::UnsupportedKey)?;
        let alg = spki.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256
            && alg != &rcgen::PKCS_ECDSA_P384_SHA384
            && alg != &rcgen::PKCS_ED25519
        {
            return Err(CaError::UnsupportedKey);
        }
        let mut params = self.svid_params(id, &[], lifetime)?;
        if !workload.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, workload.to_string());
        }
        self.issue_custom(&params, &spki)
    }

    /// The control plane's own serving identity: a key generated here and an SVID for `id` that
    /// also carries `dns_names` as DNS SANs (still exactly one URI SAN), ready to serve.
    pub fn issue_own(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<Arc<CertifiedKey>, CaError> {
        self.check_issuable(id)?;
        let key = WorkloadKey::generate()?;
        let params = self.svid_params(id, dns_names, lifetime)?;
        let chain = self.issue_custom(&params, key.keypair())?;
        Ok(key.certified(chain)?)
    }

    /// The roots SVIDs from this CA chain to (plus any added with `add_trust_roots_pem`).
    pub fn trust_bundle(&self) -> TrustBundle {
        TrustBundle::from_checked(self.roots.clone())
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Certificates placed after the leaf in issued chains (empty when a root signs directly).
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The latest notAfter an issued SVID can have.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    // ---- internals ----

    fn load(cert_path: &Path, key_path: &Path, td: &str) -> Result<CertificateAuthority, CaError> {
        check_key_file_mode(key_path)?;
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem_with_trust_domain(td, &cert_pem, &key_pem, None)
    }

    pub(crate) fn generate_inner(
        td: &str,
    ) -> Result<(CertificateAuthority, String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = now_secs();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Vigil");
        // A random tag makes each root's name unique: successive roots of one trust domain (CA
        // rotation) or a stranger's root never share a subject, so path building finds the
        // right anchor and a foreign chain is reported as an unknown CA.
        let mut tag = [0u8; 4];
        provider()
            .secure_random
            .fill(&mut tag)
            .map_err(|_| CaError::Random)?;
        dn.push(
            DnType::CommonName,
            format!("Vigil root CA {td} {}", crate::svid::hex(&tag)),
        );
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(Ia5String::try_from(format!("spiffe://{td}"))?)];
        // Path length 0: this root signs SVIDs directly and nothing may sign under it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_LIFETIME;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self::assemble(td, cert.der().clone(), key, Vec::new())?;
        Ok((ca, cert.pem(), key_pem))
    }

    /// Validates and wires up a CA from its signing certificate, key and further certificates.
    fn assemble(
        td: &str,
        signing: CertificateDer<'static>,
        key: KeyPair,
        others: Vec<CertificateDer<'static>>,
    ) -> Result<CertificateAuthority, CaError> {
        let parsed = parse_cert(&signing).map_err(|e| CaError::Pem(e.to_string()))?;
        require_ca(&parsed)?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        if let Some(found) = spiffe_trust_domain(&parsed)? {
            if found != td {
                return Err(CaError::TrustDomainMismatch {
                    expected: td.to_owned(),
                    found,
                });
            }
        }
        let mut not_after = asn1_to_offset(parsed.validity().not_after.timestamp())?;
        let mut chain = Vec::new();
        let mut roots = Vec::new();
        if is_self_signed(&parsed) {
            roots.push(signing.clone());
        } else {
            chain.push(signing.clone());
        }
        for cert in others {
            let p = parse_cert(&cert).map_err(|e| CaError::Pem(e.to_string()))?;
            require_ca(&p)?;
            if is_self_signed(&p) {
                if !roots.contains(&cert) {
                    roots.push(cert);
                }
            } else if !chain.contains(&cert) {
                not_after = not_after.min(asn1_to_offset(p.validity().not_after.timestamp())?);
                chain.push(cert);
            }
        }
        if roots.is_empty() {
            return Err(CaError::Chain(
                "no self-signed root: pass a bundle holding the chain up to and including the root"
                    .into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&signing, key)?;
        let ca = CertificateAuthority {
            trust_domain: td.to_owned(),
            issuer,
            chain,
            roots,
            not_after,
        };
        ca.self_test()?;
        Ok(ca)
    }

    /// Issues a throwaway SVID and verifies it against our own bundle, so a broken chain or an
    /// expired CA is reported at startup rather than as failed handshakes later.
    fn self_test(&self) -> Result<(), CaError> {
        let probe_id = SpiffeId::parse(&format!(
            "spiffe://{}/vigil/ca-self-test",
            self.trust_domain
        ))
        .map_err(CaError::TrustDomain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = self.svid_params(&probe_id, &[], Duration::from_secs(60))?;
        let chain = self.issue_custom(&params, &key)?;
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            roots
                .add(root.clone())
                .map_err(|e| CaError::Chain(format!("root not usable as trust anchor: {e}")))?;
        }
        let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])
            .map_err(|e| CaError::Chain(e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            CaError::Chain(format!(
                "an SVID issued by this CA does not verify to its roots: {e}"
            ))
        })
    }

    fn check_issuable(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::Identity {
                id: id.to_string(),
                why: format!(
                    "this CA issues only for trust domain {:?}",
                    self.trust_domain
                ),
            });
        }
        if id.path().is_empty() {
            return Err(CaError::Identity {
                id: id.to_string(),
                why: "an SVID must name a workload, not only the trust domain".into(),
            });
        }
        Ok(())
    }

    /// Parameters of an SVID for `id` by the X.509-SVID rules, valid from now-60s for `lifetime`
    /// (cut at the CA's own notAfter).
    pub(crate) fn svid_params(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<CertificateParams, CaError> {
        if lifetime.is_zero() {
            return Err(CaError::Lifetime("must be greater than zero".into()));
        }
        let now = now_secs();
        let wanted = now
            .checked_add(
                time::Duration::try_from(lifetime)
                    .map_err(|_| CaError::Lifetime("too long".into()))?,
            )
            .ok_or_else(|| CaError::Lifetime("too long".into()))?;
        let not_after = wanted.min(self.not_after);
        if not_after <= now {
            return Err(CaError::Lifetime(format!(
                "the CA certificate chain expired at {}",
                self.not_after
            )));
        }
        let mut sans = vec![SanType::URI(Ia5String::try_from(id.to_string())?)];
        for name in dns_names {
            if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
                return Err(CaError::DnsName(name.clone()));
            }
            let ia5 =
                Ia5String::try_from(name.as_str()).map_err(|_| CaError::DnsName(name.clone()))?;
            sans.push(SanType::DnsName(ia5));
        }
        let mut params = CertificateParams::default();
        // SVIDs carry their identity in the URI SAN only; the subject is empty unless the
        // control plane names the workload in it (`sign_csr_for_workload`), never a name
        // that looks like an identity.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs `params` for `public_key` as-is (no SVID rules) and appends the intermediates.
    pub(crate) fn issue_custom(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let leaf = params.signed_by(public_key, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(leaf.der().clone());
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer holds the private key: print only public facts.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn parse_key(key_pem: &str) -> Result<KeyPair, CaError> {
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CaError::Key(format!("no private key found in PEM: {e}")))?;
    if !matches!(der, PrivateKeyDer::Pkcs8(_)) {
        return Err(CaError::Key(
            "key must be PKCS#8 (\"BEGIN PRIVATE KEY\"); convert with `openssl pkcs8 -topk8 -nocrypt`"
                .into(),
        ));
    }
    KeyPair::try_from(&der).map_err(|e| CaError::Key(e.to_string()))
}

fn require_ca(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let subject = cert.subject().to_string();
    let bc = cert
        .basic_constraints()
        .map_err(|e| CaError::NotCa(format!("{subject}: basicConstraints: {e}")))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::NotCa(format!(
            "{subject}: basicConstraints cA is not true"
        )));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| CaError::NotCa(format!("{subject}: keyUsage: {e}")))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(CaError::NotCa(format!(
            "{subject}: keyUsage lacks keyCertSign"
        )));
    }
    Ok(())
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// The trust domain named by a `spiffe://` URI SAN, if the certificate has one.
fn spiffe_trust_domain(cert: &X509Certificate<'_>) -> Result<Option<String>, CaError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::Pem(format!("subjectAltName: {e}")))?;
    let Some(san) = san else { return Ok(None) };
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if uri.starts_with("spiffe://") {
                let id = SpiffeId::parse(uri).map_err(CaError::TrustDomain)?;
                return Ok(Some(id.trust_domain().to_owned()));
            }
        }
    }
    Ok(None)
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and exactly 16 bytes long once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn now_secs() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // Certificates carry whole seconds; truncating keeps comparisons with parsed values exact.
    now.replace_nanosecond(0).unwrap_or(now)
}

fn asn1_to_offset(ts: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(ts)
        .map_err(|e| CaError::Pem(format!("certificate time out of range: {e}")))
}

#[cfg(unix)]
pub(crate) fn check_key_file_mode(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_key_file_mode(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

fn create_dir_private(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `data` to `path` via a temp file created with `mode` from the start (never briefly
/// world-readable), fsynced, then renamed over `path`: a reader sees the old file or the
/// new one, never half of one. The mode is set on the open file as well, so the umask does
/// not narrow it: an installed plugin stays executable and a trust bundle readable by all.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| CaError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.tmp.{}.{nonce}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    // create_new: never follow or reuse something already sitting at the temp path.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err(&tmp))?;
        }
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        // Persist the rename itself.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
