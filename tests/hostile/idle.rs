//! 10,000 idle keep-alive connections held against one proxy's outbound port: the proxy
//! keeps answering, and the test reports what each idle connection costs in memory.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const IDLE: usize = 10_000;
/// Connections opened at once while building up the idle set.
const BATCH: usize = 250;

/// Opens a connection, makes one request (answered by the proxy itself: an unknown
/// service), reads the whole answer and leaves the connection idle.
async fn idle_connection(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /idle HTTP/1.1\r\nHost: idle.invalid\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(tcp);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_connections_leave_the_proxy_serving() {
    let _one_at_a_time = serial().await;
    // Sockets on both ends live in this process and the proxy it starts.
    let limit = raise_open_files(65_536);
    assert!(
        limit as usize > IDLE + 1000,
        "RLIMIT_NOFILE is {limit}: run as root or raise the hard limit above {}",
        IDLE + 1000
    );
    // Idle HTTP/1 connections are closed after the header read timeout (10 s by
    // default); hold these for the whole measurement.
    let mut pair = Pair::start(PairOptions::client(&["--header-read-timeout", "300s"])).await;
    let steady = Steady::start(pair.client.outbound, "server");
    let pid = pair.proxy("client").pid().expect("running");
    for _ in 0..20 {
        let r = vigil_e2e::http1(pair.client.outbound, "server", "/warm", &[])
            .await
            .expect("warm-up");
        assert_eq!(r.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let fds_before = open_fds(pid);

    let mut held = Vec::with_capacity(IDLE);
    while held.len() < IDLE {
        let batch = (IDLE - held.len()).min(BATCH);
        let opened =
            futures::future::join_all((0..batch).map(|_| idle_connection(pair.client.outbound)))
                .await;
        for c in opened {
            match c {
                Ok(tcp) => held.push(tcp),
                Err(e) => panic!(
                    "idle connection {} failed: {e}\n{}",
                    held.len(),
                    pair.mesh.logs()
                ),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let fds_after = open_fds(pid);

    let r = vigil_e2e::http1(pair.client.outbound, "server", "/while-idle", &[])
        .await
        .expect("a normal request beside 10,000 idle connections");
    assert_eq!(r.status, 200, "{}", r.body);

    let still_open = held
        .iter()
        .filter(|tcp| {
            let mut probe = [0u8; 1];
            matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let per_connection = after.saturating_sub(before) as f64 * 1024.0 / IDLE as f64;
    println!(
        "idle connections: {IDLE} held ({still_open} still open), proxy fds {fds_before} -> {fds_after}, \
         VmRSS {before} KiB -> {after} KiB: {per_connection:.0} bytes per idle connection"
    );
    assert_eq!(still_open, IDLE, "the proxy dropped idle connections");
    assert!(
        fds_after >= fds_before + IDLE,
        "the proxy holds every connection"
    );
    assert!(pair.proxy("client").running());
    drop(held);
    steady.finish(|| pair.mesh.logs()).await;
}
