//! Each request is recorded once, from a guard dropped at its end, on both proxies: a
//! caller that leaves before the answer is still counted (status 499, reason
//! `cancelled`), not lost from the metrics and the tap.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use vigil_e2e::*;

#[tokio::test]
async fn a_request_whose_caller_leaves_is_recorded_as_cancelled() {
    let client = WorkloadSpec::new("client", "demo");
    let server = WorkloadSpec::new("server", "demo");
    let spec = MeshSpec::new(vec![client.clone(), server.clone()]).service(
        "server",
        "http",
        &["server"],
        None,
    );
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let app = start_app(server.app_port, "server").await.expect("app");
    app.delay_ms.store(3_000, Ordering::Relaxed);
    mesh.start_proxy("client").await.expect("client proxy");
    mesh.start_proxy("server").await.expect("server proxy");

    let mut tcp = tokio::net::TcpStream::connect(client.outbound)
        .await
        .expect("connect");
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .expect("write");
    // Wait until the request is at the app, then leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.hits.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tcp);

    let series = "vigil_proxy_errors_total{direction=\"outbound\",reason=\"cancelled\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = metrics(client.metrics).await;
        if metric_value(&exposition, series) >= 1.0 {
            assert!(
                exposition.contains("status_class=\"4xx\""),
                "the cancelled request is counted among requests:\n{exposition}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cancelled request recorded:\n{exposition}\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
