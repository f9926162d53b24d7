//! The proxy's one metrics registry (Prometheus text on the metrics port, 15090).
//!
//! Label sets are bounded: directions, mesh identities, services and reasons the proxy
//! itself names; never paths, addresses or anything a client can make up.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use vigil_identity::SpiffeId;

use crate::http::body::{self, Body};

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

/// Who is at the other end of a request or connection, as its metric labels: the
/// verified SPIFFE ID, the namespace in it, and the workload the control plane named in
/// the peer's certificate (inbound) or in discovery (outbound). Made once per inbound
/// connection or outbound endpoint and shared by every request recorded under it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Peer {
    pub identity: Arc<str>,
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
}

static NO_PEER: LazyLock<Peer> = LazyLock::new(Peer::default);

impl Peer {
    /// A peer proven by `id` (none for plaintext or a request that reached no peer).
    pub fn new(id: Option<&SpiffeId>, workload: &str) -> Peer {
        let Some(id) = id else {
            return Peer::none();
        };
        Peer {
            identity: Arc::from(id.to_string()),
            workload: Arc::from(workload),
            namespace: Arc::from(id.namespace().unwrap_or_default()),
        }
    }

    /// No peer: every label empty, shared.
    pub fn none() -> Peer {
        NO_PEER.clone()
    }
}

/// How a request ended, as `outcome` names it: `denied` by policy (this proxy's for
/// inbound, the destination's for outbound), else `failure` for a 5xx, else `success`.
/// The success rate is `success / (success + failure)`: a denial is neither.
pub fn outcome(status: StatusCode, denied: bool) -> &'static str {
    if denied {
        "denied"
    } else if status.is_server_error() {
        "failure"
    } else {
        "success"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub peer_identity: Arc<str>,
    pub peer_workload: Arc<str>,
    pub peer_namespace: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub response_code: u16,
    pub status_class: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub peer_identity: Arc<str>,
    pub peer_workload: Arc<str>,
    pub peer_namespace: Arc<str>,
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer_identity: Arc<str>,
    pub peer_workload: Arc<str>,
    pub peer_namespace: Arc<str>,
    pub service: Arc<str>,
}

impl TcpLabels {
    pub fn new(direction: Direction, peer: &Peer, service: Arc<str>) -> TcpLabels {
        TcpLabels {
            direction,
            peer_identity: peer.identity.clone(),
            peer_workload: peer.workload.clone(),
            peer_namespace: peer.namespace.clone(),
            service,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub outcome: &'static str,
    /// The decision rule.
    pub rule: Arc<str>,
    /// For a denial, the rule its reason names (else the decision rule); empty otherwise.
    pub denied_by: Arc<str>,
}

/// A candidate bundle's decision beside the one in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CandidateLabels {
    /// What the bundle in force decided: allow, deny or error.
    pub in_force: &'static str,
    /// What the candidate decided.
    pub candidate: &'static str,
    /// The rule that explains a disagreement (the candidate's denial, else the denial in
    /// force); empty when they agree.
    pub denied_by: Arc<str>,
}

static NO_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// The empty label value, shared.
pub fn no_label() -> Arc<str> {
    NO_LABEL.clone()
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

/// This proxy's own workload, namespace and identity, put on every series it exports so
/// that series from both ends of an edge join without relabelling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub workload: String,
    pub namespace: String,
    pub identity: String,
}

/// Every metric the proxy exports.
pub struct Metrics {
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
    pub candidate_decisions: Family<CandidateLabels, Counter>,
    pub retries: Family<ServiceLabels, Counter>,
    pub retry_budget_exhausted: Family<ServiceLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    pub breaker_open: Family<EndpointLabels, Gauge>,
    pub certificate_expiry: Gauge,
    pub certificate_renewals: Counter,
    build_info: Family<BuildLabels, Gauge>,
    /// Known once the control plane has issued the proxy's certificate.
    local: ArcSwapOption<Local>,
    /// Tells this registry's series apart in [`RECENT`], which every registry in the
    /// process shares.
    id: u64,
}

/// The request series this thread recorded last ([`Metrics::request`]), at most
/// [`RECENT_SERIES`]. A request's label values are `Arc`s made once per connection,
/// endpoint or snapshot, so a request like a recent one finds its counter and histogram by
/// comparing pointers, where each family's map would hash nine labels (SipHash) twice per
/// request. An entry holds its `Arc`s, so a pointer it compares is never another value's;
/// series are never removed from a family, so a handle kept here stays the series'.
struct Recent {
    metrics: u64,
    direction: Direction,
    peer: Peer,
    service: Arc<str>,
    route: Arc<str>,
    status: StatusCode,
    denied: bool,
    requests: Counter,
    duration: Histogram,
}

const RECENT_SERIES: usize = 8;

thread_local! {
    static RECENT: std::cell::RefCell<Vec<Recent>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which call a finished request was, as its metrics are labelled.
pub struct Call<'a> {
    pub direction: Direction,
    /// Who is at the other end.
    pub peer: &'a Peer,
    pub service: &'a Arc<str>,
    /// The traffic route it matched ([`crate::traffic::Route::label`]).
    pub route: &'a Arc<str>,
}

/// Ids for [`Metrics::id`].
static NEXT_METRICS_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Recent {
    fn is(&self, metrics: u64, call: &Call<'_>, status: StatusCode, denied: bool) -> bool {
        self.metrics == metrics
            && self.direction == call.direction
            && self.status == status
            && self.denied == denied
            && Arc::ptr_eq(&self.service, call.service)
            && Arc::ptr_eq(&self.route, call.route)
            && Arc::ptr_eq(&self.peer.identity, &call.peer.identity)
            && Arc::ptr_eq(&self.peer.workload, &call.peer.workload)
            && Arc::ptr_eq(&self.peer.namespace, &call.peer.namespace)
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        // A gauge rather than an OpenMetrics info metric, so classic Prometheus text
        // parsers (promtool) accept the exposition too.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Arc::new(Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            proxy_errors: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_bytes_sent: Family::default(),
            tcp_bytes_received: Family::default(),
            tls_handshake_failures: Family::default(),
            plaintext_connections: Counter::default(),
            log_lines_dropped: Family::default(),
            policy_decisions: Family::default(),
            candidate_decisions: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            ejections: Family::default(),
            breaker_open: Family::default(),
            certificate_expiry: Gauge::default(),
            certificate_renewals: Counter::default(),
            build_info,
            local: ArcSwapOption::empty(),
            id: NEXT_METRICS_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Names this proxy's workload, namespace and identity on every series from now on
    /// (when its certificate is issued).
    pub fn set_local(&self, local: Local) {
        if self.local.load().as_deref() != Some(&local) {
            self.local.store(Some(Arc::new(local)));
        }
    }

    /// A registry over the families, with the local labels as they are now. Built per
    /// scrape (the families are shared handles), because the local labels are only known
    /// after the proxy's certificate is issued.
    fn registry(&self) -> Registry {
        let local = self.local.load_full().unwrap_or_default();
        let labels = [
            ("local_workload", local.workload.clone()),
            ("local_namespace", local.namespace.clone()),
            ("local_identity", local.identity.clone()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)));
        let mut registry = Registry::with_prefix_and_labels("vigil", labels);
        registry.register(
            "requests",
            "HTTP requests handled, by direction, peer (identity, workload, namespace), service, route, exact response code, status class and outcome (success, failure, denied)",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request received to response headers, as the caller saw it",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        registry.register(
            "proxy_errors",
            "Responses the proxy produced itself, by reason (x-vigil-error)",
            self.proxy_errors.clone(),
        );
        registry.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened, by direction, peer and service",
            self.tcp_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed, by direction, peer and service",
            self.tcp_closed.clone(),
        );
        registry.register_with_unit(
            "tcp_sent",
            "Bytes sent to the peer over opaque TCP",
            Unit::Bytes,
            self.tcp_bytes_sent.clone(),
        );
        registry.register_with_unit(
            "tcp_received",
            "Bytes received from the peer over opaque TCP",
            Unit::Bytes,
            self.tcp_bytes_received.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Inbound TLS handshakes refused, by reason",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed, by direction (inbound, outbound, control_plane), negotiated key-exchange group and cipher suite",
            TLS_HANDSHAKES.clone(),
        );
        registry.register(
            "inbound_plaintext_connections",
            "Plaintext connections served on the inbound port in permissive mode: callers not yet in the mesh",
            self.plaintext_connections.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Decision or access log lines dropped because the log writer fell behind (a slow disk); requests never wait for it",
            self.log_lines_dropped.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions by outcome (allow, deny, error), decision rule and, for denials, the rule that denied (the word before the first ':' of the policy's reason, else the decision rule)",
            self.policy_decisions.clone(),
        );
        registry.register(
            "policy_candidate_decisions",
            "Decisions of the candidate bundle evaluated beside the one in force (never enforced), by what each decided; where they differ, denied_by names the rule that explains it",
            self.candidate_decisions.clone(),
        );
        registry.register(
            "retries",
            "Requests retried, by service",
            self.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was spent",
            self.retry_budget_exhausted.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by the circuit breaker",
            self.ejections.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while an endpoint's circuit breaker is open",
            self.breaker_open.clone(),
        );
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When the workload certificate expires, seconds since the Unix epoch",
            Unit::Seconds,
            self.certificate_expiry.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Certificates renewed",
            self.certificate_renewals.clone(),
        );
        registry.register(
            "build_info",
            "Build information; always 1",
            self.build_info.clone(),
        );
        registry
    }

    /// Records one finished HTTP request. The labels are shared (made once per connection,
    /// endpoint or snapshot), so recording allocates nothing for them, and a request like
    /// a recent one on this thread finds its series without hashing them ([`Recent`]).
    pub fn request(&self, call: &Call<'_>, status: StatusCode, denied: bool, elapsed: Duration) {
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            let found = match recent
                .iter()
                .position(|r| r.is(self.id, call, status, denied))
            {
                Some(at) => at,
                None => {
                    if recent.len() == RECENT_SERIES {
                        recent.remove(0);
                    }
                    recent.push(self.series(call, status, denied));
                    recent.len() - 1
                }
            };
            let series = &recent[found];
            series.requests.inc();
            series.duration.observe(elapsed.as_secs_f64());
        });
    }

    /// A request's series, looked up in (or added to) the families.
    fn series(&self, call: &Call<'_>, status: StatusCode, denied: bool) -> Recent {
        let peer = call.peer;
        let requests = self
            .requests
            .get_or_create(&RequestLabels {
                direction: call.direction,
                peer_identity: peer.identity.clone(),
                peer_workload: peer.workload.clone(),
                peer_namespace: peer.namespace.clone(),
                service: call.service.clone(),
                route: call.route.clone(),
                response_code: status.as_u16(),
                status_class: status_class(status),
                outcome: outcome(status, denied),
            })
            .clone();
        let duration = self
            .request_duration
            .get_or_create(&LatencyLabels {
                direction: call.direction,
                peer_identity: peer.identity.clone(),
                peer_workload: peer.workload.clone(),
                peer_namespace: peer.namespace.clone(),
                service: call.service.clone(),
            })
            .clone();
        Recent {
            metrics: self.id,
            direction: call.direction,
            peer: peer.clone(),
            service: call.service.clone(),
            route: call.route.clone(),
            status,
            denied,
            requests,
            duration,
        }
    }

    /// Records the end of an opaque TCP stream opened under `labels` (counted in
    /// `tcp_opened` when it opened): the bytes `sent` to and `received` from the peer, and
    /// the close. Bytes are counted once, at the end, not per read.
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_bytes_sent.get_or_create(labels).inc_by(sent);
        self.tcp_bytes_received
            .get_or_create(labels)
            .inc_by(received);
        self.tcp_closed.get_or_create(labels).inc();
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
        if prometheus_client::encoding::text::encode(&mut out, &self.registry()).is_err() {
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

/// The answer to a request on the metrics listener that is neither a health check nor an
/// app probe (see [`crate::admin::serve_metrics`]): the exposition at `/metrics`, else 404.
pub fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Body> {
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

    /// Records one inbound request from the workload `peer` (service account `sa`) to
    /// `service` with `status`.
    fn record(m: &Metrics, sa: &str, peer: &str, service: &str, status: StatusCode, denied: bool) {
        let id = SpiffeId::parse(&format!("spiffe://vigil.local/ns/shop/sa/{sa}")).expect("id");
        let peer = Peer::new(Some(&id), peer);
        let call = Call {
            direction: Direction::inbound,
            peer: &peer,
            service: &Arc::from(service),
            route: &Arc::from("default"),
        };
        m.request(&call, status, denied, Duration::from_millis(1));
    }

    /// The value of the `vigil_requests_total` series for `code` in `m`, 0 when absent.
    fn requests_with_code(m: &Metrics, code: u16) -> u64 {
        m.encode()
            .lines()
            .filter(|l| {
                l.starts_with("vigil_requests_total{")
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[test]
    fn recently_recorded_series_count_exactly_per_registry_and_per_label() {
        let (first, second) = (Metrics::new(), Metrics::new());
        let id = SpiffeId::parse("spiffe://vigil.local/ns/shop/sa/web").expect("id");
        let peer = Peer::new(Some(&id), "web");
        let (service, route) = (Arc::from("payments.shop"), Arc::from("default"));
        let call = Call {
            direction: Direction::inbound,
            peer: &peer,
            service: &service,
            route: &route,
        };
        for _ in 0..5 {
            first.request(&call, StatusCode::OK, false, Duration::from_millis(1));
            second.request(&call, StatusCode::OK, false, Duration::from_millis(1));
            first.request(
                &call,
                StatusCode::NOT_FOUND,
                false,
                Duration::from_millis(1),
            );
        }
        // The same values in other allocations are the same series.
        record(&first, "web", "web", "payments.shop", StatusCode::OK, false);
        // More series than the thread remembers, then the first ones again.
        for code in 500..520 {
            let status = StatusCode::from_u16(code).expect("status");
            first.request(&call, status, false, Duration::from_millis(1));
        }
        first.request(&call, StatusCode::OK, false, Duration::from_millis(1));
        assert_eq!(requests_with_code(&first, 200), 7);
        assert_eq!(requests_with_code(&first, 404), 5);
        assert_eq!(requests_with_code(&first, 503), 1);
        assert_eq!(requests_with_code(&second, 200), 5, "each registry its own");
        assert_eq!(requests_with_code(&second, 404), 0);
        let observed: u64 = first
            .encode()
            .lines()
            .filter(|l| l.starts_with("vigil_request_duration_seconds_count{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(observed, 5 + 5 + 1 + 20 + 1, "every request observed once");
    }

    #[test]
    fn classic_text_names_counter_series_and_drops_openmetrics_only_lines() {
        let m = Metrics::new();
        record(&m, "b", "b-1", "svc.a", StatusCode::OK, false);
        let text = classic_text(&m.encode());
        assert!(
            text.contains("# TYPE vigil_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP vigil_requests_total "), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("# TYPE vigil_request_duration_seconds histogram"));
    }

    #[test]
    fn request_series_name_both_ends_the_exact_code_and_the_outcome() {
        let m = Metrics::new();
        record(
            &m,
            "web",
            "web",
            "payments.shop",
            StatusCode::FORBIDDEN,
            true,
        );
        record(
            &m,
            "web",
            "web",
            "payments.shop",
            StatusCode::NOT_FOUND,
            false,
        );
        record(
            &m,
            "web",
            "web",
            "payments.shop",
            StatusCode::BAD_GATEWAY,
            false,
        );
        // No local labels before the certificate names this proxy's workload.
        assert!(!m.encode().contains("local_workload"));
        m.set_local(Local {
            workload: "payments".into(),
            namespace: "shop".into(),
            identity: "spiffe://vigil.local/ns/shop/sa/payments".into(),
        });
        let text = m.encode();
        let series = |code: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("vigil_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .unwrap_or_else(|| panic!("no {code} series:\n{text}"))
                .to_string()
        };
        let denied = series("403");
        for label in [
            "direction=\"inbound\"",
            "peer_identity=\"spiffe://vigil.local/ns/shop/sa/web\"",
            "peer_workload=\"web\"",
            "peer_namespace=\"shop\"",
            "service=\"payments.shop\"",
            "status_class=\"4xx\"",
            "outcome=\"denied\"",
            "local_workload=\"payments\"",
            "local_namespace=\"shop\"",
            "local_identity=\"spiffe://vigil.local/ns/shop/sa/payments\"",
        ] {
            assert!(denied.contains(label), "{label} missing: {denied}");
        }
        assert!(
            series("404").contains("outcome=\"success\""),
            "an app's 4xx is no failure"
        );
        assert!(series("502").contains("outcome=\"failure\""));
        // Every series carries the local labels, the handshake and build ones too.
        assert!(text
            .lines()
            .filter(|l| l.starts_with("vigil_build_info"))
            .all(|l| l.contains("local_workload=\"payments\"")));
    }
}
