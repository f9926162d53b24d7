//! Retries. A failed try is tried again, on another endpoint when there is one (the
//! balancer reads the request's [`AttemptLog`]), after a jittered exponential backoff,
//! while the route's attempts and the service's [`RetryBudget`] last. What is retried:
//!
//! - a request that never left (no connection, refused identity, connection closed
//!   before it was written): whatever its method or body, since the pool hands it back
//!   untouched (`connect-failure` in `on`, the default and the only default: the app
//!   never saw it, so trying again adds no load to any app);
//! - only when the route lists them: a response with a listed status (e.g. 503), a
//!   transport error (as 502) or a per-try timeout (as 504), for the listed
//!   (idempotent) methods, and a listed gRPC status in the response headers (a
//!   trailers-only response) whatever the method, since gRPC calls are POSTs and
//!   UNAVAILABLE means "not processed". Sending a request that reached an app again is
//!   what multiplies load hop by hop, so it is opt-in.
//!
//! Bodies up to 64 KiB of known length are buffered so they can be replayed, and only
//! on routes that retry responses; a longer or unknown-length (streaming) body is sent
//! as it comes and not retried once it left.
//!
//! Not `tower::retry::Retry`: it can only retry a request it cloned before the first
//! try, so a streaming body that never left could not go elsewhere.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Limited, StreamBody};
use tower::{Layer, Service, ServiceExt};

use crate::control::backoff::Backoff;
use crate::http::body::{Body, BodyError};
use crate::http::error::ProxyError;
use crate::telemetry::metrics::{Metrics, ServiceLabels};
use crate::traffic::RetryPolicy;
use crate::transport::pool::SendError;

use super::budget::RetryBudget;

/// Request bodies up to this size are kept for replay.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct RetryLayer {
    service: Arc<str>,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    metrics: Arc<Metrics>,
}

impl RetryLayer {
    pub fn new(
        service: impl Into<Arc<str>>,
        policy: Arc<RetryPolicy>,
        budget: Arc<RetryBudget>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RetryLayer {
            service: service.into(),
            policy,
            budget,
            metrics,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    config: RetryLayer,
}

/// What each try goes through: the balancer and the endpoint stack below it.
pub trait Tries:
    Service<Request<Body>, Response = Response<Body>, Error = SendError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Tries for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = SendError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

impl<S: Tries> Service<Request<Body>> for Retry<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx).map_err(ProxyError::from)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Take the service made ready by poll_ready; leave a clone for the next call.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let p = &self.config.policy;
        // A request that never left comes back whole; a copy is only needed to send one
        // that did leave again, which the route must have asked for.
        let replayable =
            p.retries_responses() && (p.allows_method(req.method()) || has_grpc_codes(p));
        let method = req.method().clone();
        let first = if replayable {
            First::Kept(Replay::keep(req))
        } else {
            First::Ready(req)
        };
        Box::pin(self.config.clone().run(inner, method, first))
    }
}

/// The first try's request: as it came, or once its body is kept for a replay.
// Moved once, into the retry future: boxing the request would cost an allocation per
// request to save a copy of 240 bytes.
#[allow(clippy::large_enum_variant)]
enum First {
    Ready(Request<Body>),
    Kept(Kept),
}

impl RetryLayer {
    async fn run<S: Tries>(
        self,
        mut inner: S,
        method: Method,
        first: First,
    ) -> Result<Response<Body>, ProxyError> {
        self.budget.deposit();
        let p = &self.policy;
        let (mut next, replay) = match first {
            First::Ready(req) => (req, None),
            First::Kept(kept) => kept.await?,
        };
        let mut backoff = Backoff::new(p.backoff.base, p.backoff.max);
        let mut tries = 1;
        loop {
            let result = try_once(&mut inner, next).await;
            let (outcome, unsent) = match result {
                Ok(response) => (Ok(response), None),
                Err(SendError { error, unsent }) => (Err(error), unsent),
            };
            let Some(why) = self.retryable(&method, &outcome, unsent.is_some()) else {
                return outcome;
            };
            if tries >= p.attempts {
                return outcome;
            }
            let Some(again) = unsent.or_else(|| replay.as_ref().map(Replay::request)) else {
                return outcome;
            };
            let labels = ServiceLabels {
                service: self.service.to_string(),
            };
            if !self.budget.withdraw() {
                tracing::debug!(service = %self.service, "retry budget spent; not retrying");
                self.metrics
                    .retry_budget_exhausted
                    .get_or_create(&labels)
                    .inc();
                return outcome;
            }
            self.metrics.retries.get_or_create(&labels).inc();
            let delay = backoff.next_delay();
            tracing::debug!(service = %self.service, try_ = tries, reason = why, ?delay, "retrying");
            tokio::time::sleep(delay).await;
            tries += 1;
            next = again;
        }
    }

    /// Why this outcome may be tried again, if it may.
    fn retryable(
        &self,
        method: &Method,
        outcome: &Result<Response<Body>, ProxyError>,
        unsent: bool,
    ) -> Option<&'static str> {
        let p = &self.policy;
        match outcome {
            // This proxy has no certificate yet: another try fares no better.
            Err(ProxyError::NotReady | ProxyError::NoEndpoints(_)) => None,
            Err(_) if unsent => p.retries_connect_failures().then_some("connect-failure"),
            Err(ProxyError::TryTimeout { .. }) => p
                .retries_status(method, StatusCode::GATEWAY_TIMEOUT)
                .then_some("per-try-timeout"),
            Err(ProxyError::Upstream(_)) => p
                .retries_status(method, StatusCode::BAD_GATEWAY)
                .then_some("upstream-failed"),
            Err(_) => None,
            Ok(r) if p.retries_status(method, r.status()) => Some("status"),
            Ok(r) => grpc_status(r.headers())
                .filter(|c| p.retries_grpc(*c))
                .map(|_| "grpc-status"),
        }
    }
}

/// A request ready for its first try, and its copy for the next ones, if it has one.
type Kept = BoxFuture<'static, Result<(Request<Body>, Option<Replay>), ProxyError>>;

/// One try (boxed here, outside any async block: see `stack::send`).
fn try_once<S: Tries>(
    inner: &mut S,
    req: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, SendError>> {
    Box::pin(inner.clone().oneshot(req))
}

fn has_grpc_codes(p: &RetryPolicy) -> bool {
    p.on.iter()
        .any(|o| matches!(o, crate::traffic::RetryOn::Grpc(_)))
}

/// `grpc-status` in the response headers: a trailers-only gRPC response.
fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A request kept for another try: its head and its small, complete body.
struct Replay {
    parts: http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// Buffers a body of known length up to [`MAX_REPLAY_BYTES`]; other requests are
    /// passed on as they are, with no replay.
    fn keep(req: Request<Body>) -> Kept {
        let body = req.body();
        let small = body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_REPLAY_BYTES as u64);
        if !small {
            return Box::pin(std::future::ready(Ok((req, None))));
        }
        let (parts, body) = req.into_parts();
        let reading: BoxFuture<'static, Result<_, _>> =
            Box::pin(Limited::new(body, MAX_REPLAY_BYTES).collect());
        Box::pin(async move {
            let collected = reading
                .await
                .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?;
            let trailers = collected.trailers().cloned();
            let replay = Replay {
                parts,
                body: collected.to_bytes(),
                trailers,
            };
            Ok((replay.request(), Some(replay)))
        })
    }

    fn request(&self) -> Request<Body> {
        let body = match &self.trailers {
            // Exact length, and no empty DATA frame: peers' HTTP/2 servers count those
            // as a flood and hang up (GOAWAY ENHANCE_YOUR_CALM).
            None => crate::http::body::full(self.body.clone()),
            Some(trailers) => {
                let data = Some(self.body.clone()).filter(|b| !b.is_empty());
                let frames = data
                    .map(|d| Ok::<_, BodyError>(Frame::data(d)))
                    .into_iter()
                    .chain(std::iter::once(Ok(Frame::trailers(trailers.clone()))));
                StreamBody::new(futures::stream::iter(frames)).boxed()
            }
        };
        Request::from_parts(self.parts.clone(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use crate::http::body;
    use crate::outbound::budget::RetryBudget;
    use crate::traffic::{RetryBudgetPolicy, TrafficPolicy};

    /// What the fake endpoint does on each try, in order.
    #[derive(Clone, Copy, Debug)]
    enum Try {
        Status(u16),
        Grpc(u8),
        ConnectFailure,
        Reset,
    }

    /// A fake endpoint playing a script, recording each body it saw.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<Try>>>,
        seen: Arc<Mutex<Vec<Bytes>>>,
    }

    impl Scripted {
        fn new(script: &[Try]) -> Self {
            Scripted {
                script: Arc::new(Mutex::new(script.iter().copied().collect())),
                seen: Arc::default(),
            }
        }
        fn tries(&self) -> usize {
            self.seen.lock().expect("lock").len()
        }
    }

    impl Service<Request<Body>> for Scripted {
        type Response = Response<Body>;
        type Error = SendError;
        type Future = BoxFuture<'static, Result<Response<Body>, SendError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let step = self
                .script
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(Try::Status(200));
            let seen = self.seen.clone();
            Box::pin(async move {
                if let Try::ConnectFailure = step {
                    seen.lock().expect("lock").push(Bytes::new());
                    let e = ProxyError::ConnectFailed {
                        endpoint: "127.0.0.1:1".into(),
                        reason: "connection refused".into(),
                    };
                    return Err(SendError::unsent(e, req));
                }
                let bytes = req.into_body().collect().await.expect("body").to_bytes();
                seen.lock().expect("lock").push(bytes);
                match step {
                    Try::ConnectFailure => unreachable!("answered above"),
                    Try::Reset => Err(SendError::new(ProxyError::Upstream("reset".into()))),
                    Try::Grpc(code) => Ok(Response::builder()
                        .header("grpc-status", code.to_string())
                        .body(body::empty())
                        .expect("response")),
                    Try::Status(s) => Ok(Response::builder()
                        .status(s)
                        .body(body::empty())
                        .expect("response")),
                }
            })
        }
    }

    fn layer(policy: RetryPolicy, budget: RetryBudgetPolicy) -> (RetryLayer, Arc<Metrics>) {
        let metrics = Metrics::new();
        let layer = RetryLayer::new(
            "web.demo",
            Arc::new(policy),
            Arc::new(RetryBudget::new(&budget)),
            metrics.clone(),
        );
        (layer, metrics)
    }

    fn request(method: &str, body: &'static [u8]) -> Request<Body> {
        Request::builder()
            .method(method)
            .body(body::full(body))
            .expect("request")
    }

    /// A body that streams with no known length.
    fn streaming(method: &str) -> Request<Body> {
        let frames = futures::stream::iter([
            Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"part one, "))),
            Ok(Frame::data(Bytes::from_static(b"part two"))),
        ]);
        Request::builder()
            .method(method)
            .body(StreamBody::new(frames).boxed())
            .expect("request")
    }

    fn defaults() -> RetryPolicy {
        TrafficPolicy::default().retries
    }

    /// A route that opted into retrying responses, as a mesh file writes it.
    fn opted_in() -> RetryPolicy {
        TrafficPolicy::parse(
            r#"{"retries": {"on": [502, 503, 504, "connect-failure", "unavailable"]}}"#,
        )
        .expect("valid")
        .retries
    }

    #[tokio::test(start_paused = true)]
    async fn by_default_a_request_that_reached_the_app_is_not_sent_again() {
        let (layer, metrics) = layer(defaults(), RetryBudgetPolicy::default());
        for step in [
            Try::Status(503),
            Try::Status(502),
            Try::Reset,
            Try::Grpc(14),
        ] {
            let peer = Scripted::new(&[step, Try::Status(200)]);
            let _ = layer.layer(peer.clone()).oneshot(request("GET", b"")).await;
            assert_eq!(peer.tries(), 1, "{step:?} reached the app once");
        }
        assert!(!metrics.encode().contains("vigil_retries_total{"));
        // ...while one that never left is tried again.
        let peer = Scripted::new(&[Try::ConnectFailure, Try::Status(200)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(request("POST", b"x"))
            .await
            .expect("response");
        assert_eq!((r.status().as_u16(), peer.tries()), (200, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_listed_statuses_for_idempotent_methods_replaying_the_body() {
        let (layer, metrics) = layer(opted_in(), RetryBudgetPolicy::default());
        let peer = Scripted::new(&[Try::Status(503), Try::Reset, Try::Status(200)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(request("PUT", b"payload"))
            .await
            .expect("response");
        assert_eq!(r.status(), 200);
        assert_eq!(peer.tries(), 3);
        let seen = peer.seen.lock().expect("lock").clone();
        assert!(seen.iter().all(|b| &b[..] == b"payload"), "{seen:?}");
        assert!(metrics
            .encode()
            .contains("vigil_retries_total{service=\"web.demo\"} 2"));

        // Attempts bound the tries; the last answer is the caller's.
        let peer = Scripted::new(&[Try::Status(502); 5]);
        let r = layer
            .layer(peer.clone())
            .oneshot(request("GET", b""))
            .await
            .expect("response");
        assert_eq!((r.status().as_u16(), peer.tries()), (502, 3));

        // Not retried: a 500, or a 503 to a POST.
        for (method, status) in [("GET", 500), ("POST", 503)] {
            let peer = Scripted::new(&[Try::Status(status)]);
            let r = layer
                .layer(peer.clone())
                .oneshot(request(method, b"x"))
                .await
                .expect("response");
            assert_eq!((r.status().as_u16(), peer.tries()), (status, 1), "{method}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_left_is_retried_even_a_streaming_post() {
        let (layer, _) = layer(opted_in(), RetryBudgetPolicy::default());
        let peer = Scripted::new(&[Try::ConnectFailure, Try::ConnectFailure, Try::Status(201)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(streaming("POST"))
            .await
            .expect("response");
        assert_eq!(r.status(), 201);
        let seen = peer.seen.lock().expect("lock").clone();
        assert_eq!(
            &seen[2][..],
            b"part one, part two",
            "the body went out whole, once"
        );

        // ...but a streaming body that did leave is not replayed.
        let peer = Scripted::new(&[Try::Status(503)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(streaming("PUT"))
            .await
            .expect("response");
        assert_eq!((r.status().as_u16(), peer.tries()), (503, 1));

        // Nor is a known-length body over 64 KiB.
        static BIG: [u8; MAX_REPLAY_BYTES + 1] = [b'x'; MAX_REPLAY_BYTES + 1];
        let peer = Scripted::new(&[Try::Status(503)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(request("PUT", &BIG))
            .await
            .expect("response");
        assert_eq!((r.status().as_u16(), peer.tries()), (503, 1));
        assert_eq!(peer.seen.lock().expect("lock")[0].len(), BIG.len());
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_unavailable_is_retried_for_posts_and_backoff_waits_between_tries() {
        let (layer, _) = layer(opted_in(), RetryBudgetPolicy::default());
        let peer = Scripted::new(&[Try::Grpc(14), Try::Grpc(14), Try::Grpc(0)]);
        let started = tokio::time::Instant::now();
        let r = layer
            .layer(peer.clone())
            .oneshot(request("POST", b"\0\0\0\0\x01x"))
            .await
            .expect("response");
        assert_eq!(r.headers()["grpc-status"], "0");
        assert_eq!(peer.tries(), 3);
        // Two pauses: [12.5, 25] ms then [25, 50] ms.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_micros(37_500) && waited <= Duration::from_millis(75),
            "{waited:?}"
        );
        // Other gRPC codes are answers, not failures to retry.
        let peer = Scripted::new(&[Try::Grpc(5)]);
        layer
            .layer(peer.clone())
            .oneshot(request("POST", b""))
            .await
            .expect("response");
        assert_eq!(peer.tries(), 1);
    }

    #[tokio::test]
    async fn a_replayed_body_keeps_its_length_and_sends_no_empty_frames() {
        let (get, replay) = Replay::keep(request("GET", b"")).await.expect("kept");
        assert!(replay.is_some());
        assert!(get.body().is_end_stream(), "a bodiless GET stays bodiless");
        let (put, _) = Replay::keep(request("PUT", b"abc")).await.expect("kept");
        assert_eq!(put.body().size_hint().exact(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_stops_retries_and_is_counted() {
        let (layer, metrics) = layer(
            opted_in(),
            RetryBudgetPolicy {
                ratio: 0.0,
                min_per_second: 0,
                ..RetryBudgetPolicy::default()
            },
        );
        let peer = Scripted::new(&[Try::Status(503), Try::Status(200)]);
        let r = layer
            .layer(peer.clone())
            .oneshot(request("GET", b""))
            .await
            .expect("response");
        assert_eq!((r.status().as_u16(), peer.tries()), (503, 1));
        assert!(metrics
            .encode()
            .contains("vigil_retry_budget_exhausted_total{service=\"web.demo\"} 1"));
    }
}
