//! The identity service (port 15012): a CSR and a bootstrap credential in, an X.509-SVID out.
//!
//! The credential alone decides the identity. The CSR contributes its public key and
//! nothing else, so a proxy holding one workload's token can never obtain another's name.
//! How a credential is checked is pluggable ([`CredentialCheck`]): a join token from the
//! mesh file in local mode ([`JoinTokens`]), a projected ServiceAccount token checked with
//! a TokenReview in cluster mode (`kubernetes::token_review`). Issuing stays here, once.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use vigil_api::{SignRequest, SignResponse, TokenKind};
use vigil_identity::{CertificateAuthority, SpiffeId, SvidInfo};

use crate::mesh::MeshFile;
use crate::tls_listener::PeerInfo;

/// Who a valid credential says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedWorkload {
    pub spiffe_id: SpiffeId,
    /// The workload (local mode) or pod (cluster mode) name; empty when unknown.
    pub workload: String,
    pub namespace: String,
}

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credential is wrong: the proxy must not retry with it.
    #[error("{0}")]
    Refused(String),
    /// The check itself could not be made (the API server is unreachable): retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// Turns a bootstrap credential into an identity.
#[tonic::async_trait]
pub trait CredentialCheck: Send + Sync + 'static {
    /// Checks `token` of `kind`; never trusts anything in the CSR.
    async fn verify(
        &self,
        kind: TokenKind,
        token: &str,
    ) -> Result<VerifiedWorkload, CredentialError>;
}

/// Local mode: per-workload join tokens from the (live) mesh file.
pub struct JoinTokens {
    pub mesh: Arc<ArcSwap<MeshFile>>,
}

#[tonic::async_trait]
impl CredentialCheck for JoinTokens {
    async fn verify(
        &self,
        kind: TokenKind,
        token: &str,
    ) -> Result<VerifiedWorkload, CredentialError> {
        if kind != TokenKind::Join {
            return Err(CredentialError::Refused(
                "this control plane runs in local mode and accepts only join tokens (kind JOIN); \
                 check the proxy's --token-kind"
                    .into(),
            ));
        }
        let mesh = self.mesh.load();
        let Some(workload) = mesh.workload_for_token(token) else {
            return Err(CredentialError::Refused(
                "join token not recognised; give the proxy the join_token of its workload from the mesh file"
                    .into(),
            ));
        };
        let spiffe_id = SpiffeId::workload(
            &mesh.trust_domain,
            &workload.namespace,
            workload.service_account(),
        )
        .map_err(|e| CredentialError::Refused(format!("workload identity is invalid: {e}")))?;
        Ok(VerifiedWorkload {
            spiffe_id,
            workload: workload.name.clone(),
            namespace: workload.namespace.clone(),
        })
    }
}

/// The lifetime of issued certificates, read at each signing (the mesh file can change it).
pub type LifetimeSource = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Signs workload certificates for holders of a valid credential.
pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    check: Arc<dyn CredentialCheck>,
    lifetime: LifetimeSource,
}

impl IdentityService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        check: Arc<dyn CredentialCheck>,
        lifetime: LifetimeSource,
    ) -> Self {
        IdentityService {
            ca,
            check,
            lifetime,
        }
    }

    /// Local mode: join tokens and the certificate lifetime from the mesh file.
    pub fn local(ca: Arc<CertificateAuthority>, mesh: Arc<ArcSwap<MeshFile>>) -> Self {
        let lifetime_mesh = mesh.clone();
        IdentityService::new(
            ca,
            Arc::new(JoinTokens { mesh }),
            Arc::new(move || lifetime_mesh.load().certificate_lifetime),
        )
    }
}

#[tonic::async_trait]
impl vigil_api::identity::Identity for IdentityService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.address.to_string())
            .unwrap_or_default();
        let req = request.into_inner();
        let kind = TokenKind::try_from(req.kind).unwrap_or(TokenKind::Unspecified);
        let workload = match self.check.verify(kind, &req.token).await {
            Ok(w) => w,
            Err(CredentialError::Refused(reason)) => {
                tracing::warn!(%peer, ?kind, %reason, "CSR refused: credential not accepted");
                return Err(Status::unauthenticated(reason));
            }
            Err(CredentialError::Unavailable(reason)) => {
                tracing::warn!(%peer, ?kind, %reason, "CSR not signed: the credential cannot be checked now");
                return Err(Status::unavailable(reason));
            }
        };
        let id = &workload.spiffe_id;
        let chain = self
            .ca
            .sign_csr(&req.csr_der, id, (self.lifetime)())
            .map_err(|e| {
                tracing::warn!(%peer, workload = %workload.workload, error = %e, "CSR refused");
                Status::invalid_argument(format!("CSR refused: {e}"))
            })?;
        let leaf = chain
            .first()
            .ok_or_else(|| Status::internal("the CA returned an empty chain"))?;
        let info = SvidInfo::from_der(leaf.as_ref())
            .map_err(|e| Status::internal(format!("issued certificate is invalid: {e}")))?;
        let expires_unix = info
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tracing::info!(%peer, workload = %workload.workload, spiffe_id = %id, expires_unix, "issued certificate");
        Ok(Response::new(SignResponse {
            cert_chain_der: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle_der: self
                .ca
                .trust_bundle()
                .roots()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
            expires_unix,
            spiffe_id: id.to_string(),
            workload: workload.workload,
            namespace: workload.namespace,
        }))
    }
}
