//! The proxy's own identity: a key made here that never leaves the process, a CSR
//! signed by the control plane, and renewal at half-life with jitter. A failed renewal
//! keeps the current certificate until it expires.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rand::Rng;
use serde::Serialize;
use vigil_identity::{SvidInfo, SvidStore, TrustBundle, TrustStore, WorkloadKey};

use crate::config::ProxyConfig;
use crate::control::backoff::Backoff;
use crate::control::control_plane_client::{self, Replicas};
use crate::telemetry::metrics::Metrics;

/// What `/certs` reports about the current certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub spiffe_id: String,
    pub workload: String,
    pub namespace: String,
    pub serial: String,
    pub issuer: String,
    pub not_before: u64,
    pub not_after: u64,
    /// When the proxy will next try to renew, seconds since the epoch.
    pub renew_at: u64,
    pub chain_pem: Vec<String>,
    /// The trusted root the chain leads to (its name, see `vigil_identity::root_name`): during
    /// a CA rotation, which root this proxy's certificate still depends on.
    pub root: String,
    /// The certificate that signed this one (an intermediate, else the root), by name.
    pub signer: String,
}

/// The proxy's live certificate and trust bundle.
pub struct WorkloadIdentity {
    config: ProxyConfig,
    key: WorkloadKey,
    pub svid: Arc<SvidStore>,
    pub trust: Arc<TrustStore>,
    status: ArcSwapOption<CertificateStatus>,
    pub renewals: AtomicU64,
    pub renewal_failures: AtomicU64,
    last_error: ArcSwapOption<String>,
    metrics: Arc<Metrics>,
    /// Woken when the trust bundle changes (a CA rotation step): renew within seconds rather
    /// than at half-life, so certificates move to the new signer without waiting a lifetime.
    renew_now: tokio::sync::Notify,
    /// Bumped when the certificate or the trust bundle changes (the Workload API streams).
    changed: tokio::sync::watch::Sender<u64>,
    /// The channel to the identity service, kept between renewals: tonic reconnects it
    /// when the connection drops, so a renewal costs a request, not a handshake. Kept
    /// with the replica it goes to.
    channel: tokio::sync::Mutex<Option<(SocketAddr, tonic::transport::Channel)>>,
    /// The identity service's replicas; a call that cannot reach one tries the next.
    replicas: Replicas,
}

type IdentityClient = vigil_api::identity::IdentityClient<tonic::transport::Channel>;

/// The longest a proxy waits, at random, before renewing after the trust bundle changed:
/// enough to spread a fleet's renewals out, short enough that a rotation takes seconds.
const ROTATION_JITTER: Duration = Duration::from_secs(5);

/// Outcome of one signing round trip.
struct Issued {
    status: CertificateStatus,
    lifetime_left: Duration,
}

impl WorkloadIdentity {
    /// Generates the workload key. Nothing is requested yet.
    pub fn new(
        config: ProxyConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<WorkloadIdentity>> {
        let key = WorkloadKey::generate()?;
        let trust = TrustStore::new(&config.trust_domain, config.bootstrap_trust()?)?;
        let replicas = Replicas::new(config.identity_addresses.0.clone());
        Ok(Arc::new(WorkloadIdentity {
            replicas,
            config,
            key,
            svid: SvidStore::new(),
            trust,
            status: ArcSwapOption::empty(),
            renewals: AtomicU64::new(0),
            renewal_failures: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            metrics,
            renew_now: tokio::sync::Notify::new(),
            changed: tokio::sync::watch::Sender::new(0),
            channel: tokio::sync::Mutex::new(None),
        }))
    }

    /// The current certificate's status, once there is one.
    pub fn status(&self) -> Option<Arc<CertificateStatus>> {
        self.status.load_full()
    }

    /// Installs a trust bundle from discovery; when it differs from the one in force and a
    /// certificate is already held, renews soon (see [`ROTATION_JITTER`]).
    pub fn update_trust(&self, bundle: TrustBundle) -> anyhow::Result<()> {
        let changed = self.trust.bundle().roots() != bundle.roots();
        self.trust.set(bundle)?;
        if changed && self.status.load().is_some() {
            tracing::info!(
                "trust bundle changed (a CA rotation step); renewing the certificate soon"
            );
            self.renew_now.notify_one();
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// This proxy's SPIFFE ID once it holds a certificate; empty before.
    pub fn spiffe_id(&self) -> String {
        self.status
            .load()
            .as_ref()
            .map(|s| s.spiffe_id.clone())
            .unwrap_or_default()
    }

    /// The last renewal error, cleared by the next success.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Obtains the first certificate, retrying with backoff until it succeeds, then
    /// renews forever. Returns only if the task is dropped.
    pub async fn run(self: Arc<Self>, first: tokio::sync::oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            match self.request().await {
                Ok(issued) => {
                    backoff.reset();
                    self.last_error.store(None);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    } else {
                        self.renewals.fetch_add(1, Ordering::Relaxed);
                        self.metrics.certificate_renewals.inc();
                    }
                    let wait = renewal_delay(issued.lifetime_left);
                    let renew_at = SystemTime::now() + wait;
                    let mut status = issued.status;
                    status.renew_at = unix(renew_at);
                    self.metrics
                        .certificate_expiry
                        .set(i64::try_from(status.not_after).unwrap_or(i64::MAX));
                    self.metrics.set_local(crate::telemetry::metrics::Local {
                        workload: status.workload.clone(),
                        namespace: status.namespace.clone(),
                        identity: status.spiffe_id.clone(),
                    });
                    tracing::info!(spiffe_id = %status.spiffe_id, expires_in = ?issued.lifetime_left, renew_in = ?wait, "workload certificate installed");
                    self.status.store(Some(Arc::new(status)));
                    self.changed.send_modify(|n| *n += 1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.renew_now.notified() => {
                            let jitter = ROTATION_JITTER.mul_f64(rand::random::<f64>());
                            tokio::time::sleep(jitter).await;
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if first.is_some() {
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot get a workload certificate yet; is the control plane at {:?} running and the join token right?", self.replicas.all());
                    } else {
                        self.renewal_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, retry_in = ?delay, "certificate renewal failed; keeping the current certificate until it expires");
                    }
                    self.last_error.store(Some(Arc::new(e.to_string())));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A client of the identity service on `replica`, on the kept channel when it goes there.
    async fn identity_client(&self, replica: SocketAddr) -> anyhow::Result<IdentityClient> {
        let mut cached = self.channel.lock().await;
        if let Some((to, channel)) = cached.as_ref() {
            if *to == replica {
                return Ok(IdentityClient::new(channel.clone()));
            }
        }
        let cp = self.config.control_plane_id()?;
        // Before the first certificate the proxy has no SVID to present; afterwards
        // it still presents none here: the join token is the credential for signing.
        // The verifier reads the live trust store, so a reconnection after a CA
        // rotation checks the control plane against the current roots.
        let tls = vigil_identity::mtls_client_config(
            None,
            self.trust.clone(),
            cp.clone(),
            &self.config.tls_options(&[b"h2"]),
        );
        let channel = control_plane_client::connect(replica, tls, &cp).await?;
        *cached = Some((replica, channel.clone()));
        Ok(IdentityClient::new(channel))
    }

    /// Makes one call to the identity service, trying each replica in turn while the one in
    /// use cannot be reached. An answer (a refusal included) ends the round: only a replica
    /// that does not answer is passed over.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(IdentityClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable("no control plane address is configured");
        for _ in 0..self.replicas.len() {
            let Some(replica) = self.replicas.current() else {
                break;
            };
            let outcome = match self.identity_client(replica).await {
                Ok(client) => call(client).await,
                Err(e) => Err(tonic::Status::unavailable(format!(
                    "connecting to the control plane at {replica}: {e:#}"
                ))),
            };
            match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if unreachable(&status) => {
                    if self.replicas.len() > 1 {
                        tracing::warn!(%replica, error = %status.message(), "control plane replica unreachable; trying the next");
                    }
                    self.replicas.failed(replica);
                    *self.channel.lock().await = None;
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Has the control plane sign `csr_der` with this proxy's credential: an X.509-SVID of
    /// this workload for a key the application holds (the SPIFFE Workload API), never the
    /// proxy's own.
    pub async fn sign_for_app(&self, csr_der: Vec<u8>) -> anyhow::Result<vigil_api::SignResponse> {
        let request = vigil_api::SignRequest {
            csr_der,
            token: self.config.current_token(),
            kind: self.config.token_kind.api() as i32,
        };
        self.call(|mut client| {
            let request = request.clone();
            async move { client.sign(request).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))
    }

    /// A JWT-SVID of this workload for `audience`, from the control plane.
    pub async fn sign_jwt(
        &self,
        audience: Vec<String>,
    ) -> Result<vigil_api::SignJwtResponse, tonic::Status> {
        let request = vigil_api::SignJwtRequest {
            token: self.config.current_token(),
            kind: self.config.token_kind.api() as i32,
            audience,
        };
        self.call(|mut client| {
            let request = request.clone();
            async move { client.sign_jwt(request).await }
        })
        .await
    }

    /// Changes whenever the certificate or the trust bundle does.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn request(&self) -> anyhow::Result<Issued> {
        let request = vigil_api::SignRequest {
            csr_der: self.key.csr_der()?,
            token: self.config.current_token(),
            kind: self.config.token_kind.api() as i32,
        };
        let response = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.sign(request).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?;
        let chain: Vec<_> = response
            .cert_chain_der
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("control plane returned no certificate"))?;
        let info = SvidInfo::from_der(leaf.as_ref())?;
        if info.spiffe_id.trust_domain() != self.config.trust_domain {
            anyhow::bail!(
                "control plane issued {} outside trust domain {}",
                info.spiffe_id,
                self.config.trust_domain
            );
        }
        let bundle = TrustBundle::from_der(
            response
                .trust_bundle_der
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect(),
        )?;
        let chain_pem = chain
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_ref()))
            .collect();
        let root = vigil_identity::chain_root(&chain, &bundle);
        let signer = chain
            .get(1)
            .map(vigil_identity::root_name)
            .unwrap_or_else(|| root.clone());
        let certified = self.key.certified(chain)?;
        self.trust.set(bundle)?;
        self.svid.set(certified);
        let lifetime_left = info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(Issued {
            status: CertificateStatus {
                spiffe_id: info.spiffe_id.to_string(),
                workload: response.workload,
                namespace: response.namespace,
                serial: info.serial_hex,
                issuer: info.issuer,
                not_before: unix(info.not_before),
                not_after: unix(info.not_after),
                renew_at: 0,
                chain_pem,
                root,
                signer,
            },
            lifetime_left,
        })
    }
}

/// Whether a call failed because the replica could not be reached (or is going away), as
/// opposed to an answer from it.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) || status.message().contains("transport error")
}

/// Renew at half of the remaining lifetime, ±10% jitter so a fleet started together
/// does not renew together.
fn renewal_delay(lifetime_left: Duration) -> Duration {
    let half = lifetime_left / 2;
    let jitter = lifetime_left.as_secs_f64() * 0.1;
    let offset = rand::rng().random_range(-jitter..=jitter);
    Duration::from_secs_f64((half.as_secs_f64() + offset).max(0.5))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_around_half_life() {
        for _ in 0..100 {
            let d = renewal_delay(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(40) && d <= Duration::from_secs(60),
                "{d:?}"
            );
        }
    }
}
