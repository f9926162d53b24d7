//! Graceful shutdown under load. SIGTERM to a proxy carrying an open-loop 500 requests a
//! second (each on its own connection, so every request is either accepted or refused at
//! connect): every request the proxy accepted gets its whole response, and once the drain
//! starts new connections are refused. Also `POST /shutdown`: not ready first, in-flight
//! requests finish, then the process exits by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::*;

const RATE: u64 = 500;
const LOAD: Duration = Duration::from_secs(10);
const SIGTERM_AT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// The connection attempt failed: refused after the drain started.
    refused: AtomicU64,
    /// Connected, then anything but a complete 200.
    accepted_but_failed: AtomicU64,
    /// Connected before SIGTERM and answered after it: in flight across the signal.
    spanning: AtomicU64,
    /// Connected and not answered yet.
    in_flight: AtomicU64,
    sigterm: std::sync::OnceLock<Instant>,
    failures: Mutex<Vec<String>>,
}

/// One request on its own connection.
async fn one(addr: std::net::SocketAddr, tally: Arc<Tally>) {
    let tcp = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        _ => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let connected = Instant::now();
    tally.in_flight.fetch_add(1, Ordering::Relaxed);
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let request = http::Request::get("/drain")
            .header("host", "server")
            .body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status == 200 && body.starts_with(b"{\"body_len\""),
            "status {status}, body {:?}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok(())) => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            if tally.sigterm.get().is_some_and(|at| connected < *at) {
                tally.spanning.fetch_add(1, Ordering::Relaxed);
            }
        }
        other => {
            tally.accepted_but_failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = tally.failures.lock() {
                if f.len() < 10 {
                    f.push(format!("{other:?}"));
                }
            }
        }
    }
    tally.in_flight.fetch_sub(1, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_request() {
    let _one_at_a_time = serial().await;
    let mut pair = Pair::start(PairOptions::default()).await;
    pair.app.delay_ms.store(50, Ordering::Relaxed);
    let target = pair.client.outbound;
    let tally = Arc::new(Tally::default());

    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let start = Instant::now();
    let mut requests = Vec::new();
    while start.elapsed() < LOAD {
        ticks.tick().await;
        // At the first moment past SIGTERM_AT with requests in flight (a load generator
        // starved of CPU can fall silent for longer than a request takes).
        if tally.sigterm.get().is_none()
            && start.elapsed() >= SIGTERM_AT
            && tally.in_flight.load(Ordering::Relaxed) > 0
        {
            let _ = tally.sigterm.set(Instant::now());
            pair.proxy("client").terminate();
        }
        requests.push(tokio::spawn(one(target, tally.clone())));
    }
    let sent = requests.len();
    for r in requests {
        r.await.expect("request task");
    }
    let exit = pair.proxy("client").wait_exit(Duration::from_secs(30));

    let ok = tally.ok.load(Ordering::Relaxed);
    let refused = tally.refused.load(Ordering::Relaxed);
    let failed = tally.accepted_but_failed.load(Ordering::Relaxed);
    let in_flight = tally.spanning.load(Ordering::Relaxed);
    println!(
        "SIGTERM at {SIGTERM_AT:?} of {LOAD:?} at {RATE} req/s: {sent} sent, {ok} complete 200s, \
         {refused} refused at connect after the drain, {failed} accepted but failed; \
         {in_flight} of the 200s were in flight across the SIGTERM"
    );
    let failures = tally.failures.lock().map(|f| f.clone()).unwrap_or_default();
    assert_eq!(
        failed,
        0,
        "accepted requests failed: {failures:?}\n{}",
        pair.mesh.logs()
    );
    assert_eq!(ok + refused, sent as u64);
    assert!(
        in_flight > 0,
        "nothing was in flight at SIGTERM: the test proved nothing"
    );
    assert!(refused > 0, "the drain never refused a connection");
    assert!(ok > 1000, "only {ok} requests completed before the drain");
    assert!(
        exit.is_some_and(|s| s.success()),
        "the proxy exits by itself, successfully, once drained: {exit:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_shutdown_reports_not_ready_then_finishes_in_flight_requests() {
    let _one_at_a_time = serial().await;
    let mut pair = Pair::start(PairOptions::default()).await;
    pair.app.delay_ms.store(3000, Ordering::Relaxed);
    let client = pair.client.clone();
    // The kubelet probes readiness on the metrics port (the admin port is loopback-only).
    let (ready, body) = vigil_e2e::get(client.metrics, "/ready")
        .await
        .expect("ready");
    assert_eq!((ready, body.as_str()), (200, "ready\n"));

    let slow = tokio::spawn(vigil_e2e::http1(
        client.outbound,
        "server",
        "/in-flight",
        &[],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pair.app.started("/in-flight") == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shutdown = admin_post(client.admin, "/shutdown").await;
    assert_eq!(shutdown, 202);
    let (ready, body) = vigil_e2e::get(client.admin, "/ready").await.expect("ready");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let (ready, body) = vigil_e2e::get(client.metrics, "/ready")
        .await
        .expect("ready");
    assert_eq!(ready, 503, "the metrics port's /ready turns too: {body}");
    assert!(
        TcpStream::connect(client.outbound).await.is_err(),
        "new connections are refused while draining"
    );
    let r = slow.await.expect("task").expect("the in-flight request");
    assert_eq!(r.status, 200, "{}", r.body);
    let exit = pair.proxy("client").wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

/// `POST path` on the admin port; the status.
async fn admin_post(addr: std::net::SocketAddr, path: &str) -> u16 {
    vigil_e2e::send1(addr, "POST", "localhost", path, &[], bytes::Bytes::new())
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}
