//! One endpoint's circuit breaker as a state machine: closed while tries succeed, open
//! (ejected) after `consecutive_failures` failures in a row, half-open for one probe when
//! the ejection runs out. Driven by the clock it is given; [`super::breaker`] feeds it each
//! try's outcome and [`super::endpoint`] keeps one per endpoint.

use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::traffic::CircuitBreakerPolicy;
use crate::transport::pool::SendError;

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
