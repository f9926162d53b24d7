//! Circuit breaking per endpoint. After `consecutive_failures` failures in a row (5xx,
//! connect and transport errors, try timeouts) an endpoint is ejected: the balancer skips
//! it. When the ejection runs out, one request probes it; success readmits the endpoint,
//! failure ejects it again for twice as long (1 s, 2 s, 4 s … up to `max_ejection`).
//! Never more than `max_ejected_percent` of a service's endpoints is ejected at once.
//!
//! [`CircuitBreaker`] is the state machine, driven by the clock it is given;
//! [`BreakerLayer`] feeds it each try's outcome.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::telemetry::metrics::{EndpointLabels, Metrics};
use crate::traffic::CircuitBreakerPolicy;
use crate::transport::pool::SendError;

use super::endpoint::{Candidate, EndpointState};

/// What one try says about its endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Says nothing about the endpoint (this proxy was not ready, say).
    Neutral,
}

impl Outcome {
    pub fn of(result: &Result<Response<Body>, SendError>) -> Outcome {
        match result {
            Ok(r) if r.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(e) => match e.error {
                ProxyError::NotReady | ProxyError::BadRequest(_) => Outcome::Neutral,
                _ => Outcome::Failure,
            },
        }
    }
}

/// Whether the balancer may send to an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Ejected, but the ejection has run out: the next request may probe it.
    ProbeDue,
    Ejected,
}

/// A change worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Taken out of rotation for this long.
    Ejected(Duration),
    /// A probe failed: out again for this long.
    ProbeFailed(Duration),
    /// A probe succeeded: back in rotation.
    Readmitted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One request is probing; the rest keep away.
    Probing,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    state: State,
    /// Failures in a row while closed.
    failures: u32,
    /// Ejections since the endpoint was last healthy; the next lasts `base * 2^n`.
    ejections: u32,
    /// Share of recent tries that succeeded (an exponentially weighted average), for
    /// the balancer: an endpoint that fails fast must not look like a fast one.
    success_rate: f64,
    /// When `success_rate` was last updated; it drifts back to 1.0 from there.
    rated_at: Option<Instant>,
}

/// Weight of each new outcome in [`CircuitBreaker::success_rate`]: about the last 20
/// tries count.
const SUCCESS_RATE_WEIGHT: f64 = 0.1;

/// How fast failures are forgiven: the shortfall from 1.0 shrinks by e every this long.
/// Without it, an endpoint the balancer avoids for failing would never be tried again to
/// show it recovered.
const SUCCESS_RATE_RECOVERY: Duration = Duration::from_secs(10);

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            state: State::Closed,
            failures: 0,
            ejections: 0,
            success_rate: 1.0,
            rated_at: None,
        }
    }
}

impl CircuitBreaker {
    /// Share of recent tries that succeeded, 1.0 for an endpoint with no failures, with
    /// old failures forgiven over [`SUCCESS_RATE_RECOVERY`].
    pub fn success_rate(&self, now: Instant) -> f64 {
        let Some(at) = self.rated_at else {
            return self.success_rate;
        };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let forgiven = (-elapsed / SUCCESS_RATE_RECOVERY.as_secs_f64()).exp();
        1.0 - (1.0 - self.success_rate) * forgiven
    }

    pub fn admission(&self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Admit,
            State::Open { until } if now >= until => Admission::ProbeDue,
            State::Open { .. } | State::Probing => Admission::Ejected,
        }
    }

    /// Claims the probe of an endpoint whose ejection has run out; false when it is not
    /// due or another request already probes it.
    pub fn start_probe(&mut self, now: Instant) -> bool {
        if self.admission(now) == Admission::ProbeDue {
            self.state = State::Probing;
            return true;
        }
        false
    }

    /// A probe that ended without an outcome (its caller went away): the next request
    /// probes instead.
    pub fn abandon_probe(&mut self, now: Instant) {
        if self.state == State::Probing {
            self.state = State::Open { until: now };
        }
    }

    /// Records a try's outcome. `may_eject` is asked before ejecting, so the service's
    /// share of ejected endpoints stays bounded.
    pub fn record(
        &mut self,
        outcome: Outcome,
        probe: bool,
        now: Instant,
        policy: &CircuitBreakerPolicy,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Transition> {
        let current = self.success_rate(now);
        let succeeded = match outcome {
            Outcome::Success => 1.0,
            Outcome::Failure => 0.0,
            Outcome::Neutral => current,
        };
        self.success_rate = current + SUCCESS_RATE_WEIGHT * (succeeded - current);
        self.rated_at = Some(now);
        match (self.state, outcome) {
            (_, Outcome::Neutral) => None,
            (State::Closed, Outcome::Success) => {
                self.failures = 0;
                self.ejections = 0;
                None
            }
            (State::Closed, Outcome::Failure) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures < policy.consecutive_failures || !may_eject() {
                    return None;
                }
                let duration = self.eject(now, policy);
                Some(Transition::Ejected(duration))
            }
            (State::Probing, Outcome::Success) if probe => {
                *self = CircuitBreaker::default();
                Some(Transition::Readmitted)
            }
            (State::Probing, Outcome::Failure) if probe => {
                Some(Transition::ProbeFailed(self.eject(now, policy)))
            }
            // Late answers to requests sent before the ejection change nothing.
            (State::Open { .. } | State::Probing, _) => None,
        }
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    fn eject(&mut self, now: Instant, policy: &CircuitBreakerPolicy) -> Duration {
        let duration = policy
            .base_ejection
            .saturating_mul(1u32 << self.ejections.min(20))
            .min(policy.max_ejection);
        self.ejections = self.ejections.saturating_add(1);
        self.failures = 0;
        self.state = State::Open {
            until: now + duration,
        };
        duration
    }
}

/// Bounds the share of a service's endpoints that may be ejected at once.
#[derive(Clone)]
pub struct EjectionLimit {
    endpoints: Arc<[Candidate]>,
    max_percent: u32,
    /// Serialises ejection decisions within the service, so two endpoints failing at the
    /// same moment cannot both take the last slot.
    decide: Arc<Mutex<()>>,
}

impl EjectionLimit {
    pub fn new(endpoints: Arc<[Candidate]>, max_percent: u32, decide: Arc<Mutex<()>>) -> Self {
        EjectionLimit {
            endpoints,
            max_percent,
            decide,
        }
    }

    /// Reserves an ejection slot for `endpoint`, if the share allows one more.
    fn reserve(&self, endpoint: &EndpointState) -> bool {
        let _decide = self.decide.lock().unwrap_or_else(PoisonError::into_inner);
        let ejected = self
            .endpoints
            .iter()
            .filter(|c| c.state.is_ejected())
            .count();
        let allowed = self.endpoints.len() * self.max_percent as usize / 100;
        if ejected < allowed {
            endpoint.set_ejected(true);
            return true;
        }
        false
    }
}

/// Feeds each try's outcome to the breaker of the endpoint it went to.
#[derive(Clone)]
pub struct BreakerLayer {
    endpoint: Arc<EndpointState>,
    probe: bool,
    policy: Arc<CircuitBreakerPolicy>,
    limit: EjectionLimit,
    service: Arc<str>,
    metrics: Arc<Metrics>,
}

impl BreakerLayer {
    pub fn new(
        endpoint: Arc<EndpointState>,
        probe: bool,
        policy: Arc<CircuitBreakerPolicy>,
        limit: EjectionLimit,
        service: impl Into<Arc<str>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        BreakerLayer {
            endpoint,
            probe,
            policy,
            limit,
            service: service.into(),
            metrics,
        }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    config: BreakerLayer,
}

impl<S> Service<Request<Body>> for Breaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = SendError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = SendError;
    type Future = BoxFuture<'static, Result<Response<Body>, SendError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Boxed before the async block, so its Send-ness is settled here.
        let attempt: BoxFuture<'static, _> = super::stack::boxed(self.inner.call(req));
        let config = self.config.clone();
        Box::pin(async move {
            let mut pending = PendingProbe {
                endpoint: config.endpoint.clone(),
                armed: config.probe,
            };
            let result = attempt.await;
            pending.armed = false;
            config.report(Outcome::of(&result));
            result
        })
    }
}

impl BreakerLayer {
    fn report(&self, outcome: Outcome) {
        let endpoint = &self.endpoint;
        let transition =
            endpoint
                .breaker()
                .record(outcome, self.probe, Instant::now(), &self.policy, || {
                    self.limit.reserve(endpoint)
                });
        let labels = || EndpointLabels {
            service: self.service.to_string(),
            endpoint: endpoint.workload.to_string(),
        };
        match transition {
            Some(Transition::Ejected(duration)) => {
                tracing::warn!(service = %self.service, endpoint = %endpoint.workload, address = %endpoint.key.0, ejected_for = ?duration, "endpoint ejected after consecutive failures");
                let labels = labels();
                self.metrics.ejections.get_or_create(&labels).inc();
                self.metrics.breaker_open.get_or_create(&labels).set(1);
                *endpoint.open_gauge() = Some(labels);
            }
            Some(Transition::ProbeFailed(duration)) => {
                tracing::debug!(endpoint = %endpoint.workload, ejected_for = ?duration, "probe failed; endpoint stays ejected");
            }
            Some(Transition::Readmitted) => {
                tracing::info!(service = %self.service, endpoint = %endpoint.workload, "probe succeeded; endpoint readmitted");
                endpoint.set_ejected(false);
                let labels = endpoint.open_gauge().take().unwrap_or_else(labels);
                self.metrics.breaker_open.get_or_create(&labels).set(0);
            }
            None => {}
        }
    }
}

/// Gives a probe back if its request is dropped (the caller's deadline, say), so the
/// endpoint is not left waiting for an answer that never comes.
struct PendingProbe {
    endpoint: Arc<EndpointState>,
    armed: bool,
}

impl Drop for PendingProbe {
    fn drop(&mut self) {
        if self.armed {
            self.endpoint.breaker().abandon_probe(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::endpoint::tests::{mesh, ok_peer};
    use crate::outbound::endpoint::EndpointStates;
    use tower::ServiceExt;

    fn policy() -> CircuitBreakerPolicy {
        CircuitBreakerPolicy::default()
    }

    #[test]
    fn the_success_rate_falls_with_failures_and_recovers_with_time() {
        // Failures interleaved with successes never eject, so only the rate notices.
        let p = policy();
        let mut b = CircuitBreaker::default();
        let start = Instant::now();
        for i in 0..40 {
            let outcome = if i % 3 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            b.record(outcome, false, start, &p, || true);
        }
        assert_eq!(b.admission(start), Admission::Admit);
        let failing = b.success_rate(start);
        assert!(failing < 0.5, "two failures in three: {failing}");
        let later = b.success_rate(start + Duration::from_secs(30));
        assert!(later > 0.95, "forgiven after 30 s without tries: {later}");
        assert!(b.success_rate(start + Duration::from_secs(5)) < later);
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let p = policy();
        let mut b = CircuitBreaker::default();
        let now = Instant::now();
        for _ in 0..6 {
            assert_eq!(b.record(Outcome::Failure, false, now, &p, || true), None);
        }
        assert_eq!(b.record(Outcome::Success, false, now, &p, || true), None);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..6 {
            b.record(Outcome::Failure, false, now, &p, || true);
        }
        assert_eq!(b.admission(now), Admission::Admit);
        assert_eq!(
            b.record(Outcome::Failure, false, now, &p, || true),
            Some(Transition::Ejected(Duration::from_secs(1)))
        );
        assert_eq!(b.admission(now), Admission::Ejected);
        // Neutral outcomes and late answers change nothing.
        assert_eq!(b.record(Outcome::Success, false, now, &p, || true), None);
        assert_eq!(b.admission(now), Admission::Ejected);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_back_off_from_1s_doubling_to_60s_and_a_good_probe_readmits() {
        let p = policy();
        let mut b = CircuitBreaker::default();
        for _ in 0..7 {
            b.record(Outcome::Failure, false, Instant::now(), &p, || true);
        }
        let mut seen = vec![];
        for _ in 0..9 {
            let ejected_at = Instant::now();
            // Not due a moment before the ejection runs out...
            let until = loop {
                tokio::time::advance(Duration::from_millis(250)).await;
                if b.admission(Instant::now()) == Admission::ProbeDue {
                    break Instant::now() - ejected_at;
                }
                assert!(!b.start_probe(Instant::now()), "no probe while ejected");
            };
            seen.push(until.as_secs());
            assert!(b.start_probe(Instant::now()));
            assert!(!b.start_probe(Instant::now()), "one probe at a time");
            assert_eq!(b.admission(Instant::now()), Admission::Ejected);
            b.record(Outcome::Failure, true, Instant::now(), &p, || true);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);

        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.start_probe(Instant::now()));
        assert_eq!(
            b.record(Outcome::Success, true, Instant::now(), &p, || true),
            Some(Transition::Readmitted)
        );
        assert_eq!(b.admission(Instant::now()), Admission::Admit);
        // Healthy again: the next ejection starts over at 1 s.
        for _ in 0..7 {
            b.record(Outcome::Failure, false, Instant::now(), &p, || true);
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.admission(Instant::now()), Admission::ProbeDue);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let p = policy();
        let mut b = CircuitBreaker::default();
        for _ in 0..7 {
            b.record(Outcome::Failure, false, Instant::now(), &p, || true);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.start_probe(Instant::now()));
        b.abandon_probe(Instant::now());
        assert!(b.start_probe(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_the_configured_share_of_a_service() {
        let states = EndpointStates::new(ok_peer);
        let m = mesh("v1", &["a", "b", "c", "d"]);
        let endpoints: Arc<[Candidate]> = states.for_service(&m, &m.services[0]).into();
        let metrics = Metrics::new();
        let policy = Arc::new(CircuitBreakerPolicy {
            consecutive_failures: 2,
            ..policy()
        });
        let limit = EjectionLimit::new(endpoints.clone(), 50, Arc::new(Mutex::new(())));
        let fail = |i: usize| {
            let layer = BreakerLayer::new(
                endpoints[i].state.clone(),
                false,
                policy.clone(),
                limit.clone(),
                "web.demo",
                metrics.clone(),
            );
            let svc = tower::service_fn(|_req: Request<Body>| async {
                Ok::<_, SendError>(
                    Response::builder()
                        .status(503)
                        .body(crate::http::body::empty())
                        .expect("response"),
                )
            });
            layer
                .layer(svc)
                .oneshot(Request::new(crate::http::body::empty()))
        };
        for i in 0..4 {
            for _ in 0..2 {
                let r = fail(i).await.expect("a response");
                assert_eq!(r.status(), 503);
            }
        }
        let ejected: Vec<bool> = endpoints.iter().map(|c| c.state.is_ejected()).collect();
        assert_eq!(ejected, [true, true, false, false], "50% of 4 is 2");
        let exposition = metrics.encode();
        assert!(
            exposition
                .contains("vigil_endpoint_ejections_total{service=\"web.demo\",endpoint=\"a\"} 1"),
            "{exposition}"
        );
        assert!(exposition
            .contains("vigil_circuit_breaker_open{service=\"web.demo\",endpoint=\"b\"} 1"));
        assert!(!exposition.contains("endpoint=\"c\""));

        // With one endpoint, 50% allows no ejection at all: there is nowhere else to go.
        let m = mesh("v2", &["solo"]);
        let solo: Arc<[Candidate]> = states.for_service(&m, &m.services[0]).into();
        let limit = EjectionLimit::new(solo.clone(), 50, Arc::new(Mutex::new(())));
        assert!(!limit.reserve(&solo[0].state));
    }
}
