//! The discovery watch: keeps the proxy's [`MeshView`], trust bundle and policy current.
//! While the control plane is away the proxy keeps serving with its last snapshot and
//! reconnects with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use vigil_identity::TrustBundle;

use crate::authz::Authorizer;
use crate::config::ProxyConfig;
use crate::control::backoff::Backoff;
use crate::control::control_plane_client::{self, Replicas};
use crate::control::identity::WorkloadIdentity;
use crate::control::state::MeshView;

/// The largest snapshot the proxy accepts. Every snapshot carries the whole mesh (about
/// 250 bytes a service), so tonic's default of 4 MiB would refuse a mesh of some 16,000
/// services; 64 MiB leaves room for well over 200,000 while still bounding what a
/// misbehaving control plane can make the proxy buffer.
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Live state fed by discovery.
pub struct Discovery {
    pub mesh: ArcSwapOption<MeshView>,
    pub connected: AtomicBool,
    /// Why the latest snapshot was refused (the previous view stays), cleared by the
    /// next one applied.
    pub last_refused: ArcSwapOption<String>,
    /// The JWT bundle (JWKS) of the mesh's JWT-SVIDs, from the latest snapshot that had one.
    pub jwt_bundle: ArcSwapOption<String>,
    /// The discovery replica of the latest watch.
    replica: ArcSwapOption<std::net::SocketAddr>,
    /// Names a scoped view lacked when traffic met them (see [`Discovery::ask_for`]),
    /// sent with every watch as `also_wanted`.
    wanted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Woken when `wanted` grows: the watch starts again with the longer list.
    rescope: tokio::sync::Notify,
    /// Counts the snapshots applied, for callers waiting for the next one.
    applied: tokio::sync::watch::Sender<u64>,
}

/// The most names a proxy asks for beyond those its workload declares; the control plane
/// takes no more.
const MAX_WANTED: usize = 1024;

/// How long a request for a service the proxy has not met waits for the control plane to
/// send it.
const FIRST_USE_WAIT: Duration = Duration::from_secs(3);

/// How one watch ended.
enum WatchEnd {
    /// The stream closed or failed: reconnect, to another replica if there is one.
    Lost,
    /// The proxy asked for more services: watch again at once, on the same replica.
    Rescope,
}

impl Discovery {
    pub fn new() -> Arc<Discovery> {
        Arc::new(Discovery {
            mesh: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            last_refused: ArcSwapOption::empty(),
            jwt_bundle: ArcSwapOption::empty(),
            replica: ArcSwapOption::empty(),
            wanted: Default::default(),
            rescope: tokio::sync::Notify::new(),
            applied: tokio::sync::watch::Sender::new(0),
        })
    }

    /// For a view scoped to what the workload declared it calls: asks the control plane
    /// for the services `names` mean (host names or `ip:port`), the first time traffic
    /// meets them, and waits (at most [`FIRST_USE_WAIT`]) for the snapshot that answers.
    /// A name asked for once is not asked for again: it stays in the watch, so a service
    /// created under it later still reaches the proxy, and a name that means nothing costs
    /// one round trip, not one per request.
    pub async fn ask_for(&self, names: &[String]) {
        if !self.mesh.load().as_ref().is_some_and(|m| m.scoped) {
            return;
        }
        let mut applied = self.applied();
        {
            let mut wanted = match self.wanted.lock() {
                Ok(w) => w,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut added = false;
            for name in names.iter().filter(|n| !n.is_empty() && n.len() <= 300) {
                if wanted.len() >= MAX_WANTED {
                    tracing::warn!(%name, "not asking the control plane for another service: {MAX_WANTED} asked for already; declare the services this workload calls");
                    break;
                }
                added |= wanted.insert(name.to_ascii_lowercase());
            }
            if !added {
                return;
            }
        }
        tracing::info!(
            ?names,
            "asking the control plane for a service this proxy has not met"
        );
        self.rescope.notify_one();
        let _ = tokio::time::timeout(FIRST_USE_WAIT, applied.changed()).await;
    }

    /// Changes each time a snapshot has been applied.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn wanted(&self) -> Vec<String> {
        match self.wanted.lock() {
            Ok(w) => w.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// The control-plane replica the proxy watches (or last watched).
    pub fn replica(&self) -> Option<std::net::SocketAddr> {
        self.replica.load().as_deref().copied()
    }

    /// Watches forever, reconnecting with backoff. When the control plane runs as several
    /// replicas, a watch that fails moves straight to the next replica; the backoff applies
    /// once every replica has failed in a row.
    pub async fn run(
        self: Arc<Self>,
        config: ProxyConfig,
        identity: Arc<WorkloadIdentity>,
        authz: Arc<Authorizer>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        let replicas = Replicas::new(config.discovery_addresses.0.clone());
        let mut failed_in_a_row = 0;
        loop {
            let Some(replica) = replicas.current() else {
                tracing::error!("no discovery address is configured; pass --discovery-addr");
                return;
            };
            self.replica.store(Some(Arc::new(replica)));
            match self.watch_once(replica, &config, &identity, &authz).await {
                Ok(WatchEnd::Rescope) => continue,
                Ok(WatchEnd::Lost) => {
                    tracing::warn!(%replica, "discovery stream ended; reconnecting")
                }
                Err(e) => {
                    tracing::warn!(%replica, error = %e, "discovery unavailable; serving with the last snapshot")
                }
            }
            let was_connected = self.connected.swap(false, Ordering::Relaxed);
            if was_connected {
                backoff.reset();
            }
            replicas.failed(replica);
            failed_in_a_row = if was_connected {
                1
            } else {
                failed_in_a_row + 1
            };
            if failed_in_a_row < replicas.len() {
                // Another replica has not been tried yet: go now, after a short random
                // pause so a fleet that loses one replica does not reach the next at once.
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..250))).await;
                continue;
            }
            failed_in_a_row = 0;
            let delay = if self.mesh.load().is_some() {
                backoff.next_delay()
            } else {
                backoff.next_delay().min(Duration::from_secs(1))
            };
            tokio::time::sleep(delay).await;
        }
    }

    async fn watch_once(
        &self,
        replica: std::net::SocketAddr,
        config: &ProxyConfig,
        identity: &Arc<WorkloadIdentity>,
        authz: &Arc<Authorizer>,
    ) -> anyhow::Result<WatchEnd> {
        let cp = config.control_plane_id()?;
        let tls = vigil_identity::mtls_client_config(
            Some(identity.svid.clone()),
            identity.trust.clone(),
            cp.clone(),
            &config.tls_options(&[b"h2"]),
        );
        let channel = control_plane_client::connect(replica, tls, &cp).await?;
        let mut client = vigil_api::discovery::DiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        let workload = identity
            .status()
            .map(|s| s.workload.clone())
            .unwrap_or_default();
        let mut request = tonic::Request::new(vigil_api::WatchRequest {
            known_version: self
                .mesh
                .load()
                .as_ref()
                .map(|m| m.version.clone())
                .unwrap_or_default(),
            policy_version: authz.version().unwrap_or_default(),
            also_wanted: self.wanted(),
        });
        if let Ok(v) = workload.parse() {
            request.metadata_mut().insert("x-vigil-workload", v);
        }
        let mut stream = client
            .watch(request)
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
            .into_inner();
        // Connected from the moment the watch is accepted: a proxy that reconnects with the
        // current version is sent nothing until the mesh changes.
        self.connected.store(true, Ordering::Relaxed);
        // The first messages of a snapshot split in several (`more`), held until the last.
        let mut pending: Option<vigil_api::Snapshot> = None;
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                // A snapshot half received is dropped with the stream: the next one is
                // whole.
                _ = self.rescope.notified() => return Ok(WatchEnd::Rescope),
            };
            let Some(message) =
                message.map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
            else {
                break;
            };
            self.connected.store(true, Ordering::Relaxed);
            let snapshot = match pending.take() {
                Some(mut first) => {
                    if message.version != first.version {
                        anyhow::bail!(
                            "snapshot {} was cut short by {}; reconnecting for a whole one",
                            first.version,
                            message.version
                        );
                    }
                    first.services.extend(message.services);
                    first.more = message.more;
                    first
                }
                None => message,
            };
            if snapshot.more {
                pending = Some(snapshot);
                continue;
            }
            if snapshot.incremental {
                let have = self.mesh.load().as_ref().map(|m| m.version.clone());
                if have.as_deref() != Some(snapshot.base_version.as_str()) {
                    // Never guess at a list this proxy does not have: a new stream starts
                    // with a whole snapshot.
                    anyhow::bail!(
                        "an incremental snapshot for {} arrived but this proxy has {}; reconnecting for a whole one",
                        snapshot.base_version,
                        have.as_deref().unwrap_or("none")
                    );
                }
            }
            if let Err(e) = self.apply(&snapshot, identity) {
                // A mistake in the mesh (say, a bad traffic policy) must not cut the
                // proxy off: keep the last good view and wait for a corrected snapshot.
                tracing::error!(version = %snapshot.version, error = %e, "snapshot refused; keeping the previous view");
                self.last_refused.store(Some(Arc::new(e.to_string())));
            }
            // Policies see the services of the view (`data.vigil.mesh.services`); the
            // bundle is compiled again only when that list changes, not for endpoints.
            // Compiling can take a while: on the blocking pool, never on the threads that
            // carry traffic.
            let services = self.mesh.load().as_deref().map(mesh_services);
            let policy = snapshot.policy.clone();
            let candidate = snapshot.candidate_policy.clone();
            let authz = authz.clone();
            let compile = move || {
                if let Some(services) = services {
                    authz.set_mesh_services(services);
                }
                if let Some(policy) = policy {
                    authz.install(policy, candidate);
                }
            };
            if let Err(e) = tokio::task::spawn_blocking(compile).await {
                tracing::error!(error = %e, "policy bundle compilation did not finish; keeping the bundle in force");
            }
            self.applied.send_modify(|n| *n += 1);
        }
        Ok(WatchEnd::Lost)
    }

    fn apply(
        &self,
        snapshot: &vigil_api::Snapshot,
        identity: &WorkloadIdentity,
    ) -> anyhow::Result<()> {
        // Trust (and policy, applied after this whatever happens here) stand on their own:
        // a CA rotation must land even when the service list cannot be used.
        let view = match (snapshot.incremental, self.mesh.load_full()) {
            (true, Some(current)) => current.from_delta(snapshot),
            _ => MeshView::from_snapshot(snapshot),
        };
        if !snapshot.trust_bundle_der.is_empty() {
            let bundle = TrustBundle::from_der(
                snapshot
                    .trust_bundle_der
                    .iter()
                    .map(|d| rustls_pki_types::CertificateDer::from(d.clone()))
                    .collect(),
            )?;
            identity.update_trust(bundle)?;
        }
        if !snapshot.jwt_bundle.is_empty()
            && self.jwt_bundle.load().as_deref().map(String::as_str) != Some(&snapshot.jwt_bundle)
        {
            self.jwt_bundle
                .store(Some(Arc::new(snapshot.jwt_bundle.clone())));
        }
        let view = view?;
        tracing::info!(version = %view.version, services = view.services.len(), "snapshot applied");
        self.mesh.store(Some(Arc::new(view)));
        self.last_refused.store(None);
        Ok(())
    }
}

/// `data.vigil.mesh.services` for a view: each service by `name.namespace`, with its ports
/// and host names.
fn mesh_services(view: &MeshView) -> String {
    let mut services: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for s in &view.services {
        let entry = services
            .entry(format!("{}.{}", s.name, s.namespace))
            .or_insert_with(|| {
                serde_json::json!({"name": s.name, "namespace": s.namespace, "ports": [], "hosts": []})
            });
        if let Some(ports) = entry["ports"].as_array_mut() {
            ports.push(s.port.into());
        }
        if let Some(hosts) = entry["hosts"].as_array_mut() {
            hosts.extend(s.hosts.iter().map(|h| serde_json::Value::from(h.as_str())));
        }
    }
    serde_json::Value::from(serde_json::Map::from_iter(services)).to_string()
}
