//! Outbound (15001 and per-service upstream listeners): plain traffic from the local
//! application → original destination or Host → service and route → the resilience
//! stack ([`stack`]: faults, deadline, limits, retries, balancer, breakers) → mutual TLS
//! to the peer proxy, refusing any peer that is not the identity discovery expects.
//! HTTP/1 and HTTP/2 are carried over pooled HTTP/2; anything else is an opaque TCP tunnel.

pub mod balance;
pub mod boxing;
pub mod breaker;
pub mod budget;
pub mod circuit;
pub mod endpoint;
pub mod fault;
pub mod limit;
pub mod retry;
pub mod service_state;
pub mod stack;
pub mod target;
pub mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::control::state::{AppProtocol, MeshView, ServiceView};
use crate::http::body::{self, Body};
use crate::http::error::{context, ProxyError};
use crate::http::headers::{strip_hop_by_hop, strip_identity, ORIGINAL_PROTOCOL};
use crate::telemetry::metrics::{Direction, Peer, TcpLabels};
use crate::telemetry::observe::RequestObservation;
use crate::traffic::RequestHead;
use crate::transport::orig_dst::original_destination;
use crate::Proxy;

use self::endpoint::AttemptLog;
use self::target::Pick;

/// How a connection's service is found.
#[derive(Debug, Clone)]
enum Target {
    /// Explicit mode: the Host header of each request names the service.
    ByHost,
    /// Transparent mode: the original destination address.
    Address(SocketAddr),
    /// An upstream listener bound to one service.
    Fixed(String),
}

/// Serves an outbound listener; `service` binds it to one service.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, service: Option<String>) {
    let handler = proxy.clone();
    proxy
        .serve_traffic(listener, "outbound", move |tcp, client| {
            let proxy = handler.clone();
            let service = service.clone();
            async move { connection(proxy, tcp, client, service).await }
        })
        .await;
}

async fn connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    client: SocketAddr,
    service: Option<String>,
) {
    let target = match (service, original_destination(&tcp)) {
        (Some(name), _) => Target::Fixed(name),
        (None, Some(dst)) => Target::Address(dst),
        (None, None) => Target::ByHost,
    };
    // The view itself is read again below; this only asks for a destination a scoped
    // view lacks, so the declared protocol can decide.
    let _ = view_for(&proxy, &target, "").await;
    // The declared protocol decides, never the client's bytes: a connection to an HTTP
    // service is served as HTTP whatever it starts with (bytes that are no request get
    // 400), so no byte sequence can turn it into a tunnel that skips request policy.
    // Only a destination the mesh does not know is sniffed.
    let detected = match declared_protocol(&proxy, &target) {
        Some(declared) => declared,
        None => detect(&tcp, proxy.config.detect_timeout).await,
    };
    match detected {
        Detected::Http => serve_http(proxy, tcp, client, target).await,
        Detected::Opaque => {
            if let Err(e) = opaque(&proxy, tcp, &target).await {
                tracing::info!(%client, error = %e, "outbound TCP connection refused");
            }
        }
        Detected::Closed => {}
    }
}

/// How the mesh says a connection to `target` must be carried, before any byte is read:
/// `None` only for an intercepted address that is no mesh service (or before the first
/// snapshot), which protocol detection then decides.
fn declared_protocol(proxy: &Proxy, target: &Target) -> Option<Detected> {
    let service = match target {
        // The explicit port routes each request by its Host header: HTTP only.
        Target::ByHost => return Some(Detected::Http),
        Target::Fixed(name) => proxy
            .discovery
            .mesh
            .load()
            .as_ref()?
            .service_for_host(name)
            .map(|s| s.protocol),
        Target::Address(dst) => proxy
            .discovery
            .mesh
            .load()
            .as_ref()?
            .service_for_address(*dst)
            .map(|s| s.protocol),
    };
    service.map(|protocol| match protocol {
        AppProtocol::Http => Detected::Http,
        AppProtocol::Tcp => Detected::Opaque,
    })
}

/// What the client's first bytes say about its protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Http,
    Opaque,
    Closed,
}

const HTTP_PREFIXES: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PRI * HTTP/2.0",
];

/// Most bytes outbound looks at to find the end of a request line with a method outside
/// the standard ones; a longer line is carried as opaque TCP.
pub const MAX_DETECT_BYTES: usize = 2048;

/// Longest extension method (e.g. `PROPFIND`, `PURGE`, `MKCALENDAR`) recognised.
pub const MAX_METHOD_BYTES: usize = 32;

/// Classifies a prefix of the client's first bytes: `Some` once certain, `None` while
/// more bytes could still change the answer.
///
/// A standard method and its space, or the HTTP/2 preface, is HTTP at once. Any other
/// method (WebDAV's `PROPFIND`, a cache's `PURGE`) is HTTP once its whole request line,
/// `METHOD SP target SP HTTP/1.x CRLF`, has arrived, within [`MAX_DETECT_BYTES`].
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let mut undecided = false;
    for p in HTTP_PREFIXES {
        let n = prefix.len().min(p.len());
        if prefix[..n] == p[..n] {
            if prefix.len() >= p.len() {
                return Some(Detected::Http);
            }
            undecided = true;
        }
    }
    if undecided {
        return None;
    }
    extension_request_line(prefix)
}

/// `METHOD SP target SP HTTP/1.x CRLF` (RFC 9112 section 3) for any method token.
fn extension_request_line(prefix: &[u8]) -> Option<Detected> {
    const VERSIONS: [&[u8]; 4] = [
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b" HTTP/1.1\n",
        b" HTTP/1.0\n",
    ];
    let opaque = Some(Detected::Opaque);
    let method = prefix.iter().take_while(|b| is_tchar(**b)).count();
    if method == 0 || method > MAX_METHOD_BYTES {
        return opaque;
    }
    let Some(rest) = prefix[method..].strip_prefix(b" ") else {
        // All method so far, or something else after it.
        return if method == prefix.len() { None } else { opaque };
    };
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    let tail = &rest[target..];
    if tail.is_empty() {
        // The target may still be arriving, within the limit.
        return if prefix.len() < MAX_DETECT_BYTES {
            None
        } else {
            opaque
        };
    }
    if target == 0 {
        return opaque;
    }
    for version in VERSIONS {
        if tail.starts_with(version) {
            return Some(Detected::Http);
        }
    }
    if VERSIONS.iter().any(|v| v.starts_with(tail)) {
        return None;
    }
    opaque
}

/// A character of an HTTP token (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Peeks (without consuming) until the protocol is certain or the client goes quiet;
/// a server-speaks-first protocol simply times out into opaque TCP.
async fn detect(tcp: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_DETECT_BYTES];
    loop {
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await;
        match peeked {
            Err(_) => return Detected::Opaque,
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Closed,
            Ok(Ok(n)) => {
                if let Some(d) = classify(&buf[..n]) {
                    return d;
                }
                if n == buf.len() {
                    return Detected::Opaque;
                }
                // Part of a request line so far: wait briefly for the rest.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn serve_http(proxy: Arc<Proxy>, tcp: TcpStream, client: SocketAddr, target: Target) {
    // hyper's protocol sniffing has no deadline: bound it by the header read timeout, so
    // half an HTTP/2 preface cannot hold the connection open.
    let tcp = crate::transport::stall::WriteStall::new(tcp, proxy.config.write_stall_timeout);
    let stream = match crate::transport::preface::read_preface(
        tcp,
        proxy.config.header_read_timeout,
    )
    .await
    {
        Ok(Some(stream)) => stream,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(%client, error = %e, "outbound connection closed: no request");
            return;
        }
    };
    let target = Arc::new(target);
    let served = crate::transport::serve::http(&proxy.config, &proxy.drain, stream, {
        let proxy = proxy.clone();
        move |req| {
            let proxy = proxy.clone();
            let target = target.clone();
            async move { request(&proxy, &target, req).await }
        }
    })
    .await;
    if let Err(e) = served {
        if crate::transport::serve::malformed_request(e.as_ref()) {
            proxy.metrics.malformed_request(Direction::outbound);
            tracing::info!(%client, error = %e, "outbound connection closed: not a valid HTTP request");
        } else {
            tracing::debug!(%client, error = %e, "outbound connection ended with an error");
        }
    }
}

/// The view to route `target` (and `host`) with. A view scoped to the services the
/// workload declared that lacks the destination is first asked to include it (once, see
/// [`crate::control::discovery::Discovery::ask_for`]), and the view that answers is used.
async fn view_for(proxy: &Proxy, target: &Target, host: &str) -> Result<Arc<MeshView>, ProxyError> {
    let mesh = proxy
        .discovery
        .mesh
        .load_full()
        .ok_or(ProxyError::NotReady)?;
    let known = !mesh.scoped
        || (matches!(target, Target::ByHost) && host.is_empty())
        || resolve(&mesh, target, host).is_ok();
    if known {
        return Ok(mesh);
    }
    let mut names = Vec::with_capacity(2);
    match target {
        Target::Fixed(name) => names.push(name.clone()),
        Target::Address(addr) => names.push(addr.to_string()),
        Target::ByHost => {}
    }
    if !host.is_empty() {
        names.push(crate::control::state::strip_port(host).to_string());
    }
    // Boxed, as every rare path here: the request future is copied whole when it is
    // boxed per request, so what it holds inline is paid for by every request.
    Box::pin(proxy.discovery.ask_for(&names)).await;
    proxy.discovery.mesh.load_full().ok_or(ProxyError::NotReady)
}

fn resolve<'m>(
    mesh: &'m MeshView,
    target: &Target,
    host: &str,
) -> Result<&'m Arc<ServiceView>, ProxyError> {
    match target {
        Target::Fixed(name) => mesh
            .service_for_host(name)
            .ok_or_else(|| ProxyError::UnknownService(name.clone())),
        Target::Address(addr) => mesh
            .service_for_address(*addr)
            .or_else(|| mesh.service_for_host(host))
            .ok_or_else(|| ProxyError::UnknownService(addr.to_string())),
        Target::ByHost => mesh
            .service_for_host(host)
            .ok_or_else(|| ProxyError::UnknownService(host.to_string())),
    }
}

/// Where a request or connection goes.
enum Destination<'m> {
    Mesh(&'m Arc<ServiceView>),
    /// Intercepted, to an address that is no mesh service, with `--egress allow`: sent
    /// there directly, in the clear, as the application would without the mesh.
    Egress(SocketAddr),
}

/// The mesh service for `target`, or for intercepted traffic to an unknown address what
/// `--egress` says.
fn destination<'m>(
    proxy: &Proxy,
    mesh: &'m MeshView,
    target: &Target,
    host: &str,
) -> Result<Destination<'m>, ProxyError> {
    match (resolve(mesh, target, host), target) {
        (Ok(service), _) => Ok(Destination::Mesh(service)),
        (Err(ProxyError::UnknownService(_)), Target::Address(dst)) => match proxy.config.egress {
            crate::config::Egress::Allow => Ok(Destination::Egress(*dst)),
            crate::config::Egress::Deny => Err(ProxyError::EgressDenied(*dst)),
        },
        (Err(e), _) => Err(e),
    }
}

/// The service label of traffic leaving the mesh.
const EGRESS: &str = "egress";

/// Forwards one request and reports it.
async fn request(proxy: &Proxy, target: &Target, mut req: Request<Incoming>) -> Response<Body> {
    let grpc = crate::http::error::is_grpc(&req);
    let mut observed = RequestObservation::start(proxy, Direction::outbound, &mut req);
    let response = forward(proxy, target, req, &mut observed)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "outbound request failed");
            e.into_response()
        });
    // Metrics and logs keep the proxy's own status; a gRPC caller gets it as gRPC.
    observed.answered(&response);
    if grpc {
        return Box::pin(crate::http::error::for_grpc_caller(response)).await;
    }
    response
}

async fn forward(
    proxy: &Proxy,
    target: &Target,
    mut req: Request<Incoming>,
    observed: &mut RequestObservation<'_>,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported on the outbound listener".into(),
        ));
    }
    crate::http::limits::check_head(&req, &proxy.config.request_limits)?;
    // Kept apart from the request, which changes below, without copying it: a Host
    // header's value shares the bytes hyper read it from.
    let host = match req.uri().authority() {
        Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    };
    let host = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ProxyError::BadRequest("request has no Host header".into()))?;
    let mut mesh = view_for(proxy, target, host).await?;
    let mut asked = false;
    let (stack, route) = loop {
        let service = match destination(proxy, &mesh, target, host)? {
            Destination::Mesh(service) => service,
            Destination::Egress(dst) => {
                observed.service = Arc::from(EGRESS);
                return Box::pin(egress_http(proxy, dst, req, host)).await;
            }
        };
        let service_target = proxy.targets.get(proxy, &mesh, service);
        observed.service = service_target.name.clone();
        let route_target = service_target.route(service, &RequestHead::of(&req));
        observed.route = route_target.label.clone();
        let route = route_target.route.clone();
        let missing = match route_target.pick() {
            Pick::Service(stack) => break (stack, route),
            Pick::Backend { label, stack } => {
                // The service that served it: a canary's share shows as its own.
                observed.service = label.clone();
                break (stack, route);
            }
            Pick::Refused(error) => return Err(error),
            Pick::Missing(missing) => missing.to_string(),
        };
        // A scoped view asks for a backend it lacks once, as for a destination.
        if !mesh.scoped || asked {
            return Err(ProxyError::NoBackend(format!(
                "backend {missing} of route {} is no service of the mesh",
                route_target.label
            )));
        }
        asked = true;
        Box::pin(proxy.discovery.ask_for(&[missing])).await;
        mesh = proxy
            .discovery
            .mesh
            .load_full()
            .ok_or(ProxyError::NotReady)?;
    };
    if let Some(changes) = &route.request_headers {
        changes.apply(req.headers_mut());
    }
    *req.uri_mut() = absolute_uri(std::mem::take(req.uri_mut()), host)?;
    // An HTTP/1.1 upgrade (WebSocket) crosses to the peer as an extended CONNECT.
    let upgrade = crate::http::upgrade::requested(&req).map(|protocol| {
        let client = hyper::upgrade::on(&mut req);
        (protocol, client)
    });
    let original = match req.version() {
        Version::HTTP_2 => None,
        Version::HTTP_10 => Some("HTTP/1.0"),
        _ => Some("HTTP/1.1"),
    };
    *req.version_mut() = Version::HTTP_2;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    strip_identity(headers);
    headers.remove(http::header::HOST);
    // Whatever the application sent in it goes: replaced, or removed.
    match original {
        Some(original) => {
            headers.insert(ORIGINAL_PROTOCOL, http::HeaderValue::from_static(original));
        }
        None => {
            headers.remove(ORIGINAL_PROTOCOL);
        }
    }
    if let Some((protocol, _)) = &upgrade {
        *req.method_mut() = Method::CONNECT;
        let protocol = protocol.to_str().unwrap_or_default();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from(protocol));
    }
    let tries = AttemptLog::default();
    req.extensions_mut().insert(tries.clone());
    let (parts, incoming) = req.into_parts();
    let max_body = proxy.config.request_limits.max_body_bytes;
    let (limited, exceeded) = crate::http::limits::limit_body(incoming, max_body);
    let result = stack::send(stack, Request::from_parts(parts, limited)).await;
    observed.peer = tries.last_peer();
    let (mut parts, body) = match (result, max_body) {
        (Err(_), Some(limit)) if exceeded.happened() => {
            return Err(ProxyError::BodyTooLarge { limit })
        }
        (result, _) => result?.into_parts(),
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(changes) = &route.response_headers {
        changes.apply(&mut parts.headers);
    }
    let mut response = Response::from_parts(parts, body);
    if let Some((protocol, client)) = upgrade {
        if response.status() == http::StatusCode::OK {
            // The app behind the peer switched: tell ours, then join the two streams.
            let peer = hyper::upgrade::on(&mut response);
            *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            headers.insert(http::header::UPGRADE, protocol);
            crate::transport::serve::splice(client, peer, proxy.config.idle_timeout, "outbound");
        }
    }
    Ok(response)
}

/// `uri` made absolute for the peer proxy (`http://host/path?query`), reusing its parsed
/// path rather than formatting and parsing the whole URI again.
fn absolute_uri(uri: Uri, host: &str) -> Result<Uri, ProxyError> {
    let invalid =
        |e: &dyn std::fmt::Display| ProxyError::BadRequest(format!("invalid Host {host:?}: {e}"));
    let mut parts = uri.into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::try_from(host).map_err(|e| invalid(&e))?);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|e| invalid(&e))
}

/// An intercepted request to an address outside the mesh (`--egress allow`), sent on as
/// HTTP/1.1 from the proxy, whose own connections interception lets through.
async fn egress_http(
    proxy: &Proxy,
    dst: SocketAddr,
    mut req: Request<Incoming>,
    host: &str,
) -> Result<Response<Body>, ProxyError> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = Uri::try_from(format!("http://{dst}{path}"))
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !headers.contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(host) {
            headers.insert(http::header::HOST, v);
        }
    }
    let (parts, incoming) = req.into_parts();
    let max_body = proxy.config.request_limits.max_body_bytes;
    let (limited, exceeded) = crate::http::limits::limit_body(incoming, max_body);
    let response = match proxy
        .egress()
        .request(Request::from_parts(parts, limited))
        .await
    {
        Ok(response) => response,
        Err(_) if exceeded.happened() => {
            return Err(ProxyError::BodyTooLarge {
                limit: max_body.unwrap_or_default(),
            })
        }
        Err(e) => return Err(ProxyError::Upstream(context(format!("egress to {dst}"), e))),
    };
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

/// Intercepted TCP to an address outside the mesh (`--egress allow`): bytes both ways.
async fn egress_tcp(proxy: &Proxy, tcp: TcpStream, dst: SocketAddr) -> Result<(), ProxyError> {
    let mut remote = tokio::time::timeout(proxy.config.connect_timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| ProxyError::ConnectFailed {
            endpoint: dst.to_string(),
            reason: "timed out".into(),
        })?
        .map_err(|e| ProxyError::ConnectFailed {
            endpoint: dst.to_string(),
            reason: e.into(),
        })?;
    let _ = remote.set_nodelay(true);
    let labels = TcpLabels::new(Direction::outbound, &Peer::none(), Arc::from(EGRESS));
    carry(proxy, tcp, &mut remote, labels).await;
    Ok(())
}

/// Carries the client's connection over `remote` (a tunnel to the peer proxy, or the
/// destination itself) until either side ends, counted under `labels`.
async fn carry<R>(proxy: &Proxy, tcp: TcpStream, remote: &mut R, labels: TcpLabels)
where
    R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let metrics = &proxy.metrics;
    metrics.tcp_opened.get_or_create(&labels).inc();
    let mut tcp = crate::transport::stall::WriteStall::new(tcp, proxy.config.write_stall_timeout);
    let tunneled =
        crate::transport::serve::tunnel(&mut tcp, remote, proxy.config.idle_timeout).await;
    metrics.tcp_closed(&labels, tunneled.forward, tunneled.backward);
    if let Err(e) = tunneled.result {
        tracing::debug!(service = %labels.service, error = %e, "outbound tunnel ended");
    }
}

/// Opaque TCP: a CONNECT stream on the pooled HTTP/2 connection to the peer proxy.
async fn opaque(proxy: &Proxy, tcp: TcpStream, target: &Target) -> Result<(), ProxyError> {
    let mesh = proxy
        .discovery
        .mesh
        .load_full()
        .ok_or(ProxyError::NotReady)?;
    if matches!(target, Target::ByHost) {
        return Err(ProxyError::BadRequest(
            "opaque TCP to the explicit outbound port has no destination; use an upstream listener"
                .into(),
        ));
    }
    let service = match destination(proxy, &mesh, target, "")? {
        Destination::Mesh(service) => service,
        Destination::Egress(dst) => return egress_tcp(proxy, tcp, dst).await,
    };
    if service.protocol != AppProtocol::Tcp {
        return Err(ProxyError::BadRequest(format!(
            "service {} is declared HTTP; it takes requests, not an opaque tunnel (declare the service `protocol: tcp` if it speaks something else)",
            service.qualified_name()
        )));
    }
    let tries = AttemptLog::default();
    // The balancer aims the CONNECT at the chosen endpoint's application port.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("127.0.0.1:0")
        .extension(tries.clone())
        .body(body::empty())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let target = proxy.targets.get(proxy, &mesh, service);
    let mut response = stack::send(target.tunnel(), req).await?;
    if !response.status().is_success() {
        let reason = response
            .headers()
            .get(crate::http::error::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("refused")
            .to_string();
        return Err(ProxyError::Upstream(
            format!(
                "peer refused the tunnel with {} ({reason})",
                response.status()
            )
            .into(),
        ));
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| ProxyError::Upstream(e.into()))?;
    let labels = TcpLabels::new(
        Direction::outbound,
        &tries.last_peer(),
        Arc::from(service.qualified_name()),
    );
    carry(proxy, tcp, &mut TokioIo::new(upgraded), labels).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_made_absolute_for_the_peer_with_their_path_and_query() {
        let uri = absolute_uri(Uri::from_static("/a/b?c=1"), "orders.shop:8080").unwrap();
        assert_eq!(uri, "http://orders.shop:8080/a/b?c=1");
        let uri = absolute_uri(Uri::from_static("http://other/x"), "orders").unwrap();
        assert_eq!(uri, "http://orders/x", "the Host header names the service");
        assert!(matches!(
            absolute_uri(Uri::from_static("/"), "bad host"),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn classifies_protocols_from_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Detected::Http));
        assert_eq!(classify(b"DELETE /x"), Some(Detected::Http));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"ping\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), None, "could be an extension method");
        assert_eq!(classify(b"GETX\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn extension_methods_are_http_once_their_request_line_is_whole() {
        let line = b"PROPFIND /calendars/ann HTTP/1.1\r\nDepth: 1\r\n";
        let end = line.iter().position(|b| *b == b'\n').unwrap() + 1;
        for n in 1..end {
            assert_eq!(classify(&line[..n]), None, "undecided at {n}");
        }
        assert_eq!(classify(&line[..end]), Some(Detected::Http));
        assert_eq!(classify(b"PURGE /img.png HTTP/1.0\n"), Some(Detected::Http));
        // Line protocols that look a little like it are not.
        assert_eq!(classify(b"SET key value\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"get foo\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"PING\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"BREW  /pot HTTP/1.1\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"X /a HTTP/2.0\r\n"), Some(Detected::Opaque));
        // A line longer than detection looks is opaque.
        let long = format!("REPORT /{}", "a".repeat(MAX_DETECT_BYTES));
        assert_eq!(classify(long.as_bytes()), Some(Detected::Opaque));
    }
}
