//! The one-command demo and the SRE dashboard, end to end: `vigil demo` starts the real
//! control plane, proxies and demo apps; headless Chromium renders the dashboard after its
//! JavaScript ran; `vigil check` passes on the healthy demo and names the proxy that was
//! stopped, and finds the running demo without `--mesh`; `vigil stat` keeps denials apart
//! and still prints a table with a proxy down; a decision log left by an earlier run does
//! not show among the dashboard's denials. The demo's ports are fixed (16xxx/17xxx), so
//! this is one test that does it all in order.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::*;

const DASHBOARD: &str = "127.0.0.1:16080";

fn dashboard() -> std::net::SocketAddr {
    DASHBOARD.parse().expect("address")
}

fn check(mesh_file: &Path) -> (bool, String) {
    vigil(&["check", "--mesh", mesh_file.to_str().expect("utf-8 path")])
}

/// Runs `vigil` with `args`: whether it succeeded, and stdout then stderr.
fn vigil(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("vigil"))
        .args(args)
        .output()
        .expect("vigil runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn api(path: &str) -> serde_json::Value {
    match get(dashboard(), path).await {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// The largest number the graph draws as `name` (`data-rps`, `data-denied`) on the edges
/// from `source` to `target`; 0 when there is none.
fn edge_number(html: &str, source: &str, target: &str, name: &str) -> f64 {
    tags_with(
        html,
        &[
            "class=\"edge",
            &format!("data-source=\"{source}\""),
            &format!("data-target=\"{target}\""),
        ],
    )
    .iter()
    .filter_map(|t| attribute(t, name)?.parse::<f64>().ok())
    .fold(0.0, f64::max)
}

fn edge_rps(html: &str, source: &str, target: &str) -> f64 {
    edge_number(html, source, target, "data-rps")
}

#[tokio::test(flavor = "multi_thread")]
async fn vigil_demo_serves_a_live_dashboard_and_vigil_check_names_a_stopped_proxy() {
    chromium();
    // The binaries `vigil demo` runs must be beside `vigil`.
    binary("vigil-proxy");
    binary("vigil-demo-app");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    // `vigil demo` records itself in the temporary directory for `vigil check`, `stat`
    // and `tap` to find; this test's own one keeps other tests' meshes out of it. (This
    // is the only test in this binary, so no other test sees the variable.)
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).expect("tmp");
    std::env::set_var("TMPDIR", &temp);
    // A decision log an earlier demo run left, with a denial this run never made.
    std::fs::create_dir(&data).expect("data dir");
    let ghost = r#"{"decision_id":"ghost","time":"2023-11-14T22:13:20.500Z","bundle_version":"sha256:1234","source_principal":"spiffe://vigil.local/ns/shop/sa/ghost","destination_principal":"spiffe://vigil.local/ns/shop/sa/payments","source_address":"127.0.0.1:5000","method":"GET","path":"/ghost","result":"deny","reason":"ghost_rule: from an earlier run","dry_run":false,"http_status":403}"#;
    std::fs::write(
        data.join("payments-decisions.log"),
        format!("{ghost}\n").repeat(56),
    )
    .expect("old decision log");

    // A busy port is refused up front, with the port and what it is for.
    {
        let _busy = std::net::TcpListener::bind(DASHBOARD)
            .expect("the demo's dashboard port is free before the test");
        let out = Command::new(binary("vigil"))
            .args(["demo", "--duration", "5s", "--data-dir"])
            .arg(&data)
            .output()
            .expect("vigil demo runs");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("port 127.0.0.1:16080 (dashboard) is not free"),
            "{text}"
        );
        // Not "edit the mesh file": the demo writes it afresh on every start.
        assert!(
            text.contains("vigil up --mesh <the copy>") && !text.contains("change the address in"),
            "{text}"
        );
    }

    let mut demo = start_demo(dir.path(), &data);
    let demo = &mut demo.0;

    // Until the graph carries traffic on the whole chain and a denial with its rule is in.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let graph = api("/api/graph").await;
        let policy = api("/api/policy").await;
        let edges = graph["edges"].as_array().cloned().unwrap_or_default();
        let flowing = |s: &str, t: &str| {
            edges.iter().any(|e| {
                e["source"] == s && e["target"] == t && e["rps"].as_f64().unwrap_or(0.0) > 0.0
            })
        };
        let denied = policy["denials"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["rule"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("allowed_callers: web may not call payments"))
            })
        });
        // Every call from web to payments is refused by payments' policy; some of the
        // loadgen's calls to web (/admin) are refused by web's.
        let denied_share = |s: &str, t: &str| {
            edges
                .iter()
                .find(|e| e["source"] == s && e["target"] == t)
                .and_then(|e| e["denied_share"].as_f64())
                .unwrap_or(0.0)
        };
        if flowing("loadgen", "web")
            && denied_share("web", "payments") == 1.0
            && denied_share("loadgen", "web") > 0.0
            && denied_share("loadgen", "web") < 1.0
            && flowing("web", "orders")
            && flowing("orders", "payments")
            && flowing("orders", "inventory")
            && denied
        {
            break;
        }
        assert!(demo.running(), "vigil demo stopped:\n{}", demo.output());
        assert!(
            Instant::now() < deadline,
            "no traffic or denial on the dashboard after 120 s\ngraph: {graph}\npolicy: {policy}\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = demo.output();
    assert!(out.contains("dashboard:  http://127.0.0.1:16080/"), "{out}");
    let policy = api("/api/policy").await;
    assert!(
        !policy.to_string().contains("ghost"),
        "the last run's decision log is counted again: {policy}"
    );
    assert!(
        data.join("payments-decisions.log.previous").exists(),
        "the last run's decision log is kept aside"
    );

    // The page as a browser renders it, after its JavaScript fetched the API.
    let url = format!("http://{DASHBOARD}/");
    let budget = "--virtual-time-budget=8000".to_string();
    // The denied share is drawn on each edge that has denials, and only there.
    let denied_drawn = |dom: &str, s: &str, t: &str| edge_number(dom, s, t, "data-denied");
    // web calls payments, and the loadgen /admin, about once in 2 s: a 10 s window
    // rarely, but can, hold none.
    let mut dom = String::new();
    for _ in 0..3 {
        dom = headless_chromium(&url, &["--dump-dom".into(), budget.clone()]).expect("chromium");
        if denied_drawn(&dom, "web", "payments") > 0.99
            && denied_drawn(&dom, "loadgen", "web") > 0.0
        {
            break;
        }
    }
    for node in ["loadgen", "web", "orders", "payments", "inventory"] {
        assert!(
            !tags_with(&dom, &["class=\"node", &format!("data-node=\"{node}\"")]).is_empty(),
            "the graph has no node {node}:\n{dom}"
        );
    }
    for (s, t) in [
        ("loadgen", "web"),
        ("web", "orders"),
        ("orders", "inventory"),
    ] {
        assert!(
            edge_rps(&dom, s, t) > 0.0,
            "no traffic drawn on {s} → {t}:\n{dom}"
        );
    }
    let locked = tags_with(
        &dom,
        &[
            "class=\"edge",
            "data-source=\"web\"",
            "data-target=\"orders\"",
        ],
    );
    assert!(
        locked
            .iter()
            .any(|t| attribute(t, "data-mtls") == Some("true")),
        "web → orders is not drawn as mTLS: {locked:?}"
    );
    assert!(
        denied_drawn(&dom, "web", "payments") > 0.99,
        "web → payments is not drawn as denied:\n{dom}"
    );
    let some = denied_drawn(&dom, "loadgen", "web");
    assert!(
        some > 0.0 && some < 1.0,
        "loadgen → web does not show its share of denied /admin calls ({some}):\n{dom}"
    );
    assert_eq!(
        denied_drawn(&dom, "web", "orders"),
        0.0,
        "web → orders has no denials"
    );
    assert!(
        dom.contains("100% denied") && dom.contains("Denied by policy"),
        "no denied share in the edge labels or the headline:\n{dom}"
    );
    assert!(
        !tags_with(
            &dom,
            &[
                "class=\"denial",
                "data-source=\"web\"",
                "data-destination=\"payments\""
            ]
        )
        .is_empty()
            || !tags_with(
                &dom,
                &[
                    "class=\"denial",
                    "data-source=\"loadgen\"",
                    "data-destination=\"web\""
                ]
            )
            .is_empty(),
        "no denial on the overview:\n{dom}"
    );

    let policy_dom = headless_chromium(
        &format!("{url}#policy"),
        &["--dump-dom".into(), budget.clone()],
    )
    .expect("chromium");
    let rows = tags_with(&policy_dom, &["class=\"denial"]);
    assert!(
        !rows.is_empty(),
        "the policy view lists no denial:\n{policy_dom}"
    );
    assert!(
        policy_dom.contains("allowed_callers: web may not call payments")
            || policy_dom.contains("no_admin: /admin is not reachable"),
        "the policy view does not name the rule that denied:\n{policy_dom}"
    );

    let shot = artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless_chromium(
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".into(),
            budget.clone(),
        ],
    )
    .expect("chromium screenshot");
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    println!("dashboard screenshot: {}", shot.display());
    // The identity view names the CA, its phase and each proxy's signer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let identity = loop {
        let identity = api("/api/identity").await;
        let polled = identity["workloads"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| !w["cert"].is_null()));
        if polled || Instant::now() > deadline {
            break identity;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let roots = identity["ca"]["roots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(identity["ca"]["phase"], "steady", "{identity}");
    assert_eq!(roots.len(), 1, "{identity}");
    for w in identity["workloads"].as_array().into_iter().flatten() {
        assert_eq!(w["signer"], roots[0], "{w}");
        assert_eq!(w["trust_roots"], serde_json::json!(roots), "{w}");
    }
    // web's page: its calls to payments all denied, in the table beside the others.
    let web_page = headless_chromium(
        &format!("{url}#workload/web"),
        &["--dump-dom".into(), budget.clone()],
    )
    .expect("chromium");
    assert!(
        web_page.contains("Denied") && web_page.contains("Tries/req"),
        "web's page has no denied or tries column:\n{web_page}"
    );
    let shot = artifacts_dir().join("dashboard-web.png");
    let _ = std::fs::remove_file(&shot);
    headless_chromium(
        &format!("{url}#workload/web"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1400".into(),
            budget,
        ],
    )
    .expect("chromium screenshot");
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    println!("web's page: {}", shot.display());

    // `vigil check` on the healthy demo, then with one proxy stopped.
    let mesh_file = data.join("mesh.yaml");
    let (ok, report) = check(&mesh_file);
    assert!(ok, "vigil check failed on the healthy demo:\n{report}");
    assert!(report.contains("mesh healthy"), "{report}");
    assert!(report.contains("✓ proxy payments ready"), "{report}");
    assert!(
        report.contains("✓ retries: no request path retries responses at more than one hop"),
        "{report}"
    );
    // Without --mesh: the running demo, and the report says which file that is.
    let (ok, report) = vigil(&["check"]);
    assert!(ok, "vigil check without --mesh:\n{report}");
    let shown = format!(
        "mesh: {}",
        std::fs::canonicalize(&mesh_file).expect("mesh").display()
    );
    assert!(
        report.contains(&shown) && report.contains("the running vigil up / vigil demo"),
        "{report}"
    );

    // `vigil stat` as a script reads it: web's calls to payments are all refused by
    // payments' policy, so they are denials, not successes.
    let stat = |extra: &[&str]| {
        let mut args = vec!["stat", "--window", "3s"];
        args.extend(extra);
        let (ok, out) = vigil(&args);
        assert!(ok, "vigil stat {extra:?}:\n{out}");
        out
    };
    let json = stat(&["-o", "json"]);
    let report: serde_json::Value = json
        .find('{')
        .and_then(|i| {
            serde_json::Deserializer::from_str(&json[i..])
                .into_iter()
                .next()
        })
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("vigil stat -o json printed no JSON:\n{json}"));
    let edge = |report: &serde_json::Value, workload: &str, service: &str| {
        report["rows"]
            .as_array()
            .and_then(|rows| {
                rows.iter().find(|r| {
                    r["workload"] == workload
                        && r["direction"] == "outbound"
                        && r["service"] == service
                })
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {workload} → {service} row: {report}"))
    };
    let to_payments = edge(&report, "web", "payments.shop");
    assert!(
        to_payments["denied"].as_u64().unwrap_or(0) >= 1,
        "{to_payments}"
    );
    assert_eq!(
        to_payments["success_rate"],
        serde_json::Value::Null,
        "{to_payments}"
    );
    assert_eq!(
        report["data_dir"].as_str().map(Path::new),
        Some(std::fs::canonicalize(&data).expect("data").as_path()),
        "{report}"
    );

    // Load into each service per request of the loadgen, over 10 s, while all is healthy.
    let measure = || {
        let (ok, out) = vigil(&["stat", "--window", "10s", "-o", "json"]);
        assert!(ok, "vigil stat:\n{out}");
        out.find('{')
            .and_then(|i| {
                serde_json::Deserializer::from_str(&out[i..])
                    .into_iter()
                    .next()
            })
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("vigil stat -o json printed no JSON:\n{out}"))
    };
    let per_request = |report: &serde_json::Value, workload: &str| {
        let rps = |w: &str, direction: &str| {
            report["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["workload"] == w && r["direction"] == direction)
                .map(|r| r["rps"].as_f64().unwrap_or(0.0))
                .sum::<f64>()
        };
        let load = rps("loadgen", "outbound");
        assert!(load > 0.0, "the loadgen sends nothing: {report}");
        rps(workload, "inbound") / load
    };
    let healthy = measure();

    let pid_of = |name: &str| {
        std::fs::read_to_string(data.join("pids").join(format!("{name}.pid")))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("vigil demo wrote no pid file for {name}"))
    };
    let children: Vec<u32> = [
        "proxy-web",
        "proxy-orders",
        "proxy-inventory",
        "proxy-loadgen",
        "app-web",
        "app-orders",
    ]
    .iter()
    .map(|n| pid_of(n))
    .collect();
    let payments = pid_of("proxy-payments");
    // SIGKILL, as a crash: on SIGTERM the proxy drains first and says so on /ready.
    let status = Command::new("kill")
        .args(["-KILL", &payments.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (ok, report) = check(&mesh_file);
        if !ok {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "vigil check still passes:\n{report}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(report.contains("✗ proxy payments ready"), "{report}");
    assert!(
        report.contains("hint: the proxy for payments is not running"),
        "{report}"
    );
    assert!(
        report.contains("✓ proxy orders ready"),
        "only payments fails:\n{report}"
    );
    assert!(
        report.contains(&format!("mesh: {}", mesh_file.display())),
        "a failing check names the mesh file it read:\n{report}"
    );

    // With payments' proxy down: a table all the same, with a line naming the proxy it
    // could not read; and no hop in front of payments retries its failures.
    let table = stat(&[]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("payments") && l.contains("NOT READ")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("web ")),
        "the other proxies' rows are there:\n{table}"
    );
    println!("vigil stat with payments' proxy down:\n{table}");
    let json = stat(&["-o", "json"]);
    let report: serde_json::Value = json
        .find('{')
        .and_then(|i| {
            serde_json::Deserializer::from_str(&json[i..])
                .into_iter()
                .next()
        })
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("vigil stat -o json printed no JSON:\n{json}"));
    for (workload, service) in [("loadgen", "web.shop"), ("web", "orders.shop")] {
        let e = edge(&report, workload, service);
        assert_eq!(e["retried"], 0, "{workload} → {service} retried: {e}");
    }
    // The healthy services behind take no more per request of the loadgen than before
    // (retries go only to the endpoint that refused the connection, within the budget),
    // and no edge into them shows an amplification.
    let degraded = measure();
    for workload in ["web", "orders", "inventory"] {
        let (before, after) = (
            per_request(&healthy, workload),
            per_request(&degraded, workload),
        );
        println!("{workload}: {before:.2} requests per loadgen request healthy, {after:.2} with payments down");
        assert!(
            after <= before * 1.5 + 0.1,
            "{workload} takes {after:.2} requests per loadgen request with payments down, {before:.2} before:\n{degraded}"
        );
    }
    for (workload, service) in [("loadgen", "web.shop"), ("web", "orders.shop")] {
        let e = edge(&degraded, workload, service);
        assert_eq!(
            e["amplification"].as_f64(),
            Some(1.0),
            "{workload} → {service}: {e}"
        );
    }
    // The flaky inventory's route opts into retrying its 503s: within the default budget,
    // 20% of the requests plus one retry a second.
    let e = edge(&degraded, "orders", "inventory.shop");
    let rps = e["rps"].as_f64().unwrap_or(0.0);
    let amplification = e["amplification"].as_f64().unwrap_or(f64::NAN);
    assert!(
        rps > 0.0 && amplification <= 1.0 + 0.2 + 1.0 / rps + 1e-9,
        "orders → inventory beyond its retry budget: {e}"
    );

    // Ctrl-C stops everything it started.
    demo.interrupt();
    let status = demo.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "vigil demo did not stop on SIGINT:\n{}",
        demo.output()
    );
    let out = demo.output();
    assert!(out.contains("stopped; nothing left running"), "{out}");
    for pid in children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived vigil demo"
        );
    }
    assert!(
        std::net::TcpListener::bind(DASHBOARD).is_ok(),
        "the dashboard port is still taken after the demo stopped"
    );
}
