//! The identity service (port 15012): a CSR and a bootstrap credential in, an X.509-SVID out.
//!
//! The credential alone decides the identity. The CSR contributes its public key and
//! nothing else, so a proxy holding one workload's token can never obtain another's name.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use vigil_api::{SignRequest, SignResponse, TokenKind};
use vigil_identity::{CertificateAuthority, SpiffeId, SvidInfo};

use crate::mesh::MeshFile;
use crate::tls_listener::PeerInfo;

/// Signs workload certificates for holders of a valid join token.
pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    mesh: Arc<ArcSwap<MeshFile>>,
}

impl IdentityService {
    pub fn new(ca: Arc<CertificateAuthority>, mesh: Arc<ArcSwap<MeshFile>>) -> Self {
        IdentityService { ca, mesh }
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
        let mesh = self.mesh.load();
        let kind = TokenKind::try_from(req.kind).unwrap_or(TokenKind::Unspecified);
        if kind != TokenKind::Join {
            tracing::warn!(%peer, ?kind, "CSR refused: credential kind not accepted here");
            return Err(Status::unauthenticated(
                "this control plane runs in local mode and accepts only join tokens (kind JOIN); \
                 check the proxy's --token-kind",
            ));
        }
        let Some(workload) = mesh.workload_for_token(&req.token) else {
            tracing::warn!(%peer, "CSR refused: unknown join token");
            return Err(Status::unauthenticated(
                "join token not recognised; give the proxy the join_token of its workload from the mesh file",
            ));
        };
        let id = SpiffeId::workload(
            &mesh.trust_domain,
            &workload.namespace,
            workload.service_account(),
        )
        .map_err(|e| Status::internal(format!("workload identity is invalid: {e}")))?;
        let chain = self
            .ca
            .sign_csr(&req.csr_der, &id, mesh.certificate_lifetime)
            .map_err(|e| {
                tracing::warn!(%peer, workload = %workload.name, error = %e, "CSR refused");
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
        tracing::info!(%peer, workload = %workload.name, spiffe_id = %id, expires_unix, "issued certificate");
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
            workload: workload.name.clone(),
            namespace: workload.namespace.clone(),
        }))
    }
}
