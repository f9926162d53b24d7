//! X.509-SVID leaf rules, and what a verified leaf says about its holder.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate (chain) is not an acceptable X.509-SVID.
///
/// [`SvidError::reason`] gives a short, stable label for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The leaf carries no URI SAN at all.
    #[error("SVID leaf has no URI SAN")]
    NoUriSan,
    /// The leaf carries more than one URI SAN (the spec allows exactly one).
    #[error("SVID leaf has {0} URI SANs; exactly one is allowed")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID (or names only a trust domain).
    #[error("URI SAN {uri:?} is not a valid SVID SPIFFE ID: {why}")]
    NotSpiffe {
        /// The URI as found in the certificate.
        uri: String,
        /// What is wrong with it.
        why: String,
    },
    /// The leaf is a CA certificate (basicConstraints cA=true).
    #[error("a CA certificate was presented as an SVID leaf")]
    CaAsLeaf,
    /// keyUsage missing, without digitalSignature, or with keyCertSign/cRLSign.
    #[error("SVID leaf key usage is wrong: {0}")]
    BadKeyUsage(&'static str),
    /// The SPIFFE ID belongs to a trust domain we do not serve.
    #[error("SPIFFE ID {found} is not in trust domain {expected:?}")]
    WrongTrustDomain {
        /// Our trust domain.
        expected: String,
        /// The ID the peer presented.
        found: String,
    },
    /// The peer's SPIFFE ID is in our trust domain but is not the one we dialled.
    #[error("peer is {found}, expected {expected}")]
    WrongSpiffeId {
        /// The ID we required.
        expected: String,
        /// The ID the peer presented.
        found: String,
    },
    /// A certificate in the chain has expired.
    #[error("certificate has expired")]
    Expired,
    /// A certificate in the chain is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// The chain does not lead to any root in the trust bundle.
    #[error("certificate is not issued by a trusted CA")]
    UnknownCa,
    /// The peer presented more certificates than allowed.
    #[error("peer presented {len} certificates; at most {max} are allowed")]
    ChainTooLong {
        /// Certificates presented (leaf included).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// No certificate where one was required.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// A trust bundle with no roots (it would trust nothing and fail every handshake).
    #[error("trust bundle holds no certificate")]
    EmptyBundle,
    /// The bytes are not a well-formed certificate (or PEM).
    #[error("malformed certificate: {0}")]
    Malformed(String),
}

impl SvidError {
    /// A short stable label for metrics, e.g. `"no-uri-san"` or `"unknown-ca"`.
    pub fn reason(&self) -> &'static str {
        match self {
            SvidError::NoUriSan => "no-uri-san",
            SvidError::SeveralUriSans(_) => "several-uri-sans",
            SvidError::NotSpiffe { .. } => "not-spiffe",
            SvidError::CaAsLeaf => "ca-as-leaf",
            SvidError::BadKeyUsage(_) => "bad-key-usage",
            SvidError::WrongTrustDomain { .. } => "wrong-trust-domain",
            SvidError::WrongSpiffeId { .. } => "wrong-spiffe-id",
            SvidError::Expired => "expired",
            SvidError::NotYetValid => "not-yet-valid",
            SvidError::UnknownCa => "unknown-ca",
            SvidError::ChainTooLong { .. } => "chain-too-long",
            SvidError::NoPeerCertificate => "no-peer-cert",
            SvidError::EmptyBundle => "empty-bundle",
            SvidError::Malformed(_) => "malformed",
        }
    }
}

/// What an SVID leaf says: its SPIFFE ID, validity, serial, issuer and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// The single URI SAN.
    pub spiffe_id: SpiffeId,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number as lowercase hex (no separators).
    pub serial_hex: String,
    /// Issuer distinguished name (RFC 4514 style).
    pub issuer: String,
    /// Subject distinguished name (often empty for SVIDs).
    pub subject: String,
}

impl SvidInfo {
    /// Parses `leaf` (DER) and checks the SVID leaf rules; validity times are reported, not checked.
    pub fn from_der(leaf: &[u8]) -> Result<SvidInfo, SvidError> {
        let cert = parse_cert(leaf)?;
        let spiffe_id = leaf_rules(&cert)?;
        let validity = cert.validity();
        Ok(SvidInfo {
            spiffe_id,
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
            serial_hex: hex(cert.raw_serial()),
            issuer: cert.issuer().to_string(),
            subject: cert.subject().to_string(),
        })
    }
}

/// Checks the X.509-SVID leaf rules and returns the leaf's SPIFFE ID.
///
/// Rules: exactly one URI SAN that is a SPIFFE ID with a non-empty path, not a CA, keyUsage
/// present with digitalSignature and without keyCertSign/cRLSign. Chain and time are *not*
/// checked here (the TLS verifiers do that).
pub fn check_svid_leaf(leaf_der: &[u8]) -> Result<SpiffeId, SvidError> {
    leaf_rules(&parse_cert(leaf_der)?)
}

/// The SPIFFE ID of a peer's already-verified chain (first certificate), e.g. from
/// `conn.peer_certificates()` after the handshake.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = certs.first().ok_or(SvidError::NoPeerCertificate)?;
    check_svid_leaf(leaf)
}

/// What a peer's already-verified leaf says about who is calling: the SPIFFE ID (its
/// identity) and the workload name the control plane wrote into the subject's common name
/// (empty when there is none), for metric labels.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<(SpiffeId, String), SvidError> {
    let leaf = certs.first().ok_or(SvidError::NoPeerCertificate)?;
    let cert = parse_cert(leaf)?;
    let id = leaf_rules(&cert)?;
    let workload = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|name| is_workload_name(name))
        .unwrap_or_default()
        .to_string();
    Ok((id, workload))
}

/// A name fit for a metric label: what Kubernetes allows for a pod or a mesh file for a
/// workload (lowercase letters, digits, `-` and `.`, at most 253 bytes).
fn is_workload_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed(
            "trailing data after certificate".into(),
        ));
    }
    Ok(cert)
}

fn leaf_rules(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    use x509_parser::oid_registry::{
        OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    };
    // x509-parser keeps an undecodable extension as `ParseError` and some accessors then
    // report it as absent; for the extensions these rules rest on, that must be an error.
    for ext in cert.extensions() {
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            if ext.oid == OID_X509_EXT_BASIC_CONSTRAINTS
                || ext.oid == OID_X509_EXT_KEY_USAGE
                || ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME
            {
                return Err(SvidError::Malformed(format!(
                    "extension {}: {error}",
                    ext.oid
                )));
            }
        }
    }

    // Basic constraints first: a CA used as a leaf is the most alarming finding.
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(format!("basicConstraints: {e}")))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::CaAsLeaf);
    }

    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(format!("keyUsage: {e}")))?
        .ok_or(SvidError::BadKeyUsage("keyUsage extension missing"))?;
    if !ku.value.digital_signature() {
        return Err(SvidError::BadKeyUsage("digitalSignature not set"));
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::BadKeyUsage("keyCertSign set on a leaf"));
    }
    if ku.value.crl_sign() {
        return Err(SvidError::BadKeyUsage("cRLSign set on a leaf"));
    }

    // Count URI SANs over every SAN extension, so a duplicated extension cannot hide one
    // (x509-parser rejects duplicates anyway, which then lands in `Malformed`).
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(*uri);
                }
            }
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::SeveralUriSans(many.len())),
    };
    let id = SpiffeId::parse(uri).map_err(|e: SpiffeIdError| SvidError::NotSpiffe {
        uri: uri.to_owned(),
        why: e.to_string(),
    })?;
    // X.509-SVID spec: a leaf's SPIFFE ID must name a workload, not just a trust domain.
    if id.path().is_empty() {
        return Err(SvidError::NotSpiffe {
            uri: uri.to_owned(),
            why: "a leaf SVID must not carry a trust-domain-only ID".into(),
        });
    }
    Ok(id)
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable() {
        assert_eq!(SvidError::NoUriSan.reason(), "no-uri-san");
        assert_eq!(SvidError::SeveralUriSans(2).reason(), "several-uri-sans");
        assert_eq!(SvidError::CaAsLeaf.reason(), "ca-as-leaf");
        assert_eq!(SvidError::UnknownCa.reason(), "unknown-ca");
        assert_eq!(
            SvidError::ChainTooLong { len: 4, max: 3 }.reason(),
            "chain-too-long"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            check_svid_leaf(b"not a cert").unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            peer_spiffe_id(&[]).unwrap_err(),
            SvidError::NoPeerCertificate
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
    }
}
