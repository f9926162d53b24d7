//! Retries must not multiply the load on a failing service: with real proxies in front
//! of an app that answers every request with 503, a mesh file that says nothing about
//! retries sends each request to the app once (only requests that never reached an app
//! are retried by default), and a route that opts into status retries sends at most
//! what its retry budget allows on top.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_e2e::*;

const REQUESTS: u64 = 60;

/// A client and a `stock` service of one workload whose app fails every request.
async fn failing_pair(traffic: &[(&str, serde_json::Value)]) -> (Mesh, Arc<App>) {
    let spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("stock", "demo"),
    ])
    .service("stock", "http", &["stock"], None);
    let mut mesh = Mesh::start_with_traffic(spec, traffic)
        .await
        .expect("control plane starts");
    let app = start_app(mesh.spec.workload("stock").app_port, "stock")
        .await
        .expect("app");
    app.fail_percent.store(100, Ordering::Relaxed);
    for w in ["client", "stock"] {
        if let Err(e) = mesh.start_proxy(w).await {
            panic!("proxy {w}: {e}\n{}", mesh.logs());
        }
    }
    (mesh, app)
}

/// Sends [`REQUESTS`] GETs through the client's proxy; every answer must be the app's 503.
async fn send_all(mesh: &Mesh) -> Duration {
    let via = mesh.spec.workload("client").outbound;
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let r = http1(via, "stock", "/items", &[]).await.expect("reply");
        assert_eq!(r.status, 503, "{}\n{}", r.body, mesh.logs());
        assert!(
            r.body.contains("stock"),
            "the app's own answer, not the proxy's: {}",
            r.body
        );
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_each_request_reaches_a_failing_app_once() {
    let (mesh, app) = failing_pair(&[]).await;
    send_all(&mesh).await;
    let hits = app.hits.load(Ordering::Relaxed);
    let exposition = metrics(mesh.spec.workload("client").metrics).await;
    let retries = metric_value(&exposition, "vigil_retries_total{service=\"stock.demo\"}");
    println!(
        "default policy, app answers 503: {hits} tries for {REQUESTS} requests \
         (amplification {:.2}), retries {retries}",
        hits as f64 / REQUESTS as f64
    );
    assert_eq!(hits, REQUESTS, "no request reached the app twice");
    assert_eq!(retries, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn opted_in_status_retries_stay_within_the_budget() {
    let policy = json!({"routes": [
        {"path_prefix": "/items", "retries": {"on": [503, "connect-failure"]}}
    ]});
    let (mesh, app) = failing_pair(&[("stock", policy)]).await;
    let took = send_all(&mesh).await;
    let hits = app.hits.load(Ordering::Relaxed);
    let exposition = metrics(mesh.spec.workload("client").metrics).await;
    let retries = metric_value(&exposition, "vigil_retries_total{service=\"stock.demo\"}");
    let refused = metric_value(
        &exposition,
        "vigil_retry_budget_exhausted_total{service=\"stock.demo\"}",
    );
    // The default budget: 20% of the requests plus 1/s over each 10 s window the run
    // touched (counted generously, so the bound never depends on speed).
    let windows = took.as_secs() / 10 + 2;
    let budget = 0.2 * REQUESTS as f64 + 10.0 * windows as f64;
    println!(
        "503 retries opted in: {hits} tries for {REQUESTS} requests (amplification {:.2}), \
         retries {retries}, budget refusals {refused}, budget {budget} over {took:?}",
        hits as f64 / REQUESTS as f64
    );
    assert!(retries > 0.0, "the route's 503s were retried");
    assert_eq!(
        hits as f64,
        REQUESTS as f64 + retries,
        "every retry counted"
    );
    assert!(
        retries <= budget,
        "{retries} retries for {REQUESTS} requests exceed the budget ({budget})"
    );
    assert!(refused > 0.0, "the budget, not the attempts, stopped them");
}
