//! Deadlines. [`RequestTimeout`] bounds a whole request as the caller sees it (queueing
//! and retries included) and answers 504 `request-timeout`, naming the service and the
//! limit. [`PerTryTimeout`] bounds one try, so a hung endpoint costs a retry rather than
//! the request.
//!
//! Own layers rather than `tower::timeout`: that one erases the error into a `BoxError`,
//! and these must keep the proxy's typed errors (and a try's `SendError`) intact.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::transport::pool::SendError;

/// Fails a request still unanswered (no response headers) after `after`.
#[derive(Clone)]
pub struct RequestTimeoutLayer {
    service: Arc<str>,
    after: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(service: impl Into<Arc<str>>, after: Duration) -> Self {
        RequestTimeoutLayer {
            service: service.into(),
            after,
        }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;
    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    config: RequestTimeoutLayer,
}

impl<S> Service<Request<Body>> for RequestTimeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Boxed before the async block, so its Send-ness is settled here.
        let response: BoxFuture<'static, _> = super::boxing::boxed(self.inner.call(req));
        let RequestTimeoutLayer { service, after } = self.config.clone();
        Box::pin(async move {
            // The error only when it happened: `unwrap_or` would name the service in a new
            // string for every request.
            tokio::time::timeout(after, response)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::RequestTimeout {
                        service: service.to_string(),
                        after,
                    })
                })
        })
    }
}

/// Fails one try still unanswered after `after`; `None` leaves tries unbounded.
#[derive(Clone)]
pub struct PerTryTimeoutLayer {
    endpoint: Arc<str>,
    after: Option<Duration>,
}

impl PerTryTimeoutLayer {
    pub fn new(endpoint: impl Into<Arc<str>>, after: Option<Duration>) -> Self {
        PerTryTimeoutLayer {
            endpoint: endpoint.into(),
            after,
        }
    }
}

impl<S> Layer<S> for PerTryTimeoutLayer {
    type Service = PerTryTimeout<S>;
    fn layer(&self, inner: S) -> PerTryTimeout<S> {
        PerTryTimeout {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PerTryTimeout<S> {
    inner: S,
    config: PerTryTimeoutLayer,
}

impl<S> Service<Request<Body>> for PerTryTimeout<S>
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
        let response: BoxFuture<'static, _> = super::boxing::boxed(self.inner.call(req));
        let PerTryTimeoutLayer { endpoint, after } = self.config.clone();
        let Some(after) = after else {
            return response;
        };
        Box::pin(async move {
            match tokio::time::timeout(after, response).await {
                Ok(result) => result,
                Err(_) => Err(SendError::new(ProxyError::TryTimeout {
                    endpoint: endpoint.to_string(),
                    after,
                })),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError> {
        tower::util::BoxCloneService::new(tower::service_fn(
            move |_req: Request<Body>| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, ProxyError>(Response::new(crate::http::body::empty()))
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_timeout_is_a_504_that_says_which_service_and_how_long() {
        let layer = RequestTimeoutLayer::new("web.demo", Duration::from_secs(1));
        let ok = layer
            .layer(slow(Duration::from_millis(999)))
            .oneshot(Request::new(crate::http::body::empty()))
            .await;
        assert!(ok.is_ok());

        let started = tokio::time::Instant::now();
        let err = layer
            .layer(slow(Duration::from_secs(30)))
            .oneshot(Request::new(crate::http::body::empty()))
            .await
            .expect_err("timed out");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let response = err.into_response();
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["x-vigil-error"], "request-timeout");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("service web.demo timed out after 1s"),
            "{body}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_past_its_timeout_is_lost_and_none_means_unbounded() {
        let hung = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, SendError>(Response::new(crate::http::body::empty()))
        });
        let e = PerTryTimeoutLayer::new("b", Some(Duration::from_millis(200)))
            .layer(hung)
            .oneshot(Request::new(crate::http::body::empty()))
            .await
            .expect_err("timed out");
        assert!(e.unsent.is_none(), "the request went out");
        assert_eq!(e.error.reason(), "per-try-timeout");

        let r = PerTryTimeoutLayer::new("b", None)
            .layer(hung)
            .oneshot(Request::new(crate::http::body::empty()))
            .await;
        assert!(r.is_ok(), "an hour is fine without a per-try timeout");
    }
}
