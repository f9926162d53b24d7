//! Circuit breaking per endpoint. After `consecutive_failures` failures in a row (5xx,
//! connect and transport errors, try timeouts) an endpoint is ejected: the balancer skips
//! it. When the ejection runs out, one request probes it; success readmits the endpoint,
//! failure ejects it again for twice as long (1 s, 2 s, 4 s … up to `max_ejection`).
//! Never more than `max_ejected_percent` of a service's endpoints is ejected at once.
//!
//! [`CircuitBreaker`] (in [`super::circuit`]) is the state machine, driven by the clock
//! it is given; [`BreakerLayer`] feeds it each try's outcome.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::http::body::Body;
use crate::telemetry::metrics::{EndpointLabels, Metrics};
use crate::traffic::CircuitBreakerPolicy;
use crate::transport::pool::SendError;

pub use super::circuit::{Admission, CircuitBreaker, Outcome, Transition};
use super::endpoint::{Candidate, EndpointState};

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
        let attempt: BoxFuture<'static, _> = super::boxing::boxed(self.inner.call(req));
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
    use std::time::Duration;
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
