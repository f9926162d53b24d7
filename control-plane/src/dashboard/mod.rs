//! The SRE dashboard, served by the control plane on `control_plane.dashboard`
//! (127.0.0.1:15080 by default): a live service graph, golden signals per workload,
//! recent policy denials, a live tap and every workload's certificate — and the JSON API
//! under `/api/` the page is drawn from (see `docs/dashboard.md`).
//!
//! No Prometheus is needed: in local mode the mesh file names every proxy's admin and
//! metrics address, and in cluster mode the watched pods do (their IP, the metrics port
//! 15090); the dashboard reads them directly every two seconds. With `--prometheus URL`
//! the request metrics come from PromQL instead.
//!
//! The page is three embedded files and a little JavaScript that polls the API; no build
//! step. It has no login: it answers only requests addressed to loopback or to a host
//! name the operator configured, or that carry the configured bearer token ([`access`]).

pub mod access;
mod collector;
mod denials;
mod live_tap;
pub mod prometheus;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::discovery_service::{ConnectedProxies, MeshState};
use crate::mesh::MeshFile;
use crate::observe_cli::{self, ProxyTarget};
pub use access::DashboardAccess;
use collector::{unix_now, WorkloadView, POLL_INTERVAL};
use denials::Denials;

/// How the dashboard gets its numbers and how much it remembers.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Read request metrics from this Prometheus (`http://HOST:PORT`) instead of the
    /// proxies' metrics ports.
    pub prometheus: Option<String>,
    /// How many recent denials the policy view keeps.
    pub denials_kept: usize,
    /// How many samples each workload's plots keep (one per poll, every 2 s).
    pub samples_kept: usize,
    /// Which requests are answered.
    pub access: DashboardAccess,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            prometheus: None,
            denials_kept: 200,
            samples_kept: 150,
            access: DashboardAccess::default(),
        }
    }
}

/// What the control plane shares with the dashboard.
pub struct Sources {
    /// The mesh file in force: which proxies there are and where their ports are.
    pub mesh: Arc<ArcSwap<MeshFile>>,
    /// The model and policy bundle discovery serves.
    pub state: watch::Receiver<Arc<MeshState>>,
    /// Proxies watching discovery right now.
    pub proxies: Arc<ConnectedProxies>,
    /// The control plane's data directory, where `vigil up` puts decision logs.
    pub data_dir: PathBuf,
    /// The control plane's own metrics, served at `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The CA: where it is kept, its rotation phase and trusted roots.
    pub ca: Arc<ArcSwap<crate::ca_rotation::CaStatus>>,
    /// Cluster mode: the proxies are the model's workloads (pods), read on their metrics
    /// port (pod IP, 15090), which also answers `/ready`; the mesh file names none.
    pub proxies_from_model: bool,
}

struct Dashboard {
    opts: DashboardOptions,
    sources: Sources,
    view: Mutex<View>,
    /// When the API was last asked for anything (seconds since the Unix epoch).
    last_viewed: AtomicU64,
}

/// Taps are held open, and proxies polled every round, this long after the dashboard was
/// last looked at.
const TAP_WHILE_VIEWED: u64 = 300;

/// While nobody looks, proxies are polled only one round in this many.
const IDLE_POLL_EVERY: u64 = 5;

/// Proxies polled at once: a mesh of thousands is polled in waves, not with thousands of
/// connections at the same moment.
const CONCURRENT_POLLS: usize = 64;

/// The most proxies polled per second while the dashboard is looked at, and while it is
/// not: in a mesh of thousands a round takes longer than [`POLL_INTERVAL`], so that the
/// dashboard never costs the control plane more than a slice of a core (at 10,000 proxies,
/// a round every 20 s while viewed and every 100 s while not).
const VIEWED_POLLS_PER_SECOND: f64 = 500.0;
const IDLE_POLLS_PER_SECOND: f64 = 100.0;

/// How long one round of polls over `proxies` proxies takes, start to start.
fn round_period(viewed: bool, proxies: usize) -> Duration {
    let (base, rate) = if viewed {
        (POLL_INTERVAL, VIEWED_POLLS_PER_SECOND)
    } else {
        (
            POLL_INTERVAL * IDLE_POLL_EVERY as u32,
            IDLE_POLLS_PER_SECOND,
        )
    };
    base.max(Duration::from_secs_f64(proxies as f64 / rate))
}

struct View {
    workloads: BTreeMap<String, WorkloadView>,
    denials: Denials,
    updated: Option<SystemTime>,
    /// Why the metrics source could not be read (Prometheus down, ...).
    metrics_error: Option<String>,
}

/// Binds `addr` and serves the dashboard until the process ends. A busy port is reported
/// and the control plane carries on without a dashboard.
pub async fn run(addr: SocketAddr, sources: Sources, opts: DashboardOptions) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(address = %addr, error = %e, "dashboard not served: set control_plane.dashboard in the mesh file to a free address");
            return std::future::pending().await;
        }
    };
    tracing::info!("dashboard on http://{addr}/");
    let keep = opts.denials_kept;
    let dashboard = Arc::new(Dashboard {
        opts,
        sources,
        view: Mutex::new(View {
            workloads: BTreeMap::new(),
            denials: Denials::new(keep),
            updated: None,
            metrics_error: None,
        }),
        last_viewed: AtomicU64::new(0),
    });
    tokio::join!(
        dashboard.clone().collect(),
        dashboard.clone().collect_denials(),
        serve(listener, dashboard),
    );
}

impl Dashboard {
    fn view(&self) -> MutexGuard<'_, View> {
        match self.view.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn targets(&self) -> Vec<ProxyTarget> {
        if self.sources.proxies_from_model {
            let state = self.sources.state.borrow().clone();
            return state
                .model
                .workloads
                .iter()
                .map(|w| {
                    let metrics =
                        SocketAddr::new(w.inbound_address.ip(), crate::inject::METRICS_PORT);
                    ProxyTarget {
                        workload: w.name.clone(),
                        admin: metrics,
                        metrics,
                        spiffe_id: w.spiffe_id.to_string(),
                    }
                })
                .collect();
        }
        observe_cli::targets(&self.sources.mesh.load(), None).unwrap_or_default()
    }

    fn viewed(&self) -> bool {
        unix_now().saturating_sub(self.last_viewed.load(Ordering::Relaxed)) < TAP_WHILE_VIEWED
    }

    /// Polls every proxy every two seconds while the dashboard is looked at, every ten
    /// otherwise, at most [`CONCURRENT_POLLS`] at a time, and a large mesh more slowly
    /// (see [`round_period`]). Opening the dashboard starts a round within two seconds.
    async fn collect(self: Arc<Self>) {
        use futures::StreamExt;
        let mut round: u64 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let viewed = self.viewed();
            let this_round = round;
            round += 1;
            let targets = self.targets();
            let next = started + round_period(viewed, targets.len());
            let slow = this_round.is_multiple_of(5);
            let direct = self.opts.prometheus.is_none();
            // Each poll owns its target: a stream of futures borrowing `targets` would not
            // be Send for every lifetime, as the spawned task needs.
            let polls: Vec<collector::Poll> = futures::stream::iter(
                targets
                    .iter()
                    .cloned()
                    .map(move |t| async move { collector::poll(&t, direct, slow).await }),
            )
            .buffer_unordered(CONCURRENT_POLLS)
            .collect()
            .await;
            let windows = match &self.opts.prometheus {
                Some(url) => Some(prometheus_windows(url, &targets).await),
                None => None,
            };
            {
                let now = SystemTime::now();
                let keep = self.opts.samples_kept;
                let mut view = self.view();
                view.workloads
                    .retain(|name, _| targets.iter().any(|t| &t.workload == name));
                for t in &targets {
                    let w = view.workloads.entry(t.workload.clone()).or_default();
                    w.admin = Some(t.admin);
                    w.metrics = Some(t.metrics);
                }
                for p in polls {
                    if let Some(w) = view.workloads.get_mut(&p.workload) {
                        w.apply(p);
                    }
                }
                match windows {
                    Some(Ok(mut windows)) => {
                        for (name, w) in view.workloads.iter_mut() {
                            w.window = windows.remove(name).unwrap_or_default();
                        }
                        view.metrics_error = None;
                    }
                    Some(Err(e)) => view.metrics_error = Some(format!("{e:#}")),
                    None => {}
                }
                for w in view.workloads.values_mut() {
                    w.sample(now, keep);
                }
                view.updated = Some(now);
            }
            while tokio::time::Instant::now() < next && (viewed || !self.viewed()) {
                tokio::time::sleep_until(next.min(tokio::time::Instant::now() + POLL_INTERVAL))
                    .await;
            }
        }
    }

    /// Reads the decision logs in the data directory, and keeps a `/tap?policy=deny`
    /// stream open to every other proxy while the dashboard is being looked at,
    /// reconnecting when one drops.
    async fn collect_denials(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::channel::<(String, String)>(1024);
        let mut taps: BTreeMap<(String, SocketAddr), tokio::task::JoinHandle<()>> = BTreeMap::new();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                Some((workload, line)) = rx.recv() => {
                    self.view().denials.tap_line(&workload, &line);
                }
                _ = tick.tick() => {
                    // Unwatched, the decision logs are read one round in five: nothing
                    // is lost, the next read starts where the last one stopped.
                    round += 1;
                    if !self.viewed() && !round.is_multiple_of(IDLE_POLL_EVERY) {
                        continue;
                    }
                    let targets = self.targets();
                    let names: Vec<String> = targets.iter().map(|t| t.workload.clone()).collect();
                    let logged = self
                        .view()
                        .denials
                        .read_decision_logs(&self.sources.data_dir, &names);
                    let viewed = unix_now()
                        .saturating_sub(self.last_viewed.load(Ordering::Relaxed))
                        < TAP_WHILE_VIEWED;
                    let wanted: Vec<&ProxyTarget> = targets
                        .iter()
                        .filter(|t| viewed && !logged.contains(&t.workload))
                        .collect();
                    taps.retain(|(name, admin), handle| {
                        let keep = wanted.iter().any(|t| &t.workload == name && t.admin == *admin);
                        if !keep {
                            handle.abort();
                        }
                        keep && !handle.is_finished()
                    });
                    for t in wanted {
                        taps.entry((t.workload.clone(), t.admin)).or_insert_with(|| {
                            let t = t.clone();
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                let _ = observe_cli::tap_one(&t, "policy=deny", tx).await;
                            })
                        });
                    }
                }
            }
        }
    }
}

async fn prometheus_windows(
    url: &str,
    targets: &[ProxyTarget],
) -> anyhow::Result<BTreeMap<String, collector::Window>> {
    let mut results = BTreeMap::new();
    for (name, promql) in prometheus::queries() {
        results.insert(name, prometheus::query(url, &promql).await?);
    }
    let instances = targets
        .iter()
        .map(|t| (t.metrics.to_string(), t.workload.clone()))
        .collect();
    Ok(prometheus::windows(&results, &instances))
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(listener: TcpListener, dashboard: Arc<Dashboard>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let dashboard = dashboard.clone();
                async move { Ok::<_, Infallible>(route(&dashboard, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The control plane's own metrics in Prometheus text format.
fn control_plane_metrics(registry: &prometheus_client::registry::Registry) -> Response<Body> {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        );
    }
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(text))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn route<B>(d: &Dashboard, req: Request<B>) -> Response<Body> {
    // Counts only, no request content: open to scrapers, whatever Host they use.
    if req.uri().path() == "/metrics" && req.method() == Method::GET {
        return control_plane_metrics(&d.sources.metrics);
    }
    if let Err(refused) = d.admit(&req) {
        tracing::debug!(reason = %refused, "dashboard request refused");
        return error(StatusCode::FORBIDDEN, &refused.to_string());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard is read-only: use GET",
        );
    }
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if path.starts_with("/api/") {
        d.last_viewed.store(unix_now(), Ordering::Relaxed);
    }
    match path {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        "/favicon.ico" => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "/api/overview" => json_response(d.overview()),
        "/api/graph" => json_response(d.graph_json()),
        "/api/workloads" => json_response(d.workloads_json()),
        "/api/policy" => json_response(d.policy_json()),
        "/api/identity" => json_response(d.identity_json()),
        "/api/tap" => d.tap(query),
        _ => match path.strip_prefix("/api/workloads/") {
            Some(name) => match d.workload_json(name) {
                Some(v) => json_response(v),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no workload {name:?} in the mesh; GET /api/workloads lists them"),
                ),
            },
            None => error(
                StatusCode::NOT_FOUND,
                "unknown path; the page is at / and the API under /api/ (overview, graph, workloads, policy, identity, tap)",
            ),
        },
    }
}

impl Dashboard {
    /// Whether `req` may be answered at all: see [`access`].
    fn admit<B>(&self, req: &Request<B>) -> Result<(), access::AccessRefused> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|h| h.as_bytes());
        let mesh = self.sources.mesh.load();
        self.opts
            .access
            .check(host, authorization, &mesh.control_plane.dashboard_hosts)
    }

    fn state(&self) -> Arc<MeshState> {
        self.sources.state.borrow().clone()
    }

    fn overview(&self) -> Value {
        let state = self.state();
        let mesh = self.sources.mesh.load();
        let view = self.view();
        let ready = view.workloads.values().filter(|w| w.ready).count();
        json!({
            "trust_domain": state.model.trust_domain,
            "metrics_source": match &self.opts.prometheus {
                Some(url) => format!("prometheus {url}"),
                None => "proxies".to_string(),
            },
            "metrics_error": view.metrics_error,
            "updated": view.updated.map(unix_secs),
            "control_plane": {
                "identity": mesh.control_plane.identity.to_string(),
                "discovery": mesh.control_plane.discovery.to_string(),
                "dashboard": mesh.control_plane.dashboard.to_string(),
            },
            "policy_version": state.policies.mesh_wide.as_ref().map(|p| p.bundle.version.clone()),
            "workloads": view.workloads.len(),
            "ready": ready,
            "watching_discovery": self.sources.proxies.list().len(),
            "denials_recent": view.denials.list().len(),
        })
    }

    fn graph_json(&self) -> Value {
        let state = self.state();
        let view = self.view();
        let graph = collector::graph(&state.model, &view.workloads);
        json!({
            "updated": view.updated.map(unix_secs),
            "nodes": graph.nodes,
            "edges": graph.edges,
            "totals": graph.totals,
        })
    }

    fn summary(&self, name: &str, w: &WorkloadView, state: &MeshState) -> Value {
        let model = state.model.workloads.iter().find(|m| m.name == name);
        let last = w.samples.back();
        let connected = self
            .sources
            .proxies
            .list()
            .into_iter()
            .any(|p| p.workload == name);
        json!({
            "name": name,
            "namespace": model.map(|m| m.namespace.clone()),
            "spiffe_id": model.map(|m| m.spiffe_id.to_string()),
            "admin": w.admin.map(|a| a.to_string()),
            "metrics": w.metrics.map(|a| a.to_string()),
            "reachable": w.reachable,
            "ready": w.ready,
            "ready_detail": w.ready_detail,
            "watching_discovery": connected,
            "policy": expected_policy(state, name).map(|p| p.bundle.name.clone()),
            "policy_version": w.policy_version,
            "policy_current": w.policy_version.is_some()
                && w.policy_version == expected_policy(state, name).map(|p| p.bundle.version.clone()),
            "cert_not_after": w.cert.as_ref().map(|c| c.not_after),
            "cert_expires_in_seconds": w.cert.as_ref().map(|c| c.not_after.saturating_sub(unix_now())),
            "rps_in": last.map(|s| s.rps_in),
            "rps_out": last.map(|s| s.rps_out),
            "success_in": last.and_then(|s| s.success_in),
            "p99_in_ms": last.and_then(|s| s.p99_in_ms),
            "denied_rps": last.map(|s| s.denied_rps),
        })
    }

    fn workloads_json(&self) -> Value {
        let state = self.state();
        let view = self.view();
        let list: Vec<Value> = view
            .workloads
            .iter()
            .map(|(name, w)| self.summary(name, w, &state))
            .collect();
        json!({ "updated": view.updated.map(unix_secs), "workloads": list })
    }

    fn workload_json(&self, name: &str) -> Option<Value> {
        let state = self.state();
        let view = self.view();
        let w = view.workloads.get(name)?;
        let graph = collector::graph(&state.model, &view.workloads);
        let inbound: Vec<_> = graph.edges.iter().filter(|e| e.target == name).collect();
        let outbound: Vec<_> = graph.edges.iter().filter(|e| e.source == name).collect();
        let mut v = self.summary(name, w, &state);
        v["cert"] = json!(w.cert);
        v["cert_error"] = json!(w.cert_error);
        v["samples"] = json!(w.samples);
        v["inbound"] = json!(inbound);
        v["outbound"] = json!(outbound);
        v["breakers_open"] = json!(w
            .window
            .breakers_open
            .iter()
            .map(|(s, e)| json!({"service": s, "endpoint": e}))
            .collect::<Vec<_>>());
        v["updated"] = json!(view.updated.map(unix_secs));
        Some(v)
    }

    fn policy_json(&self) -> Value {
        let state = self.state();
        let view = self.view();
        let bundle_json = |p: &vigil_api::PolicyBundle| {
            json!({
                "name": p.name,
                "version": p.version,
                "rule": p.rule,
                "dry_run": p.dry_run,
                "log_allows": p.log_allows,
                "request_body_bytes": p.request_body_bytes,
                "records_input": p.record_input.is_some(),
                "files": p.files.iter().map(|f| json!({
                    "path": f.path,
                    "bytes": f.contents.len(),
                    "contents": f.contents,
                })).collect::<Vec<_>>(),
            })
        };
        let served_json = |served: &crate::served_policy::ServedPolicy| {
            let mut v = bundle_json(&served.bundle);
            v["candidate"] = json!(served.candidate.as_ref().map(bundle_json));
            v
        };
        let mut bundles: Vec<Value> = Vec::new();
        if let Some(mesh_wide) = &state.policies.mesh_wide {
            let mut v = served_json(mesh_wide);
            v["targets"] = json!("every workload no attached policy selects");
            bundles.push(v);
        }
        for attached in &state.policies.attached {
            let mut v = served_json(&attached.served);
            v["targets"] = json!(attached.targets);
            bundles.push(v);
        }
        let proxies: Vec<Value> = view
            .workloads
            .iter()
            .map(|(name, w)| {
                let expected = expected_policy(&state, name);
                json!({
                    "workload": name,
                    "policy": expected.map(|p| p.bundle.name.clone()),
                    "expected_version": expected.map(|p| p.bundle.version.clone()),
                    "version": w.policy_version,
                    "current": w.policy_version.is_some()
                        && w.policy_version == expected.map(|p| p.bundle.version.clone()),
                    "candidate": w.candidate,
                })
            })
            .collect();
        json!({
            "bundle": state.policies.mesh_wide.as_ref().map(served_json),
            "bundles": bundles,
            "proxies": proxies,
            "denials": view.denials.list(),
            "by_rule": view.denials.by_rule().into_iter().map(|(rule, count)| json!({"rule": rule, "count": count})).collect::<Vec<_>>(),
            "denials_kept": self.opts.denials_kept,
        })
    }

    fn identity_json(&self) -> Value {
        let state = self.state();
        let view = self.view();
        let now = unix_now();
        let list: Vec<Value> = view
            .workloads
            .iter()
            .map(|(name, w)| {
                let expected = state
                    .model
                    .workloads
                    .iter()
                    .find(|m| &m.name == name)
                    .map(|m| m.spiffe_id.to_string());
                let status = match &w.cert {
                    None => "unknown",
                    Some(c) if c.not_after <= now => "expired",
                    Some(c) if c.not_before > now => "not-yet-valid",
                    Some(c) => {
                        let lifetime = c.not_after.saturating_sub(c.not_before).max(1);
                        if (c.not_after - now) * 10 < lifetime {
                            "expiring"
                        } else {
                            "valid"
                        }
                    }
                };
                json!({
                    "workload": name,
                    "expected_spiffe_id": expected,
                    "status": status,
                    "signer": w.cert.as_ref().map(|c| c.signer.clone()),
                    "trust_roots": w.cert.as_ref().map(|c| c.trust_roots.clone()),
                    "cert": w.cert,
                    "error": w.cert_error.clone().or_else(|| (!w.reachable).then(|| w.ready_detail.clone())),
                })
            })
            .collect();
        json!({
            "trust_domain": state.model.trust_domain,
            "now": now,
            "ca": **self.sources.ca.load(),
            "workloads": list,
        })
    }

    fn tap(&self, query: &str) -> Response<Body> {
        let (workload, filter) = live_tap::filters(query);
        let targets: Vec<ProxyTarget> = self
            .targets()
            .into_iter()
            .filter(|t| workload.as_deref().is_none_or(|w| t.workload == w))
            .collect();
        if targets.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "no such workload to tap; GET /api/workloads lists them",
            );
        }
        let mut r = Response::new(BodyExt::boxed(live_tap::stream(targets, filter)));
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

fn json_response(value: Value) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(value.to_string()))));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = json_response(json!({ "error": message }));
    *r.status_mut() = status;
    r
}

/// The policy the workload called `name` is meant to run.
fn expected_policy<'s>(
    state: &'s MeshState,
    name: &str,
) -> Option<&'s crate::served_policy::ServedPolicy> {
    let workload = state.model.workloads.iter().find(|w| w.name == name)?;
    state.policies.for_workload(workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_mesh_is_polled_in_longer_rounds_and_an_unwatched_one_longer_still() {
        assert_eq!(round_period(true, 10), POLL_INTERVAL);
        assert_eq!(round_period(false, 10), POLL_INTERVAL * 5);
        assert_eq!(round_period(true, 10_000), Duration::from_secs(20));
        assert_eq!(round_period(false, 10_000), Duration::from_secs(100));
    }
}
