//! What SREs see: a real Prometheus scraping real proxies, `promtool` on the exposition,
//! and `vigil tap` / `vigil stat` reading live proxies.

use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::*;

const DENY_ADMIN: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/")
	not input.parsed_path[0] == "admin"
}
"#;

/// A client and a server whose policy closes /admin: the control plane running, the
/// proxies not yet (the caller starts the server's app first).
async fn deny_admin_mesh() -> (Mesh, tempfile::TempDir) {
    let policies = tempfile::tempdir().expect("tempdir");
    std::fs::write(policies.path().join("policy.rego"), DENY_ADMIN).expect("policy");
    let mut spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
    ])
    .service("server", "http", &["server"], None);
    spec.policy_dir = Some(policies.path().to_path_buf());
    (Mesh::start(spec).await.expect("control plane"), policies)
}

async fn start_proxies(mesh: &mut Mesh) {
    mesh.start_proxy("client").await.expect("client proxy");
    mesh.start_proxy("server").await.expect("server proxy");
}

async fn observed_pair() -> (Mesh, tempfile::TempDir) {
    let (mut mesh, policies) = deny_admin_mesh().await;
    start_echo_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("app");
    start_proxies(&mut mesh).await;
    (mesh, policies)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_proxies_and_promtool_accepts_the_exposition() {
    let (mesh, _policies) = observed_pair().await;
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();

    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: [\"{}\", \"{}\"]\n",
        client.metrics, server.metrics
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let web = free_addr();
    let _prometheus = Process::spawn(
        "prometheus",
        dir.path(),
        &prometheus_tool("prometheus"),
        &[
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={web}"),
        ],
    )
    .expect("prometheus starts");

    let traffic = pooled_client();
    let query = "sum by (peer_identity, direction) (rate(vigil_requests_total[5s]))";
    let url = format!(
        "/api/v1/query?query={}",
        query
            .replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('[', "%5B")
            .replace(']', "%5D")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        for _ in 0..20 {
            let r = call(&traffic, client.outbound, "server", "/hello")
                .await
                .expect("request");
            assert_eq!(r.status, 200);
        }
        if let Ok((200, body)) = get(web, &url).await {
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            let has = |dir: &str, id: &str| {
                result
                    .iter()
                    .any(|s| s["metric"]["direction"] == dir && s["metric"]["peer_identity"] == id)
            };
            if has("inbound", &client.spiffe_id()) && has("outbound", &server.spiffe_id()) {
                break result;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the expected series\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(series.len() >= 2, "{series:?}");

    for target in [client.metrics, server.metrics] {
        let exposition = metrics(target).await;
        assert!(exposition.contains("vigil_certificate_expiry_timestamp_seconds"));
        let mut child = Command::new(prometheus_tool("promtool"))
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(exposition.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool found problems: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The request series of one proxy whose labels include every one of `labels`, summed.
fn requests_with(exposition: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("vigil_requests_total{") && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_ends_of_an_edge_name_each_other_and_count_a_denial_once_each() {
    let (mut mesh, _policies) = deny_admin_mesh().await;
    start_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("app");
    start_proxies(&mut mesh).await;
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();

    let traffic = pooled_client();
    for (path, status) in [("/hello", 200), ("/admin", 403), ("/forge-denial", 403)] {
        let r = call(&traffic, client.outbound, "server", path)
            .await
            .expect("request");
        assert_eq!(r.status, status, "{path}: {}\n{}", r.body, mesh.logs());
        if path == "/forge-denial" {
            assert!(
                !r.headers.contains_key("x-vigil-error"),
                "the app's forged x-vigil-error reached the caller: {:?}",
                r.headers
            );
        }
    }
    // Recorded when each response ends: wait for the server's third request.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (out, inn) = loop {
        let (out, inn) = (metrics(client.metrics).await, metrics(server.metrics).await);
        if requests_with(&inn, &["direction=\"inbound\""]) >= 3.0
            && requests_with(&out, &["direction=\"outbound\""]) >= 3.0
        {
            break (out, inn);
        }
        assert!(Instant::now() < deadline, "{out}\n{inn}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each end names itself and the other: workload, namespace and identity.
    let client_id = format!("peer_identity=\"{}\"", client.spiffe_id());
    let server_id = format!("peer_identity=\"{}\"", server.spiffe_id());
    let outbound = [
        "direction=\"outbound\"",
        "local_workload=\"client\"",
        "local_namespace=\"demo\"",
        "peer_workload=\"server\"",
        "peer_namespace=\"demo\"",
        &server_id,
    ];
    let inbound = [
        "direction=\"inbound\"",
        "local_workload=\"server\"",
        "peer_workload=\"client\"",
        "peer_namespace=\"demo\"",
        &client_id,
    ];
    for (exposition, labels) in [(&out, &outbound[..]), (&inn, &inbound[..])] {
        assert_eq!(requests_with(exposition, labels), 3.0, "{exposition}");
        // The policy's denial is a denial on both ends; the app's forged one is the app's
        // own 403, a success as far as the mesh is concerned.
        let with = |extra: &str| {
            let mut all = labels.to_vec();
            all.push(extra);
            requests_with(exposition, &all)
        };
        assert_eq!(with("outcome=\"denied\""), 1.0, "{exposition}");
        assert_eq!(with("response_code=\"403\""), 2.0, "{exposition}");
        assert_eq!(with("outcome=\"success\""), 2.0, "{exposition}");
        assert_eq!(with("response_code=\"200\""), 1.0, "{exposition}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vigil_tap_shows_live_requests_including_a_denial_and_stat_sums_them_up() {
    let (mesh, _policies) = observed_pair().await;
    let client = mesh.spec.workload("client").clone();
    let mesh_file = mesh.dir.path().join("mesh.yaml");
    let mut tap = Process::spawn(
        "tap",
        mesh.dir.path(),
        &binary("vigil"),
        &[
            "tap".into(),
            "--mesh".into(),
            mesh_file.display().to_string(),
            "--workload".into(),
            "server".into(),
            "--count".into(),
            "2".into(),
        ],
    )
    .expect("vigil tap");
    // Give the tap time to subscribe, then make one allowed and one denied call.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = http1(client.outbound, "server", "/orders/7", &[])
            .await
            .expect("request");
        assert_eq!(ok.status, 200);
        let denied = http1(client.outbound, "server", "/admin", &[])
            .await
            .expect("request");
        assert_eq!(denied.status, 403);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !tap.running() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "vigil tap printed: {}",
            tap.output()
        );
    }
    let out = tap.output();
    assert!(out.contains("client -> server"), "{out}");
    assert!(out.contains("GET /orders/7 200"), "{out}");
    assert!(
        out.contains("GET /admin 403") && out.contains("policy=deny"),
        "{out}"
    );

    let stat = Command::new(binary("vigil"))
        .args(["stat", "--mesh"])
        .arg(&mesh_file)
        .args(["--window", "1s", "-o", "json"])
        .output()
        .expect("vigil stat");
    assert!(
        stat.status.success(),
        "{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&stat.stdout).expect("json");
    assert_eq!(
        report["mesh_file"].as_str(),
        Some(mesh_file.to_str().expect("utf-8 path")),
        "the report says which mesh it read: {report}"
    );
    let row = |workload: &str, direction: &str| {
        report["rows"]
            .as_array()
            .and_then(|r| {
                r.iter()
                    .find(|r| r["workload"] == workload && r["direction"] == direction)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {workload} {direction} row: {report}"))
    };
    let out = row("client", "outbound");
    assert_eq!(out["service"], "server.demo");
    assert!(out["requests"].as_u64().unwrap_or(0) >= 2, "{out}");
    assert_eq!(out["mtls_share"], 1.0, "{out}");
    // The /admin calls were refused by the server's policy: denied on both sides of the
    // edge, and not counted against (or for) the success rate.
    let inbound = row("server", "inbound");
    for r in [&out, &inbound] {
        assert!(r["denied"].as_u64().unwrap_or(0) >= 1, "{r}");
        assert_eq!(r["success_rate"], 1.0, "{r}");
    }
    assert_eq!(report["unreadable"], serde_json::json!([]), "{report}");
}
