//! Two replicas of the control plane serve one mesh (same mesh file, same data directory
//! and CA), as real processes: proxies spread over them, move to the other when theirs
//! stops, and no request fails meanwhile; changes and new proxies keep being served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil_e2e::*;

/// Streams the control plane on `dashboard` has open, from its own `/metrics`; 0 when it
/// does not answer.
async fn streams(dashboard: SocketAddr) -> f64 {
    metric_value(&metrics(dashboard).await, "vigil_discovery_streams")
}

/// The discovery replica a proxy watches, when it is connected.
async fn watching(admin: SocketAddr) -> Option<String> {
    let (_, body) = get(admin, "/config").await.ok()?;
    let config: serde_json::Value = serde_json::from_str(&body).ok()?;
    if config["control_plane_connected"] != true {
        return None;
    }
    config["control_plane"]["discovery_replica"]
        .as_str()
        .map(str::to_string)
}

/// Polls `check` every 100 ms until it holds, for at most 20 s.
async fn eventually<F, Fut>(what: &str, mesh: &Mesh, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_fail_over_between_control_plane_replicas_without_a_failed_request() {
    let spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
        WorkloadSpec::new("late", "demo"),
    ])
    .service("server", "http", &["server"], None)
    .with_replicas(1);
    let [_, discovery_1, dashboard_1] = spec.replicas[0];
    let dashboard_0 = spec.dashboard;
    let mut mesh = Mesh::start(spec).await.expect("replica 0 starts");
    let mut replica_1 = start_control_plane_replica(mesh.dir.path(), &mesh.spec, 1)
        .await
        .expect("replica 1 starts on the same data directory");
    start_echo_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("server app");
    for w in ["client", "server"] {
        mesh.start_proxy(w).await.expect("proxy starts");
    }
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();
    eventually("both proxies watch one of the replicas", &mesh, || async {
        streams(dashboard_0).await + streams(dashboard_1).await == 2.0
    })
    .await;

    // Traffic all along, through the client proxy to the server's.
    let running = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // What the test is doing, named in each failure.
    let phase = Arc::new(Mutex::new("both replicas up"));
    let traffic = tokio::spawn({
        let (running, answered, failures, phase) = (
            running.clone(),
            answered.clone(),
            failures.clone(),
            phase.clone(),
        );
        async move {
            while running.load(Ordering::Relaxed) {
                let failed = match http1(client.outbound, "server", "/steady", &[]).await {
                    Ok(r) if r.status == 200 => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Ok(r) => Some(format!(
                        "{}: {:?} {}",
                        r.status,
                        r.headers.get("x-vigil-error"),
                        r.body
                    )),
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(failed) = failed {
                    let during = *phase.lock().unwrap();
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("while {during}: {failed}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // Replica 0 goes away: every proxy watches replica 1.
    *phase.lock().unwrap() = "replica 0 was stopped";
    mesh.stop_control_plane();
    eventually("both proxies move to replica 1", &mesh, || async {
        watching(client.admin).await == Some(discovery_1.to_string())
            && watching(server.admin).await == Some(discovery_1.to_string())
    })
    .await;
    assert_eq!(streams(dashboard_1).await, 2.0);

    // A change reaches them through replica 1.
    *phase.lock().unwrap() = "a service was added";
    let with_v2 = mesh
        .spec
        .clone()
        .service("server-v2", "http", &["server"], None);
    mesh.rewrite_mesh_file(&with_v2.yaml()).expect("mesh file");
    eventually("the new service works through replica 1", &mesh, || async {
        http1(client.outbound, "server-v2", "/", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;

    *phase.lock().unwrap() = "a proxy started";
    // A proxy started now is given both replicas, replica 0 first, and gets its
    // certificate and its view from replica 1.
    mesh.start_proxy("late")
        .await
        .expect("a proxy starts while one replica is down");
    let late = mesh.spec.workload("late").clone();
    let r = http1(late.outbound, "server-v2", "/from-late", &[])
        .await
        .expect("request from the late proxy");
    assert_eq!(r.status, 200, "{}", r.body);

    // Back the other way: replica 0 returns, replica 1 goes.
    *phase.lock().unwrap() = "replica 0 came back and replica 1 was stopped";
    mesh.restart_control_plane().await.expect("replica 0 again");
    replica_1.kill();
    eventually("all three proxies move to replica 0", &mesh, || async {
        streams(dashboard_0).await == 3.0
    })
    .await;
    *phase.lock().unwrap() = "a service was removed";
    mesh.rewrite_mesh_file(&mesh.spec.yaml())
        .expect("mesh file");
    eventually(
        "the removal reaches the proxies through replica 0",
        &mesh,
        || async {
            http1(client.outbound, "server-v2", "/", &[])
                .await
                .is_ok_and(|r| r.status == 404)
        },
    )
    .await;

    // Enough requests to mean something, however fast the steps above went.
    eventually("100 requests answered", &mesh, || async {
        answered.load(Ordering::Relaxed) >= 100 || !failures.lock().unwrap().is_empty()
    })
    .await;
    running.store(false, Ordering::Relaxed);
    traffic.await.expect("traffic task");
    let failures = failures.lock().unwrap().clone();
    let answered = answered.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while replicas came and went: {:?}\n{}\n--- replica 1 ---\n{}",
        failures.len(),
        answered + failures.len() as u64,
        &failures[..failures.len().min(5)],
        mesh.logs(),
        replica_1.output()
    );
    assert!(answered >= 100, "only {answered} requests were sent");
}
