//! The proxy's one metrics registry (Prometheus text on the metrics port, 15090).
//!
//! Label sets are bounded: directions, mesh identities, services and reasons the proxy
//! itself names; never paths, addresses or anything a client can make up.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::http::body::{self, Body};
use crate::transport::listener::{accept_loop, ConnectionLimits};

/// Which way traffic flows relative to this workload.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    #[allow(non_camel_case_types)]
    inbound,
    #[allow(non_camel_case_types)]
    outbound,
}

/// Which connection a TLS handshake opened: a peer proxy calling in, this proxy calling a
/// peer, or this proxy calling the control plane.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HandshakeDirection {
    #[allow(non_camel_case_types)]
    inbound,
    #[allow(non_camel_case_types)]
    outbound,
    #[allow(non_camel_case_types)]
    control_plane,
}

/// What a completed handshake negotiated. Both names come from rustls's fixed tables (the
/// provider offers two groups and three suites), so the label set stays small.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: HandshakeDirection,
    pub group: &'static str,
    pub cipher_suite: &'static str,
}

/// Handshakes completed by this process. Process-wide rather than a field of [`Metrics`]
/// because handshakes happen in the transport and control-plane client, which hold no
/// `Metrics`; every registry built by [`Metrics::new`] exports this one family.
static TLS_HANDSHAKES: LazyLock<Family<HandshakeLabels, Counter>> = LazyLock::new(Family::default);

impl HandshakeDirection {
    /// Counts one completed TLS handshake by the key-exchange group and cipher suite it
    /// negotiated, so operators can see how much traffic is post-quantum (X25519MLKEM768)
    /// and which peers still fall back to classical X25519.
    pub fn record(self, connection: &rustls::CommonState) {
        let group = connection
            .negotiated_key_exchange_group()
            .and_then(|kx| kx.name().as_str())
            .unwrap_or("unknown");
        let cipher_suite = connection
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        TLS_HANDSHAKES
            .get_or_create(&HandshakeLabels {
                direction: self,
                group,
                cipher_suite,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub peer_identity: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub peer_identity: Arc<str>,
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer_identity: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub outcome: &'static str,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    pub log: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub proxy_errors: Family<ErrorLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_bytes_sent: Family<TcpLabels, Counter>,
    pub tcp_bytes_received: Family<TcpLabels, Counter>,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub plaintext_connections: Counter,
    log_lines_dropped: Family<LogLabels, Counter>,
    pub policy_decisions: Family<PolicyLabels, Counter>,
    pub retries: Family<ServiceLabels, Counter>,
    pub retry_budget_exhausted: Family<ServiceLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    pub breaker_open: Family<EndpointLabels, Gauge>,
    pub certificate_expiry: Gauge,
    pub certificate_renewals: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("vigil");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by direction, peer identity, service, route and status class",
            requests.clone(),
        );
        let request_duration =
            Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "request_duration",
            "Time from request received to response headers, as the caller saw it",
            Unit::Seconds,
            request_duration.clone(),
        );
        let proxy_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Responses the proxy produced itself, by reason (x-vigil-error)",
            proxy_errors.clone(),
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            tcp_opened.clone(),
        );
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            tcp_closed.clone(),
        );
        let tcp_bytes_sent = Family::<TcpLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_sent",
            "Bytes sent to the peer over opaque TCP",
            Unit::Bytes,
            tcp_bytes_sent.clone(),
        );
        let tcp_bytes_received = Family::<TcpLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_received",
            "Bytes received from the peer over opaque TCP",
            Unit::Bytes,
            tcp_bytes_received.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Inbound TLS handshakes refused, by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed, by direction (inbound, outbound, control_plane), negotiated key-exchange group and cipher suite",
            TLS_HANDSHAKES.clone(),
        );
        let plaintext_connections = Counter::default();
        registry.register(
            "inbound_plaintext_connections",
            "Plaintext connections served on the inbound port in permissive mode: callers not yet in the mesh",
            plaintext_connections.clone(),
        );
        let log_lines_dropped = Family::<LogLabels, Counter>::default();
        registry.register(
            "log_lines_dropped",
            "Decision or access log lines dropped because the log writer fell behind (a slow disk); requests never wait for it",
            log_lines_dropped.clone(),
        );
        let policy_decisions = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions by outcome (allow, deny, error) and decision rule",
            policy_decisions.clone(),
        );
        let retries = Family::<ServiceLabels, Counter>::default();
        registry.register("retries", "Requests retried, by service", retries.clone());
        let retry_budget_exhausted = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let ejections = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by the circuit breaker",
            ejections.clone(),
        );
        let breaker_open = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_open",
            "1 while an endpoint's circuit breaker is open",
            breaker_open.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When the workload certificate expires, seconds since the Unix epoch",
            Unit::Seconds,
            certificate_expiry.clone(),
        );
        let certificate_renewals = Counter::default();
        registry.register(
            "certificate_renewals",
            "Certificates renewed",
            certificate_renewals.clone(),
        );
        // A gauge rather than an OpenMetrics info metric, so classic Prometheus text
        // parsers (promtool) accept the exposition too.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information; always 1", build_info);
        Arc::new(Metrics {
            registry,
            requests,
            request_duration,
            proxy_errors,
            tcp_opened,
            tcp_closed,
            tcp_bytes_sent,
            tcp_bytes_received,
            tls_handshake_failures,
            plaintext_connections,
            log_lines_dropped,
            policy_decisions,
            retries,
            retry_budget_exhausted,
            ejections,
            breaker_open,
            certificate_expiry,
            certificate_renewals,
        })
    }

    /// Records one finished HTTP request. The labels are shared (made once per connection
    /// or snapshot), so recording allocates nothing for them.
    pub fn request(
        &self,
        direction: Direction,
        peer_identity: &Arc<str>,
        service: &Arc<str>,
        route: &Arc<str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                peer_identity: peer_identity.clone(),
                service: service.clone(),
                route: route.clone(),
                status_class: status_class(status),
            })
            .inc();
        self.request_duration
            .get_or_create(&LatencyLabels {
                direction,
                peer_identity: peer_identity.clone(),
                service: service.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The counter of lines dropped from `log` (`decision`, `access`).
    pub fn log_lines_dropped(&self, log: &'static str) -> Counter {
        self.log_lines_dropped
            .get_or_create(&LogLabels { log })
            .clone()
    }

    /// Counts a connection the proxy closed because its bytes were no valid HTTP request
    /// (hyper answered 400, 414 or 431 before any routing or policy).
    pub fn malformed_request(&self, direction: Direction) {
        self.proxy_errors
            .get_or_create(&ErrorLabels {
                direction,
                reason: "malformed-request",
            })
            .inc();
    }

    /// The exposition, in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Serves `/metrics` on the metrics listener, with the proxy's `/ready` and `/live` and the
/// app's rewritten kubelet probes (`/app-health/...`, see [`crate::admin::probes`]).
pub async fn serve(listener: TcpListener, proxy: Arc<crate::Proxy>) {
    accept_loop(
        listener,
        "metrics",
        None,
        ConnectionLimits::default(),
        move |tcp, _| {
            let proxy = proxy.clone();
            async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    async move {
                        let path = req.uri().path();
                        let response = if path.starts_with(crate::admin::probes::PATH_PREFIX) {
                            proxy.config.app_probes.answer(path, req.headers()).await
                        } else {
                            crate::admin::health(&proxy, path)
                                .unwrap_or_else(|| respond(&proxy.metrics, &req))
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        },
    )
    .await;
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(body::full(
            "only /metrics, /ready, /live and /app-health/<container>/<probe> are served here\n",
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let wants_openmetrics = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if wants_openmetrics {
        (
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            classic_text(&metrics.encode()),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(body::full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The classic Prometheus text format (0.0.4) from prometheus-client's OpenMetrics, for
/// scrapers and tools that do not negotiate OpenMetrics (promtool, older agents):
/// counters' HELP/TYPE name their `_total` series, and `# UNIT`/`# EOF` go. Written by
/// hand because prometheus-client only encodes OpenMetrics.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_series_and_drops_openmetrics_only_lines() {
        let m = Metrics::new();
        m.request(
            Direction::inbound,
            &Arc::from("spiffe://vigil.local/ns/a/sa/b"),
            &Arc::from("svc.a"),
            &Arc::from("/api"),
            StatusCode::OK,
            Duration::from_millis(3),
        );
        let text = classic_text(&m.encode());
        assert!(
            text.contains("# TYPE vigil_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP vigil_requests_total "), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("# TYPE vigil_request_duration_seconds histogram"));
    }
}
