//! Request limits and idle timeouts: a long request line gets 414, too many header fields
//! 431, a body over the limit 413 (declared or streamed), none of them reaching the app;
//! idle HTTP/2 connections get a GOAWAY and idle tunnels are closed, while a response
//! still streaming and a tunnel still carrying bytes are left alone.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_e2e::*;

use crate::support::*;

/// The status and `x-vigil-error` of a raw HTTP/1 answer.
fn answer(got: &Exchange) -> (Option<u16>, String) {
    let text = got.text();
    let reason = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-vigil-error:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (got.status(), reason)
}

fn chunked(path: &str, bytes: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..bytes / 1024 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b'x'; 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_limits_get_414_431_and_413_and_never_reach_the_app() {
    let _one_at_a_time = serial().await;
    // Limits on the server proxy, which the client proxy reaches over HTTP/2; the client
    // proxy keeps its defaults (16 KiB request line), which HTTP/1 clients meet.
    let pair = Pair::start(PairOptions {
        server_args: [
            "--max-request-line-bytes",
            "2048",
            "--max-headers",
            "50",
            "--max-request-body-bytes",
            "65536",
        ]
        .map(String::from)
        .to_vec(),
        ..PairOptions::default()
    })
    .await;
    let steady = Steady::start(pair.client.outbound, "server");
    let outbound = pair.client.outbound;

    let long_query = format!(
        "GET /long-line?q={} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
        "a".repeat(4096)
    );
    let many_headers = format!(
        "GET /many-headers HTTP/1.1\r\nHost: server\r\nConnection: close\r\n{}\r\n",
        (0..80)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let declared = format!(
        "POST /declared HTTP/1.1\r\nHost: server\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n{}",
        "x".repeat(100_000)
    );
    let very_long_line = format!(
        "GET /very-long-line?q={} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "a 4 KiB request line, over the server's 2 KiB",
            "/long-line",
            long_query.into_bytes(),
            414,
            "request-line-too-long",
        ),
        (
            "a 20 KiB request line, over the client proxy's default 16 KiB",
            "/very-long-line",
            very_long_line.into_bytes(),
            414,
            "request-line-too-long",
        ),
        (
            "80 header fields, over the server's 50",
            "/many-headers",
            many_headers.into_bytes(),
            431,
            "too-many-headers",
        ),
        (
            "a declared 100 kB body, over the server's 64 KiB",
            "/declared",
            declared.into_bytes(),
            413,
            "body-too-large",
        ),
        (
            "a chunked 100 KiB body, over the server's 64 KiB",
            "/chunked",
            chunked("/chunked", 100 * 1024),
            413,
            "body-too-large",
        ),
    ];
    let mut problems = Vec::new();
    for (what, path, request, status, reason) in cases {
        let got = raw_exchange(outbound, &request).await;
        let (got_status, got_reason) = answer(&got);
        if got_status != Some(status) || got_reason != reason || pair.app.completed(path) != 0 {
            problems.push(format!(
                "{what}: wanted {status} {reason}, got {got_status:?} {got_reason:?}; \
                 the app saw it start {} times and complete {} times:\n{}",
                pair.app.started(path),
                pair.app.completed(path),
                got.text().chars().take(300).collect::<String>()
            ));
        }
        // Only a body streamed past the limit may have begun to reach the app.
        if path != "/chunked" && pair.app.started(path) != 0 {
            problems.push(format!("{what}: the app saw the request start"));
        }
    }
    // Just under every limit still goes through the whole pair.
    let fits = chunked("/fits", 60 * 1024);
    let got = raw_exchange(outbound, &fits).await;
    if got.status() != Some(200) || pair.app.completed("/fits") != 1 {
        problems.push(format!(
            "a chunked 60 KiB body, under the limit: {:?}, app completed {}\n{}",
            got.status(),
            pair.app.completed("/fits"),
            got.text().chars().take(300).collect::<String>()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    steady.finish(|| pair.mesh.logs()).await;
}

/// A GET of `path` from service `server` over a new HTTP/2 connection (prior knowledge)
/// to `addr`: the `200` response's body, the connection's request handle (holding it
/// keeps the client side open) and the task driving the connection, which ends when the
/// proxy closes it.
async fn h2_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> (
    h2::RecvStream,
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = http::Request::get(format!("http://server{path}"))
        .body(())
        .expect("request");
    let (response, _) = send.send_request(request, true).expect("send");
    let response = response.await.expect("answered");
    assert_eq!(response.status(), 200, "GET {path}");
    (response.into_body(), send, driver)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_http2_connections_get_a_goaway_but_a_streaming_response_finishes() {
    let _one_at_a_time = serial().await;
    let pair = Pair::start(PairOptions::client(&["--idle-timeout", "2s"])).await;
    let steady = Steady::start(pair.client.outbound, "server");

    // An HTTP/2 client (prior knowledge) that makes one request and goes quiet.
    let (mut body, _send, driver) = h2_get(pair.client.outbound, "/quick").await;
    while let Some(chunk) = body.data().await {
        chunk.expect("body");
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), driver).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "an idle HTTP/2 connection was not closed cleanly (GOAWAY) within 30 s of a 2 s \
         idle timeout: {closed:?}"
    );

    // A response streaming for longer than the idle timeout is not cut.
    let (mut body, send, driver) = h2_get(pair.client.outbound, "/stream").await;
    let mut ticks = 0;
    let streaming_since = std::time::Instant::now();
    while streaming_since.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
            Ok(Some(Ok(chunk))) => {
                ticks += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            other => panic!(
                "a response still streaming was cut after {:?} ({ticks} bytes): {other:?}\n{}",
                streaming_since.elapsed(),
                pair.mesh.logs()
            ),
        }
    }
    drop(body);
    drop(send);
    let _ = tokio::time::timeout(Duration::from_secs(30), driver).await;
    steady.finish(|| pair.mesh.logs()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_are_closed_and_busy_ones_are_not() {
    let _one_at_a_time = serial().await;
    let (mesh, upstream) = tcp_echo_mesh(&["--idle-timeout", "3s"])
        .await
        .expect("a pair with a TCP service");

    let mut tcp = TcpStream::connect(upstream).await.expect("connect");
    // Busy: a message every 500 ms for 8 s, across more than two idle timeouts.
    let busy_since = std::time::Instant::now();
    let mut sent = 0;
    while busy_since.elapsed() < Duration::from_secs(8) {
        let message = format!("ping {sent}\n");
        tcp.write_all(message.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("echo timed out\n{}", mesh.logs()))
            .unwrap_or_else(|e| {
                panic!(
                    "a busy tunnel was closed after {:?}: {e}\n{}",
                    busy_since.elapsed(),
                    mesh.logs()
                )
            });
        assert_eq!(buf, message.as_bytes());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Quiet: closed after the idle timeout.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "an idle tunnel was still open 30 s into a 3 s idle timeout: {read:?}\n{}",
        mesh.logs()
    );
}
