//! Fault injection, for chaos tests: a route's policy may delay a share of its requests
//! (as a slow network would) and abort a share with a status, before they go anywhere.
//! An aborted request is the proxy's own answer, marked `x-vigil-error: fault-injected`.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use rand::Rng;
use tower::{Layer, Service, ServiceExt};

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::traffic::FaultPolicy;

#[derive(Clone)]
pub struct FaultLayer {
    fault: Option<FaultPolicy>,
}

impl FaultLayer {
    pub fn new(fault: Option<FaultPolicy>) -> Self {
        FaultLayer { fault }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            fault: self.fault.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Fault<S> {
    inner: S,
    fault: Option<FaultPolicy>,
}

impl<S> Service<Request<Body>> for Fault<S>
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(fault) = self.fault.clone() else {
            return super::boxing::boxed(self.inner.call(req));
        };
        // Not polled (so not sent) until the fault lets it through.
        let response: BoxFuture<'static, _> = Box::pin(self.inner.clone().oneshot(req));
        Box::pin(async move {
            if let Some(delay) = fault.delay.filter(|d| chance(d.percent)) {
                tokio::time::sleep(delay.duration).await;
            }
            if let Some(abort) = fault.abort.filter(|a| chance(a.percent)) {
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Err(ProxyError::FaultInjected { status });
            }
            response.await
        })
    }
}

/// True `percent` % of the time.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::rng().random::<f64>() * 100.0 < percent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{AbortFault, DelayFault};
    use std::time::Duration;
    use tokio::time::Instant;

    fn app() -> tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError> {
        tower::util::BoxCloneService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::http::body::empty()))
        }))
    }

    fn fault(delay: f64, abort: f64) -> FaultLayer {
        FaultLayer::new(Some(FaultPolicy {
            delay: Some(DelayFault {
                percent: delay,
                duration: Duration::from_millis(200),
            }),
            abort: Some(AbortFault {
                percent: abort,
                status: 418,
            }),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn delays_and_aborts_the_configured_share() {
        let started = Instant::now();
        let e = fault(100.0, 100.0)
            .layer(app())
            .oneshot(Request::new(crate::http::body::empty()))
            .await
            .expect_err("aborted");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "delayed first"
        );
        let response = e.into_response();
        assert_eq!(response.status(), 418);
        assert_eq!(response.headers()["x-vigil-error"], "fault-injected");

        let started = Instant::now();
        for _ in 0..100 {
            let r = fault(0.0, 0.0)
                .layer(app())
                .oneshot(Request::new(crate::http::body::empty()))
                .await;
            assert!(r.is_ok());
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "0% never delays");

        let mut aborted = 0;
        for _ in 0..2000 {
            let r = fault(0.0, 25.0)
                .layer(app())
                .oneshot(Request::new(crate::http::body::empty()))
                .await;
            aborted += usize::from(r.is_err());
        }
        assert!(
            (350..650).contains(&aborted),
            "about 25% of 2000: {aborted}"
        );
    }
}
