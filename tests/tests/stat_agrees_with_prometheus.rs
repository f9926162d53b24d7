//! `vigil stat`, the dashboard's JSON API and a real Prometheus read the same proxies of
//! the running demo and must tell an SRE the same thing per edge: request rate while the
//! load runs, and, once it stops, the same request counts, denials, success rates and
//! p50/p99 (PromQL's `histogram_quantile` over the same buckets). Every query of the
//! Grafana dashboard in manifests/ runs against that Prometheus too, and those about
//! requests find series. The demo's ports are fixed, so this is one test.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_e2e::*;

const DASHBOARD: &str = "127.0.0.1:16080";

fn stat(window: &str) -> Value {
    let out = Command::new(binary("vigil"))
        .args(["stat", "--window", window, "-o", "json"])
        .output()
        .expect("vigil stat runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("vigil stat -o json prints JSON")
}

/// An instant PromQL query: each series' labels and value.
async fn promql(prometheus: std::net::SocketAddr, query: &str) -> Vec<(Value, f64)> {
    try_promql(prometheus, query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

async fn try_promql(
    prometheus: std::net::SocketAddr,
    query: &str,
) -> anyhow::Result<Vec<(Value, f64)>> {
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={encoded}")).await?;
    anyhow::ensure!(status == 200, "Prometheus answered {status}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            (s["metric"].clone(), value)
        })
        .collect())
}

/// The value PromQL gives the series of `row` (a `vigil stat` row), keyed by the proxy's
/// metrics address.
fn value_for(series: &[(Value, f64)], instance: &str, row: &Value) -> Option<f64> {
    series
        .iter()
        .find(|(m, _)| {
            m["instance"] == instance
                && m["direction"] == row["direction"]
                && m["service"] == row["service"]
        })
        .map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread")]
async fn vigil_stat_and_promql_agree_on_every_edge_of_the_demo() {
    binary("vigil-proxy");
    binary("vigil-demo-app");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    // `vigil stat` finds the running demo through the temporary directory; this test's
    // own keeps other meshes out (the only test in this binary sets it).
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).expect("tmp");
    std::env::set_var("TMPDIR", &temp);
    let mut demo = start_demo(dir.path(), &data);

    // The proxies' metrics addresses, from the mesh file the demo wrote.
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(DASHBOARD.parse().expect("addr"), "/api/graph")
        .await
        .map_or(true, |(s, _)| s != 200)
    {
        assert!(demo.0.running(), "vigil demo stopped:\n{}", demo.0.output());
        assert!(Instant::now() < deadline, "{}", demo.0.output());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mesh: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(data.join("mesh.yaml")).expect("mesh"))
            .expect("yaml");
    let instances: Vec<(String, String)> = mesh["workloads"]
        .as_sequence()
        .expect("workloads")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().expect("name").to_string(),
                w["proxy"]["metrics"].as_str().expect("metrics").to_string(),
            )
        })
        .collect();
    let instance_of = |workload: &Value| {
        instances
            .iter()
            .find(|(w, _)| workload == w.as_str())
            .map(|(_, i)| i.clone())
            .unwrap_or_else(|| panic!("no workload {workload}"))
    };

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).expect("dir");
    let targets = instances
        .iter()
        .map(|(_, i)| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: [{targets}]\n"
        ),
    )
    .expect("config");
    let prometheus = free_addr();
    let _prometheus = Process::spawn(
        "prometheus",
        &prom_dir,
        &prometheus_tool("prometheus"),
        &[
            format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            format!("--web.listen-address={prometheus}"),
        ],
    )
    .expect("prometheus starts");
    // Until Prometheus has a few scrapes of every proxy.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = try_promql(prometheus, "count_over_time(up[1m]) >= 5").await;
        if up.is_ok_and(|up| up.len() == instances.len()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped them all"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Rates while the load runs: stat over 10 s, PromQL over the same 10 s just after, and
    // the dashboard's 10 s window as it stands then.
    let live = stat("10s");
    let live_graph = get(DASHBOARD.parse().expect("addr"), "/api/graph")
        .await
        .map(|(_, body)| serde_json::from_str::<Value>(&body).unwrap_or_default())
        .unwrap_or_default();
    let rates = promql(
        prometheus,
        "sum by (instance, direction, service) (rate(vigil_requests_total[10s]))",
    )
    .await;
    let mut compared = 0;
    for row in live["rows"].as_array().expect("rows") {
        let instance = instance_of(&row["workload"]);
        let ours = row["rps"].as_f64().unwrap_or(0.0);
        let theirs = value_for(&rates, &instance, row).unwrap_or(0.0);
        println!(
            "rate {} {} {}: vigil stat {ours:.2}/s, PromQL {theirs:.2}/s",
            row["workload"], row["direction"], row["service"]
        );
        // Two windows a scrape apart at ~4 requests/s: they agree within a request or
        // two per window, not to the digit.
        assert!(
            (ours - theirs).abs() <= 0.3 * ours.max(theirs) + 0.3,
            "rates disagree on {row}: PromQL {theirs}"
        );
        if row["direction"] == "outbound" {
            let drawn: f64 = live_graph["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["source"] == row["workload"] && e["service"] == row["service"])
                .filter_map(|e| e["rps"].as_f64())
                .sum();
            println!("  dashboard {drawn:.2}/s");
            assert!(
                (ours - drawn).abs() <= 0.3 * ours.max(drawn) + 0.3,
                "rates disagree on {row}: dashboard {drawn}"
            );
        }
        compared += 1;
    }
    assert!(compared >= 8, "every edge in both directions: {live}");

    // The load stops; once the counters are still and Prometheus has scraped them, both
    // read the same totals.
    let pid = std::fs::read_to_string(data.join("pids").join("app-loadgen.pid"))
        .expect("the loadgen's pid file");
    assert!(Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .expect("kill")
        .success());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = stat("2s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let totals = promql(
        prometheus,
        "sum by (instance, direction, service) (vigil_requests_total)",
    )
    .await;
    let failures = promql(
        prometheus,
        "sum by (instance, direction, service) (vigil_requests_total{outcome=\"failure\"})",
    )
    .await;
    let denials = promql(
        prometheus,
        "sum by (instance, direction, service) (vigil_requests_total{outcome=\"denied\"})",
    )
    .await;
    // The demo's policy names the rule in each denial's reason; the policy metric counts
    // denials by it.
    let by_rule = promql(
        prometheus,
        "sum by (denied_by) (vigil_policy_decisions_total{outcome=\"deny\"})",
    )
    .await;
    for rule in ["allowed_callers", "no_admin"] {
        assert!(
            by_rule
                .iter()
                .any(|(m, v)| m["denied_by"] == rule && *v >= 1.0),
            "no denials counted under {rule}: {by_rule:?}"
        );
    }
    let graph = get(DASHBOARD.parse().expect("addr"), "/api/graph")
        .await
        .map(|(_, body)| serde_json::from_str::<Value>(&body).unwrap_or_default())
        .unwrap_or_default();
    let edges = graph["edges"].as_array().cloned().unwrap_or_default();
    let mut dashboard_compared = 0;
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le, instance, direction, service) (vigil_request_duration_seconds_bucket)) * 1000"
        )
    };
    let p50 = promql(prometheus, &quantile(0.5)).await;
    let p99 = promql(prometheus, &quantile(0.99)).await;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    for row in still["rows"].as_array().expect("rows") {
        let instance = instance_of(&row["workload"]);
        let edge = format!(
            "{} {} {}",
            row["workload"], row["direction"], row["service"]
        );
        assert_eq!(row["rps"], 0.0, "{edge} still moving: {row}");
        let requests = row["requests"].as_f64().unwrap_or(0.0);
        let total = value_for(&totals, &instance, row).unwrap_or(0.0);
        assert_eq!(requests, total, "{edge}: requests");
        // Success leaves policy denials out in all: 1 - failures / (requests - denied).
        let denied = row["denied"].as_f64().unwrap_or(0.0);
        assert_eq!(
            denied,
            value_for(&denials, &instance, row).unwrap_or(0.0),
            "{edge}: denied"
        );
        let failed = value_for(&failures, &instance, row).unwrap_or(0.0);
        match row["success_rate"].as_f64() {
            Some(ours) => assert!(
                close(ours, 1.0 - failed / (total - denied)),
                "{edge}: success {ours}, PromQL 5xx {failed} of {total} ({denied} denied)"
            ),
            None => assert_eq!(denied, total, "{edge}: no success rate, all denied"),
        }
        for (q, series, field) in [(0.5, &p50, "p50_ms"), (0.99, &p99, "p99_ms")] {
            let ours = row[field].as_f64().unwrap_or(f64::NAN);
            let theirs = value_for(series, &instance, row).unwrap_or(f64::NAN);
            println!(
                "{edge}: p{} vigil stat {ours:.3} ms, PromQL {theirs:.3} ms",
                q * 100.0
            );
            assert!(
                close(ours, theirs),
                "{edge}: {field} {ours} vs PromQL {theirs}"
            );
        }
        // The dashboard draws each caller's outbound rows as edges; since the proxies
        // started, it must count exactly what `vigil stat` counts.
        if row["direction"] == "outbound" {
            let drawn: Vec<&Value> = edges
                .iter()
                .filter(|e| e["source"] == row["workload"] && e["service"] == row["service"])
                .collect();
            assert_eq!(drawn.len(), 1, "{edge}: one edge on the dashboard: {graph}");
            let since = &drawn[0]["since_start"];
            assert_eq!(
                since["requests"].as_f64(),
                Some(requests),
                "{edge}: {since}"
            );
            assert_eq!(since["denied"].as_f64(), Some(denied), "{edge}: {since}");
            match (row["success_rate"].as_f64(), since["success_rate"].as_f64()) {
                (Some(a), Some(b)) => assert!(close(a, b), "{edge}: success {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "{edge}: success rate"),
            }
            for field in ["p50_ms", "p99_ms"] {
                let ours = row[field].as_f64().unwrap_or(f64::NAN);
                let drawn = since[field].as_f64().unwrap_or(f64::NAN);
                assert!(
                    close(ours, drawn),
                    "{edge}: {field} {ours} vs dashboard {drawn}"
                );
            }
            dashboard_compared += 1;
        }
    }
    assert!(
        dashboard_compared >= 4,
        "every caller's edge on the dashboard: {graph}"
    );

    // Every query of the Grafana dashboard is valid PromQL over these series, and those
    // about requests find them (the rest may have nothing to show in this demo: no
    // retries, no opaque TCP, no failed handshakes).
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace_root().join("manifests/base/grafana/vigil-dashboard.json"),
        )
        .expect("the Grafana dashboard"),
    )
    .expect("JSON");
    let mut queried = 0;
    for panel in grafana["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr
                .replace("$service", ".*")
                .replace("$__rate_interval", "1m");
            let series = try_promql(prometheus, &expr)
                .await
                .unwrap_or_else(|e| panic!("panel {:?}: {e}", panel["title"]));
            let about_requests = expr.contains("vigil_request") && !expr.contains("vigil_retries");
            assert!(
                !about_requests || !series.is_empty(),
                "panel {:?} shows nothing: {expr}",
                panel["title"]
            );
            queried += 1;
        }
    }
    assert!(queried >= 10, "{queried} Grafana queries");
}
