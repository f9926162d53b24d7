//! The proxy's own failures, as small typed values mapped to HTTP in one place. Every
//! response the proxy itself produces carries `x-vigil-error` naming the reason.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Header naming why the proxy, not the application, produced a response.
pub const ERROR_HEADER: &str = "x-vigil-error";

/// Why the proxy answered instead of the application.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service known for {0:?}; check the Host header or the mesh's services")]
    UnknownService(String),
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    #[error("connecting to {endpoint} failed: {reason}")]
    ConnectFailed { endpoint: String, reason: String },
    #[error("peer at {endpoint} did not prove identity {expected}: {reason}")]
    PeerIdentity {
        endpoint: String,
        expected: String,
        reason: String,
    },
    #[error("upstream request failed: {0}")]
    Upstream(String),
    #[error("the application on 127.0.0.1:{port} is unreachable: {reason}")]
    AppUnreachable { port: u16, reason: String },
    #[error("this proxy has no workload certificate yet; it is still starting")]
    NotReady,
    #[error("tunnel target {0} is not a port this workload exposes")]
    TunnelTarget(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("policy evaluation failed: {0}")]
    PolicyError(String),
    #[error("request to service {service} timed out after {}; raise traffic.timeout (or the route's) if it needs longer", humantime::format_duration(*.after))]
    RequestTimeout { service: String, after: Duration },
    #[error("try to {endpoint} timed out after {}", humantime::format_duration(*.after))]
    TryTimeout { endpoint: String, after: Duration },
    #[error("service {service} already has {max_in_flight} requests in flight from this proxy (traffic.limits.max_in_flight)")]
    Overloaded { service: String, max_in_flight: u32 },
    #[error(
        "service {service} has {max_queued} requests queued already (traffic.limits.max_queued)"
    )]
    QueueFull { service: String, max_queued: u32 },
    #[error(
        "request line is {length} bytes, over the {limit}-byte limit (--max-request-line-bytes)"
    )]
    RequestLineTooLong { length: usize, limit: usize },
    #[error("request has {count} header fields, over the limit of {limit} (--max-headers)")]
    TooManyHeaders { count: usize, limit: usize },
    #[error("request body is over the {limit}-byte limit (--max-request-body-bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("{0} is no mesh service and this proxy refuses traffic leaving the mesh; start it with --egress allow (pod annotation vigil.io/egress: allow) or exclude the destination from interception")]
    EgressDenied(std::net::SocketAddr),
    #[error("fault injected by the route's traffic policy")]
    FaultInjected { status: StatusCode },
}

impl ProxyError {
    /// The stable reason token sent in `x-vigil-error` and used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::UnknownService(_) => "unknown-service",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::ConnectFailed { .. } => "connect-failed",
            ProxyError::PeerIdentity { .. } => "peer-identity-mismatch",
            ProxyError::Upstream(_) => "upstream-failed",
            ProxyError::AppUnreachable { .. } => "app-unreachable",
            ProxyError::NotReady => "not-ready",
            ProxyError::TunnelTarget(_) => "tunnel-target-refused",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::PolicyError(_) => "policy-error",
            ProxyError::RequestTimeout { .. } => "request-timeout",
            ProxyError::TryTimeout { .. } => "per-try-timeout",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::QueueFull { .. } => "queue-full",
            ProxyError::RequestLineTooLong { .. } => "request-line-too-long",
            ProxyError::TooManyHeaders { .. } => "too-many-headers",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
            ProxyError::EgressDenied(_) => "egress-denied",
            ProxyError::FaultInjected { .. } => "fault-injected",
        }
    }

    /// The HTTP status the caller sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints(_) | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PeerIdentity { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::AppUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::TunnelTarget(_) => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PolicyError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RequestTimeout { .. } | ProxyError::TryTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Overloaded { .. } | ProxyError::QueueFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::RequestLineTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::EgressDenied(_) => StatusCode::FORBIDDEN,
            ProxyError::FaultInjected { status } => *status,
        }
    }

    /// The response the proxy sends for this error.
    pub fn into_response(self) -> Response<Body> {
        let policy_error = matches!(self, ProxyError::PolicyError(_));
        let mut response = local_response(self.status(), self.reason(), format!("vigil: {self}\n"));
        if policy_error {
            response.extensions_mut().insert(PolicyOutcome("error"));
        }
        response
    }
}

/// Marks a response the proxy produced itself, with its reason, for metrics and the tap.
#[derive(Debug, Clone, Copy)]
pub struct LocalReason(pub &'static str);

/// The policy outcome of an inbound request, for the tap and access log.
#[derive(Debug, Clone, Copy)]
pub struct PolicyOutcome(pub &'static str);

/// A response produced by the proxy itself, marked with its reason.
pub fn local_response(status: StatusCode, reason: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    response.extensions_mut().insert(LocalReason(reason));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
