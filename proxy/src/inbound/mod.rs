//! Inbound (15006): mutual TLS from peer proxies → verified peer identity → policy →
//! the application on 127.0.0.1. HTTP/1.1 and HTTP/2 by ALPN; CONNECT streams are opaque
//! TCP tunnels to an application port.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use vigil_authz::{AuthzInput, BodyInput, Decision, HttpAttributes, InputKind};
use vigil_identity::SpiffeId;

use crate::config::InboundMode;
use crate::http::body::{self, Body};
use crate::http::buffer::buffer_prefix;
use crate::http::error::{local_response, ProxyError, ERROR_HEADER};
use crate::http::headers::{
    authority, new_request_id, strip_hop_by_hop, strip_identity, ORIGINAL_PROTOCOL, PEER_IDENTITY,
    REQUEST_ID,
};
use crate::telemetry::metrics::{Direction, Peer, ReasonLabels, TcpLabels};
use crate::telemetry::observe::{PolicyMetadata, RequestObservation};
use crate::Proxy;

/// What inbound knows about a connection, all from the verified TLS session.
struct Connection {
    /// The verified SPIFFE ID; `None` only for plaintext in permissive mode.
    peer: Option<SpiffeId>,
    /// The peer as metrics and logs name it, once per connection; empty for plaintext.
    peer_labels: Peer,
    /// The verified SPIFFE ID as the app's header carries it, made once per connection.
    peer_header: Option<HeaderValue>,
    peer_address: SocketAddr,
    local_address: SocketAddr,
}

impl Connection {
    /// `workload` is the name the control plane wrote into the peer's certificate.
    fn new(
        peer: Option<SpiffeId>,
        workload: &str,
        peer_address: SocketAddr,
        local_address: SocketAddr,
    ) -> Self {
        let peer_labels = Peer::new(peer.as_ref(), workload);
        Connection {
            peer_header: peer
                .as_ref()
                .and_then(|_| HeaderValue::from_str(&peer_labels.identity).ok()),
            peer_labels,
            peer,
            peer_address,
            local_address,
        }
    }

    /// The verified SPIFFE ID as the policy input names it; `None` for plaintext.
    fn principal(&self) -> Option<&str> {
        self.peer.as_ref().map(|_| &*self.peer_labels.identity)
    }
}

/// Serves the inbound listener until the process stops.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let tls = vigil_identity::mtls_server_config(
        proxy.identity.svid.clone(),
        proxy.identity.trust.clone(),
        &proxy.config.tls_options(&[b"h2", b"http/1.1"]),
    );
    let acceptor = TlsAcceptor::from(tls);
    let handler = proxy.clone();
    proxy
        .serve_traffic(listener, "inbound", move |tcp, peer_address| {
            let proxy = handler.clone();
            let acceptor = acceptor.clone();
            async move { connection(proxy, acceptor, tcp, peer_address).await }
        })
        .await;
}

async fn connection(
    proxy: Arc<Proxy>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer_address: SocketAddr,
) {
    let local_address = match tcp.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    if proxy.config.inbound_mode == InboundMode::Permissive {
        match starts_with_tls(&tcp, proxy.config.header_read_timeout).await {
            Some(true) => {}
            Some(false) => {
                proxy.metrics.plaintext_connections.inc();
                let tcp =
                    crate::transport::stall::WriteStall::new(tcp, proxy.config.write_stall_timeout);
                let conn = Connection::new(None, "", peer_address, local_address);
                return serve_requests(proxy, tcp, conn).await;
            }
            None => return,
        }
    }
    let tcp = crate::transport::stall::WriteStall::new(tcp, proxy.config.write_stall_timeout);
    let handshake =
        tokio::time::timeout(proxy.config.handshake_timeout, acceptor.accept(tcp)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                // Bytes that are not TLS records at all: plaintext HTTP, scanners, noise.
                Some(rustls::Error::InvalidMessage(_)) | None => "not-tls",
                Some(other) => vigil_identity::reason_of(other),
            };
            handshake_failed(&proxy, reason);
            tracing::info!(peer = %peer_address, %reason, error = %e, "inbound TLS handshake refused");
            return;
        }
        Err(_) => {
            handshake_failed(&proxy, "timeout");
            tracing::info!(peer = %peer_address, "inbound TLS handshake timed out");
            return;
        }
    };
    crate::telemetry::metrics::HandshakeDirection::inbound.record(stream.get_ref().1);
    let (peer, workload) = match stream
        .get_ref()
        .1
        .peer_certificates()
        .map(vigil_identity::peer_identity)
    {
        Some(Ok(found)) => found,
        _ => {
            handshake_failed(&proxy, "no-identity");
            return;
        }
    };
    let conn = Connection::new(Some(peer), &workload, peer_address, local_address);
    serve_requests(proxy, stream, conn).await;
}

/// Whether a connection's first byte opens a TLS handshake record; `None` when the
/// client closed or sent nothing within `deadline`.
async fn starts_with_tls(tcp: &TcpStream, deadline: std::time::Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0x16),
        _ => None,
    }
}

/// Serves the requests of one connection, whose peer is known, until it ends.
async fn serve_requests<S>(proxy: Arc<Proxy>, stream: S, conn: Connection)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer_address = conn.peer_address;
    // hyper's protocol sniffing has no deadline: bound it by the header read timeout.
    let stream = match crate::transport::preface::read_preface(
        stream,
        proxy.config.header_read_timeout,
    )
    .await
    {
        Ok(Some(stream)) => stream,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(peer = %peer_address, error = %e, "inbound connection closed: no request");
            return;
        }
    };
    let conn = Arc::new(conn);
    let served = crate::transport::serve::http(&proxy.config, &proxy.drain, stream, {
        let proxy = proxy.clone();
        move |req| request(proxy.clone(), conn.clone(), req)
    })
    .await;
    if let Err(e) = served {
        if crate::transport::serve::malformed_request(e.as_ref()) {
            proxy.metrics.malformed_request(Direction::inbound);
            tracing::info!(peer = %peer_address, error = %e, "inbound connection closed: not a valid HTTP request");
        } else {
            tracing::debug!(peer = %peer_address, error = %e, "inbound connection ended with an error");
        }
    }
}

fn handshake_failed(proxy: &Proxy, reason: &'static str) {
    proxy
        .metrics
        .tls_handshake_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

async fn request(
    proxy: Arc<Proxy>,
    conn: Arc<Connection>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    // One id for the policy input, the logs and the app, as Envoy gives every request.
    req.headers_mut()
        .entry(REQUEST_ID)
        .or_insert_with(new_request_id);
    let grpc = crate::http::error::is_grpc(&req);
    let mut observed = RequestObservation::start(&proxy, Direction::inbound, &mut req);
    if let Some((service, route)) = inbound_service(&proxy, &req) {
        (observed.service, observed.route) = (service, route);
    }
    observed.peer = conn.peer_labels.clone();
    let opaque =
        req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none();
    let result = if opaque {
        // Boxed: a tunnel is rare, and inline its state would be copied with every
        // request's future.
        Box::pin(tunnel(&proxy, &conn, req, &mut observed)).await
    } else {
        http(&proxy, &conn, req, &mut observed).await
    };
    if let Err(ProxyError::PolicyError(_)) = &result {
        observed.policy("error", None);
    }
    let response = result.unwrap_or_else(|e| {
        tracing::debug!(peer = %observed.peer.identity, error = %e, "inbound request failed");
        e.into_response()
    });
    // Metrics and logs keep the proxy's own status; a gRPC caller gets it as gRPC.
    observed.answered(&response);
    if grpc {
        return Box::pin(crate::http::error::for_grpc_caller(response)).await;
    }
    response
}

/// The service a caller addressed (by authority), or this workload when none matches.
/// With the label of the service's traffic route the path matches, as outbound sees it.
/// `None` before the first snapshot. The labels are shared, made once per snapshot.
fn inbound_service<B>(proxy: &Proxy, req: &Request<B>) -> Option<(Arc<str>, Arc<str>)> {
    let mesh = proxy.discovery.mesh.load();
    let mesh = mesh.as_ref()?;
    let host = authority(req).unwrap_or_default();
    Some(match mesh.service_for_host(host) {
        Some(s) => (
            s.label.clone(),
            s.traffic
                .select(&crate::traffic::RequestHead::of(req))
                .shared_label(),
        ),
        None => (
            mesh.workload_label.clone(),
            crate::telemetry::observe::default_route(),
        ),
    })
}

async fn http(
    proxy: &Proxy,
    conn: &Connection,
    mut req: Request<Incoming>,
    observed: &mut RequestObservation<'_>,
) -> Result<Response<Body>, ProxyError> {
    let mesh = proxy
        .discovery
        .mesh
        .load_full()
        .ok_or(ProxyError::NotReady)?;
    crate::http::limits::check_head(&req, &proxy.config.request_limits)?;
    strip_identity(req.headers_mut());
    // HTTP/1 from the client's application stays HTTP/1 to ours; HTTP/2 (gRPC) stays
    // HTTP/2. A peer speaking HTTP/1.1 to this port directly is HTTP/1.1 throughout.
    let app_version = match req.headers_mut().remove(ORIGINAL_PROTOCOL) {
        Some(v) if v == "HTTP/1.0" => Version::HTTP_10,
        Some(_) => Version::HTTP_11,
        None if req.version() == Version::HTTP_2 => Version::HTTP_2,
        None => Version::HTTP_11,
    };
    // An extended CONNECT is an HTTP/1.1 upgrade (WebSocket) from the peer's app: policy
    // sees it as the GET it was, and the app gets that GET with its Upgrade headers.
    let upgrade = req
        .extensions_mut()
        .remove::<hyper::ext::Protocol>()
        .and_then(|p| HeaderValue::from_str(p.as_str()).ok())
        .map(|protocol| {
            *req.method_mut() = Method::GET;
            (protocol, hyper::upgrade::on(&mut req))
        });
    let app_version = if upgrade.is_some() {
        Version::HTTP_11
    } else {
        app_version
    };
    // The authority the request names, as the policy sees it and as the app's `Host` when
    // the request carries none (HTTP/2): one header value, copied at most once.
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    };
    let host_name = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let status = proxy.identity.status();
    let own_id = status.as_ref().map(|s| s.spiffe_id.as_str());
    let peer = conn.principal();
    let (mut parts, incoming) = req.into_parts();
    // Borrowed from the head until the decision is made; the head changes only after.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let request_id = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let max_body = proxy.config.request_limits.max_body_bytes;
    let too_large = |exceeded: &crate::http::limits::Exceeded, e: ProxyError| match max_body {
        Some(limit) if exceeded.happened() => ProxyError::BodyTooLarge { limit },
        _ => e,
    };
    // An upgrade's stream is the tunnel to come, not a body to read.
    let end_stream = incoming.is_end_stream() || upgrade.is_some();
    let (incoming, exceeded) = crate::http::limits::limit_body(incoming, max_body);
    let limit = proxy.authz.request_body_bytes();
    let (buffered, forward) = if limit > 0 && !end_stream {
        let b = buffer_prefix(incoming, limit).await.map_err(|e| {
            too_large(
                &exceeded,
                ProxyError::BadRequest(format!("reading the request body: {e}")),
            )
        })?;
        (Some((b.prefix, b.truncated)), b.body)
    } else {
        (None, incoming)
    };
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let decision = proxy.authz.decide(&AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: request_id,
            method: parts.method.as_str(),
            path,
            host: host_name,
            scheme: if peer.is_some() { "https" } else { "http" },
            protocol: crate::http::protocol_name(app_version),
            headers: &parts.headers,
            body: buffered.as_ref().map(|(bytes, truncated)| BodyInput {
                bytes,
                truncated: *truncated,
                content_type,
            }),
        }),
        source_address: conn.peer_address,
        destination_address: conn.local_address,
        source_principal: peer,
        destination_principal: own_id,
    });
    // What the decision changes in the target (query parameters to set or remove), and
    // what it tells the logs.
    let upstream = vigil_authz::upstream_path_and_query(path, &decision);
    let metadata = decision
        .dynamic_metadata()
        .map(|m| PolicyMetadata(Arc::new(m.clone())));
    let (add, remove, response_add) = match decision {
        Decision::Allow {
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            ..
        } => (
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
        ),
        Decision::Deny {
            status,
            body,
            headers,
            ..
        } => {
            observed.policy("deny", metadata);
            return Ok(denied(status, body, headers));
        }
        Decision::Error { reason } => return Err(ProxyError::PolicyError(reason)),
    };

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    for name in remove {
        headers.remove(name.as_str());
    }
    for (name, value) in add {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    if let Some(v) = &conn.peer_header {
        headers.insert(PEER_IDENTITY, v.clone());
    }
    let port = mesh.workload.app_port;
    if !headers.contains_key(http::header::HOST) {
        // The caller's authority; else, as HTTP/1.1 needs a Host, the app's own address.
        let value = match host {
            Some(caller) if !caller.is_empty() => Some(caller),
            _ => (app_version != Version::HTTP_2).then(|| app_host(port)),
        };
        if let Some(value) = value {
            headers.insert(http::header::HOST, value);
        }
    }
    parts.uri = app_uri(app_version, port, &parts.uri, upstream)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    parts.version = app_version;
    let forward = match &upgrade {
        Some((protocol, _)) => {
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            parts
                .headers
                .insert(http::header::UPGRADE, protocol.clone());
            body::empty()
        }
        None => forward,
    };
    let req = Request::from_parts(parts, forward);
    let unreachable = |reason: crate::http::error::Cause| {
        too_large(&exceeded, ProxyError::AppUnreachable { port, reason })
    };
    let mut response = if app_version == Version::HTTP_2 {
        let response = proxy.app_h2().request(req).await;
        response
            .map(|r| r.map(body::boxed))
            .map_err(|e| unreachable(e.into()))?
    } else {
        proxy
            .app()
            .send(port, req)
            .await
            .map_err(|e| unreachable(e.into()))?
    };
    let switched = match upgrade {
        Some((_, peer)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let app = hyper::upgrade::on(&mut response);
            crate::transport::serve::splice(peer, app, proxy.config.idle_timeout, "inbound");
            true
        }
        _ => false,
    };
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only the proxy says why it answered itself: an app cannot pass its own answers off
    // as a policy denial or a proxy failure in its callers' metrics.
    parts.headers.remove(ERROR_HEADER);
    if switched {
        // The peer proxy turns this back into the app's 101 for its caller.
        parts.status = StatusCode::OK;
    }
    for (name, value) in response_add {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            parts.headers.append(n, v);
        }
    }
    observed.policy("allow", metadata);
    Ok(Response::from_parts(parts, incoming))
}

/// A CONNECT stream: policy on the connection, then bytes both ways to the app port.
async fn tunnel(
    proxy: &Proxy,
    conn: &Connection,
    mut req: Request<Incoming>,
    observed: &mut RequestObservation<'_>,
) -> Result<Response<Body>, ProxyError> {
    let mesh = proxy
        .discovery
        .mesh
        .load_full()
        .ok_or(ProxyError::NotReady)?;
    let target = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let port = req
        .uri()
        .authority()
        .and_then(|a| a.port_u16())
        .filter(|p| mesh.workload.accepts_tunnel_to(*p))
        .ok_or_else(|| ProxyError::TunnelTarget(target.clone()))?;
    // A tunnel carries bytes no request policy sees: only for a verified peer.
    let Some(peer) = conn.principal() else {
        return Err(ProxyError::TunnelTarget(format!(
            "{target} (tunnels need mutual TLS; this connection is plaintext)"
        )));
    };
    let own_id = proxy.identity.status().map(|s| s.spiffe_id.clone());
    let decision = proxy.authz.decide(&AuthzInput {
        kind: InputKind::Tcp,
        source_address: conn.peer_address,
        destination_address: conn.local_address,
        source_principal: Some(peer),
        destination_principal: own_id.as_deref(),
    });
    match decision {
        Decision::Allow { .. } => {}
        Decision::Deny {
            status,
            body,
            headers,
            ..
        } => {
            observed.policy("deny", None);
            return Ok(denied(status, body, headers));
        }
        Decision::Error { reason } => return Err(ProxyError::PolicyError(reason)),
    }
    let mut app =
        TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| ProxyError::AppUnreachable {
                port,
                reason: e.into(),
            })?;
    let _ = app.set_nodelay(true);
    let upgrade = hyper::upgrade::on(&mut req);
    let peer_address = conn.peer_address;
    let idle = proxy.config.idle_timeout;
    let metrics = proxy.metrics.clone();
    let labels = TcpLabels::new(
        Direction::inbound,
        &conn.peer_labels,
        observed.service.clone(),
    );
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                metrics.tcp_opened.get_or_create(&labels).inc();
                let mut upgraded = TokioIo::new(upgraded);
                let tunneled = crate::transport::serve::tunnel(&mut upgraded, &mut app, idle).await;
                // Forward is what the peer sent; backward what the app sent it.
                metrics.tcp_closed(&labels, tunneled.backward, tunneled.forward);
                if let Err(e) = tunneled.result {
                    tracing::debug!(peer = %peer_address, error = %e, "inbound tunnel ended");
                }
            }
            Err(e) => {
                tracing::debug!(peer = %peer_address, error = %e, "inbound tunnel upgrade failed")
            }
        }
    });
    observed.policy("allow", None);
    Ok(Response::new(body::empty()))
}

/// The policy's own answer: its status, body and headers, marked as a denial.
fn denied(status: u16, body: String, headers: Vec<(String, String)>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = local_response(status, "policy-denied", body);
    if !headers.is_empty() {
        response.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            if n != ERROR_HEADER {
                response.headers_mut().append(n, v);
            }
        }
    }
    response
}

/// The target the app gets: for HTTP/1.1 in origin form, reusing the parsed path when the
/// decision left it alone; for HTTP/2 absolute, as the client needs it.
fn app_uri(
    version: Version,
    port: u16,
    original: &Uri,
    upstream: Cow<'_, str>,
) -> Result<Uri, http::uri::InvalidUri> {
    if version == Version::HTTP_2 {
        return Uri::try_from(format!("http://127.0.0.1:{port}{upstream}"));
    }
    let path_and_query = match upstream {
        Cow::Borrowed(_) => original.path_and_query().cloned(),
        Cow::Owned(changed) => Some(http::uri::PathAndQuery::try_from(changed)?),
    };
    Ok(Uri::from(path_and_query.unwrap_or_else(|| {
        http::uri::PathAndQuery::from_static("/")
    })))
}

/// The `Host` the app gets when the request named none: its own address.
fn app_host(port: u16) -> HeaderValue {
    HeaderValue::try_from(format!("127.0.0.1:{port}"))
        .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1"))
}
