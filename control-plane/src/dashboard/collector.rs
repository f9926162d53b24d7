//! What the dashboard knows about each proxy, refreshed every couple of seconds: request
//! counts over a sliding window (from the proxies' `/metrics`, or from Prometheus), a ring
//! of samples for the plots, readiness, certificate and policy version. The service graph
//! is derived from it on demand.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::admin_client::{self, CertStatus};
use crate::model::MeshModel;
use crate::observe_cli::{self, ProxyMetrics, ProxyTarget, RequestCounts, SeriesKey};

/// Request counts over the last window of one proxy, plus the totals since it started.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// How long the window is.
    pub seconds: f64,
    pub requests: BTreeMap<SeriesKey, RequestCounts>,
    /// Totals since the proxy started (direct mode) or over the window (Prometheus).
    pub cumulative: BTreeMap<SeriesKey, RequestCounts>,
    pub retries: BTreeMap<String, f64>,
    pub breakers_open: Vec<(String, String)>,
}

/// One point of a workload's golden-signal plots.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub rps_in: f64,
    pub rps_out: f64,
    /// `None` when there was no traffic to judge.
    pub success_in: Option<f64>,
    pub success_out: Option<f64>,
    pub p50_in_ms: Option<f64>,
    pub p99_in_ms: Option<f64>,
    pub p99_out_ms: Option<f64>,
    pub denied_rps: f64,
    pub retries_rps: f64,
}

/// Everything the dashboard holds about one workload's proxy.
#[derive(Debug, Default)]
pub struct WorkloadView {
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Recent scrapes (direct mode), oldest first.
    scrapes: VecDeque<(Instant, ProxyMetrics)>,
    pub window: Window,
    pub samples: VecDeque<Sample>,
    /// Whether the last poll reached the proxy at all.
    pub reachable: bool,
    pub ready: bool,
    /// `/ready`'s answer, or why it could not be read.
    pub ready_detail: String,
    pub cert: Option<CertStatus>,
    pub cert_error: Option<String>,
    pub policy_version: Option<String>,
    /// The candidate bundle beside the one in force, and how it compares.
    pub candidate: Option<crate::admin_client::CandidateStatus>,
    pub control_plane_connected: Option<bool>,
    pub last_seen: Option<SystemTime>,
}

/// How far back rates look: this many polls.
const WINDOW_POLLS: usize = 5;

impl WorkloadView {
    /// Records a scrape and recomputes the window against the oldest scrape kept.
    pub fn add_scrape(&mut self, at: Instant, metrics: ProxyMetrics) {
        self.scrapes.push_back((at, metrics));
        while self.scrapes.len() > WINDOW_POLLS + 1 {
            self.scrapes.pop_front();
        }
        let Some((newest_at, newest)) = self.scrapes.back() else {
            return;
        };
        let (oldest_at, oldest) = match self.scrapes.front() {
            Some(first) if self.scrapes.len() > 1 => first,
            _ => {
                self.window = Window {
                    cumulative: newest.requests.clone(),
                    ..Window::default()
                };
                return;
            }
        };
        let empty = RequestCounts::default();
        let requests = newest
            .requests
            .iter()
            .map(|(k, now)| {
                (
                    k.clone(),
                    now.since(oldest.requests.get(k).unwrap_or(&empty)),
                )
            })
            .collect();
        self.window = Window {
            seconds: newest_at.duration_since(*oldest_at).as_secs_f64(),
            requests,
            cumulative: newest.requests.clone(),
            retries: newest
                .retries
                .iter()
                .map(|(s, now)| {
                    let then = oldest.retries.get(s).cloned().unwrap_or(0.0);
                    (s.clone(), if *now >= then { now - then } else { *now })
                })
                .collect(),
            breakers_open: newest.breakers_open.clone(),
        };
    }

    /// Forgets the scrapes (the proxy went away; rates start over when it is back).
    pub fn lost(&mut self, why: String) {
        self.scrapes.clear();
        self.window = Window::default();
        self.reachable = false;
        self.ready = false;
        self.ready_detail = why;
    }

    /// Adds a plot point computed from the current window, keeping at most `keep`.
    pub fn sample(&mut self, now: SystemTime, keep: usize) {
        let w = &self.window;
        let secs = w.seconds.max(f64::EPSILON);
        let inbound = sum(w, "inbound");
        let outbound = sum(w, "outbound");
        let t = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let sample = Sample {
            t,
            rps_in: if w.seconds > 0.0 {
                inbound.total / secs
            } else {
                0.0
            },
            rps_out: if w.seconds > 0.0 {
                outbound.total / secs
            } else {
                0.0
            },
            success_in: inbound.success_rate(),
            success_out: outbound.success_rate(),
            p50_in_ms: latency(&inbound, 0.5),
            p99_in_ms: latency(&inbound, 0.99),
            p99_out_ms: latency(&outbound, 0.99),
            denied_rps: if w.seconds > 0.0 {
                inbound.denied / secs
            } else {
                0.0
            },
            retries_rps: if w.seconds > 0.0 {
                w.retries.values().sum::<f64>() / secs
            } else {
                0.0
            },
        };
        self.samples.push_back(sample);
        while self.samples.len() > keep {
            self.samples.pop_front();
        }
    }
}

fn sum(w: &Window, direction: &str) -> RequestCounts {
    let mut total = RequestCounts::default();
    for (k, c) in &w.requests {
        if k.direction == direction {
            total.add(c);
        }
    }
    total
}

/// A latency quantile in ms; `None` without traffic or beyond the last bucket.
pub fn latency(c: &RequestCounts, q: f64) -> Option<f64> {
    let v = observe_cli::quantile(&c.buckets, q);
    (c.total > 0.0 && v > 0.0 && v.is_finite()).then_some(v)
}

/// What one poll of a proxy's admin and metrics ports found.
pub struct Poll {
    pub workload: String,
    pub at: Instant,
    pub metrics: Option<anyhow::Result<ProxyMetrics>>,
    pub ready: anyhow::Result<(u16, String)>,
    pub cert: Option<anyhow::Result<CertStatus>>,
    pub config: Option<anyhow::Result<admin_client::ConfigStatus>>,
}

/// Polls one proxy: readiness always, metrics in direct mode, certificate and config
/// when `slow` (they change rarely).
pub async fn poll(target: &ProxyTarget, direct_metrics: bool, slow: bool) -> Poll {
    let metrics = async {
        if !direct_metrics {
            return None;
        }
        Some(
            async {
                let (status, body) = admin_client::get(target.metrics, "/metrics").await?;
                if status != 200 {
                    anyhow::bail!("{} answered {status} on /metrics", target.metrics);
                }
                observe_cli::parse_exposition(&body)
            }
            .await,
        )
    };
    let cert = async {
        if slow {
            Some(admin_client::certs(target.admin).await)
        } else {
            None
        }
    };
    let config = async {
        if slow {
            Some(admin_client::config(target.admin).await)
        } else {
            None
        }
    };
    let (metrics, ready, cert, config) = tokio::join!(
        metrics,
        admin_client::get(target.admin, "/ready"),
        cert,
        config
    );
    Poll {
        workload: target.workload.clone(),
        at: Instant::now(),
        metrics,
        ready,
        cert,
        config,
    }
}

impl WorkloadView {
    /// Takes in one poll's results.
    pub fn apply(&mut self, poll: Poll) {
        match poll.ready {
            Ok((status, body)) => {
                self.reachable = true;
                self.ready = status == 200;
                self.ready_detail = body.trim().to_string();
                self.last_seen = Some(SystemTime::now());
            }
            Err(e) => {
                self.lost(format!("admin port not answering: {e:#}"));
                return;
            }
        }
        match poll.metrics {
            Some(Ok(m)) => self.add_scrape(poll.at, m),
            Some(Err(e)) => {
                self.scrapes.clear();
                self.window = Window::default();
                self.ready_detail = format!("{} (metrics: {e:#})", self.ready_detail);
            }
            None => {}
        }
        match poll.cert {
            Some(Ok(c)) => {
                self.cert = Some(c);
                self.cert_error = None;
            }
            Some(Err(e)) => self.cert_error = Some(format!("{e:#}")),
            None => {}
        }
        if let Some(Ok(c)) = poll.config {
            self.policy_version = c.policy_version;
            self.candidate = c.policy_candidate;
            self.control_plane_connected = Some(c.control_plane_connected);
        }
    }
}

/// A node of the service graph.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    /// `workload`, `service` (no single workload behind it) or `external` (a caller
    /// without a mesh identity, or an identity no workload has).
    pub kind: &'static str,
    pub namespace: String,
    pub spiffe_id: String,
    pub ready: bool,
    pub reachable: bool,
    pub rps_in: f64,
    pub success_in: Option<f64>,
    pub p99_in_ms: Option<f64>,
    pub denied_rps: f64,
    pub cert_expires_in_seconds: Option<u64>,
}

/// An edge: calls from one node to another over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub service: String,
    pub rps: f64,
    /// Answers that were not 5xx, as the caller saw them.
    pub success_rate: Option<f64>,
    /// Share of requests a policy denied (the destination's, as the caller saw it).
    pub denied_share: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of answered requests that came from a verified peer identity (mutual TLS).
    pub mtls_share: Option<f64>,
    /// Whether every answered request on this edge crossed mutual TLS.
    pub mtls: bool,
    pub retries_rps: f64,
    /// Tries per request the caller's proxy sent over the window, 1 + retries / requests:
    /// the load retries add to the service behind this edge.
    pub retry_amplification: Option<f64>,
    pub breaker_open: bool,
    /// Requests since the proxies started.
    pub requests_total: u64,
    /// The edge since the caller's proxy started (also when it is idle now).
    pub since_start: EdgeSinceStart,
}

/// An edge's figures since the caller's proxy started, as `vigil stat` shows an idle row.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeSinceStart {
    pub requests: u64,
    pub denied: u64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The graph as the dashboard draws it.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Every edge's window summed: the headline figures, by the same functions as each
    /// edge's, so the headline can never contradict the edges beside it.
    pub totals: Totals,
}

/// All hops of the mesh over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub denied_share: Option<f64>,
}

#[derive(Default)]
struct EdgeAcc {
    window: RequestCounts,
    cumulative: RequestCounts,
    /// Answered requests (not 5xx with no peer) with and without a verified peer.
    with_peer: f64,
    without_peer: f64,
    retries: f64,
    breaker_open: bool,
    seconds: f64,
}

/// Builds the graph from every workload's window and the mesh model.
pub fn graph(model: &MeshModel, views: &BTreeMap<String, WorkloadView>) -> Graph {
    let workload_of_id = |id: &str| -> Option<&str> {
        let mut matches = model
            .workloads
            .iter()
            .filter(|w| w.spiffe_id.to_string() == id);
        let first = matches.next()?;
        Some(first.name.as_str())
    };
    let service_target = |service: &str| -> String {
        let found = model
            .services
            .iter()
            .find(|s| format!("{}.{}", s.name, s.namespace) == service || s.name == service);
        match found {
            Some(s) if s.endpoints.len() == 1 => s.endpoints[0].workload.clone(),
            Some(s) => format!("svc:{}.{}", s.name, s.namespace),
            None if service.is_empty() => "unknown".to_string(),
            None => format!("svc:{service}"),
        }
    };
    let mut edges: BTreeMap<(String, String, String), EdgeAcc> = BTreeMap::new();
    let mut externals: BTreeMap<String, String> = BTreeMap::new();
    for (name, view) in views {
        let w = &view.window;
        let keys: Vec<&SeriesKey> = w.cumulative.keys().collect();
        for key in keys {
            let (source, target) = match key.direction.as_str() {
                "outbound" => {
                    let target = match workload_of_id(&key.peer_identity) {
                        Some(t) => t.to_string(),
                        None => service_target(&key.service),
                    };
                    (name.clone(), target)
                }
                "inbound" => {
                    // Callers with a workload identity are counted by their own proxy.
                    if workload_of_id(&key.peer_identity).is_some() {
                        continue;
                    }
                    let id = if key.peer_identity.is_empty() {
                        "unauthenticated".to_string()
                    } else {
                        key.peer_identity.clone()
                    };
                    externals.insert(format!("ext:{id}"), key.peer_identity.clone());
                    (format!("ext:{id}"), name.clone())
                }
                _ => continue,
            };
            let acc = edges
                .entry((source, target, key.service.clone()))
                .or_default();
            acc.seconds = acc.seconds.max(w.seconds);
            if let Some(c) = w.requests.get(key) {
                acc.window.add(c);
            }
            if let Some(c) = w.cumulative.get(key) {
                acc.cumulative.add(c);
                if key.peer_identity.is_empty() {
                    // A 5xx without a peer is the proxy's own failure to reach one, not
                    // a plaintext exchange.
                    acc.without_peer += c.total - c.failures;
                } else {
                    acc.with_peer += c.total;
                }
            }
            if key.direction == "outbound" {
                acc.retries = w.retries.get(&key.service).cloned().unwrap_or(0.0);
                acc.breaker_open = w.breakers_open.iter().any(|(s, _)| s == &key.service);
            }
        }
    }

    let mut nodes: Vec<Node> = model
        .workloads
        .iter()
        .map(|wl| {
            let view = views.get(&wl.name);
            let (rps_in, success_in, p99_in_ms, denied_rps) = view
                .and_then(|v| v.samples.back())
                .map(|s| (s.rps_in, s.success_in, s.p99_in_ms, s.denied_rps))
                .unwrap_or((0.0, None, None, 0.0));
            Node {
                id: wl.name.clone(),
                kind: "workload",
                namespace: wl.namespace.clone(),
                spiffe_id: wl.spiffe_id.to_string(),
                ready: view.is_some_and(|v| v.ready),
                reachable: view.is_some_and(|v| v.reachable),
                rps_in,
                success_in,
                p99_in_ms,
                denied_rps,
                cert_expires_in_seconds: view
                    .and_then(|v| v.cert.as_ref())
                    .map(|c| c.not_after.saturating_sub(unix_now())),
            }
        })
        .collect();
    let mut extra = |id: &str, kind: &'static str, spiffe_id: String| {
        if !nodes.iter().any(|n| n.id == id) {
            nodes.push(Node {
                id: id.to_string(),
                kind,
                namespace: String::new(),
                spiffe_id,
                ready: true,
                reachable: true,
                rps_in: 0.0,
                success_in: None,
                p99_in_ms: None,
                denied_rps: 0.0,
                cert_expires_in_seconds: None,
            });
        }
    };
    for (id, spiffe) in &externals {
        extra(id, "external", spiffe.clone());
    }
    for (_, target, _) in edges.keys() {
        if target.starts_with("svc:") || target == "unknown" {
            extra(target, "service", String::new());
        }
    }

    let mut all = RequestCounts::default();
    let mut rps = 0.0;
    for acc in edges.values() {
        all.add(&acc.window);
        if acc.seconds > 0.0 {
            rps += acc.window.total / acc.seconds;
        }
    }
    let totals = Totals {
        rps,
        success_rate: all.success_rate(),
        denied_share: all.denied_share(),
    };
    let edges = edges
        .into_iter()
        .map(|((source, target, service), acc)| {
            let answered = acc.with_peer + acc.without_peer;
            let secs = acc.seconds;
            Edge {
                source,
                target,
                service,
                rps: if secs > 0.0 {
                    acc.window.total / secs
                } else {
                    0.0
                },
                success_rate: acc.window.success_rate(),
                denied_share: acc.window.denied_share(),
                p50_ms: latency(&acc.window, 0.5),
                p99_ms: latency(&acc.window, 0.99),
                mtls_share: (answered > 0.0).then(|| acc.with_peer / answered),
                mtls: answered > 0.0 && acc.without_peer == 0.0,
                retries_rps: if secs > 0.0 { acc.retries / secs } else { 0.0 },
                retry_amplification: observe_cli::tries_per_request(acc.window.total, acc.retries),
                breaker_open: acc.breaker_open,
                requests_total: acc.cumulative.total as u64,
                since_start: EdgeSinceStart {
                    requests: acc.cumulative.total.round() as u64,
                    denied: acc.cumulative.denied.round() as u64,
                    success_rate: acc.cumulative.success_rate(),
                    p50_ms: latency(&acc.cumulative, 0.5),
                    p99_ms: latency(&acc.cumulative, 0.99),
                },
            }
        })
        .collect();
    Graph {
        nodes,
        edges,
        totals,
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long to wait between polls.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshFile;

    const MESH: &str = r#"
trust_domain: vigil.local
workloads:
  - { name: web, namespace: shop, join_token: 580e03ca12da94db77610eb82123ebf4, app_port: 1 }
  - { name: orders, namespace: shop, join_token: 16221b9e1a926f6fdc29f532ef0f830f, app_port: 2 }
services:
  - { name: orders, namespace: shop, endpoints: [orders] }
"#;

    fn exposition(ok: u64, failed: u64, denied: u64, peer: &str) -> ProxyMetrics {
        let text = format!(
            "vigil_requests_total{{direction=\"outbound\",peer_identity=\"{peer}\",service=\"orders.shop\",route=\"default\",response_code=\"200\",status_class=\"2xx\",outcome=\"success\"}} {ok}\n\
             vigil_requests_total{{direction=\"outbound\",peer_identity=\"{peer}\",service=\"orders.shop\",route=\"default\",response_code=\"503\",status_class=\"5xx\",outcome=\"failure\"}} {failed}\n\
             vigil_requests_total{{direction=\"outbound\",peer_identity=\"{peer}\",service=\"orders.shop\",route=\"default\",response_code=\"403\",status_class=\"4xx\",outcome=\"denied\"}} {denied}\n\
             vigil_request_duration_seconds_bucket{{direction=\"outbound\",peer_identity=\"{peer}\",service=\"orders.shop\",le=\"0.01\"}} {}\n\
             vigil_request_duration_seconds_bucket{{direction=\"outbound\",peer_identity=\"{peer}\",service=\"orders.shop\",le=\"+Inf\"}} {}\n",
            ok + failed + denied,
            ok + failed + denied
        );
        observe_cli::parse_exposition(&text).expect("parses")
    }

    #[test]
    fn edges_carry_rates_over_the_window_and_the_mtls_lock() {
        let mesh = MeshFile::parse(MESH).expect("mesh");
        let model = mesh.model().expect("model");
        let orders = "spiffe://vigil.local/ns/shop/sa/orders";
        let mut web = WorkloadView::default();
        let t0 = Instant::now();
        web.add_scrape(t0, exposition(10, 0, 0, orders));
        web.add_scrape(t0 + Duration::from_secs(2), exposition(26, 2, 2, orders));
        web.sample(SystemTime::now(), 10);
        let views = BTreeMap::from([("web".to_string(), web)]);
        let g = graph(&model, &views);
        let edge = g.edges.iter().find(|e| e.source == "web").expect("edge");
        assert_eq!(edge.target, "orders");
        assert_eq!(edge.rps, 10.0, "20 requests in 2 s");
        // 2 of 20 denied, 2 of the other 18 failed.
        assert_eq!(edge.success_rate, Some(1.0 - 2.0 / 18.0));
        assert_eq!(edge.denied_share, Some(0.1));
        assert!(edge.mtls);
        // All 20 under 10 ms: interpolated as PromQL's histogram_quantile does, 9.9 ms.
        let p99 = edge.p99_ms.expect("a p99");
        assert!((p99 - 9.9).abs() < 1e-9, "{p99}");
        assert_eq!(g.nodes.len(), 2);
    }

    #[test]
    fn an_edge_shows_the_tries_per_request_its_retries_add() {
        let mesh = MeshFile::parse(MESH).expect("mesh");
        let model = mesh.model().expect("model");
        let orders = "spiffe://vigil.local/ns/shop/sa/orders";
        let with_retries = |ok, retries| {
            let mut m = exposition(ok, 0, 0, orders);
            m.retries.insert("orders.shop".to_string(), retries);
            m
        };
        let mut web = WorkloadView::default();
        let t0 = Instant::now();
        web.add_scrape(t0, with_retries(10, 1.0));
        web.add_scrape(t0 + Duration::from_secs(2), with_retries(30, 5.0));
        let views = BTreeMap::from([("web".to_string(), web)]);
        let g = graph(&model, &views);
        let edge = g.edges.iter().find(|e| e.source == "web").expect("edge");
        assert_eq!(edge.retries_rps, 2.0);
        assert_eq!(
            edge.retry_amplification,
            Some(1.2),
            "4 retries for 20 requests"
        );
    }

    #[test]
    fn answers_without_a_verified_peer_break_the_lock() {
        let mesh = MeshFile::parse(MESH).expect("mesh");
        let model = mesh.model().expect("model");
        let mut web = WorkloadView::default();
        let t0 = Instant::now();
        web.add_scrape(t0, exposition(0, 0, 0, ""));
        web.add_scrape(t0 + Duration::from_secs(2), exposition(4, 0, 0, ""));
        let views = BTreeMap::from([("web".to_string(), web)]);
        let g = graph(&model, &views);
        let edge = g.edges.iter().find(|e| e.source == "web").expect("edge");
        assert_eq!(edge.target, "orders", "the service's only endpoint");
        assert!(!edge.mtls);
        assert_eq!(edge.mtls_share, Some(0.0));
    }
}
