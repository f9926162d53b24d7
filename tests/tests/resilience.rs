//! Resilience end to end: a client calls a service of three workloads, each behind its
//! own proxy, while endpoints die, fail, recover, stall or slow down. The tests assert
//! behaviour by counting (successes, tries, ejections), never by wall-clock speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_e2e::*;

const ENDPOINTS: [&str; 3] = ["web-a", "web-b", "web-c"];

fn spec() -> MeshSpec {
    let mut workloads = vec![WorkloadSpec::new("client", "demo")];
    workloads.extend(ENDPOINTS.iter().map(|w| WorkloadSpec::new(w, "demo")));
    MeshSpec::new(workloads).service("web", "http", &ENDPOINTS, None)
}

/// A running mesh: the client's proxy, and three endpoints each with an app and a proxy.
struct Fixture {
    mesh: Mesh,
    apps: Vec<Arc<App>>,
    client: WorkloadSpec,
}

impl Fixture {
    async fn start(spec: MeshSpec, traffic: &[(&str, serde_json::Value)]) -> Fixture {
        let mut mesh = Mesh::start_with_traffic(spec, traffic)
            .await
            .expect("control plane starts");
        let mut apps = vec![];
        for w in ENDPOINTS {
            let port = mesh.spec.workload(w).app_port;
            apps.push(start_app(port, w).await.expect("app"));
        }
        for w in std::iter::once("client").chain(ENDPOINTS) {
            if let Err(e) = mesh.start_proxy(w).await {
                panic!("proxy {w}: {e}\n{}", mesh.logs());
            }
        }
        let client = mesh.spec.workload("client").clone();
        Fixture { mesh, apps, client }
    }

    fn app(&self, name: &str) -> &App {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .expect("app of the fixture")
    }

    fn hits(&self) -> Vec<u64> {
        self.apps
            .iter()
            .map(|a| a.hits.load(Ordering::Relaxed))
            .collect()
    }

    async fn metrics(&self) -> String {
        metrics(self.client.metrics).await
    }
}

/// Outcome of a batch of requests.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok + self.failed
    }
    fn success_rate(&self) -> f64 {
        self.ok as f64 / self.total().max(1) as f64
    }
}

/// Sends `total` GETs for `path` to `host` through the client's proxy from `workers`
/// concurrent keep-alive connections; `sent` counts requests as they finish.
async fn traffic(
    via: std::net::SocketAddr,
    host: &'static str,
    path: &'static str,
    total: u64,
    workers: u64,
    sent: Arc<AtomicU64>,
) -> Tally {
    let mut tasks = vec![];
    for _ in 0..workers {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let client = pooled_client();
            let mut tally = Tally::default();
            while sent.fetch_add(1, Ordering::Relaxed) < total {
                match call(&client, via, host, path).await {
                    Ok(r) if r.status == 200 => tally.ok += 1,
                    other => {
                        tally.failed += 1;
                        if tally.failures.len() < 5 {
                            tally.failures.push(format!("{other:?}"));
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut sum = Tally::default();
    for t in tasks {
        let t = t.await.expect("traffic task");
        sum.ok += t.ok;
        sum.failed += t.failed;
        sum.failures.extend(t.failures);
    }
    sum
}

async fn run_traffic(f: &Fixture, total: u64, workers: u64) -> Tally {
    traffic(
        f.client.outbound,
        "web",
        "/",
        total,
        workers,
        Arc::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_endpoint_costs_next_to_no_requests() {
    let mut f = Fixture::start(spec(), &[]).await;
    let sent = Arc::new(AtomicU64::new(0));
    let total = 2000;
    let run = tokio::spawn(traffic(
        f.client.outbound,
        "web",
        "/",
        total,
        4,
        sent.clone(),
    ));
    while sent.load(Ordering::Relaxed) < total / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = f.hits();
    f.mesh.kill_proxy("web-b");
    let tally = run.await.expect("traffic");
    let after = f.hits();
    println!(
        "(a) one of three endpoints killed after {} requests: {}/{} succeeded ({:.2}%); \
         hits a/b/c before {before:?}, after {after:?}",
        total / 4,
        tally.ok,
        tally.total(),
        tally.success_rate() * 100.0
    );
    assert!(before[1] > 0, "web-b took traffic before it died");
    // Only requests already sent to web-b when it died may fail (one per worker at
    // most): they may have reached its app, so they are not retried by default. Every
    // later one is a connect failure, retried on another endpoint.
    assert!(tally.failed <= 4, "{tally:?}\n{}", f.mesh.logs());
    let exposition = f.metrics().await;
    println!(
        "(a) retries {}, web-b ejections {}",
        metric_value(&exposition, "vigil_retries_total{service=\"web.demo\"}"),
        metric_value(
            &exposition,
            "vigil_endpoint_ejections_total{service=\"web.demo\",endpoint=\"web-b\"}"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_hide_an_endpoint_failing_30_percent_within_the_budget() {
    // Status retries are opt-in: this service's reads may be tried elsewhere on a 503.
    let opted_in = json!({"retries": {"on": [503, "connect-failure"]}});
    let f = Fixture::start(spec(), &[("web", opted_in)]).await;
    f.app("web-b").fail_percent.store(30, Ordering::Relaxed);
    let requests = 1500;
    let started = Instant::now();
    let tally = run_traffic(&f, requests, 3).await;
    let took = started.elapsed();
    let hits = f.hits();
    let attempts: u64 = hits.iter().sum();
    let exposition = f.metrics().await;
    let retries = metric_value(&exposition, "vigil_retries_total{service=\"web.demo\"}");
    let exhausted = metric_value(
        &exposition,
        "vigil_retry_budget_exhausted_total{service=\"web.demo\"}",
    );
    let amplification = attempts as f64 / requests as f64;
    println!(
        "(b) web-b fails 30%: {}/{} succeeded ({:.2}%); {attempts} tries for {requests} \
         requests: amplification {amplification:.3} (retries {retries}, budget refusals \
         {exhausted}); hits a/b/c {hits:?}",
        tally.ok,
        tally.total(),
        tally.success_rate() * 100.0
    );
    assert!(tally.success_rate() > 0.99, "{tally:?}");
    assert_eq!(
        attempts as f64 - requests as f64,
        retries,
        "every extra try is a counted retry"
    );
    // The budget: 20% of requests plus 1/s over each 10 s window the run touched; the
    // floor is counted generously so the bound never depends on speed.
    let floor = 10.0 * (took.as_secs() / 10 + 2) as f64;
    assert!(
        retries <= 0.2 * requests as f64 + floor,
        "{retries} retries exceed the budget"
    );
    assert!(
        hits[1] > 0 && retries > 0.0,
        "web-b took traffic and failed some"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_is_ejected_and_readmitted_when_it_recovers() {
    let breaker = json!({"circuit_breaker": {
        "consecutive_failures": 3, "base_ejection": "500ms", "max_ejection": "2s"
    }});
    let mut f = Fixture::start(spec(), &[("web", breaker)]).await;
    let warm = run_traffic(&f, 60, 1).await;
    assert_eq!(warm.failed, 0, "{warm:?}");
    f.mesh.kill_proxy("web-c");

    let ejections = "vigil_endpoint_ejections_total{service=\"web.demo\",endpoint=\"web-c\"}";
    let open = "vigil_circuit_breaker_open{service=\"web.demo\",endpoint=\"web-c\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut while_dead = Tally::default();
    while metric_value(&f.metrics().await, ejections) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "never ejected\n{}",
            f.mesh.logs()
        );
        let t = run_traffic(&f, 20, 1).await;
        while_dead.ok += t.ok;
        while_dead.failed += t.failed;
    }
    let exposition = f.metrics().await;
    assert_eq!(metric_value(&exposition, open), 1.0, "{exposition}");
    // Ejected or not, callers never saw the dead endpoint: connect failures are retried.
    assert_eq!(while_dead.failed, 0, "{while_dead:?}");

    // It comes back: a probe finds it healthy and it takes traffic again.
    let c_hits = f.app("web-c").hits.load(Ordering::Relaxed);
    f.mesh.start_proxy("web-c").await.expect("web-c restarts");
    let back = Instant::now();
    let mut requests = 0;
    while f.app("web-c").hits.load(Ordering::Relaxed) == c_hits
        || metric_value(&f.metrics().await, open) != 0.0
    {
        assert!(
            Instant::now() < back + Duration::from_secs(60),
            "never readmitted\n{}",
            f.mesh.logs()
        );
        let t = run_traffic(&f, 20, 1).await;
        assert_eq!(t.failed, 0, "{t:?}");
        requests += 20;
    }
    println!(
        "(c) web-c ejected after its proxy died ({} requests meanwhile, none failed); \
         readmitted within {requests} requests of coming back; ejections {}",
        while_dead.ok,
        metric_value(&f.metrics().await, ejections)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_and_full_queues_fail_fast_with_a_reason() {
    let spec = spec()
        .service("tight", "http", &ENDPOINTS, None)
        .service("tighter", "http", &ENDPOINTS, None);
    let f = Fixture::start(
        spec,
        &[
            (
                "web",
                json!({"routes": [{"path_prefix": "/slow", "timeout": "500ms"}]}),
            ),
            (
                "tight",
                json!({"timeout": "30s", "limits": {"max_in_flight": 1, "max_queued": 1}}),
            ),
            (
                "tighter",
                json!({"timeout": "30s", "limits": {"max_in_flight": 1, "max_queued": 0}}),
            ),
        ],
    )
    .await;
    let via = f.client.outbound;

    // Past its route's deadline: 504, and the body says which service and how long.
    let r = http1(via, "web", "/slow/sleep/5000", &[])
        .await
        .expect("reply");
    println!(
        "(d) timeout: {} {:?} {}",
        r.status,
        r.headers.get("x-vigil-error"),
        r.body.trim()
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.headers["x-vigil-error"], "request-timeout");
    assert!(
        r.body.contains("web.demo") && r.body.contains("500ms"),
        "{}",
        r.body
    );
    // Other routes keep the service's 15 s default.
    let r = http1(via, "web", "/sleep/800", &[]).await.expect("reply");
    assert_eq!(r.status, 200, "{}", r.body);
    // Requests are counted under the route they matched.
    let exposition = f.metrics().await;
    let by_route = |route: &str, class: &str| {
        exposition.lines().any(|l| {
            l.starts_with("vigil_requests_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains("service=\"web.demo\"")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status_class=\"{class}\""))
        })
    };
    assert!(
        by_route("/slow", "5xx") && by_route("default", "2xx"),
        "requests_total by route:\n{}",
        exposition
            .lines()
            .filter(|l| l.starts_with("vigil_requests_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // One in flight, one queued: the third is refused at once.
    let hits = |f: &Fixture| f.hits().iter().sum::<u64>();
    let base = hits(&f);
    let first = tokio::spawn(http1(via, "tight", "/sleep/3000", &[]));
    while hits(&f) == base {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = tokio::spawn(http1(via, "tight", "/sleep/3000", &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = http1(via, "tight", "/sleep/3000", &[])
        .await
        .expect("reply");
    let second = second.await.expect("task").expect("reply");
    let first = first.await.expect("task").expect("reply");
    let statuses = [first.status, second.status, third.status];
    println!(
        "(d) max_in_flight 1, max_queued 1: statuses {statuses:?}, third's reason {:?}",
        third.headers.get("x-vigil-error")
    );
    assert_eq!(first.status, 200);
    let refused = [&second, &third]
        .into_iter()
        .filter(|r| r.status == 503)
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 1, "{statuses:?}");
    assert_eq!(refused[0].headers["x-vigil-error"], "queue-full");
    assert!(
        refused[0].body.contains("tight.demo"),
        "{}",
        refused[0].body
    );

    // No queue at all: overloaded.
    let base = hits(&f);
    let busy = tokio::spawn(http1(via, "tighter", "/sleep/2000", &[]));
    while hits(&f) == base {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = http1(via, "tighter", "/", &[]).await.expect("reply");
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-vigil-error"], "overloaded");
    assert_eq!(busy.await.expect("task").expect("reply").status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn load_moves_toward_the_faster_endpoints() {
    let f = Fixture::start(spec(), &[]).await;
    f.app("web-c").delay_ms.store(80, Ordering::Relaxed);
    let tally = run_traffic(&f, 600, 2).await;
    assert_eq!(tally.failed, 0, "{tally:?}");
    let hits = f.hits();
    let total: u64 = hits.iter().sum();
    let share = |i: usize| hits[i] as f64 * 100.0 / total as f64;
    println!(
        "(e) web-c answers 80 ms slower: split a/b/c = {:.1}% / {:.1}% / {:.1}% ({hits:?})",
        share(0),
        share(1),
        share(2)
    );
    // An even split would give each a third.
    assert!(
        hits[2] * 2 < hits[0] && hits[2] * 2 < hits[1],
        "the slow endpoint should get well under the others' share: {hits:?}\n{}\n{}",
        f.metrics().await,
        f.mesh.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_change_under_traffic_without_failing_a_request() {
    let spec = MeshSpec::new(
        std::iter::once("client")
            .chain(ENDPOINTS)
            .map(|w| WorkloadSpec::new(w, "demo"))
            .collect(),
    )
    .service("web", "http", &["web-a", "web-b"], None);
    let mut f = Fixture::start(spec, &[]).await;
    let sent = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(traffic(
        f.client.outbound,
        "web",
        "/sleep/20",
        1500,
        4,
        sent.clone(),
    ));

    let set = |f: &mut Fixture, endpoints: &[&str]| {
        f.mesh.spec.services[0].3 = endpoints.iter().map(|s| s.to_string()).collect();
        f.mesh
            .rewrite_mesh_file(&f.mesh.spec.yaml())
            .expect("mesh file");
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    set(&mut f, &ENDPOINTS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c_added = f.app("web-c").hits.load(Ordering::Relaxed);
    set(&mut f, &["web-b", "web-c"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_removed = f.app("web-a").hits.load(Ordering::Relaxed);
    let tally = run.await.expect("traffic");
    let hits = f.hits();
    println!(
        "(f) endpoints [a,b] → [a,b,c] → [b,c] under traffic: {}/{} succeeded; hits a/b/c {hits:?}",
        tally.ok,
        tally.total()
    );
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(c_added > 0, "web-c took traffic once added");
    assert!(
        hits[0] - a_removed <= 8,
        "web-a gets nothing new once removed (in flight aside): {a_removed} → {}",
        hits[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_traffic_policy_is_refused_and_the_last_good_view_kept() {
    let mut f = Fixture::start(spec(), &[]).await;
    // A typo'd policy that also drops web-c: if the proxy took it, web-c would go quiet.
    f.mesh.spec.services[0].3 = vec!["web-a".into(), "web-b".into()];
    let bad = yaml_with_traffic(&f.mesh.spec, &[("web", json!({"retries": {"atempts": 2}}))]);
    f.mesh.rewrite_mesh_file(&bad).expect("mesh file");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The control plane checks it as the proxies would, and keeps the file it had.
    let refused = "has a traffic policy proxies would refuse";
    while !f.mesh.logs().contains(refused) {
        assert!(
            Instant::now() < deadline,
            "never refused\n{}",
            f.mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c_before = f.app("web-c").hits.load(Ordering::Relaxed);
    let tally = run_traffic(&f, 150, 1).await;
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(
        f.app("web-c").hits.load(Ordering::Relaxed) > c_before,
        "the previous view, with web-c, is still in force"
    );
    let logs = f.mesh.logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default();
    println!("(g) {}", refusal.trim());
    assert!(
        refusal.contains("service web.demo") && refusal.contains("unknown field `atempts`"),
        "{refusal}"
    );

    // Corrected: the new view (without web-c) applies.
    let good = yaml_with_traffic(
        &f.mesh.spec,
        &[("web", json!({"retries": {"attempts": 2}}))],
    );
    f.mesh.rewrite_mesh_file(&good).expect("mesh file");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = f.app("web-c").hits.load(Ordering::Relaxed);
        let t = run_traffic(&f, 60, 1).await;
        assert_eq!(t.failed, 0, "{t:?}");
        if f.app("web-c").hits.load(Ordering::Relaxed) == c {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the corrected view never applied"
        );
    }
}
