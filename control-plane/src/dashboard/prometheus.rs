//! The dashboard's Prometheus path (`--prometheus URL`): request rates, success and
//! latency per proxy from PromQL instead of scraping the proxies directly — for when the
//! dashboard cannot reach the metrics ports, or should show what Prometheus has.
//!
//! Series are mapped to workloads by their `workload` label when relabelling added one,
//! otherwise by `instance` (the scraped metrics address, as the mesh file names it).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::collector::Window;
use crate::observe_cli::{OrderedF64, SeriesKey};

/// How far back the queries look.
pub const WINDOW: Duration = Duration::from_secs(30);

/// One series of an instant-vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<ApiData>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<ApiSeries>,
}

#[derive(Deserialize)]
struct ApiSeries {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Parses the body of `/api/v1/query` for an instant vector.
pub fn parse_vector(body: &str) -> anyhow::Result<Vec<Series>> {
    let r: ApiResponse = serde_json::from_str(body)
        .context("Prometheus answered something that is not its query API's JSON: check the --prometheus URL")?;
    if r.status != "success" {
        anyhow::bail!(
            "Prometheus refused the query: {} (check the Prometheus version and the --prometheus URL)",
            r.error.unwrap_or_else(|| r.status.clone())
        );
    }
    let data = r.data.context(
        "Prometheus answered success without data; is the --prometheus URL a Prometheus?",
    )?;
    if data.result_type != "vector" {
        anyhow::bail!(
            "expected an instant vector from Prometheus, got {}",
            data.result_type
        );
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|s| {
            // "NaN" and "+Inf" parse; a value that does not is skipped, not fatal.
            let value: f64 = s.value.1.parse().ok()?;
            value.is_finite().then_some(Series {
                labels: s.metric,
                value,
            })
        })
        .collect())
}

/// The PromQL the dashboard runs, one window's worth.
pub fn queries() -> [(&'static str, String); 3] {
    let w = WINDOW.as_secs();
    [
        (
            "requests",
            format!("sum by (instance, workload, direction, service, peer_identity, status_class, outcome) (increase(vigil_requests_total[{w}s]))"),
        ),
        (
            "latency",
            format!("sum by (instance, workload, direction, service, peer_identity, le) (increase(vigil_request_duration_seconds_bucket[{w}s]))"),
        ),
        (
            "retries",
            format!("sum by (instance, workload, service) (increase(vigil_retries_total[{w}s]))"),
        ),
    ]
}

/// Turns the three query results into one window per workload. `instances` maps a
/// metrics address (`127.0.0.1:16290`) to its workload.
pub fn windows(
    results: &BTreeMap<&str, Vec<Series>>,
    instances: &BTreeMap<String, String>,
) -> BTreeMap<String, Window> {
    let workload = |s: &Series| -> Option<String> {
        s.labels
            .get("workload")
            .filter(|w| !w.is_empty())
            .cloned()
            .or_else(|| {
                s.labels
                    .get("instance")
                    .and_then(|i| instances.get(i))
                    .cloned()
            })
    };
    let key = |s: &Series| SeriesKey {
        direction: s.labels.get("direction").cloned().unwrap_or_default(),
        service: s.labels.get("service").cloned().unwrap_or_default(),
        peer_identity: s.labels.get("peer_identity").cloned().unwrap_or_default(),
    };
    let mut out: BTreeMap<String, Window> = BTreeMap::new();
    fn window(out: &mut BTreeMap<String, Window>, name: String) -> &mut Window {
        let w = out.entry(name).or_default();
        w.seconds = WINDOW.as_secs_f64();
        w
    }
    for s in results.get("requests").into_iter().flatten() {
        let Some(name) = workload(s) else { continue };
        let c = window(&mut out, name).requests.entry(key(s)).or_default();
        c.count(
            s.labels.get("outcome").map(String::as_str),
            s.labels.get("status_class").map(String::as_str),
            s.value,
        );
    }
    for s in results.get("latency").into_iter().flatten() {
        let Some(name) = workload(s) else { continue };
        let Some(le) = s.labels.get("le").and_then(|l| l.parse::<f64>().ok()) else {
            continue;
        };
        *window(&mut out, name)
            .requests
            .entry(key(s))
            .or_default()
            .buckets
            .entry(OrderedF64(le))
            .or_default() += s.value;
    }
    for s in results.get("retries").into_iter().flatten() {
        let Some(name) = workload(s) else { continue };
        let service = s.labels.get("service").cloned().unwrap_or_default();
        *window(&mut out, name).retries.entry(service).or_default() += s.value;
    }
    for w in out.values_mut() {
        w.cumulative = w.requests.clone();
    }
    out
}

/// Runs one instant query against `base` (`http://prometheus:9090`).
pub async fn query(base: &str, promql: &str) -> anyhow::Result<Vec<Series>> {
    let uri: http::Uri = base.parse().with_context(|| {
        format!("--prometheus {base:?} is not a URL; give it as http://HOST:PORT")
    })?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("--prometheus {base:?}: only http:// URLs are supported; put a plain-HTTP address of Prometheus there");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("--prometheus {base:?} has no host; give it as http://HOST:PORT"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/');
    let path = format!("{prefix}/api/v1/query?query={}", encode(promql));
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .with_context(|| format!("connecting to Prometheus at {authority}: is it running?"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        let body = res.into_body().collect().await?.to_bytes();
        parse_vector(&String::from_utf8_lossy(&body))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("Prometheus at {authority} did not answer within 10 s"))?
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUESTS: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
      {"metric":{"instance":"127.0.0.1:16290","direction":"outbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/orders","status_class":"2xx"},"value":[1700000000.1,"57"]},
      {"metric":{"instance":"127.0.0.1:16290","direction":"outbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/orders","status_class":"5xx"},"value":[1700000000.1,"3"]},
      {"metric":{"workload":"orders","instance":"10.0.0.7:15090","direction":"inbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/web","status_class":"2xx"},"value":[1700000000.1,"NaN"]}
    ]}}"#;
    const LATENCY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
      {"metric":{"instance":"127.0.0.1:16290","direction":"outbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/orders","le":"0.005"},"value":[1700000000.1,"30"]},
      {"metric":{"instance":"127.0.0.1:16290","direction":"outbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/orders","le":"0.05"},"value":[1700000000.1,"60"]},
      {"metric":{"instance":"127.0.0.1:16290","direction":"outbound","service":"orders.shop","peer_identity":"spiffe://vigil.local/ns/shop/sa/orders","le":"+Inf"},"value":[1700000000.1,"60"]}
    ]}}"#;

    #[test]
    fn parses_query_results_into_windows_per_workload() {
        let requests = parse_vector(REQUESTS).expect("parses");
        assert_eq!(requests.len(), 2, "NaN values are dropped");
        let results = BTreeMap::from([
            ("requests", requests),
            ("latency", parse_vector(LATENCY).expect("parses")),
        ]);
        let instances = BTreeMap::from([("127.0.0.1:16290".to_string(), "web".to_string())]);
        let windows = windows(&results, &instances);
        let web = windows.get("web").expect("web mapped by instance");
        assert_eq!(web.seconds, 30.0);
        let (key, counts) = web.requests.iter().next().expect("one series");
        assert_eq!(key.direction, "outbound");
        assert_eq!(counts.total, 60.0);
        assert_eq!(counts.failures, 3.0);
        // 59.4th of 60 observations, 29.4 of the 30 between 5 and 50 ms: 49.1 ms.
        let p99 = crate::observe_cli::quantile(&counts.buckets, 0.99);
        assert!((p99 - 49.1).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn explains_errors() {
        let err = parse_vector(
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        )
        .expect_err("error")
        .to_string();
        assert!(err.contains("parse error at char 5"), "{err}");
        let err = parse_vector("<html>").expect_err("not json").to_string();
        assert!(err.contains("--prometheus"), "{err}");
        assert_eq!(encode("rate(x[1m])"), "rate%28x%5B1m%5D%29");
    }
}
