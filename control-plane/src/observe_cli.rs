//! `vigil stat` and `vigil tap`: what the proxies themselves report, read from their
//! metrics and admin endpoints.

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

/// One proxy to read from.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    pub workload: String,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
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
    /// 5xx answers.
    pub failures: f64,
    /// 4xx answers (policy denials among them).
    pub client_errors: f64,
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
            client_errors: (self.client_errors - before.client_errors).max(0.0),
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

    /// Adds another series' counts to these.
    pub fn add(&mut self, other: &RequestCounts) {
        self.total += other.total;
        self.failures += other.failures;
        self.client_errors += other.client_errors;
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
                let row = out.requests.entry(key()).or_default();
                row.total += v;
                match label("status_class").as_str() {
                    "5xx" => row.failures += v,
                    "4xx" => row.client_errors += v,
                    _ => {}
                }
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

type Key = (String, String, String);

/// One line of `vigil stat`.
#[derive(Debug, Clone, Serialize)]
pub struct StatRow {
    pub workload: String,
    pub direction: String,
    pub service: String,
    pub requests: u64,
    pub success_rate: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Share of requests that crossed mutual TLS with a verified peer.
    pub mtls_share: f64,
}

/// Per-(workload, direction, service) counts for `vigil stat`, and how many of them had a
/// verified peer.
fn parse(workload: &str, text: &str) -> anyhow::Result<BTreeMap<Key, (RequestCounts, f64)>> {
    let mut rows: BTreeMap<Key, (RequestCounts, f64)> = BTreeMap::new();
    for (key, counts) in parse_exposition(text)?.requests {
        let row = rows
            .entry((workload.to_string(), key.direction, key.service))
            .or_default();
        row.0.add(&counts);
        if !key.peer_identity.is_empty() {
            row.1 += counts.total;
        }
    }
    Ok(rows)
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

async fn scrape(target: &ProxyTarget) -> anyhow::Result<BTreeMap<Key, (RequestCounts, f64)>> {
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
    parse(&target.workload, &body)
}

/// Scrapes every proxy twice, `window` apart, and computes rates over the window.
pub async fn stat(targets: &[ProxyTarget], window: Duration) -> anyhow::Result<Vec<StatRow>> {
    let mut first = BTreeMap::new();
    for t in targets {
        first.extend(scrape(t).await?);
    }
    tokio::time::sleep(window).await;
    let mut rows = Vec::new();
    for t in targets {
        for (key, (now, now_mtls)) in scrape(t).await? {
            let (before, before_mtls) = first.get(&key).cloned().unwrap_or_default();
            let delta = now.since(&before);
            let moved = now.total > before.total;
            let (window_counts, mtls) = if moved {
                (&delta, now_mtls - before_mtls)
            } else {
                (&now, now_mtls)
            };
            let total = window_counts.total;
            rows.push(StatRow {
                workload: key.0.clone(),
                direction: key.1.clone(),
                service: key.2.clone(),
                requests: now.total as u64,
                success_rate: if total > 0.0 {
                    1.0 - window_counts.failures / total
                } else {
                    1.0
                },
                rps: if moved {
                    delta.total / window.as_secs_f64()
                } else {
                    0.0
                },
                p50_ms: quantile(&window_counts.buckets, 0.50),
                p95_ms: quantile(&window_counts.buckets, 0.95),
                p99_ms: quantile(&window_counts.buckets, 0.99),
                mtls_share: if total > 0.0 { mtls / total } else { 0.0 },
            });
        }
    }
    Ok(rows)
}

/// The table `vigil stat` prints.
pub fn render_table(rows: &[StatRow]) -> String {
    let mut out = format!(
        "{:<14} {:<9} {:<26} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>6}\n",
        "WORKLOAD",
        "DIRECTION",
        "SERVICE",
        "REQUESTS",
        "SUCCESS",
        "RPS",
        "P50",
        "P95",
        "P99",
        "MTLS"
    );
    for r in rows {
        let ms = |v: f64| {
            if v.is_finite() {
                format!("{v:.1}ms")
            } else {
                ">max".into()
            }
        };
        out += &format!(
            "{:<14} {:<9} {:<26} {:>8} {:>8.2}% {:>8.1} {:>9} {:>9} {:>9} {:>5.0}%\n",
            r.workload,
            r.direction,
            r.service,
            r.requests,
            r.success_rate * 100.0,
            r.rps,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.mtls_share * 100.0
        );
    }
    out
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

    #[test]
    fn computes_success_rate_and_percentiles_from_an_exposition() {
        let rows = parse("client", EXPOSITION).expect("parses");
        let (row, mtls) = rows
            .get(&("client".into(), "outbound".into(), "server.d".into()))
            .expect("row");
        assert_eq!(row.total, 100.0);
        assert_eq!(row.failures, 2.0);
        assert_eq!(*mtls, 100.0);
        // As PromQL's histogram_quantile: interpolated within the bucket.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(quantile(&row.buckets, 0.5), 1.0));
        assert!(close(quantile(&row.buckets, 0.95), 1.0 + 45.0 / 46.0));
        assert!(close(quantile(&row.buckets, 0.99), 3.5));
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
