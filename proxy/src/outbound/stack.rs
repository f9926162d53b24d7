//! The outbound request path, composed in one place. Once a request's service and route
//! are known, reading [`http`] from top to bottom tells everything that happens to it on
//! its way to a peer proxy; each layer lives, and is tested, in its own module. Stacks are
//! built once per discovery snapshot and service route ([`super::target`]); a request
//! clones a ready one.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;
use http::{Request, Response};

use tower::{Service, ServiceBuilder};

use crate::control::state::{MeshView, ServiceView};
use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::traffic::{RetryOn, RetryPolicy, Route};
use crate::Proxy;

use super::balance::Balance;
use super::breaker::EjectionLimit;
use super::fault::FaultLayer;
use super::limit::LimitLayer;
use super::retry::RetryLayer;
use super::service_state::ServiceState;
use super::timeout::RequestTimeoutLayer;

/// What a stack is, seen from outside: cheap to clone (one `Arc`), so one built per
/// snapshot serves every request. Every layer is ready at once (limits are enforced
/// inside `call`, where a request can wait), so a request is sent by calling a clone of
/// the layers, with no readiness step, and the future the outermost layer boxed is the
/// one the request awaits (tower's boxed services would box it again, and box the clone).
#[derive(Clone)]
pub struct Stack(Arc<dyn Fn(Request<Body>) -> Sent + Send + Sync>);

/// A request on its way through a stack.
type Sent = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

impl Stack {
    fn new<S>(layers: S) -> Stack
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future = Sent>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Stack(Arc::new(move |req| {
            let mut layers = layers.clone();
            // Always ready, as above; a no-op waker polls it exactly.
            match layers.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => layers.call(req),
                Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
                Poll::Pending => Box::pin(std::future::ready(Err(ProxyError::Upstream(
                    "the outbound stack was not ready".into(),
                )))),
            }
        }))
    }
}

/// Sends `req` through `stack`.
///
/// Every future that holds a stack or a request body across an `.await` is boxed where it
/// is made, in plain functions like this one: rustc's `Send` check of async blocks loses
/// the `'static` of the body's boxed error type and then fails to prove it (a known
/// higher-ranked lifetime limitation).
pub fn send(stack: Stack, req: Request<Body>) -> Sent {
    (stack.0)(req)
}

/// The stack for one HTTP request to `service`, under `route`'s policy.
pub fn http(proxy: &Proxy, mesh: &MeshView, service: &ServiceView, route: &Route) -> Stack {
    let name = service.qualified_name();
    let state = proxy.services.get(mesh, service);
    let stack = ServiceBuilder::new()
        // Chaos, as if the network misbehaved: delay or abort a share of the route.
        .layer(FaultLayer::new(route.fault.clone()))
        // The caller's deadline, over everything below: queueing, every try, backoffs.
        // 504 `request-timeout`.
        .layer(RequestTimeoutLayer::new(name.clone(), route.timeout))
        // Bounded in flight and queued; past that, 503 `queue-full` / `overloaded` at once.
        .layer(LimitLayer::new(name.clone(), state.limit.clone()))
        // Failed tries again, on another endpoint, with backoff, within the budget.
        .layer(RetryLayer::new(
            name.clone(),
            route.retries.clone(),
            state.budget.clone(),
            proxy.metrics.clone(),
        ))
        // Each try: P2C over peak-EWMA among the endpoints the breakers admit, then that
        // endpoint's breaker → per-try timeout → pooled mTLS connection to its proxy.
        .service(balance(
            proxy,
            mesh,
            service,
            &state,
            route.retries.per_try_timeout,
        ));
    Stack::new(stack)
}

/// The stack for an opaque TCP tunnel (a CONNECT to the peer proxy): endpoint choice and
/// breakers as for HTTP, and another endpoint when one cannot be reached. No deadline,
/// limit or fault: a tunnel lives as long as its connection.
pub fn tunnel(proxy: &Proxy, mesh: &MeshView, service: &ServiceView) -> Stack {
    let name = service.qualified_name();
    let state = proxy.services.get(mesh, service);
    let connect_failures_only = RetryPolicy {
        on: vec![RetryOn::ConnectFailure],
        methods: vec![],
        ..service.traffic.retries.clone()
    };
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(
            name,
            Arc::new(connect_failures_only),
            state.budget.clone(),
            proxy.metrics.clone(),
        ))
        .service(balance(proxy, mesh, service, &state, None));
    Stack::new(stack)
}

fn balance(
    proxy: &Proxy,
    mesh: &MeshView,
    service: &ServiceView,
    state: &ServiceState,
    per_try_timeout: Option<std::time::Duration>,
) -> Balance {
    let endpoints: Arc<[_]> = proxy.endpoints.for_service(mesh, service).into();
    let breaker = &service.traffic.circuit_breaker;
    Balance::new(
        service.qualified_name(),
        endpoints.clone(),
        Arc::new(breaker.clone()),
        EjectionLimit::new(
            endpoints,
            breaker.max_ejected_percent,
            state.ejections.clone(),
        ),
        per_try_timeout,
        proxy.metrics.clone(),
    )
}
