//! rustls certificate verifiers for X.509-SVIDs, and the mapping of handshake errors to
//! stable reason labels.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, PeerIncompatible, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::provider;
use crate::spiffe::SpiffeId;
use crate::store::TrustStore;
use crate::svid::{check_svid_leaf, SvidError};

/// Wraps an [`SvidError`] the way rustls carries custom verification failures, so
/// [`reason_of`] can get it back out of a handshake error.
pub fn svid_error_to_rustls(err: SvidError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// A short stable label for a handshake failure: the [`SvidError::reason`] when one of our
/// verifiers refused the peer, else a label for rustls's own error ("expired", "unknown-ca",
/// "bad-signature", "no-client-cert", "protocol-version", ..., "other").
// rustls may still produce the deprecated context-free variants; they must map too.
#[allow(deprecated)]
pub fn reason_of(err: &Error) -> &'static str {
    match err {
        Error::InvalidCertificate(ce) => match ce {
            CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<SvidError>() {
                Some(svid) => svid.reason(),
                None => "bad-certificate",
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::UnknownIssuer => "unknown-ca",
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithm
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "bad-signature"
            }
            CertificateError::BadEncoding => "malformed",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad-key-usage"
            }
            _ => "bad-certificate",
        },
        Error::NoCertificatesPresented => "no-client-cert",
        Error::PeerIncompatible(pi) => match pi {
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => "protocol-version",
            _ => "incompatible",
        },
        Error::AlertReceived(alert) => match alert {
            AlertDescription::ProtocolVersion => "protocol-version",
            AlertDescription::CertificateRequired => "no-client-cert",
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied => "peer-refused-cert",
            _ => "peer-alert",
        },
        _ => "other",
    }
}

/// Server side: requires a client SVID that chains to the current bundle and is in our trust domain.
#[derive(Debug)]
pub(crate) struct SvidClientVerifier {
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) max_chain_depth: usize,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: our clients present their one SVID regardless, and hints would have to be
        // borrowed from a bundle that may be swapped at any time.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_depth(intermediates, self.max_chain_depth)?;
        // The verifier of the *current* bundle generation; a concurrent `set` is seen by the
        // next handshake.
        let state = self.trust.state();
        state
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| refine(e, end_entity))?;
        let id = check_svid_leaf(end_entity).map_err(svid_error_to_rustls)?;
        if id.trust_domain() != self.trust.trust_domain() {
            return Err(svid_error_to_rustls(SvidError::WrongTrustDomain {
                expected: self.trust.trust_domain().to_owned(),
                found: id.to_string(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Our configs offer TLS 1.3 only; reaching this would mean a misconfiguration.
        Err(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side: accepts only a server whose verified SVID carries exactly `expected`.
#[derive(Debug)]
pub(crate) struct SvidServerVerifier {
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) expected: SpiffeId,
    pub(crate) max_chain_depth: usize,
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The server name is a fixed placeholder (see `server_name_for`): SVIDs carry no DNS
        // name, identity is checked by SPIFFE ID below instead.
        check_depth(intermediates, self.max_chain_depth)?;
        let state = self.trust.state();
        let parsed = ParsedCertificate::try_from(end_entity).map_err(|e| refine(e, end_entity))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &state.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| refine(e, end_entity))?;
        let id = check_svid_leaf(end_entity).map_err(svid_error_to_rustls)?;
        if id != self.expected {
            let err = if id.trust_domain() != self.expected.trust_domain() {
                SvidError::WrongTrustDomain {
                    expected: self.expected.trust_domain().to_owned(),
                    found: id.to_string(),
                }
            } else {
                SvidError::WrongSpiffeId {
                    expected: self.expected.to_string(),
                    found: id.to_string(),
                }
            };
            return Err(svid_error_to_rustls(err));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuses chains longer than `max` certificates (leaf included) before any crypto is done.
fn check_depth(intermediates: &[CertificateDer<'_>], max: usize) -> Result<(), Error> {
    let len = 1 + intermediates.len();
    if len > max {
        return Err(svid_error_to_rustls(SvidError::ChainTooLong { len, max }));
    }
    Ok(())
}

/// webpki reports some SVID rule breaks (e.g. a CA certificate as end entity) as opaque
/// errors; when the leaf also breaks an SVID rule, report that rule instead so the reason
/// label is specific. Expiry, unknown CA and bad signatures keep rustls's own error.
fn refine(err: Error, end_entity: &CertificateDer<'_>) -> Error {
    match &err {
        Error::InvalidCertificate(CertificateError::Other(_))
        | Error::InvalidCertificate(CertificateError::BadEncoding) => {
            match check_svid_leaf(end_entity) {
                Err(svid) => svid_error_to_rustls(svid),
                Ok(_) => err,
            }
        }
        _ => err,
    }
}
