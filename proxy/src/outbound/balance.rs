//! The balancer: power of two choices over peak-EWMA load, among the endpoints the
//! circuit breakers admit, preferring endpoints this request has not tried yet. Each try
//! then runs through [`Balance::endpoint_stack`]: breaker, per-try timeout, load tracking.
//!
//! The load measure is tower's [`PeakEwma`](tower::load::PeakEwma), kept per endpoint in
//! [`EndpointStates`](super::endpoint::EndpointStates) so it survives snapshots and counts
//! every request in flight on the endpoint's shared HTTP/2 connection. The choice itself is
//! ours, not `tower::balance::p2c::Balance`: that one owns its endpoints behind `&mut self`
//! (one per connection, or a `Buffer` task in front), learns endpoints only from a
//! `Discover` stream, and cannot be asked to avoid the endpoint a retry just failed on or
//! to cap how many endpoints the breakers may eject.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, Uri};
use rand::Rng;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::telemetry::metrics::Metrics;
use crate::traffic::CircuitBreakerPolicy;
use crate::transport::pool::SendError;

use super::breaker::{Admission, BreakerLayer, EjectionLimit};
use super::endpoint::{AttemptLog, Candidate, Endpoint};
use super::timeout::PerTryTimeoutLayer;

/// Sends each try to one endpoint of a service.
#[derive(Clone)]
pub struct Balance {
    service: Arc<str>,
    endpoints: Arc<[Candidate]>,
    breaker: Arc<CircuitBreakerPolicy>,
    ejections: EjectionLimit,
    per_try_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
}

impl Balance {
    pub fn new(
        service: impl Into<Arc<str>>,
        endpoints: Arc<[Candidate]>,
        breaker: Arc<CircuitBreakerPolicy>,
        ejections: EjectionLimit,
        per_try_timeout: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Balance {
            service: service.into(),
            endpoints,
            breaker,
            ejections,
            per_try_timeout,
            metrics,
        }
    }

    /// One try through one endpoint, outermost first.
    fn endpoint_stack(
        &self,
        endpoint: &Candidate,
        probe: bool,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = SendError, Future: Send>
    {
        let port = endpoint.target_port;
        ServiceBuilder::new()
            // The outcome feeds the endpoint's breaker (ejection, probing, readmission).
            .layer(BreakerLayer::new(
                endpoint.state.clone(),
                probe,
                self.breaker.clone(),
                self.ejections.clone(),
                self.service.clone(),
                self.metrics.clone(),
            ))
            // A hung try is a failed try.
            .layer(PerTryTimeoutLayer::new(
                endpoint.state.workload.clone(),
                self.per_try_timeout,
            ))
            // A tunnel names the port of the endpoint it lands on.
            .map_request(move |req| aim_tunnel(req, port))
            // Timed by the endpoint's peak-EWMA, then through the pool to the peer.
            .service(Endpoint(endpoint.state.clone()))
    }
}

impl Service<Request<Body>> for Balance {
    type Response = Response<Body>;
    type Error = SendError;
    type Future = BoxFuture<'static, Result<Response<Body>, SendError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let log = req
            .extensions()
            .get::<AttemptLog>()
            .cloned()
            .unwrap_or_default();
        let Some((endpoint, probe)) = choose(&self.endpoints, &log, Instant::now()) else {
            let e = ProxyError::NoEndpoints(self.service.to_string());
            return Box::pin(std::future::ready(Err(SendError::new(e))));
        };
        log.record(&endpoint.state);
        Box::pin(self.endpoint_stack(endpoint, probe).oneshot(req))
    }
}

/// Endpoints still in the running for one request.
type Shortlist<'a> = smallvec::SmallVec<[&'a Candidate; 8]>;

/// The endpoint for the next try, and whether the try probes an ejected endpoint.
///
/// An endpoint whose ejection has run out is probed first. Otherwise P2C picks among the
/// admitted endpoints this request has not tried, then among all admitted ones; if the
/// breakers have ejected every endpoint, among all of them (trying beats failing for sure).
pub fn choose<'a>(
    endpoints: &'a [Candidate],
    log: &AttemptLog,
    now: Instant,
) -> Option<(&'a Candidate, bool)> {
    if let Some(probe) = endpoints
        .iter()
        .find(|c| !log.tried(&c.state.key) && c.state.breaker().start_probe(now))
    {
        return Some((probe, true));
    }
    // Kept on the stack for the usual few endpoints: this runs for every request.
    let admitted: Shortlist = endpoints
        .iter()
        .filter(|c| c.state.breaker().admission(now) == Admission::Admit)
        .collect();
    let untried: Shortlist = admitted
        .iter()
        .copied()
        .filter(|c| !log.tried(&c.state.key))
        .collect();
    let pool = if !untried.is_empty() {
        untried
    } else if !admitted.is_empty() {
        admitted
    } else {
        endpoints.iter().collect()
    };
    p2c(&pool).map(|c| (c, false))
}

/// How much worse one endpoint's success rate must be than the other's for it to lose a
/// power-of-two comparison whatever its latency.
const SUCCESS_RATE_MARGIN: f64 = 0.8;

/// Power of two choices: two distinct endpoints at random; one that has been failing
/// clearly more often than the other loses, otherwise the less loaded one wins. Latency
/// alone would favour an endpoint answering `503` in a millisecond over a healthy one.
fn p2c<'a>(candidates: &[&'a Candidate]) -> Option<&'a Candidate> {
    match candidates {
        [] => None,
        [only] => Some(only),
        _ => {
            let mut rng = rand::rng();
            let n = candidates.len();
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (candidates[a], candidates[b]);
            let (success_a, success_b) = (a.state.success_rate(), b.state.success_rate());
            Some(if success_a < success_b * SUCCESS_RATE_MARGIN {
                b
            } else if success_b < success_a * SUCCESS_RATE_MARGIN {
                a
            } else if b.state.load() < a.state.load() {
                b
            } else {
                a
            })
        }
    }
}

fn aim_tunnel(mut req: Request<Body>, port: u16) -> Request<Body> {
    // An extended CONNECT (an HTTP upgrade) keeps its request target: it is a request.
    let tunnel = req.extensions().get::<hyper::ext::Protocol>().is_none();
    if req.method() == Method::CONNECT && tunnel {
        if let Ok(uri) = Uri::try_from(format!("127.0.0.1:{port}")) {
            *req.uri_mut() = uri;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::EndpointView;
    use crate::outbound::endpoint::tests::mesh;
    use crate::outbound::endpoint::{EndpointStates, PeerService};
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use tower::util::BoxService;

    /// Fake peers and what they did: `slow` answers in 100 ms, `fast-fail` answers 503 in
    /// 1 ms, the others in 5 ms; the workloads in `failing` answer 503.
    #[derive(Clone, Default)]
    struct Peers {
        hits: Arc<Mutex<HashMap<String, usize>>>,
        failing: Arc<Mutex<HashSet<String>>>,
    }

    impl Peers {
        fn states(&self) -> EndpointStates {
            let peers = self.clone();
            EndpointStates::new(move |e: &EndpointView| -> PeerService {
                let (workload, peers) = (e.workload.clone(), peers.clone());
                BoxService::new(tower::service_fn(move |_req: Request<Body>| {
                    let (workload, peers) = (workload.clone(), peers.clone());
                    async move {
                        *peers
                            .hits
                            .lock()
                            .expect("lock")
                            .entry(workload.clone())
                            .or_default() += 1;
                        let delay = match workload.as_str() {
                            "slow" => 100,
                            "fast-fail" => 1,
                            _ => 5,
                        };
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let failing = workload == "fast-fail"
                            || peers.failing.lock().expect("lock").contains(&workload);
                        Ok::<_, SendError>(
                            Response::builder()
                                .status(if failing { 503 } else { 200 })
                                .body(crate::http::body::empty())
                                .expect("response"),
                        )
                    }
                }))
            })
        }

        fn hits(&self, workload: &str) -> usize {
            self.hits
                .lock()
                .expect("lock")
                .get(workload)
                .copied()
                .unwrap_or(0)
        }
    }

    fn balance(
        endpoints: Vec<Candidate>,
        policy: CircuitBreakerPolicy,
        metrics: Arc<Metrics>,
    ) -> Balance {
        let endpoints: Arc<[Candidate]> = endpoints.into();
        Balance::new(
            "web.demo",
            endpoints.clone(),
            Arc::new(policy),
            EjectionLimit::new(endpoints, 50, Arc::default()),
            None,
            metrics,
        )
    }

    fn request() -> Request<Body> {
        let mut req = Request::new(crate::http::body::empty());
        req.extensions_mut().insert(AttemptLog::default());
        req
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_steers_traffic_away_from_a_slow_endpoint() {
        let peers = Peers::default();
        let states = peers.states();
        let m = mesh("v1", &["fast-a", "slow", "fast-b"]);
        let lb = balance(
            states.for_service(&m, &m.services[0]),
            CircuitBreakerPolicy::default(),
            Metrics::new(),
        );
        for _ in 0..300 {
            lb.clone().oneshot(request()).await.expect("response");
        }
        let (slow, fast) = (
            peers.hits("slow"),
            peers.hits("fast-a") + peers.hits("fast-b"),
        );
        assert_eq!(slow + fast, 300);
        assert!(
            slow * 10 < fast,
            "most traffic goes to the fast endpoints: {slow} vs {fast}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_failing_fast_does_not_attract_traffic() {
        let peers = Peers::default();
        let states = peers.states();
        let m = mesh("v1", &["ok-a", "fast-fail", "ok-b"]);
        // A breaker that never ejects, so only the balancer keeps traffic away.
        let never_eject = CircuitBreakerPolicy {
            consecutive_failures: u32::MAX,
            ..CircuitBreakerPolicy::default()
        };
        let lb = balance(
            states.for_service(&m, &m.services[0]),
            never_eject,
            Metrics::new(),
        );
        let mut failed = 0;
        for _ in 0..300 {
            let r = lb.clone().oneshot(request()).await.expect("response");
            failed += usize::from(r.status() == 503);
        }
        let bad = peers.hits("fast-fail");
        assert_eq!(bad, failed);
        assert!(
            bad * 10 < 300,
            "the endpoint answering 503 in 1 ms (vs 5 ms) got {bad} of 300 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_count_toward_the_load() {
        let peers = Peers::default();
        let states = peers.states();
        let m = mesh("v1", &["a", "b"]);
        let endpoints = states.for_service(&m, &m.services[0]);
        // Same latency history, but `a` has three requests in flight: `b` is cheaper.
        let in_flight: Vec<_> = (0..3)
            .map(|_| Endpoint(endpoints[0].state.clone()).call(request()))
            .collect();
        assert!(endpoints[1].state.load() < endpoints[0].state.load());
        for _ in 0..20 {
            let (chosen, _) =
                choose(&endpoints, &AttemptLog::default(), Instant::now()).expect("one");
            assert_eq!(&*chosen.state.workload, "b");
        }
        futures::future::join_all(in_flight).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_avoids_endpoints_already_tried_and_ejected_ones() {
        let states = Peers::default().states();
        let m = mesh("v1", &["a", "b", "c"]);
        let endpoints = states.for_service(&m, &m.services[0]);
        let log = AttemptLog::default();
        let mut seen = vec![];
        for _ in 0..3 {
            let (c, _) = choose(&endpoints, &log, Instant::now()).expect("one");
            log.record(&c.state);
            seen.push(c.state.workload.to_string());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"], "three tries, three endpoints");
        assert!(
            choose(&endpoints, &log, Instant::now()).is_some(),
            "then any will do"
        );

        // Eject b: never chosen until its ejection runs out; then it is probed, once.
        let policy = CircuitBreakerPolicy::default();
        for _ in 0..7 {
            endpoints[1].state.breaker().record(
                crate::outbound::breaker::Outcome::Failure,
                false,
                Instant::now(),
                &policy,
                || true,
            );
        }
        for _ in 0..50 {
            let (c, probe) =
                choose(&endpoints, &AttemptLog::default(), Instant::now()).expect("one");
            assert_ne!(&*c.state.workload, "b");
            assert!(!probe);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let (c, probe) = choose(&endpoints, &AttemptLog::default(), Instant::now()).expect("one");
        assert_eq!((&*c.state.workload, probe), ("b", true));
        let (c, _) = choose(&endpoints, &AttemptLog::default(), Instant::now()).expect("one");
        assert_ne!(&*c.state.workload, "b", "one probe at a time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_ejected_and_readmitted_once_a_probe_succeeds() {
        let peers = Peers::default();
        peers.failing.lock().expect("lock").insert("bad".into());
        let states = peers.states();
        let m = mesh("v1", &["good", "bad", "good-2"]);
        let policy = CircuitBreakerPolicy {
            consecutive_failures: 3,
            ..CircuitBreakerPolicy::default()
        };
        let metrics = Metrics::new();
        let lb = balance(
            states.for_service(&m, &m.services[0]),
            policy,
            metrics.clone(),
        );
        // 100 requests of 5 ms: well under the first 1 s ejection.
        for _ in 0..100 {
            lb.clone().oneshot(request()).await.expect("response");
        }
        assert_eq!(
            peers.hits("bad"),
            3,
            "ejected after three failures in a row"
        );
        assert!(lb.endpoints[1].state.is_ejected());
        let open = "vigil_circuit_breaker_open{service=\"web.demo\",endpoint=\"bad\"}";
        assert!(metrics.encode().contains(&format!("{open} 1")));

        // Still failing at the first probe: ejected for 2 s now.
        tokio::time::advance(Duration::from_secs(1)).await;
        lb.clone().oneshot(request()).await.expect("response");
        assert_eq!(peers.hits("bad"), 4);
        tokio::time::advance(Duration::from_millis(1500)).await;
        lb.clone().oneshot(request()).await.expect("response");
        assert_eq!(peers.hits("bad"), 4, "not yet due");

        // It recovers; the next probe readmits it...
        peers.failing.lock().expect("lock").clear();
        tokio::time::advance(Duration::from_millis(500)).await;
        lb.clone().oneshot(request()).await.expect("response");
        assert_eq!(peers.hits("bad"), 5);
        assert!(!lb.endpoints[1].state.is_ejected());
        assert!(metrics.encode().contains(&format!("{open} 0")));
        // ...and it takes traffic again once its latency estimate (raised while it was
        // out, with no requests to decay it) comes down to the others'.
        let mut requests = 0;
        while peers.hits("bad") == 5 && requests < 10_000 {
            lb.clone().oneshot(request()).await.expect("response");
            requests += 1;
        }
        assert!(
            peers.hits("bad") > 5,
            "back in rotation after {requests} requests"
        );
    }

    #[test]
    fn tunnels_are_aimed_at_the_chosen_endpoints_port() {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("127.0.0.1:1")
            .body(crate::http::body::empty())
            .expect("request");
        assert_eq!(aim_tunnel(req, 9000).uri(), "127.0.0.1:9000");
        let get = Request::new(crate::http::body::empty());
        assert_eq!(aim_tunnel(get, 9000).uri(), "/");
    }

    #[test]
    fn the_attempt_log_names_the_last_peer() {
        use crate::telemetry::metrics::Peer;
        let log = AttemptLog::default();
        assert_eq!(log.last_peer(), Peer::none());
        let states = Peers::default().states();
        let m = mesh("v1", &["a", "b"]);
        let endpoints = states.for_service(&m, &m.services[0]);
        let (a, b) = (&endpoints[0].state, &endpoints[1].state);
        log.clone().record(a);
        assert!(log.tried(&a.key) && !log.tried(&b.key));
        assert_eq!(log.count(), 1);
        let peer = log.last_peer();
        assert_eq!(&*peer.identity, "spiffe://vigil.local/ns/demo/sa/a");
        assert_eq!((&*peer.workload, &*peer.namespace), ("a", "demo"));
        log.record(b);
        assert!(log.tried(&a.key) && log.tried(&b.key));
        assert_eq!(log.count(), 2);
        assert_eq!(
            &*log.last_peer().workload,
            "b",
            "a retry's endpoint is the last"
        );
    }
}
