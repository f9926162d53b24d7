//! The identity service (port 15012): a CSR and a bootstrap credential in, an X.509-SVID out.
//!
//! The credential alone decides the identity. The CSR contributes its public key and
//! nothing else, so a proxy holding one workload's token can never obtain another's name.
//! How a credential is checked is pluggable ([`CredentialCheck`]): a join token from the
//! mesh file in local mode ([`JoinTokens`]), a projected ServiceAccount token checked with
//! a TokenReview in cluster mode (`kubernetes::token_review`). Issuing stays here, once.
//!
//! Refused credentials are throttled per source address ([`failure_throttle`]), counted
//! by reason ([`IssuanceMetrics`], `vigil_identity_refusals_total` on the control plane's
//! `/metrics`) and logged with their reason, never with the credential.

mod failure_throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};
use vigil_api::{SignRequest, SignResponse, TokenKind};
use vigil_identity::{CertificateAuthority, SpiffeId, SvidInfo};

use crate::mesh::{JoinTokenIndex, MeshFile};
use crate::tls_listener::PeerInfo;
pub use failure_throttle::ThrottleSettings;
use failure_throttle::{FailureThrottle, Throttled};

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
    mesh: Arc<ArcSwap<MeshFile>>,
    /// The index of the mesh file last seen, rebuilt when the file changes.
    index: ArcSwap<IndexedMesh>,
}

struct IndexedMesh {
    mesh: Arc<MeshFile>,
    index: JoinTokenIndex,
}

impl IndexedMesh {
    fn of(mesh: Arc<MeshFile>) -> IndexedMesh {
        IndexedMesh {
            index: mesh.join_token_index(),
            mesh,
        }
    }
}

impl JoinTokens {
    pub fn new(mesh: Arc<ArcSwap<MeshFile>>) -> JoinTokens {
        let index = ArcSwap::from_pointee(IndexedMesh::of(mesh.load_full()));
        JoinTokens { mesh, index }
    }

    /// The index of the mesh file in force; built once per change of the file.
    fn indexed(&self) -> Arc<IndexedMesh> {
        let mesh = self.mesh.load_full();
        let current = self.index.load_full();
        if Arc::ptr_eq(&current.mesh, &mesh) {
            return current;
        }
        let fresh = Arc::new(IndexedMesh::of(mesh));
        self.index.store(fresh.clone());
        fresh
    }
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
        let indexed = self.indexed();
        let mesh = &indexed.mesh;
        let Some(workload) = indexed.index.workload(mesh, token) else {
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

/// Why a signing request was refused, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The credential is wrong, unknown or of the wrong kind.
    Credential,
    /// The source had too many credentials refused lately.
    Throttled,
    /// The credential was good but the CSR was not.
    Csr,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Credential => "credential",
            RefusalReason::Throttled => "throttled",
            RefusalReason::Csr => "csr",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Signing requests refused since start, by reason (`vigil_identity_refusals_total`), and
/// certificates issued with how long signing took (`vigil_identity_certificates_issued_total`,
/// `vigil_identity_signing_duration_seconds`), on the control plane's `/metrics`.
#[derive(Debug)]
pub struct IssuanceMetrics {
    family: Family<RefusalLabels, Counter>,
    issued: Counter,
    /// From the request's arrival to the signed chain: credential check included.
    signing: prometheus_client::metrics::histogram::Histogram,
}

impl Default for IssuanceMetrics {
    fn default() -> Self {
        IssuanceMetrics {
            family: Family::default(),
            issued: Counter::default(),
            // 100 µs … ~3 s.
            signing: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
            ),
        }
    }
}

impl IssuanceMetrics {
    fn counter(&self, reason: RefusalReason) -> Counter {
        self.family
            .get_or_create(&RefusalLabels {
                reason: reason.as_str(),
            })
            .clone()
    }

    /// Counts one refusal; returns the new total for its reason.
    fn count(&self, reason: RefusalReason) -> u64 {
        self.counter(reason).inc() + 1
    }

    /// Refusals so far for `reason`.
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counter(reason).get()
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.get()
    }

    /// Adds the counts to `registry`, every reason shown from the start (at 0).
    pub fn register(&self, registry: &mut Registry) {
        for reason in [
            RefusalReason::Credential,
            RefusalReason::Throttled,
            RefusalReason::Csr,
        ] {
            self.counter(reason);
        }
        registry.register(
            "identity_refusals",
            "Certificate signing requests refused, by reason (credential, throttled, csr)",
            self.family.clone(),
        );
        registry.register(
            "identity_certificates_issued",
            "Workload certificates issued",
            self.issued.clone(),
        );
        registry.register_with_unit(
            "identity_signing_duration",
            "Time to answer a signing request that was granted, credential check included",
            prometheus_client::registry::Unit::Seconds,
            self.signing.clone(),
        );
    }
}

/// Signs workload certificates for holders of a valid credential.
pub struct IdentityService {
    /// Swapped whole when the CA directory changes (a rotation step).
    ca: Arc<arc_swap::ArcSwap<CertificateAuthority>>,
    check: Arc<dyn CredentialCheck>,
    lifetime: LifetimeSource,
    throttle: FailureThrottle,
    refusals: Arc<IssuanceMetrics>,
    jwt: Option<Arc<vigil_identity::JwtSvidSigner>>,
    /// One permit per core: signatures run on the blocking pool at most this many at a
    /// time, and the rest wait their turn without holding a thread.
    signers: Arc<tokio::sync::Semaphore>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        check: Arc<dyn CredentialCheck>,
        lifetime: LifetimeSource,
    ) -> Self {
        IdentityService {
            ca: Arc::new(arc_swap::ArcSwap::new(ca)),
            check,
            lifetime,
            throttle: FailureThrottle::new(ThrottleSettings::default()),
            refusals: Arc::default(),
            jwt: None,
            signers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// The CA this service signs with, to swap in another.
    pub fn ca_handle(&self) -> Arc<arc_swap::ArcSwap<CertificateAuthority>> {
        self.ca.clone()
    }

    /// Changes how many refused credentials a source may have (tests use a small burst).
    pub fn with_throttle(mut self, settings: ThrottleSettings) -> Self {
        self.throttle = FailureThrottle::new(settings);
        self
    }

    /// Signing requests refused since start, by reason.
    pub fn refusals(&self) -> Arc<IssuanceMetrics> {
        self.refusals.clone()
    }

    /// Counts and logs a refusal; the credential itself is never logged.
    fn refuse(&self, peer: &str, reason: RefusalReason, detail: &str) {
        let total = self.refusals.count(reason);
        tracing::warn!(%peer, reason = reason.as_str(), refused_total = total, %detail, "CSR refused");
    }

    /// The answer to a source that is throttled: logged once per run of refusals,
    /// counted every time.
    fn throttled(&self, peer: &str, throttled: Throttled) -> Status {
        let total = self.refusals.count(RefusalReason::Throttled);
        let retry = format!("{:.1} s", throttled.retry_after.as_secs_f64());
        if throttled.first {
            tracing::warn!(%peer, reason = "throttled", refused_total = total, retry_after = %retry, "CSR refused: too many refused credentials from this address; further refusals from it are counted, not logged, until it is let through again");
        } else {
            tracing::debug!(%peer, reason = "throttled", refused_total = total, "CSR refused");
        }
        Status::resource_exhausted(format!(
            "too many refused join tokens or other credentials from {peer}; \
             try again in {retry}. A proxy that keeps being refused has the wrong token: \
             give it the join_token of its workload from the mesh file"
        ))
    }

    /// Local mode: join tokens and the certificate lifetime from the mesh file.
    pub fn local(ca: Arc<CertificateAuthority>, mesh: Arc<ArcSwap<MeshFile>>) -> Self {
        let lifetime_mesh = mesh.clone();
        IdentityService::new(
            ca,
            Arc::new(JoinTokens::new(mesh)),
            Arc::new(move || lifetime_mesh.load().certificate_lifetime),
        )
    }
}

/// How long a JWT-SVID is valid: short, as the standard advises; the Workload API fetches
/// a new one per use.
const JWT_SVID_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

impl IdentityService {
    /// Signs JWT-SVIDs with `signer` (without one, `SignJwt` is refused as unimplemented).
    pub fn with_jwt_signer(mut self, signer: Arc<vigil_identity::JwtSvidSigner>) -> Self {
        self.jwt = Some(signer);
        self
    }

    /// The workload a signing request's credential proves, throttling sources that keep
    /// presenting bad ones.
    async fn credential(
        &self,
        source: Option<IpAddr>,
        peer: &str,
        kind: i32,
        token: &str,
    ) -> Result<VerifiedWorkload, Status> {
        let kind = TokenKind::try_from(kind).unwrap_or(TokenKind::Unspecified);
        let attempt = match self.throttle.begin(source) {
            Ok(attempt) => attempt,
            Err(throttled) => return Err(self.throttled(peer, throttled)),
        };
        match self.check.verify(kind, token).await {
            Ok(w) => {
                attempt.accepted();
                Ok(w)
            }
            Err(CredentialError::Refused(reason)) => {
                self.refuse(peer, RefusalReason::Credential, &reason);
                Err(Status::unauthenticated(reason))
            }
            Err(CredentialError::Unavailable(reason)) => {
                attempt.accepted();
                tracing::warn!(%peer, ?kind, %reason, "not signed: the credential cannot be checked now");
                Err(Status::unavailable(reason))
            }
        }
    }
}

#[tonic::async_trait]
impl vigil_api::identity::Identity for IdentityService {
    async fn sign_jwt(
        &self,
        request: Request<vigil_api::SignJwtRequest>,
    ) -> Result<Response<vigil_api::SignJwtResponse>, Status> {
        let Some(signer) = self.jwt.clone() else {
            return Err(Status::unimplemented(
                "this control plane issues no JWT-SVIDs (cluster mode keeps no JWT key yet)",
            ));
        };
        let source: Option<IpAddr> = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.address.ip());
        let peer = source.map(|ip| ip.to_string()).unwrap_or_default();
        let req = request.into_inner();
        let workload = self.credential(source, &peer, req.kind, &req.token).await?;
        let svid = signer
            .sign(&workload.spiffe_id, &req.audience, JWT_SVID_LIFETIME)
            .map_err(|e| {
                self.refuse(&peer, RefusalReason::Csr, &e.to_string());
                Status::invalid_argument(e.to_string())
            })?;
        tracing::info!(%peer, workload = %workload.workload, spiffe_id = %workload.spiffe_id, audience = ?req.audience, "issued JWT-SVID");
        Ok(Response::new(vigil_api::SignJwtResponse {
            svid,
            spiffe_id: workload.spiffe_id.to_string(),
            jwt_bundle: signer.jwks(),
        }))
    }

    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let source: Option<IpAddr> = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.address.ip());
        let peer = source.map(|ip| ip.to_string()).unwrap_or_default();
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let workload = self.credential(source, &peer, req.kind, &req.token).await?;
        let id = &workload.spiffe_id;
        // One CA for the chain and the bundle, even if a rotation step swaps it meanwhile.
        let ca = self.ca.load_full();
        // Parsing the CSR and signing cost a few hundred microseconds of CPU each: on the
        // blocking pool, so a burst of issuance does not stall the discovery streams.
        let signed = {
            let (ca, csr, id, name, lifetime) = (
                ca.clone(),
                req.csr_der,
                id.clone(),
                workload.workload.clone(),
                (self.lifetime)(),
            );
            let permit = self
                .signers
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Status::internal(format!("signing is shut down: {e}")))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                ca.sign_csr_for_workload(&csr, &id, &name, lifetime)
            })
            .await
            .map_err(|e| Status::internal(format!("signing did not finish: {e}")))?
        };
        let chain = signed.map_err(|e| {
            let detail = format!("{e} (workload {})", workload.workload);
            self.refuse(&peer, RefusalReason::Csr, &detail);
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
        self.refusals.issued.inc();
        self.refusals
            .signing
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(%peer, workload = %workload.workload, spiffe_id = %id, expires_unix, "issued certificate");
        Ok(Response::new(SignResponse {
            cert_chain_der: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle_der: ca
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

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::identity::Identity;

    const WEB: &str = "580e03ca12da94db77610eb82123ebf4";

    fn mesh(token: &str) -> MeshFile {
        MeshFile::parse(&format!(
            "trust_domain: vigil.local\nworkloads:\n  - {{ name: web, namespace: shop, join_token: \"{token}\", app_port: 1 }}\n"
        ))
        .expect("mesh")
    }

    fn request(from: [u8; 4], token: &str) -> Request<SignRequest> {
        let csr_der = vigil_identity::WorkloadKey::generate()
            .and_then(|k| k.csr_der())
            .expect("csr");
        let mut r = Request::new(SignRequest {
            csr_der,
            token: token.into(),
            kind: TokenKind::Join as i32,
        });
        r.extensions_mut().insert(PeerInfo {
            address: std::net::SocketAddr::from((from, 40000)),
            spiffe_id: None,
        });
        r
    }

    fn service(dir: &std::path::Path, mesh: Arc<ArcSwap<MeshFile>>) -> IdentityService {
        let ca = CertificateAuthority::load_or_generate(dir, "vigil.local").expect("ca");
        IdentityService::local(Arc::new(ca), mesh).with_throttle(ThrottleSettings {
            burst: 2,
            per_second: 0.001,
            max_sources: 16,
        })
    }

    /// Once a source is throttled even the right token is turned away unread, so a
    /// right guess cannot show through; other sources are unaffected.
    #[tokio::test]
    async fn a_throttled_source_is_refused_even_with_the_right_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = service(dir.path(), Arc::new(ArcSwap::from_pointee(mesh(WEB))));
        let attacker = [10, 0, 0, 9];
        for _ in 0..2 {
            let refused = identity
                .sign(request(attacker, "ba8997493b19582f79526e3d829752a8"))
                .await
                .expect_err("wrong token");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
        let refused = identity
            .sign(request(attacker, WEB))
            .await
            .expect_err("throttled");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("from 10.0.0.9"), "{refused:?}");

        let issued = identity
            .sign(request([10, 0, 0, 7], WEB))
            .await
            .expect("another source with the right token")
            .into_inner();
        assert_eq!(issued.spiffe_id, "spiffe://vigil.local/ns/shop/sa/web");

        let counts = identity.refusals();
        assert_eq!(counts.get(RefusalReason::Credential), 2);
        assert_eq!(counts.get(RefusalReason::Throttled), 1);
        assert_eq!(counts.get(RefusalReason::Csr), 0);
    }

    /// Accepted tokens never use up a source's refusals: many proxies on one host start
    /// at once.
    #[tokio::test]
    async fn accepted_tokens_are_never_throttled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = service(dir.path(), Arc::new(ArcSwap::from_pointee(mesh(WEB))));
        for _ in 0..5 {
            identity
                .sign(request([127, 0, 0, 1], WEB))
                .await
                .expect("accepted");
        }
    }

    /// The token index follows the mesh file when it is reloaded.
    #[tokio::test]
    async fn a_changed_token_takes_effect_on_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = Arc::new(ArcSwap::from_pointee(mesh(WEB)));
        let identity = service(dir.path(), live.clone());
        identity
            .sign(request([127, 0, 0, 1], WEB))
            .await
            .expect("accepted");
        let rotated = "16221b9e1a926f6fdc29f532ef0f830f";
        live.store(Arc::new(mesh(rotated)));
        let refused = identity
            .sign(request([127, 0, 0, 1], WEB))
            .await
            .expect_err("the old token is gone");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        identity
            .sign(request([127, 0, 0, 1], rotated))
            .await
            .expect("the new token");
    }
    /// Prints what checking a join token costs in a mesh of 5,000 workloads: through the
    /// index, and by comparing with every token as a scan would.
    #[tokio::test]
    async fn checking_tokens_in_a_large_mesh() {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let tokens: Vec<String> = (0..5_000u32)
            .map(|i| {
                Sha256::digest(i.to_le_bytes())[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        let mut yaml = String::from("trust_domain: vigil.local\nworkloads:\n");
        for (i, token) in tokens.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{ name: w{i}, namespace: shop, join_token: \"{token}\", app_port: 1 }}\n"
            ));
        }
        // Token strength is checked on load, not here: this measures lookups only.
        let mesh: MeshFile = serde_yaml::from_str(&yaml).expect("mesh");
        let joins = JoinTokens::new(Arc::new(ArcSwap::from_pointee(mesh.clone())));

        let started = std::time::Instant::now();
        for token in &tokens {
            joins
                .verify(TokenKind::Join, token)
                .await
                .expect("known token");
        }
        let indexed = started.elapsed();
        // A sample is enough for the scan, which is a thousand times slower.
        let started = std::time::Instant::now();
        for token in tokens.iter().take(500) {
            let found = mesh
                .workloads
                .iter()
                .filter(|w| bool::from(w.join_token.as_bytes().ct_eq(token.as_bytes())))
                .count();
            assert_eq!(found, 1);
        }
        let scanned = started.elapsed();
        println!(
            "5,000 workloads, every token checked: index {:?} per token, scan {:?} per token",
            indexed / 5_000,
            scanned / 500
        );
    }
}
