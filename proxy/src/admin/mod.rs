//! The admin endpoint (127.0.0.1:15000): `/live`, `/ready`, `/certs`, `/config`, `/tap`,
//! `/log-level` (metrics, and `/live` and `/ready` for the kubelet, are on the metrics
//! port).
//! It never serves a private key.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::ConnectionLimits;
use crate::http::body::{self, Body};
use crate::probes;
use crate::transport::listener::accept_loop;
use crate::Proxy;

/// Serves the admin listener.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    serve_http1(listener, "admin", proxy, |proxy, req| async move {
        route(&proxy, req)
    })
    .await;
}

/// Serves `/metrics` on the metrics listener, with the proxy's `/ready` and `/live` and the
/// app's rewritten kubelet probes (`/app-health/...`, see [`probes`]).
pub async fn serve_metrics(listener: TcpListener, proxy: Arc<Proxy>) {
    serve_http1(listener, "metrics", proxy, |proxy, req| async move {
        let path = req.uri().path();
        if path.starts_with(probes::PATH_PREFIX) {
            proxy.config.app_probes.answer(path, req.headers()).await
        } else {
            health(&proxy, path)
                .unwrap_or_else(|| crate::telemetry::metrics::respond(&proxy.metrics, &req))
        }
    })
    .await;
}

/// Serves `listener` (`what` names it in logs) over plain HTTP/1, each request answered by
/// `answer`: the local ports, which carry no mesh traffic.
async fn serve_http1<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    proxy: Arc<Proxy>,
    answer: F,
) where
    F: Fn(Arc<Proxy>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    accept_loop(
        listener,
        what,
        None,
        ConnectionLimits::DEFAULT,
        move |tcp, _| {
            let (proxy, answer) = (proxy.clone(), answer.clone());
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = answer(proxy.clone(), req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        },
    )
    .await;
}

/// `/live` and `/ready`, which the metrics port serves too so the kubelet can probe them.
pub fn health(proxy: &Proxy, path: &str) -> Option<Response<Body>> {
    match path {
        "/live" => Some(text(StatusCode::OK, "live\n")),
        "/ready" => {
            let problems = proxy.readiness_problems();
            Some(if problems.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}\n", problems.join("; ")),
                )
            })
        }
        _ => None,
    }
}

fn route(proxy: &Proxy, req: Request<Incoming>) -> Response<Body> {
    if let Some(response) = health(proxy, req.uri().path()) {
        return response;
    }
    // A web page can make a browser on this host call 127.0.0.1 under its own name (DNS
    // rebinding) and read the tap or shut the proxy down: answer loopback names only.
    if let Some(host) = req.headers().get(http::header::HOST) {
        if !host.to_str().is_ok_and(loopback_host) {
            return text(
                StatusCode::FORBIDDEN,
                "the admin port answers requests addressed to a loopback name only (127.0.0.1, [::1], localhost)\n",
            );
        }
    }
    match req.uri().path() {
        "/shutdown" if req.method() == http::Method::POST => {
            proxy.drain.start();
            text(
                StatusCode::ACCEPTED,
                "draining: not ready, no new connections, in-flight requests finishing\n",
            )
        }
        "/tap" => match crate::telemetry::tap::TapFilter::from_query(req.uri().query().unwrap_or("")) {
            Ok(filter) => {
                let mut r = Response::new(crate::telemetry::tap::stream(proxy.observer.subscribe(), filter));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-ndjson"),
                );
                r
            }
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        },
        "/log-level" => {
            let query = req.uri().query().unwrap_or("");
            let wanted = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "level")
                .map(|(_, v)| v.into_owned());
            match (req.method(), wanted) {
                (&http::Method::POST, Some(level)) => match crate::telemetry::logging::set_level(&level) {
                    Ok(()) => text(StatusCode::OK, &format!("log level: {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
                },
                (&http::Method::POST, None) => text(
                    StatusCode::BAD_REQUEST,
                    "give the level as a query: POST /log-level?level=debug\n",
                ),
                _ => text(StatusCode::OK, &format!("{}\n", crate::telemetry::logging::level())),
            }
        }
        "/certs" => match proxy.identity.status() {
            Some(status) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                json_response(json!({
                    "spiffe_id": status.spiffe_id,
                    "workload": status.workload,
                    "namespace": status.namespace,
                    "serial": status.serial,
                    "issuer": status.issuer,
                    "not_before": status.not_before,
                    "not_after": status.not_after,
                    "expires_in_seconds": status.not_after.saturating_sub(now),
                    "renew_at": status.renew_at,
                    "renewals": proxy.identity.renewals.load(std::sync::atomic::Ordering::Relaxed),
                    "renewal_failures": proxy.identity.renewal_failures.load(std::sync::atomic::Ordering::Relaxed),
                    "last_renewal_error": proxy.identity.last_error().map(|e| e.to_string()),
                    "chain_pem": status.chain_pem,
                    "trust_bundle_pem": proxy.identity.trust.bundle().to_pem(),
                    "root": status.root,
                    "signer": status.signer,
                    "trust_roots": proxy.identity.trust.bundle().roots().iter().map(vigil_identity::root_name).collect::<Vec<_>>(),
                }))
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n"),
        },
        "/config" => {
            let mesh = proxy.discovery.mesh.load_full();
            json_response(json!({
                "snapshot": mesh.as_deref(),
                "control_plane_connected": proxy.discovery.connected.load(std::sync::atomic::Ordering::Relaxed),
                "policy_version": proxy.authz.version(),
                "policy_name": proxy.authz.policy_name(),
                "policy_last_refused": proxy.authz.last_refused.load_full().map(|e| e.to_string()),
                "policy_candidate": proxy.authz.candidate_report(),
                "policy_engine": proxy.authz.engine().map(|(name, reason)| json!({"name": name, "reason": reason})),
                "listeners": {
                    "inbound": proxy.config.inbound.to_string(),
                    "outbound": proxy.config.outbound.to_string(),
                    "admin": proxy.config.admin.to_string(),
                    "upstreams": proxy.config.upstreams.iter().map(|(a, s)| json!({"address": a.to_string(), "service": s})).collect::<Vec<_>>(),
                },
                "control_plane": {
                    "identity": proxy.config.identity_addresses.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "discovery": proxy.config.discovery_addresses.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "discovery_replica": proxy.discovery.replica().map(|a| a.to_string()),
                },
            }))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /ready, /live, /certs, /config, /tap, /log-level or POST /shutdown\n",
        ),
    }
}

/// Whether a Host header names this machine's loopback: `localhost`, `127.0.0.0/8` or
/// `[::1]`, with or without a port.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(body::full(body.to_string()));
    *r.status_mut() = status;
    r
}

fn json_response(value: serde_json::Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(body::full(bytes));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_are_admin_hosts() {
        for host in [
            "127.0.0.1:15000",
            "127.0.0.1",
            "localhost:15000",
            "LOCALHOST",
            "[::1]:15000",
            "127.8.9.10:1",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:15000",
            "10.0.0.1:15000",
            "[2001:db8::1]:15000",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
