//! `vigil stat` and `vigil tap`: what the proxies themselves report, read from their
//! metrics and admin endpoints. `vigil stat` keeps policy denials apart from failures
//! (a 403 from policy is neither a success nor an app error), shows the retries each
//! proxy sent per service and the tries per request they amount to, and prints what it
//! could read when a proxy cannot be reached.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::admin_client;
use crate::mesh::MeshFile;
use vigil_identity::SpiffeId;

/// One proxy to read from.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    pub workload: String,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    /// The workload's SPIFFE ID, as its peers' metrics name it.
    pub spiffe_id: String,
}

/// The proxies of a mesh file, optionally only one workload's.
pub fn targets(mesh: &MeshFile, workload: Option<&str>) -> anyhow::Result<Vec<ProxyTarget>> {
    let targets: Vec<_> = mesh
        .workloads
        .iter()
        .filter(|w| workload.is_none_or(|name| w.name == name))
        .map(|w| ProxyTarget {
            workload: w.name.clone(),
            admin: w.proxy.admin,
            metrics: w.proxy.metrics,
            spiffe_id: SpiffeId::workload(&mesh.trust_domain, &w.namespace, w.service_account())
                .map(|id| id.to_string())
                .unwrap_or_default(),
        })
        .collect();
    if targets.is_empty() {
        anyhow::bail!("no workload {:?} in the mesh file", workload.unwrap_or(""));
    }
    Ok(targets)
}

/// Counters and latency buckets of one request series.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestCounts {
    pub total: f64,
    /// Failed requests (`outcome="failure"`: a 5xx that was no policy denial).
    pub failures: f64,
    /// Requests a policy refused (`outcome="denied"`): this proxy's policy inbound, the
    /// destination's outbound.
    pub denied: f64,
    /// `le` bound in seconds → cumulative count.
    pub buckets: BTreeMap<OrderedF64, f64>,
}

impl RequestCounts {
    /// What happened between `before` and `self` (two scrapes of the same counters). A
    /// counter that went down means the proxy restarted: everything since is new.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        if self.total < before.total {
            return self.clone();
        }
        RequestCounts {
            total: self.total - before.total,
            failures: (self.failures - before.failures).max(0.0),
            denied: (self.denied - before.denied).max(0.0),
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    (
                        *le,
                        (c - before.buckets.get(le).cloned().unwrap_or(0.0)).max(0.0),
                    )
                })
                .collect(),
        }
    }

    /// Counts `value` requests of one `vigil_requests_total` series by its `outcome` and
    /// `status_class` labels. A proxy that predates `outcome` has its 5xx counted as
    /// failures and no denials.
    pub fn count(&mut self, outcome: Option<&str>, status_class: Option<&str>, value: f64) {
        self.total += value;
        match (outcome, status_class) {
            (Some("denied"), _) => self.denied += value,
            (Some("failure"), _) | (None, Some("5xx")) => self.failures += value,
            _ => {}
        }
    }

    /// The share of requests that did not fail, leaving policy denials out (a denial is
    /// the policy working, neither a success nor a failure): `success / (success +
    /// failure)`, as `vigil stat`, the dashboard and `vigil check` all show it and as
    /// PromQL computes it from `outcome`. `None` when every request was denied or none came.
    pub fn success_rate(&self) -> Option<f64> {
        let answered = self.total - self.denied;
        (answered > 0.5).then(|| (1.0 - self.failures / answered).clamp(0.0, 1.0))
    }

    /// The share of requests a policy denied; `None` without requests.
    pub fn denied_share(&self) -> Option<f64> {
        (self.total > 0.0).then(|| self.denied / self.total)
    }

    /// Adds another series' counts to these.
    pub fn add(&mut self, other: &RequestCounts) {
        self.total += other.total;
        self.failures += other.failures;
        self.denied += other.denied;
        for (le, c) in &other.buckets {
            *self.buckets.entry(*le).or_default() += c;
        }
    }
}

/// A histogram bound that can key a map (ordered by `f64::total_cmp`).
#[derive(Debug, Clone, Copy)]
pub struct OrderedF64(pub f64);
impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Which requests a series counts: the labels `vigil_requests_total` carries apart from
/// route and status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub direction: String,
    pub service: String,
    /// The verified peer: the caller (inbound) or the endpoint reached (outbound); empty
    /// when there was none (plaintext, or a failure before any peer answered).
    pub peer_identity: String,
}

/// What one scrape of a proxy's `/metrics` says.
#[derive(Debug, Default, Clone)]
pub struct ProxyMetrics {
    pub requests: BTreeMap<SeriesKey, RequestCounts>,
    /// Policy decisions by outcome (`allow`, `deny`, `error`).
    pub policy_decisions: BTreeMap<String, f64>,
    /// Retries by service.
    pub retries: BTreeMap<String, f64>,
    /// (service, endpoint) pairs whose circuit breaker is open.
    pub breakers_open: Vec<(String, String)>,
}

/// Parses a proxy's exposition (Prometheus text or OpenMetrics).
pub fn parse_exposition(text: &str) -> anyhow::Result<ProxyMetrics> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("parsing a proxy's /metrics")?;
    let mut out = ProxyMetrics::default();
    for sample in scrape.samples {
        let label = |k: &str| sample.labels.get(k).unwrap_or_default().to_string();
        let key = || SeriesKey {
            direction: label("direction"),
            service: label("service"),
            peer_identity: label("peer_identity"),
        };
        let value = match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        };
        match (sample.metric.as_str(), value, &sample.value) {
            ("vigil_requests_total" | "vigil_requests", Some(v), _) => {
                out.requests.entry(key()).or_default().count(
                    sample.labels.get("outcome"),
                    sample.labels.get("status_class"),
                    v,
                );
            }
            ("vigil_request_duration_seconds_bucket", Some(v), _) => {
                if let Ok(le) = label("le").parse::<f64>() {
                    *out.requests
                        .entry(key())
                        .or_default()
                        .buckets
                        .entry(OrderedF64(le))
                        .or_default() += v;
                }
            }
            ("vigil_request_duration_seconds", _, prometheus_parse::Value::Histogram(buckets)) => {
                let row = out.requests.entry(key()).or_default();
                for b in buckets {
                    *row.buckets.entry(OrderedF64(b.less_than)).or_default() += b.count;
                }
            }
            ("vigil_policy_decisions_total" | "vigil_policy_decisions", Some(v), _) => {
                *out.policy_decisions.entry(label("outcome")).or_default() += v;
            }
            ("vigil_retries_total" | "vigil_retries", Some(v), _) => {
                *out.retries.entry(label("service")).or_default() += v;
            }
            ("vigil_circuit_breaker_open", Some(v), _) if v > 0.0 => {
                out.breakers_open
                    .push((label("service"), label("endpoint")));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One line of `vigil stat`: what one proxy saw of one service, in one direction, over
/// the window (or since it started, when the window saw nothing).
#[derive(Debug, Clone, Serialize)]
pub struct StatRow {
    pub workload: String,
    pub direction: String,
    pub service: String,
    /// Requests since the proxy started.
    pub requests: u64,
    pub rps: f64,
    /// Share of the requests that got an answer from the policy's side of things (all
    /// but the denied ones) that did not fail with a 5xx; `null` when every one was
    /// denied or none came.
    pub success_rate: Option<f64>,
    /// Requests the destination's policy refused (counted on both sides of an edge).
    pub denied: u64,
    /// Retries this proxy sent for the service (outbound only).
    pub retried: u64,
    /// Tries per request on this edge: 1 + retried / requests (outbound only).
    pub amplification: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Share of requests that crossed mutual TLS with a verified peer.
    pub mtls_share: f64,
}

/// A proxy `vigil stat` could not read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub workload: String,
    pub error: String,
}

/// What `vigil stat` found: a row per proxy, direction and service, and the proxies it
/// could not read (their rows are missing, the others are whole).
#[derive(Debug, Clone, Serialize)]
pub struct StatReport {
    pub window_seconds: f64,
    pub rows: Vec<StatRow>,
    pub unreadable: Vec<Unreadable>,
}

/// One proxy's window: each series' counts over the window when its row moved, else
/// since the proxy started, so a quiet row still shows its history.
struct ProxyWindow {
    target: ProxyTarget,
    requests: BTreeMap<SeriesKey, RequestCounts>,
    retries: BTreeMap<String, f64>,
    moved: BTreeMap<(String, String), bool>,
}

fn window_of(
    target: &ProxyTarget,
    before: Option<&ProxyMetrics>,
    now: ProxyMetrics,
) -> ProxyWindow {
    let empty = ProxyMetrics::default();
    let before = before.unwrap_or(&empty);
    let row = |k: &SeriesKey| (k.direction.clone(), k.service.clone());
    let mut totals: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for (k, c) in &now.requests {
        totals.entry(row(k)).or_default().0 += c.total;
    }
    for (k, c) in &before.requests {
        totals.entry(row(k)).or_default().1 += c.total;
    }
    let moved: BTreeMap<_, _> = totals
        .into_iter()
        .map(|(k, (now, then))| (k, now > then))
        .collect();
    let is_moved = |k: &(String, String)| moved.get(k).copied().unwrap_or(false);
    let requests = now
        .requests
        .iter()
        .map(|(k, c)| {
            let counts = if is_moved(&row(k)) {
                c.since(&before.requests.get(k).cloned().unwrap_or_default())
            } else {
                c.clone()
            };
            (k.clone(), counts)
        })
        .collect();
    let retries = now
        .retries
        .iter()
        .map(|(service, n)| {
            let then = before.retries.get(service).copied().unwrap_or(0.0);
            let key = ("outbound".to_string(), service.clone());
            let v = if is_moved(&key) && *n >= then {
                n - then
            } else {
                *n
            };
            (service.clone(), v)
        })
        .collect();
    ProxyWindow {
        target: target.clone(),
        requests,
        retries,
        moved,
    }
}

/// Tries a caller's proxy sent per request, 1 + retries / requests: the load its retries
/// add to the service behind. `vigil stat` and the dashboard show the same figure.
pub fn tries_per_request(requests: f64, retries: f64) -> Option<f64> {
    (requests > 0.0).then(|| 1.0 + retries / requests)
}

/// The `q` quantile in milliseconds from cumulative buckets, computed as PromQL's
/// `histogram_quantile` does, so `vigil stat`, the dashboard and `vigil check` agree with
/// a Prometheus reading the same series: linear interpolation within the bucket the rank
/// falls in (from 0 for the first bucket), and the highest finite bound when it falls in
/// the `+Inf` bucket. 0 without observations; `+Inf` when there is no `+Inf` bucket or
/// fewer than two buckets (PromQL's NaN).
pub fn quantile(buckets: &BTreeMap<OrderedF64, f64>, q: f64) -> f64 {
    // Ascending upper bounds with cumulative counts, kept monotonic as PromQL does.
    let mut bounds: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, count) in buckets {
        let count = bounds
            .last()
            .map_or(*count, |(_, prev): &(f64, f64)| count.max(*prev));
        bounds.push((le.0, count));
    }
    let Some(&(last_bound, observations)) = bounds.last() else {
        return 0.0;
    };
    if observations <= 0.0 {
        return 0.0;
    }
    if !last_bound.is_infinite() || bounds.len() < 2 {
        return f64::INFINITY;
    }
    let q = q.clamp(0.0, 1.0);
    let mut rank = q * observations;
    let b = bounds
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(bounds.len() - 1);
    let seconds = if b == bounds.len() - 1 {
        bounds[b - 1].0
    } else if b == 0 && bounds[0].0 <= 0.0 {
        bounds[0].0
    } else {
        let (start, below) = if b == 0 { (0.0, 0.0) } else { bounds[b - 1] };
        let (end, count) = bounds[b];
        rank -= below;
        let in_bucket = count - below;
        if in_bucket <= 0.0 {
            end
        } else {
            start + (end - start) * (rank / in_bucket)
        }
    };
    seconds * 1000.0
}

async fn scrape(target: &ProxyTarget) -> anyhow::Result<ProxyMetrics> {
    let (status, body) = admin_client::get(target.metrics, "/metrics")
        .await
        .with_context(|| {
            format!(
                "reading metrics of {} at {}: is its proxy running?",
                target.workload, target.metrics
            )
        })?;
    if status != 200 {
        anyhow::bail!("{} answered {status} on /metrics", target.metrics);
    }
    parse_exposition(&body)
}

/// Scrapes every proxy twice, `window` apart, and computes rates over the window. A
/// proxy that cannot be read is listed in `unreadable`; the others' rows are complete.
pub async fn stat(targets: &[ProxyTarget], window: Duration) -> StatReport {
    let mut first = BTreeMap::new();
    for t in targets {
        if let Ok(m) = scrape(t).await {
            first.insert(t.workload.clone(), m);
        }
    }
    tokio::time::sleep(window).await;
    let mut second = Vec::new();
    for t in targets {
        second.push((t.clone(), scrape(t).await));
    }
    report(&first, second, window)
}

/// The report from two scrapes `window` apart: `first` by workload (a proxy missing there
/// started during the window), `second` as each proxy answered.
pub fn report(
    first: &BTreeMap<String, ProxyMetrics>,
    second: Vec<(ProxyTarget, anyhow::Result<ProxyMetrics>)>,
    window: Duration,
) -> StatReport {
    let mut windows = Vec::new();
    let mut unreadable = Vec::new();
    for (t, scraped) in second {
        match scraped {
            Ok(now) => windows.push(window_of(&t, first.get(&t.workload), now)),
            Err(e) => unreadable.push(Unreadable {
                workload: t.workload.clone(),
                error: format!("{e:#}"),
            }),
        }
    }
    let mut rows = Vec::new();
    for w in &windows {
        let mut by_row: BTreeMap<(String, String), (RequestCounts, f64)> = BTreeMap::new();
        for (k, c) in &w.requests {
            let acc = by_row
                .entry((k.direction.clone(), k.service.clone()))
                .or_default();
            acc.0.add(c);
            if !k.peer_identity.is_empty() {
                acc.1 += c.total;
            }
        }
        for ((direction, service), (counts, mtls)) in by_row {
            let moved = w
                .moved
                .get(&(direction.clone(), service.clone()))
                .copied()
                .unwrap_or(false);
            let total = counts.total;
            let retried = if direction == "outbound" {
                w.retries.get(&service).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            rows.push(StatRow {
                workload: w.target.workload.clone(),
                direction: direction.clone(),
                service: service.clone(),
                requests: cumulative_requests(
                    w,
                    &direction,
                    &service,
                    moved,
                    first.get(&w.target.workload),
                ),
                rps: if moved {
                    total / window.as_secs_f64()
                } else {
                    0.0
                },
                success_rate: counts.success_rate(),
                denied: counts.denied.round() as u64,
                retried: retried.round() as u64,
                amplification: (direction == "outbound")
                    .then(|| tries_per_request(total, retried))
                    .flatten(),
                p50_ms: quantile(&counts.buckets, 0.50),
                p95_ms: quantile(&counts.buckets, 0.95),
                p99_ms: quantile(&counts.buckets, 0.99),
                mtls_share: if total > 0.0 { mtls / total } else { 0.0 },
            });
        }
    }
    StatReport {
        window_seconds: window.as_secs_f64(),
        rows,
        unreadable,
    }
}

/// Requests a row counted since its proxy started.
fn cumulative_requests(
    w: &ProxyWindow,
    direction: &str,
    service: &str,
    moved: bool,
    before: Option<&ProxyMetrics>,
) -> u64 {
    let in_window: f64 = w
        .requests
        .iter()
        .filter(|(k, _)| k.direction == direction && k.service == service)
        .map(|(_, c)| c.total)
        .sum();
    if !moved {
        return in_window as u64;
    }
    let earlier: f64 = before
        .map(|b| {
            b.requests
                .iter()
                .filter(|(k, _)| k.direction == direction && k.service == service)
                .map(|(_, c)| c.total)
                .sum()
        })
        .unwrap_or(0.0);
    (in_window + earlier) as u64
}

/// The table `vigil stat` prints, with a line for each proxy it could not read.
pub fn render_table(report: &StatReport) -> String {
    let mut out = format!(
        "{:<12} {:<9} {:<22} {:>8} {:>7} {:>8} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9} {:>5}\n",
        "WORKLOAD",
        "DIRECTION",
        "SERVICE",
        "REQUESTS",
        "RPS",
        "SUCCESS",
        "DENIED",
        "RETRIED",
        "AMPL",
        "P50",
        "P95",
        "P99",
        "MTLS"
    );
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{v:.1}ms")
        } else {
            ">max".into()
        }
    };
    for r in &report.rows {
        let success = r
            .success_rate
            .map_or("-".to_string(), |s| format!("{:.2}%", s * 100.0));
        let ampl = r
            .amplification
            .map_or("-".to_string(), |a| format!("{a:.2}x"));
        out += &format!(
            "{:<12} {:<9} {:<22} {:>8} {:>7.1} {:>8} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9} {:>4.0}%\n",
            r.workload,
            r.direction,
            r.service,
            r.requests,
            r.rps,
            success,
            r.denied,
            r.retried,
            ampl,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.mtls_share * 100.0
        );
    }
    for u in &report.unreadable {
        out += &format!("{:<12} NOT READ: {}\n", u.workload, u.error);
    }
    out
}

/// What `vigil stat -o json` prints: where the mesh was found, and the report.
pub fn render_json(
    at: &crate::mesh_location::MeshLocation,
    report: &StatReport,
) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct StatOutput<'a> {
        #[serde(flatten)]
        source: &'a crate::mesh_location::MeshLocation,
        #[serde(flatten)]
        report: &'a StatReport,
    }
    serde_json::to_string_pretty(&StatOutput { source: at, report })
}

/// Streams tap records from every target to `print` until `limit` records (0: forever).
pub async fn tap(
    targets: &[ProxyTarget],
    query: &str,
    json: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(256);
    for t in targets {
        let tx = tx.clone();
        let t = t.clone();
        let query = query.to_string();
        tokio::spawn(async move {
            if let Err(e) = tap_one(&t, &query, tx.clone()).await {
                let _ = tx
                    .send((
                        t.workload.clone(),
                        format!("{{\"tap_error\":{:?}}}", e.to_string()),
                    ))
                    .await;
            }
        });
    }
    drop(tx);
    let mut seen = 0;
    while let Some((workload, line)) = rx.recv().await {
        if json {
            println!("{line}");
        } else {
            println!("{}", format_record(&workload, &line));
        }
        seen += 1;
        if limit != 0 && seen >= limit {
            break;
        }
    }
    Ok(())
}

/// Follows one proxy's `/tap?{query}`, sending `(workload, JSON line)` to `tx` until the
/// stream ends, the proxy goes away (an error), or `tx` is closed.
pub(crate) async fn tap_one(
    target: &ProxyTarget,
    query: &str,
    tx: tokio::sync::mpsc::Sender<(String, String)>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(target.admin)
        .await
        .with_context(|| {
            format!(
                "connecting to {}'s admin at {}: is its proxy running?",
                target.workload, target.admin
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("/tap?{query}"))
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let res = sender.send_request(req).await?;
    if !res.status().is_success() {
        let body = res.into_body().collect().await?.to_bytes();
        anyhow::bail!("tap refused: {}", String::from_utf8_lossy(&body).trim());
    }
    let mut body = res.into_body().into_data_stream();
    let mut pending = String::new();
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            if tx
                .send((target.workload.clone(), line.trim().to_string()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One tap record as a human-readable line.
pub fn format_record(workload: &str, line: &str) -> String {
    let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
        return format!("{workload}: {line}");
    };
    if let Some(e) = r.get("tap_error") {
        return format!("{workload}: tap failed: {e}");
    }
    let time = r["time"].as_f64().unwrap_or(0.0);
    let stamp = chrono::DateTime::from_timestamp_millis((time * 1000.0) as i64)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let short = |v: &serde_json::Value| {
        let s = v.as_str().unwrap_or("-");
        s.rsplit_once("/sa/")
            .map(|(_, sa)| sa.to_string())
            .unwrap_or_else(|| s.to_string())
    };
    let policy = match r["policy"].as_str() {
        Some("") | None => String::new(),
        Some(p) => format!(" policy={p}"),
    };
    let error = r["error"]
        .as_str()
        .map(|e| format!(" [{e}]"))
        .unwrap_or_default();
    format!(
        "{stamp} {workload:<10} {:<8} {} -> {} {} {} {} {} {:.1}ms{policy}{error}",
        r["direction"].as_str().unwrap_or("-"),
        short(&r["source"]),
        short(&r["destination"]),
        r["service"].as_str().unwrap_or("-"),
        r["method"].as_str().unwrap_or("-"),
        r["path"].as_str().unwrap_or("-"),
        r["status"],
        r["latency_ms"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP vigil_requests HTTP requests
# TYPE vigil_requests counter
vigil_requests_total{direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d",route="default",status_class="2xx"} 98
vigil_requests_total{direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d",route="default",status_class="5xx"} 2
# HELP vigil_request_duration_seconds latency
# TYPE vigil_request_duration_seconds histogram
# UNIT vigil_request_duration_seconds seconds
vigil_request_duration_seconds_sum{direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 0.5
vigil_request_duration_seconds_count{direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 100
vigil_request_duration_seconds_bucket{le="0.001",direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 50
vigil_request_duration_seconds_bucket{le="0.002",direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 96
vigil_request_duration_seconds_bucket{le="0.004",direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 100
vigil_request_duration_seconds_bucket{le="+Inf",direction="outbound",peer_identity="spiffe://vigil.local/ns/d/sa/server",service="server.d"} 100
# EOF
"#;

    fn target(workload: &str, ns: &str) -> ProxyTarget {
        ProxyTarget {
            workload: workload.into(),
            admin: "127.0.0.1:1".parse().expect("addr"),
            metrics: "127.0.0.1:1".parse().expect("addr"),
            spiffe_id: format!("spiffe://vigil.local/ns/{ns}/sa/{workload}"),
        }
    }

    fn row<'r>(report: &'r StatReport, workload: &str, direction: &str) -> &'r StatRow {
        report
            .rows
            .iter()
            .find(|r| r.workload == workload && r.direction == direction)
            .unwrap_or_else(|| panic!("no {workload} {direction} row: {report:?}"))
    }

    /// The row for calls from `workload` to `service`.
    fn edge<'r>(report: &'r StatReport, workload: &str, service: &str) -> &'r StatRow {
        report
            .rows
            .iter()
            .find(|r| r.workload == workload && r.service == service)
            .unwrap_or_else(|| panic!("no {workload} → {service} row: {report:?}"))
    }

    #[test]
    fn computes_success_rate_and_percentiles_from_an_exposition() {
        let now = parse_exposition(EXPOSITION).expect("parses");
        let report = report(
            &BTreeMap::new(),
            vec![(target("client", "d"), Ok(now))],
            Duration::from_secs(2),
        );
        let r = row(&report, "client", "outbound");
        assert_eq!(r.service, "server.d");
        assert_eq!(r.requests, 100);
        assert_eq!(r.success_rate, Some(0.98));
        assert_eq!(r.mtls_share, 1.0);
        // As PromQL's histogram_quantile: interpolated within the bucket.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(r.p50_ms, 1.0));
        assert!(close(r.p95_ms, 1.0 + 45.0 / 46.0));
        assert!(close(r.p99_ms, 3.5));
    }

    /// web calls payments, whose policy denies every call, and orders, which answers one
    /// request in ten with its own 4xx and was retried twice for ten requests.
    const WEB: &str = r#"# TYPE vigil_requests counter
vigil_requests_total{direction="outbound",peer_identity="spiffe://vigil.local/ns/shop/sa/payments",service="payments.shop",route="default",response_code="403",status_class="4xx",outcome="denied"} 20
vigil_requests_total{direction="outbound",peer_identity="spiffe://vigil.local/ns/shop/sa/orders",service="orders.shop",route="default",response_code="200",status_class="2xx",outcome="success"} 9
vigil_requests_total{direction="outbound",peer_identity="spiffe://vigil.local/ns/shop/sa/orders",service="orders.shop",route="default",response_code="404",status_class="4xx",outcome="success"} 1
# TYPE vigil_retries counter
vigil_retries_total{service="orders.shop"} 2
# EOF
"#;
    const PAYMENTS: &str = r#"# TYPE vigil_requests counter
vigil_requests_total{direction="inbound",peer_identity="spiffe://vigil.local/ns/shop/sa/web",service="payments.shop",route="default",response_code="403",status_class="4xx",outcome="denied"} 20
vigil_requests_total{direction="inbound",peer_identity="spiffe://vigil.local/ns/shop/sa/orders",service="payments.shop",route="default",response_code="200",status_class="2xx",outcome="success"} 30
# TYPE vigil_policy_decisions counter
vigil_policy_decisions_total{outcome="allow",rule="data.vigil.authz.allow"} 30
vigil_policy_decisions_total{outcome="deny",rule="data.vigil.authz.allow"} 20
# EOF
"#;

    #[test]
    fn policy_denials_are_neither_successes_nor_failures_and_retries_show_per_edge() {
        let scrape = |t| Ok(parse_exposition(t).expect("parses"));
        let report = report(
            &BTreeMap::new(),
            vec![
                (target("web", "shop"), scrape(WEB)),
                (target("payments", "shop"), scrape(PAYMENTS)),
            ],
            Duration::from_secs(2),
        );
        let to_payments = edge(&report, "web", "payments.shop");
        assert_eq!(to_payments.denied, 20);
        assert_eq!(to_payments.success_rate, None, "no request was let through");
        let to_orders = edge(&report, "web", "orders.shop");
        assert_eq!(to_orders.denied, 0, "an app's own 4xx is not a denial");
        assert_eq!(to_orders.success_rate, Some(1.0));
        assert_eq!(to_orders.retried, 2);
        assert_eq!(to_orders.amplification, Some(1.2));
        let inbound = row(&report, "payments", "inbound");
        assert_eq!((inbound.requests, inbound.denied), (50, 20));
        assert_eq!(inbound.success_rate, Some(1.0));
        let table = render_table(&report);
        assert!(
            table.contains("DENIED") && table.contains("RETRIED"),
            "{table}"
        );
        assert!(table.contains("1.20x"), "{table}");
    }

    #[test]
    fn a_quiet_edge_is_judged_on_both_ends_since_start_while_the_destination_is_busy() {
        // Between the scrapes orders called payments ten more times; web did not.
        let busier = PAYMENTS
            .replace("outcome=\"success\"} 30", "outcome=\"success\"} 40")
            .replace(
                "outcome=\"allow\",rule=\"data.vigil.authz.allow\"} 30",
                "outcome=\"allow\",rule=\"data.vigil.authz.allow\"} 40",
            );
        let parsed = |t: &str| parse_exposition(t).expect("parses");
        let first = BTreeMap::from([
            ("web".to_string(), parsed(WEB)),
            ("payments".to_string(), parsed(PAYMENTS)),
        ]);
        let report = report(
            &first,
            vec![
                (target("web", "shop"), Ok(parsed(WEB))),
                (target("payments", "shop"), Ok(parsed(&busier))),
            ],
            Duration::from_secs(2),
        );
        let to_payments = edge(&report, "web", "payments.shop");
        assert_eq!(to_payments.rps, 0.0);
        assert_eq!((to_payments.requests, to_payments.denied), (20, 20));
        assert_eq!(to_payments.success_rate, None);
        let inbound = row(&report, "payments", "inbound");
        assert_eq!(inbound.rps, 5.0);
        assert_eq!((inbound.denied, inbound.success_rate), (0, Some(1.0)));
    }

    #[test]
    fn a_proxy_that_cannot_be_read_gets_a_line_and_the_others_their_rows() {
        let report = report(
            &BTreeMap::new(),
            vec![
                (
                    target("web", "shop"),
                    Ok(parse_exposition(WEB).expect("parses")),
                ),
                (
                    target("payments", "shop"),
                    Err(anyhow::anyhow!(
                        "reading metrics of payments at 127.0.0.1:16490: is its proxy running?"
                    )),
                ),
            ],
            Duration::from_secs(2),
        );
        assert_eq!(report.rows.len(), 2, "web's rows are all there");
        let table = render_table(&report);
        let line = table
            .lines()
            .find(|l| l.starts_with("payments"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            line.contains("NOT READ") && line.contains("16490"),
            "{line}"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["unreadable"][0]["workload"], "payments");
    }

    #[test]
    fn formats_a_denial_for_people() {
        let line = r#"{"time":1.5,"direction":"inbound","source":"spiffe://vigil.local/ns/d/sa/client","destination":"spiffe://vigil.local/ns/d/sa/server","service":"server.d","method":"GET","path":"/admin","status":403,"latency_ms":0.4,"policy":"deny","error":"policy-denied","protocol":"HTTP/2","request_id":"x"}"#;
        let text = format_record("server", line);
        assert!(text.contains("client -> server"), "{text}");
        assert!(text.contains("GET /admin 403"), "{text}");
        assert!(text.contains("policy=deny [policy-denied]"), "{text}");
    }
}
