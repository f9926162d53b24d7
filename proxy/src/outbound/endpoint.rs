//! Per-endpoint state that outlives discovery snapshots: each peer's peak-EWMA load and
//! circuit breaker, keyed by address and identity and owned by the [`Proxy`](crate::Proxy).
//! A new snapshot keeps the state of every endpoint it still lists and forgets the rest;
//! requests in flight keep theirs until they finish.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use tower::load::peak_ewma::Cost;
use tower::load::{CompleteOnResponse, Load, PeakEwma};
use tower::util::BoxService;
use tower::Service;
use vigil_identity::SpiffeId;

use crate::control::state::{EndpointView, MeshView, ServiceView};
use crate::http::body::{self, Body};
use crate::http::error::ProxyError;
use crate::telemetry::metrics::{EndpointLabels, Peer};
use crate::transport::pool::{PeerPool, SendError};

use super::circuit::CircuitBreaker;

/// An endpoint's identity in the mesh: where it is and whom it must prove to be.
pub type EndpointKey = (SocketAddr, SpiffeId);

/// One try's transport to one peer proxy. Boxed so tests can stand in for the pool.
pub type PeerService = BoxService<Request<Body>, Response<Body>, SendError>;

/// What an endpoint's latency is taken to be before it has answered: low, so a new
/// endpoint gets traffic and a real measurement soon.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// How fast a latency peak is forgotten.
const DECAY: Duration = Duration::from_secs(10);

/// The lasting state of one endpoint.
pub struct EndpointState {
    pub key: EndpointKey,
    /// The workload behind it, for logs.
    pub workload: Arc<str>,
    /// Its identity, workload and namespace as metric labels, made once.
    pub labels: Peer,
    /// Every try goes through here, so the estimate counts this endpoint's requests in
    /// flight across all connections and services (they share one HTTP/2 connection).
    peer: Mutex<PeakEwma<PeerService>>,
    pub breaker: Mutex<CircuitBreaker>,
    /// Mirrors the breaker, readable without its lock, for the max-ejected share.
    ejected: AtomicBool,
    /// The labels the open-breaker gauge was raised under, to lower the same one.
    open_gauge: Mutex<Option<EndpointLabels>>,
}

impl EndpointState {
    pub fn new(endpoint: &EndpointView, peer: PeerService) -> Self {
        EndpointState {
            key: (endpoint.address, endpoint.spiffe_id.clone()),
            workload: Arc::from(endpoint.workload.as_str()),
            labels: Peer::new(Some(&endpoint.spiffe_id), &endpoint.workload),
            peer: Mutex::new(PeakEwma::new(
                peer,
                DEFAULT_RTT,
                DECAY.as_nanos() as f64,
                CompleteOnResponse::default(),
            )),
            breaker: Mutex::new(CircuitBreaker::default()),
            ejected: AtomicBool::new(false),
            open_gauge: Mutex::new(None),
        }
    }

    /// Peak-EWMA latency times requests in flight (plus one): lower is better.
    pub fn load(&self) -> Cost {
        lock(&self.peer).load()
    }

    /// Share of recent tries that succeeded (see [`CircuitBreaker::success_rate`]).
    pub fn success_rate(&self) -> f64 {
        self.breaker().success_rate(tokio::time::Instant::now())
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub(super) fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Release);
    }

    pub(super) fn open_gauge(&self) -> MutexGuard<'_, Option<EndpointLabels>> {
        lock(&self.open_gauge)
    }

    /// The breaker, even if a panic elsewhere poisoned its lock.
    pub fn breaker(&self) -> MutexGuard<'_, CircuitBreaker> {
        lock(&self.breaker)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An endpoint as a tower service: each try is timed by its peak-EWMA.
#[derive(Clone)]
pub struct Endpoint(pub Arc<EndpointState>);

impl Service<Request<Body>> for Endpoint {
    type Response = Response<Body>;
    type Error = SendError;
    type Future = BoxFuture<'static, Result<Response<Body>, SendError>>;

    /// Always ready: the connection is made inside the call, so that a failed connect can
    /// hand the request back (see [`SendError`]).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut peer = lock(&self.0.peer);
        // The peer service is always ready too, so a no-op waker polls it exactly.
        match peer.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(peer.call(req)),
            Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
            Poll::Pending => {
                let e = ProxyError::Upstream("peer service not ready".into());
                Box::pin(std::future::ready(Err(SendError::unsent(e, req))))
            }
        }
    }
}

/// One endpoint of the service a request is for, as the balancer sees it.
#[derive(Clone)]
pub struct Candidate {
    /// Port of the endpoint's application, for opaque TCP tunnels.
    pub target_port: u16,
    pub state: Arc<EndpointState>,
}

/// Every endpoint's lasting state, keyed by address and identity.
pub struct EndpointStates {
    peer: Box<dyn Fn(&EndpointView) -> PeerService + Send + Sync>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// The snapshot the map was last pruned against.
    version: String,
    states: HashMap<EndpointKey, Arc<EndpointState>>,
}

impl EndpointStates {
    /// States whose tries go through `peer` (a stand-in in tests).
    pub fn new(peer: impl Fn(&EndpointView) -> PeerService + Send + Sync + 'static) -> Self {
        EndpointStates {
            peer: Box::new(peer),
            known: Mutex::new(Known::default()),
        }
    }

    /// States whose tries go through the pool to the peer proxies.
    pub fn with_pool(pool: Arc<PeerPool>) -> Self {
        Self::new(move |endpoint| {
            // Shared: a request copies a pointer, not the endpoint's names.
            let (pool, endpoint) = (pool.clone(), Arc::new(endpoint.clone()));
            BoxService::new(tower::service_fn(move |req: Request<Body>| {
                let (pool, endpoint) = (pool.clone(), endpoint.clone());
                async move {
                    let response = pool.send(&endpoint, req).await?;
                    Ok::<_, SendError>(response.map(body::boxed))
                }
            }))
        })
    }

    /// The endpoints of `service` with their states, made for endpoints seen for the
    /// first time. The first call with a new snapshot forgets endpoints it no longer lists.
    pub fn for_service(&self, mesh: &MeshView, service: &ServiceView) -> Vec<Candidate> {
        let mut known = lock(&self.known);
        if known.version != mesh.version {
            let listed: HashSet<EndpointKey> = mesh
                .services
                .iter()
                .flat_map(|s| &s.endpoints)
                .map(|e| (e.address, e.spiffe_id.clone()))
                .collect();
            known.states.retain(|key, _| listed.contains(key));
            known.version = mesh.version.clone();
        }
        service
            .endpoints
            .iter()
            .map(|e| {
                let key = (e.address, e.spiffe_id.clone());
                let state = known
                    .states
                    .entry(key)
                    .or_insert_with(|| Arc::new(EndpointState::new(e, (self.peer)(e))))
                    .clone();
                Candidate {
                    target_port: e.target_port,
                    state,
                }
            })
            .collect()
    }

    /// How many endpoints have state.
    pub fn len(&self) -> usize {
        lock(&self.known).states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the tries of one request did, shared by all of them through the request's
/// extensions: which endpoints were tried, so a retry goes elsewhere, and which was last.
#[derive(Clone, Default)]
pub struct AttemptLog(Arc<Mutex<Tried>>);

/// The endpoints tried, in order. The first is held in place: most requests make one
/// try, and a `Vec` would allocate for it.
#[derive(Default)]
struct Tried {
    first: Option<Arc<EndpointState>>,
    more: Vec<Arc<EndpointState>>,
}

impl Tried {
    fn iter(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.first.iter().chain(&self.more)
    }
}

impl AttemptLog {
    pub fn record(&self, endpoint: &Arc<EndpointState>) {
        let mut tried = lock(&self.0);
        match tried.first {
            None => tried.first = Some(endpoint.clone()),
            Some(_) => tried.more.push(endpoint.clone()),
        }
    }

    pub fn tried(&self, key: &EndpointKey) -> bool {
        lock(&self.0).iter().any(|e| &e.key == key)
    }

    /// Tries so far.
    pub fn count(&self) -> usize {
        lock(&self.0).iter().count()
    }

    /// The endpoint tried last, as metric labels; empty when none was.
    pub fn last_peer(&self) -> Peer {
        lock(&self.0)
            .iter()
            .last()
            .map(|e| e.labels.clone())
            .unwrap_or_else(Peer::none)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::outbound::circuit::Outcome;

    /// A snapshot with one service `web` whose endpoints are the given workloads.
    pub fn mesh(version: &str, workloads: &[&str]) -> MeshView {
        let endpoints = workloads
            .iter()
            .enumerate()
            .map(|(i, w)| vigil_api::Endpoint {
                address: format!("127.0.0.1:{}", 16000 + i),
                spiffe_id: format!("spiffe://vigil.local/ns/demo/sa/{w}"),
                workload: w.to_string(),
                target_port: 8080,
            })
            .collect();
        MeshView::from_snapshot(&vigil_api::Snapshot {
            version: version.into(),
            trust_domain: "vigil.local".into(),
            workload: Some(vigil_api::Workload {
                name: "client".into(),
                namespace: "demo".into(),
                service_account: "client".into(),
                spiffe_id: "spiffe://vigil.local/ns/demo/sa/client".into(),
                app_port: 8080,
                tcp_ports: vec![],
            }),
            services: vec![vigil_api::Service {
                name: "web".into(),
                namespace: "demo".into(),
                port: 80,
                hosts: vec!["web".into()],
                protocol: "http".into(),
                endpoints,
                virtual_addresses: vec![],
                target_port: 0,
                traffic_json: String::new(),
            }],
            trust_bundle_der: vec![],
            policy: None,
            jwt_bundle: String::new(),
            candidate_policy: None,
            ..Default::default()
        })
        .expect("valid snapshot")
    }

    /// A peer that answers 200 at once.
    pub fn ok_peer(_: &EndpointView) -> PeerService {
        BoxService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, SendError>(Response::new(body::empty()))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn state_survives_a_new_snapshot_for_endpoints_that_remain() {
        let states = EndpointStates::new(ok_peer);
        let v1 = mesh("v1", &["a", "b", "c"]);
        let first = states.for_service(&v1, &v1.services[0]);
        assert_eq!(states.len(), 3);
        let policy = crate::traffic::CircuitBreakerPolicy::default();
        let now = tokio::time::Instant::now();
        first[1]
            .state
            .breaker()
            .record(Outcome::Failure, false, now, &policy, || true);

        // b stays, c goes, d arrives.
        let v2 = mesh("v2", &["a", "b", "d"]);
        let second = states.for_service(&v2, &v2.services[0]);
        assert!(Arc::ptr_eq(&first[0].state, &second[0].state));
        assert!(Arc::ptr_eq(&first[1].state, &second[1].state));
        assert_eq!(second[1].state.breaker().consecutive_failures(), 1);
        assert_eq!(&*second[2].state.workload, "d");
        // c's address is reused by d's slot but with another identity: a new state.
        assert!(!Arc::ptr_eq(&first[2].state, &second[2].state));
        assert_eq!(states.len(), 3, "c was forgotten");
        // A request still holding c's state can finish with it.
        let mut c = Endpoint(first[2].state.clone());
        let r = c.call(Request::new(body::empty())).await.expect("ok");
        assert_eq!(r.status(), 200);
    }
}
