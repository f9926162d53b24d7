//! The proxy's own failures, as small typed values mapped to HTTP in one place. Every
//! response the proxy itself produces carries `x-vigil-error` naming the reason.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::http::body::{self, Body};

/// Header naming why the proxy, not the application, produced a response.
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-vigil-error");

/// What failed underneath a [`ProxyError`]: the I/O, TLS or HTTP error itself when there
/// is one (so its chain and kind survive), else a description.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Words before a cause ("HTTP/2 handshake: ..."), the cause itself kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Context {
    what: String,
    #[source]
    source: Cause,
}

/// `source` with `what` in front of it.
pub fn context(what: impl Into<String>, source: impl Into<Cause>) -> Cause {
    Box::new(Context {
        what: what.into(),
        source: source.into(),
    })
}

/// Why the proxy answered instead of the application. The message names the failure in
/// words a caller can act on (it is the body of the proxy's response); the error it came
/// from, when there is one, is its `source`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service known for {0:?}; check the Host header or the mesh's services")]
    UnknownService(String),
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    #[error("connecting to {endpoint} failed: {reason}")]
    ConnectFailed {
        endpoint: String,
        #[source]
        reason: Cause,
    },
    #[error("peer at {endpoint} did not prove identity {expected}: {reason}")]
    PeerIdentity {
        endpoint: String,
        expected: String,
        #[source]
        reason: Cause,
    },
    #[error("upstream request failed: {0}")]
    Upstream(#[source] Cause),
    #[error("the application on 127.0.0.1:{port} is unreachable: {reason}")]
    AppUnreachable {
        port: u16,
        #[source]
        reason: Cause,
    },
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
    #[error("no route of service {0} matches this request (its routes answer unmatched requests with 404)")]
    NoRoute(String),
    #[error("{0}")]
    NoBackend(String),
    #[error("this route cannot be served: {0}")]
    UnsupportedRoute(String),
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
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoBackend(_) => "no-backend",
            ProxyError::UnsupportedRoute(_) => "unsupported-route",
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
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) | ProxyError::UnsupportedRoute(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::FaultInjected { status } => *status,
        }
    }

    /// The response the proxy sends for this error.
    pub fn into_response(self) -> Response<Body> {
        local_response(self.status(), self.reason(), format!("vigil: {self}\n"))
    }
}

/// Marks a response the proxy produced itself, with its reason, for metrics and the tap.
#[derive(Debug, Clone, Copy)]
pub struct LocalReason(pub &'static str);

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

/// Whether a request is gRPC (`content-type: application/grpc`, `application/grpc+proto`,
/// ...), whose callers read a status from `grpc-status`, not from the HTTP status.
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A response the proxy produced itself, answered the way a gRPC caller understands: a
/// trailers-only response (HTTP 200, `grpc-status`, `grpc-message`) whose code follows the
/// proxy's reason, so a policy denial is `PERMISSION_DENIED` and a deadline
/// `DEADLINE_EXCEEDED` rather than the generic `UNAVAILABLE` gRPC makes of an HTTP error.
/// Responses from the application pass untouched.
pub async fn for_grpc_caller(response: Response<Body>) -> Response<Body> {
    let Some(reason) = response.extensions().get::<LocalReason>().map(|r| r.0) else {
        return response;
    };
    let code = grpc_code(reason, response.status());
    let (mut parts, body) = response.into_parts();
    // Local bodies are short text already in memory, a policy's own body included.
    let message = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&message).trim().to_string();
    parts.status = StatusCode::OK;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(code as u16));
    // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
    let encoded: String = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).collect();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        parts.headers.insert("grpc-message", v);
    }
    Response::from_parts(parts, body::empty())
}

/// Bytes `grpc-message` may carry as they are: printable ASCII but `%`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// gRPC status codes the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum GrpcCode {
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

fn grpc_code(reason: &str, status: StatusCode) -> GrpcCode {
    match reason {
        "policy-denied" | "egress-denied" | "tunnel-target-refused" => match status {
            StatusCode::UNAUTHORIZED => GrpcCode::Unauthenticated,
            _ => GrpcCode::PermissionDenied,
        },
        "request-timeout" | "per-try-timeout" => GrpcCode::DeadlineExceeded,
        "overloaded"
        | "queue-full"
        | "body-too-large"
        | "too-many-headers"
        | "request-line-too-long" => GrpcCode::ResourceExhausted,
        "unknown-service" => GrpcCode::NotFound,
        "bad-request" => GrpcCode::Internal,
        "policy-error" | "no-backend" | "unsupported-route" => GrpcCode::Internal,
        _ => match status.as_u16() {
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 => GrpcCode::ResourceExhausted,
            _ => GrpcCode::Unavailable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_failure_keeps_the_error_it_came_from() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ProxyError::ConnectFailed {
            endpoint: "10.0.0.7:15006".into(),
            reason: context("HTTP/2 handshake", refused),
        };
        assert_eq!(
            e.to_string(),
            "connecting to 10.0.0.7:15006 failed: HTTP/2 handshake: connection refused"
        );
        let io = std::iter::successors(std::error::Error::source(&e), |e| e.source())
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .expect("the I/O error is in the chain");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        // A cause given in words has no error below it.
        let e = ProxyError::Upstream("reset".into());
        let words = std::error::Error::source(&e).expect("the words are the source");
        assert_eq!(words.to_string(), "reset");
        assert!(words.source().is_none());
    }

    #[tokio::test]
    async fn a_grpc_caller_gets_the_proxys_refusals_as_grpc_status() {
        let denied = local_response(
            StatusCode::FORBIDDEN,
            "policy-denied",
            "orders may not call payments: 100% sure\n".into(),
        );
        let r = for_grpc_caller(denied).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "orders may not call payments: 100%25 sure"
        );
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());

        let timeout = ProxyError::RequestTimeout {
            service: "orders.shop".into(),
            after: Duration::from_secs(1),
        };
        let r = for_grpc_caller(timeout.into_response()).await;
        assert_eq!(r.headers()["grpc-status"], "4");
        let r =
            for_grpc_caller(ProxyError::NoEndpoints("orders.shop".into()).into_response()).await;
        assert_eq!(r.headers()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn application_responses_pass_untouched() {
        let mut app = Response::new(body::full("from the app"));
        *app.status_mut() = StatusCode::NOT_FOUND;
        let r = for_grpc_caller(app).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().get("grpc-status").is_none());
    }
}
