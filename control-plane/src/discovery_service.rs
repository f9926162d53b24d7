//! The discovery service (port 15010): each proxy, authenticated by its SVID, watches a
//! stream of snapshots of the mesh as its workload sees it.
//!
//! Every stream finds its workload through one [`WorkloadIndex`] per state, and takes
//! its services from one [`SharedServices`] per state, both built by the first stream to
//! need them after a change and shared by the others: each service and each policy bundle
//! is encoded once per change, and a stream only copies the bytes. A proxy that
//! reconnects with the version it already has is sent nothing until that version changes,
//! and a stream sends the policy bundle only when it differs from the one it last sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vigil_api::wire::{EncodedSnapshot, WatchRequest};

use crate::model::{MeshModel, Scope, ServicesDelta, SharedServices, WorkloadIndex, MAX_WANTED};
use crate::tls_listener::PeerInfo;

/// What the control plane currently serves; replaced whole on every change.
#[derive(Debug, Clone)]
pub struct MeshState {
    pub model: MeshModel,
    pub trust_bundle_der: Vec<Vec<u8>>,
    /// Every policy bundle, each workload's chosen by its targets.
    pub policies: crate::policy_source::ServedPolicies,
    /// The JWKS verifying the mesh's JWT-SVIDs (empty: none are issued).
    pub jwt_bundle: String,
}

/// A proxy currently watching, for `vigil check` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectedProxy {
    pub workload: String,
    pub spiffe_id: String,
    pub address: String,
    pub connected_since: SystemTime,
    pub snapshot_version: String,
    pub policy_version: String,
}

/// Registry of watching proxies, keyed by stream, and what discovery has sent them.
#[derive(Default)]
pub struct ConnectedProxies {
    next: AtomicU64,
    proxies: Mutex<BTreeMap<u64, ConnectedProxy>>,
    metrics: DiscoveryMetrics,
}

/// `kind` of a sent snapshot: `whole` or `delta`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SnapshotLabels {
    kind: &'static str,
}

/// What discovery has done, for the control plane's `/metrics`.
#[derive(Default)]
struct DiscoveryMetrics {
    streams: prometheus_client::metrics::gauge::Gauge,
    snapshots: prometheus_client::metrics::family::Family<
        SnapshotLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    bytes: prometheus_client::metrics::counter::Counter,
    refused: prometheus_client::metrics::counter::Counter,
}

impl ConnectedProxies {
    /// Adds discovery's series to the control plane's registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = &self.metrics;
        registry.register(
            "discovery_streams",
            "Proxies watching discovery now",
            m.streams.clone(),
        );
        registry.register(
            "discovery_snapshots",
            "Snapshots sent to proxies, whole or as a delta of the one the proxy has",
            m.snapshots.clone(),
        );
        registry.register_with_unit(
            "discovery_sent",
            "Encoded snapshot bytes sent to proxies",
            prometheus_client::registry::Unit::Bytes,
            m.bytes.clone(),
        );
        registry.register(
            "discovery_refused",
            "Watches refused: no workload of the mesh has the caller's identity",
            m.refused.clone(),
        );
    }

    pub fn list(&self) -> Vec<ConnectedProxy> {
        match self.proxies.lock() {
            Ok(p) => p.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, ConnectedProxy>) -> R) -> R {
        match self.proxies.lock() {
            Ok(mut p) => f(&mut p),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// What every stream needs from one state, built once by the first stream to need it
/// after a change and shared by the others.
struct PreparedState {
    workloads: WorkloadIndex,
    services: SharedServices,
    /// From the services of the state prepared before this one, for streams that sent it.
    delta: Option<ServicesDelta>,
}

/// The [`PreparedState`] of the state in force, so a change costs one index and one
/// service list however many proxies are watching.
#[derive(Default)]
struct SharedPreparedState {
    current: Mutex<Option<(Arc<MeshState>, Arc<PreparedState>)>>,
}

impl SharedPreparedState {
    fn of(&self, state: &Arc<MeshState>) -> Arc<PreparedState> {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((prepared_for, prepared)) = current.as_ref() {
            if Arc::ptr_eq(prepared_for, state) {
                return prepared.clone();
            }
        }
        let services = state.model.shared_services();
        let delta = current
            .as_ref()
            .map(|(_, before)| services.delta_from(&before.services));
        let prepared = Arc::new(PreparedState {
            workloads: state.model.workload_index(),
            services,
            delta,
        });
        *current = Some((state.clone(), prepared.clone()));
        prepared
    }
}

/// Serves snapshots from a `watch` channel of [`MeshState`].
pub struct DiscoveryService {
    state: watch::Receiver<Arc<MeshState>>,
    proxies: Arc<ConnectedProxies>,
    prepared: Arc<SharedPreparedState>,
}

impl DiscoveryService {
    pub fn new(state: watch::Receiver<Arc<MeshState>>, proxies: Arc<ConnectedProxies>) -> Self {
        DiscoveryService {
            state,
            proxies,
            prepared: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl vigil_api::wire::Discovery for DiscoveryService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection information missing"))?;
        let Some(id) = peer.spiffe_id.clone() else {
            return Err(Status::unauthenticated(
                "discovery needs the proxy's workload certificate (mutual TLS)",
            ));
        };
        let workload_name = request
            .metadata()
            .get("x-vigil-workload")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let req = request.into_inner();
        if req.also_wanted.len() > MAX_WANTED || req.also_wanted.iter().any(|n| n.len() > 300) {
            return Err(Status::invalid_argument(format!(
                "also_wanted names at most {MAX_WANTED} services of at most 300 bytes each"
            )));
        }
        let mut state = self.state.clone();
        let initial = state.borrow_and_update().clone();
        let Some(workload) =
            self.prepared
                .of(&initial)
                .workloads
                .workload(&initial.model, &id, &workload_name)
        else {
            self.proxies.metrics.refused.inc();
            tracing::warn!(spiffe_id = %id, workload = %workload_name, "discovery refused: no such workload for this identity");
            return Err(Status::permission_denied(format!(
                "no workload {workload_name:?} with identity {id} in the mesh"
            )));
        };
        let workload_name = workload.name.clone();

        let key = self.proxies.next.fetch_add(1, Ordering::Relaxed);
        self.proxies.with(|p| {
            p.insert(
                key,
                ConnectedProxy {
                    workload: workload_name.clone(),
                    spiffe_id: id.to_string(),
                    address: peer.address.to_string(),
                    connected_since: SystemTime::now(),
                    snapshot_version: req.known_version.clone(),
                    policy_version: req.policy_version.clone(),
                },
            )
        });
        tracing::info!(workload = %workload_name, spiffe_id = %id, peer = %peer.address, "proxy watching");
        self.proxies.metrics.streams.inc();

        let (tx, rx) = mpsc::channel::<Queued>(4);
        let proxies = self.proxies.clone();
        let shared = self.prepared.clone();
        tokio::spawn(async move {
            // A reconnecting proxy that already has the current snapshot is sent nothing
            // until the mesh changes: a control-plane restart then costs each proxy a
            // handshake, not a whole-mesh message.
            let mut last_version = req.known_version;
            // What the last policy sent hashes to: an unchanged bundle is not sent again
            // (the proxy keeps the one it has when a snapshot carries none).
            let mut last_policy: Option<[u8; 32]> = None;
            // The services this stream last sent, by digest: a proxy that has them gets
            // only what changed.
            let mut last_services: Option<[u8; 32]> = None;
            // For a proxy whose workload declares what it calls: the scope its services
            // were cut to, the keys it holds, and the rest of what it was last sent.
            let mut last_scope: Option<[u8; 32]> = None;
            let mut held: std::collections::HashSet<vigil_api::ServiceKey> = Default::default();
            let mut last_rest: Option<[u8; 32]> = None;
            // The trust and JWT bundles last sent: unchanged, they are left out (a proxy
            // keeps the ones it has when a snapshot carries none).
            let mut last_bundles: Option<[u8; 32]> = None;
            loop {
                let current = state.borrow_and_update().clone();
                let prepared = shared.of(&current);
                match prepared
                    .workloads
                    .workload(&current.model, &id, &workload_name)
                {
                    Some(workload) => {
                        let served = current.policies.for_workload(workload);
                        let policy_key = crate::model::policy_key(served, workload);
                        let send_policy = last_policy != Some(policy_key);
                        let mut snapshot = current.model.snapshot_with(
                            &prepared.services,
                            workload,
                            &current.trust_bundle_der,
                            served,
                            &current.jwt_bundle,
                            send_policy,
                        );
                        let scope = Scope::of(workload, &req.also_wanted);
                        if let Some(scope) = &scope {
                            snapshot.version =
                                crate::model::scoped_version(&snapshot.version, scope);
                            snapshot.scoped = true;
                        }
                        if snapshot.version != last_version {
                            let digest = *prepared.services.digest();
                            let delta = match last_services {
                                Some(base) if base == digest => Some(None),
                                Some(base) => {
                                    prepared.delta.as_ref().filter(|d| d.from == base).map(Some)
                                }
                                None => None,
                            };
                            let rest = rest_digest(&snapshot);
                            match (&scope, delta) {
                                (None, Some(delta)) => {
                                    snapshot.incremental = true;
                                    if let Some(d) = delta {
                                        snapshot.services = d.changed.clone();
                                        snapshot.removed_services = d.removed.clone();
                                    }
                                }
                                (None, None) => snapshot.services = prepared.services.encoded(),
                                (Some(scope), Some(delta))
                                    if last_scope == Some(*scope.digest()) =>
                                {
                                    if let Some(d) = delta {
                                        cut_delta(
                                            &mut snapshot,
                                            d,
                                            &prepared.services,
                                            scope,
                                            &mut held,
                                        );
                                    }
                                    let nothing_new = snapshot.services.is_empty()
                                        && snapshot.removed_services.is_empty()
                                        && !send_policy
                                        && last_rest == Some(rest);
                                    if nothing_new {
                                        // Nothing this proxy holds changed: send nothing,
                                        // and the next delta still starts from its version.
                                        last_services = Some(digest);
                                        wait_for_change(&mut state, &tx).await;
                                        if tx.is_closed() || state.has_changed().is_err() {
                                            break;
                                        }
                                        continue;
                                    }
                                    snapshot.incremental = true;
                                }
                                (Some(scope), _) => {
                                    let (services, keys) = prepared.services.encoded_in(scope);
                                    snapshot.services = services;
                                    held = keys.into_iter().collect();
                                }
                            }
                            if snapshot.incremental {
                                snapshot.base_version = last_version.clone();
                            }
                            let bundles = bundles_digest(&snapshot);
                            if last_bundles == Some(bundles) {
                                snapshot.trust_bundle_der.clear();
                                snapshot.jwt_bundle.clear();
                            }
                            last_bundles = Some(bundles);
                            last_version = snapshot.version.clone();
                            last_policy = Some(policy_key);
                            last_services = Some(digest);
                            last_scope = scope.as_ref().map(|s| *s.digest());
                            last_rest = Some(rest);
                            let policy_version =
                                served.map(|p| p.bundle.version.clone()).unwrap_or_default();
                            proxies.with(|p| {
                                if let Some(entry) = p.get_mut(&key) {
                                    entry.snapshot_version = last_version.clone();
                                    entry.policy_version = policy_version;
                                }
                            });
                            let kind = if snapshot.incremental {
                                "delta"
                            } else {
                                "whole"
                            };
                            proxies
                                .metrics
                                .snapshots
                                .get_or_create(&SnapshotLabels { kind })
                                .inc();
                            let mut closed = false;
                            for message in split(snapshot) {
                                proxies
                                    .metrics
                                    .bytes
                                    .inc_by(prost::Message::encoded_len(&message) as u64);
                                if tx.send(Box::new(Ok(message))).await.is_err() {
                                    closed = true;
                                    break;
                                }
                            }
                            if closed {
                                break;
                            }
                        }
                    }
                    None => {
                        let _ = tx
                            .send(Box::new(Err(Status::permission_denied(format!(
                                "workload {workload_name:?} was removed from the mesh"
                            )))))
                            .await;
                        break;
                    }
                }
                wait_for_change(&mut state, &tx).await;
                if tx.is_closed() || state.has_changed().is_err() {
                    break;
                }
            }
            proxies.with(|p| p.remove(&key));
            proxies.metrics.streams.dec();
            tracing::info!(workload = %workload_name, "proxy stopped watching");
        });
        Ok(Response::new(WatchStream(ReceiverStream::new(rx))))
    }
}

/// A message waiting for its stream, boxed: the channel allocates its slots in blocks of
/// 32 and keeps them, and a snapshot or a status is a few hundred bytes where a box is 8.
type Queued = Box<Result<EncodedSnapshot, Status>>;

/// The messages of one watch, as tonic sends them.
pub struct WatchStream(ReceiverStream<Queued>);

impl tokio_stream::Stream for WatchStream {
    type Item = Result<EncodedSnapshot, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|queued| queued.map(|boxed| *boxed))
    }
}

/// Waits until the mesh state changes or the proxy goes away.
async fn wait_for_change(state: &mut watch::Receiver<Arc<MeshState>>, tx: &mpsc::Sender<Queued>) {
    tokio::select! {
        _ = state.changed() => {},
        _ = tx.closed() => {},
    }
}

/// What a snapshot carries besides its services and policy: the workload, trust domain,
/// trust bundle and JWT bundle. A scoped proxy is sent a change only when its services or
/// these moved.
fn rest_digest(snapshot: &EncodedSnapshot) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for part in [
        &snapshot.workload[..],
        snapshot.trust_domain.as_bytes(),
        snapshot.jwt_bundle.as_bytes(),
    ]
    .into_iter()
    .chain(snapshot.trust_bundle_der.iter().map(|b| &b[..]))
    {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.finalize().into()
}

/// What the trust bundle and the JWT bundle of a snapshot hash to.
fn bundles_digest(snapshot: &EncodedSnapshot) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for part in std::iter::once(snapshot.jwt_bundle.as_bytes())
        .chain(snapshot.trust_bundle_der.iter().map(|b| &b[..]))
    {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.finalize().into()
}

/// Cuts the shared `delta` down to what a proxy holding `held` (the keys of its scope)
/// needs: services of its scope that changed or joined it, and the keys of those it holds
/// that were removed or left its scope.
fn cut_delta(
    snapshot: &mut EncodedSnapshot,
    delta: &ServicesDelta,
    services: &SharedServices,
    scope: &Scope,
    held: &mut std::collections::HashSet<vigil_api::ServiceKey>,
) {
    use prost::Message;
    for &i in &delta.changed_at {
        let Some((key, bytes)) = services.get(i) else {
            continue;
        };
        if services.covered(scope, i) {
            snapshot.services.push(bytes.clone());
            held.insert(key.clone());
        } else if held.remove(key) {
            snapshot
                .removed_services
                .push(bytes::Bytes::from(key.encode_to_vec()));
        }
    }
    for key in &delta.removed_keys {
        if held.remove(key) {
            snapshot
                .removed_services
                .push(bytes::Bytes::from(key.encode_to_vec()));
        }
    }
}

/// The most bytes one message carries, its services and the rest together. tonic keeps
/// each stream's encode buffer (8 KiB to start with) as large as the largest message it
/// sent, for as long as the stream lasts: a first message of 4 KiB of services plus the
/// policy bundle grew it to 32 KiB on every stream, a third of the control plane's memory
/// per connected proxy. Messages that fit the buffer it starts with never grow it.
const MESSAGE_BYTES: usize = 7 * 1024;

/// Splits a snapshot larger than [`MESSAGE_BYTES`] into messages of the same version
/// (see the `more` field): the first carries everything but the services and as many of
/// them as fit; the others carry services only. A service alone larger than the limit
/// travels alone.
fn split(mut snapshot: EncodedSnapshot) -> Vec<EncodedSnapshot> {
    let services = std::mem::take(&mut snapshot.services);
    let mut chunks: Vec<Vec<bytes::Bytes>> = vec![Vec::new()];
    // What the first message already carries, with a margin for field tags and lengths.
    let mut size = prost::Message::encoded_len(&snapshot) + 64;
    for service in services {
        let cost = service.len() + 8;
        if size.saturating_add(cost) > MESSAGE_BYTES && size > 64 {
            chunks.push(Vec::new());
            size = 64;
        }
        size += cost;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(service);
        }
    }
    let mut chunks = chunks.into_iter();
    snapshot.services = chunks.next().unwrap_or_default();
    let version = snapshot.version.clone();
    let mut messages = vec![snapshot];
    for services in chunks {
        messages.push(EncodedSnapshot {
            version: version.clone(),
            services,
            ..EncodedSnapshot::default()
        });
    }
    let last = messages.len() - 1;
    for (i, message) in messages.iter_mut().enumerate() {
        message.more = i < last;
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;
    use vigil_api::wire::Discovery;
    use vigil_identity::SpiffeId;

    use crate::mesh::MeshFile;
    use std::time::Duration;

    fn state(app_port: u16) -> Arc<MeshState> {
        state_with(app_port, "")
    }

    /// A mesh of one workload; `policy_dir` names a policy directory (else the default).
    fn state_with(app_port: u16, policy_dir: &str) -> Arc<MeshState> {
        let policy = if policy_dir.is_empty() {
            String::new()
        } else {
            format!("policy: {{ dir: \"{policy_dir}\" }}\n")
        };
        state_of_yaml(&format!(
            "trust_domain: vigil.local\n{policy}workloads:\n  - {{ name: web, namespace: shop, join_token: \"580e03ca12da94db77610eb82123ebf4\", app_port: {app_port} }}\n"
        ))
    }

    /// The state a control plane serves from a mesh file's text.
    fn state_of_yaml(yaml: &str) -> Arc<MeshState> {
        let mesh = MeshFile::parse(yaml).expect("mesh");
        Arc::new(MeshState {
            model: mesh.model().expect("model"),
            trust_bundle_der: vec![],
            policies: crate::policy_source::load_all(&mesh, "").expect("policy"),
            jwt_bundle: String::new(),
        })
    }

    /// The next message of `stream`, as a proxy decodes it.
    async fn next(stream: &mut WatchStream) -> vigil_api::Snapshot {
        stream
            .next()
            .await
            .expect("snapshot")
            .expect("ok")
            .decode_snapshot()
            .expect("decodes")
    }

    async fn watch(discovery: &DiscoveryService, known_version: &str) -> WatchStream {
        watch_wanting(discovery, known_version, &[]).await
    }

    async fn watch_wanting(
        discovery: &DiscoveryService,
        known_version: &str,
        also_wanted: &[&str],
    ) -> WatchStream {
        let mut request = Request::new(WatchRequest {
            known_version: known_version.into(),
            policy_version: String::new(),
            also_wanted: also_wanted.iter().map(|n| n.to_string()).collect(),
        });
        request.extensions_mut().insert(PeerInfo {
            address: "127.0.0.1:40000".parse().expect("addr"),
            spiffe_id: Some(SpiffeId::workload("vigil.local", "shop", "web").expect("id")),
        });
        discovery.watch(request).await.expect("watch").into_inner()
    }

    /// A proxy reconnecting with the current version gets nothing until the mesh
    /// changes, then the new snapshot; one with an older version gets the current one.
    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_has_the_current_snapshot_is_sent_only_changes() {
        let (state_tx, state_rx) = watch::channel(state(8080));
        let proxies = Arc::new(ConnectedProxies::default());
        let discovery = DiscoveryService::new(state_rx, proxies.clone());
        let current = watch(&discovery, "")
            .await
            .next()
            .await
            .expect("snapshot")
            .expect("ok");

        let mut stale = watch(&discovery, "sha256:0000000000000000").await;
        let resent = stale.next().await.expect("snapshot").expect("ok");
        assert_eq!(resent.version, current.version);

        let mut up_to_date = watch(&discovery, &current.version).await;
        let quiet =
            tokio::time::timeout(std::time::Duration::from_secs(5), up_to_date.next()).await;
        assert!(
            quiet.is_err(),
            "the current snapshot was sent again: {quiet:?}"
        );
        assert!(
            proxies
                .list()
                .iter()
                .any(|p| p.snapshot_version == current.version),
            "the proxy is listed with the version it has"
        );

        state_tx.send_replace(state(8090));
        let changed = up_to_date.next().await.expect("snapshot").expect("ok");
        assert_ne!(changed.version, current.version);
        let decoded = changed.decode_snapshot().expect("a proxy decodes it");
        assert_eq!(decoded.workload.map(|w| w.app_port), Some(8090));
    }

    /// What a stream sends decodes, as a proxy decodes it, into the snapshot: the policy
    /// with the workload's facts, sent again only when it changed.
    #[tokio::test(start_paused = true)]
    async fn the_policy_is_sent_with_the_workloads_facts_and_only_when_it_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).expect("dir");
        std::fs::write(
            closed.join("p.rego"),
            "package vigil.authz\n\nallow := false\n",
        )
        .expect("write");
        let (state_tx, state_rx) = watch::channel(state(8080));
        let discovery = DiscoveryService::new(state_rx, Arc::default());
        let mut stream = watch(&discovery, "").await;
        let first = next(&mut stream).await;
        let policy = first.policy.expect("the first snapshot carries the policy");
        let facts = policy
            .files
            .iter()
            .find(|f| f.path == vigil_authz::WORKLOAD_DATA_PATH)
            .expect("the workload's facts");
        assert!(
            facts.contents.contains(r#""name":"web""#),
            "{}",
            facts.contents
        );
        let compiled = crate::policy_source::compile(
            crate::policy_source::files_of(&policy),
            vigil_authz::PolicyOptions::default(),
            0,
        )
        .expect("compiles");
        assert_eq!(
            compiled.wire.version, policy.version,
            "facts leave the version alone"
        );

        state_tx.send_replace(state(8090));
        let moved = next(&mut stream).await;
        assert!(
            moved.policy.is_none(),
            "an unchanged policy is not sent again"
        );
        assert_eq!(moved.workload.map(|w| w.app_port), Some(8090));

        let mut registry = prometheus_client::registry::Registry::with_prefix("vigil");
        discovery.proxies.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for series in [
            "vigil_discovery_streams 1",
            r#"vigil_discovery_snapshots_total{kind="whole"} 1"#,
            r#"vigil_discovery_snapshots_total{kind="delta"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }

        state_tx.send_replace(state_with(8090, &closed.display().to_string()));
        let changed = next(&mut stream).await;
        assert!(
            changed
                .policy
                .is_some_and(|p| p.version != policy.version && p.files.len() > 1),
            "a changed policy is sent"
        );
    }

    /// `web` declares that it calls `a`; services `a` and `b` have the endpoints given.
    fn scoped_state(a: &str, b: &str) -> Arc<MeshState> {
        state_of_yaml(&format!(
            "trust_domain: vigil.local\nworkloads:\n  - {{ name: web, namespace: shop, join_token: \"580e03ca12da94db77610eb82123ebf4\", app_port: 8080, calls: [a] }}\n  - {{ name: x1, namespace: shop, join_token: \"6d3dc512e0a3d71a84dc27e75545bc9c\", app_port: 8081 }}\n  - {{ name: x2, namespace: shop, join_token: \"446e058ca19b93489808d5357442e0f4\", app_port: 8082 }}\nservices:\n  - {{ name: a, namespace: shop, endpoints: [{a}] }}\n  - {{ name: b, namespace: shop, endpoints: [{b}] }}\n"
        ))
    }

    /// A proxy whose workload declares what it calls is sent those services only, and a
    /// change to any other sends it nothing; one it asks for joins its view.
    #[tokio::test(start_paused = true)]
    async fn a_workload_that_declares_its_calls_is_sent_only_those() {
        let names = |s: &vigil_api::Snapshot| {
            let mut names: Vec<String> = s.services.iter().map(|s| s.name.clone()).collect();
            names.sort();
            names
        };
        let (state_tx, state_rx) = watch::channel(scoped_state("x1", "x1"));
        let discovery = DiscoveryService::new(state_rx, Arc::default());
        let mut stream = watch(&discovery, "").await;
        // The next message, or none within 5 s (of the paused clock).
        async fn next_within(stream: &mut WatchStream) -> Option<vigil_api::Snapshot> {
            tokio::time::timeout(Duration::from_secs(5), next(stream))
                .await
                .ok()
        }
        let first = next_within(&mut stream).await.expect("a whole snapshot");
        assert!(first.scoped && !first.incremental);
        assert_eq!(names(&first), ["a"]);

        state_tx.send_replace(scoped_state("x1", "x2"));
        assert!(
            next_within(&mut stream).await.is_none(),
            "b moved: nothing for a proxy that does not call it"
        );

        state_tx.send_replace(scoped_state("x2", "x2"));
        let moved = next_within(&mut stream).await.expect("a moved");
        assert!(moved.incremental);
        assert_eq!(
            moved.base_version, first.version,
            "from what the proxy holds"
        );
        assert_eq!(names(&moved), ["a"]);
        assert_eq!(moved.services[0].endpoints[0].workload, "x2");

        let mut wider =
            watch_wanting(&discovery, &moved.version, &["b.shop.svc.cluster.local:80"]).await;
        let widened = wider
            .next()
            .await
            .expect("snapshot")
            .expect("ok")
            .decode_snapshot()
            .expect("decodes");
        assert!(
            widened.scoped && !widened.incremental,
            "another scope: a whole snapshot"
        );
        assert_eq!(names(&widened), ["a", "b"]);
    }

    /// The trust bundle goes out with the first snapshot and again only when it changes;
    /// an endpoint change carries none, and the proxy keeps the one it has.
    #[tokio::test(start_paused = true)]
    async fn the_trust_bundle_is_sent_when_it_changes_only() {
        let with_roots = |state: Arc<MeshState>, roots: Vec<Vec<u8>>| {
            let mut state = (*state).clone();
            state.trust_bundle_der = roots;
            Arc::new(state)
        };
        let (state_tx, state_rx) = watch::channel(with_roots(state(8080), vec![vec![1; 300]]));
        let discovery = DiscoveryService::new(state_rx, Arc::default());
        let mut stream = watch(&discovery, "").await;
        assert_eq!(next(&mut stream).await.trust_bundle_der, [vec![1u8; 300]]);
        state_tx.send_replace(with_roots(state(8090), vec![vec![1; 300]]));
        let moved = next(&mut stream).await;
        assert_eq!(moved.workload.map(|w| w.app_port), Some(8090));
        assert!(moved.trust_bundle_der.is_empty(), "unchanged: left out");
        state_tx.send_replace(with_roots(state(8090), vec![vec![1; 300], vec![2; 300]]));
        assert_eq!(
            next(&mut stream).await.trust_bundle_der.len(),
            2,
            "a rotation step is sent"
        );
    }

    /// A large snapshot goes out as messages of bounded size that together carry every
    /// service once, the first with everything else, all but the last marked `more`.
    #[test]
    fn a_large_snapshot_is_split_into_bounded_messages() {
        let service = |i: usize| {
            bytes::Bytes::from(prost::Message::encode_to_vec(&vigil_api::Service {
                name: format!("s{i}"),
                namespace: "shop".into(),
                hosts: vec![format!("s{i}.shop.svc.cluster.local"); 3],
                ..Default::default()
            }))
        };
        let services: Vec<bytes::Bytes> = (0..1_000).map(service).collect();
        let snapshot = EncodedSnapshot {
            version: "sha256:1".into(),
            workload: bytes::Bytes::from_static(b"\x0a\x03web"),
            // A policy bundle of 5 KB: the first message has room for fewer services.
            policy: bytes::Bytes::from(vec![b'x'; 5_000]),
            services: services.clone(),
            ..EncodedSnapshot::default()
        };
        let messages = split(snapshot);
        assert!(messages.len() > 1, "{} messages", messages.len());
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.version, "sha256:1");
            assert_eq!(m.more, i + 1 < messages.len());
            let size = prost::Message::encoded_len(m);
            assert!(size <= MESSAGE_BYTES, "message {i}: {size} bytes");
            assert_eq!(
                !m.workload.is_empty(),
                i == 0,
                "only the first has the rest"
            );
        }
        let rejoined: Vec<bytes::Bytes> =
            messages.iter().flat_map(|m| m.services.clone()).collect();
        assert_eq!(rejoined, services);
        let small = split(EncodedSnapshot {
            version: "v".into(),
            ..EncodedSnapshot::default()
        });
        assert_eq!(small.len(), 1);
        assert!(!small[0].more);
    }
}
