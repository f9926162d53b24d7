//! A per-service bound on requests in flight and waiting. Past `max_in_flight`, up to
//! `max_queued` requests wait for a slot (within their request timeout); past that, a
//! request is refused at once with 503 `queue-full` (`overloaded` when no queue is
//! configured) instead of queueing forever. A slot is held until the response body ends.
//!
//! Not `tower::limit::ConcurrencyLimit`: it waits for a permit without bound and has
//! no queue limit to refuse at.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

use crate::http::body::{self, Body, BodyError};
use crate::http::error::ProxyError;
use crate::traffic::LimitsPolicy;

/// The in-flight slots and the queue of one service.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    queued: AtomicU32,
    policy: LimitsPolicy,
}

impl ConcurrencyLimit {
    pub fn new(policy: &LimitsPolicy) -> Self {
        ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(policy.max_in_flight as usize)),
            queued: AtomicU32::new(0),
            policy: policy.clone(),
        }
    }

    pub fn policy(&self) -> &LimitsPolicy {
        &self.policy
    }

    /// A slot now, a slot after waiting in the queue, or a refusal at once.
    pub async fn acquire(&self, service: &str) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.policy.max_queued == 0 {
            return Err(ProxyError::Overloaded {
                service: service.to_string(),
                max_in_flight: self.policy.max_in_flight,
            });
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.queued);
        if queued >= self.policy.max_queued {
            return Err(ProxyError::QueueFull {
                service: service.to_string(),
                max_queued: self.policy.max_queued,
            });
        }
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProxyError::Overloaded {
                service: service.to_string(),
                max_in_flight: self.policy.max_in_flight,
            })
    }
}

/// Leaves the queue however the wait ends (a slot, a refusal, or the caller gone).
struct LeaveQueue<'a>(&'a AtomicU32);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct LimitLayer {
    service: Arc<str>,
    limit: Arc<ConcurrencyLimit>,
}

impl LimitLayer {
    pub fn new(service: impl Into<Arc<str>>, limit: Arc<ConcurrencyLimit>) -> Self {
        LimitLayer {
            service: service.into(),
            limit,
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    config: LimitLayer,
}

impl<S> Service<Request<Body>> for Limit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    /// Ready at once: waiting happens per request, where the queue bound applies.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Not polled (so not sent) until a slot is held.
        let response: BoxFuture<'static, _> = Box::pin(self.inner.clone().oneshot(req));
        let LimitLayer { service, limit } = self.config.clone();
        Box::pin(async move {
            let slot = limit.acquire(&service).await?;
            let response = response.await?;
            Ok(response.map(|b| {
                body::boxed(HoldSlot {
                    body: b,
                    slot: Some(slot),
                })
            }))
        })
    }
}

/// A response body that keeps its request's slot until it ends or is dropped.
struct HoldSlot {
    body: Body,
    slot: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for HoldSlot {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.slot = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn limit(max_in_flight: u32, max_queued: u32) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(&LimitsPolicy {
            max_in_flight,
            max_queued,
        }))
    }

    fn app() -> tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError> {
        tower::util::BoxCloneService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(body::full("done")))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_refused_at_once_and_slots_follow_the_response_body() {
        let layer = LimitLayer::new("web.demo", limit(1, 1));
        let first = layer
            .layer(app())
            .oneshot(Request::new(body::empty()))
            .await
            .expect("a slot");
        // The first response's body is unread: its slot is still held.
        let queued = tokio::spawn(layer.layer(app()).oneshot(Request::new(body::empty())));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!queued.is_finished(), "waits in the queue");
        let refused = layer
            .layer(app())
            .oneshot(Request::new(body::empty()))
            .await
            .expect_err("queue full");
        assert_eq!(refused.reason(), "queue-full");
        assert_eq!(refused.into_response().status(), 503);

        // Reading the first body to its end frees the slot for the queued request.
        let bytes = first.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"done");
        let second = queued.await.expect("task").expect("got the slot");
        drop(second);
        let third = layer
            .layer(app())
            .oneshot(Request::new(body::empty()))
            .await;
        assert!(third.is_ok(), "a dropped body frees its slot too");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_a_busy_service_is_overloaded_and_a_gone_caller_leaves_the_queue() {
        let layer = LimitLayer::new("web.demo", limit(1, 0));
        let held = layer
            .layer(app())
            .oneshot(Request::new(body::empty()))
            .await;
        let e = layer
            .layer(app())
            .oneshot(Request::new(body::empty()))
            .await
            .expect_err("no slot");
        assert_eq!(e.reason(), "overloaded");
        drop(held);

        let l = limit(1, 1);
        let _slot = l.acquire("s").await.expect("slot");
        let waiting = tokio::time::timeout(Duration::from_millis(5), l.acquire("s")).await;
        assert!(waiting.is_err(), "gave up waiting");
        assert_eq!(l.queued.load(Ordering::Acquire), 0, "and left the queue");
    }
}
