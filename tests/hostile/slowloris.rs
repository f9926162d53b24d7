//! Slow clients: request heads trickled a byte at a time, a TLS handshake that never
//! finishes, a peer silent after its handshake, an HTTP/2 preface that stops half-way, an
//! idle keep-alive connection and a client that stops reading its response are all cut
//! off instead of holding a connection (and its memory) forever.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The proxies under test read request heads for at most this long.
const HEADER_READ_TIMEOUT: &str = "2s";
/// How long a slow client keeps going before the test calls the proxy stuck: ten times
/// the timeout, so only a proxy that never cuts it off fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// An HTTP/2 prior-knowledge preface cut two bytes short.
const HALF_PREFACE: &[u8; 22] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n";

/// What happened to a slow client.
#[derive(Debug)]
struct Trickled {
    /// The proxy closed the connection before the client gave up.
    closed: bool,
    /// Anything the proxy sent back.
    reply: String,
}

/// Sends `head` then an endless header, one byte every 100 ms, until the proxy closes
/// the connection or [`PATIENCE`] runs out.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    head: &'static str,
) -> Trickled {
    let (mut read, mut write) = tokio::io::split(stream);
    let reader = tokio::spawn(async move { read_until_closed(&mut read, PATIENCE).await });
    let writer = async move {
        let endless = head
            .bytes()
            .chain(b"X-Slow: ".iter().copied())
            .chain(std::iter::repeat(b'a'));
        for byte in endless {
            if write.write_all(&[byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        read = reader => match read {
            Ok(exchange) => Trickled {
                closed: exchange.closed,
                reply: exchange.text(),
            },
            Err(e) => panic!("the reading task failed: {e}"),
        },
        // The writer only stops early when a write fails: the proxy hung up.
        written = tokio::time::timeout(PATIENCE, writer) => Trickled {
            closed: written.is_ok(),
            reply: String::new(),
        },
    }
}

/// Sends `bytes` and then nothing; whether the proxy closed within [`PATIENCE`].
async fn stall<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> bool {
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream, PATIENCE).await.closed
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off() {
    let _one_at_a_time = serial().await;
    let args = vec![
        "--header-read-timeout".to_string(),
        HEADER_READ_TIMEOUT.into(),
    ];
    let mut pair = Pair::start(PairOptions {
        client_args: args.clone(),
        server_args: args,
        bystander: false,
    })
    .await;
    let steady = Steady::start(pair.client.outbound, "server");
    let tls = mesh_client(Some(client_svid(&pair)), &pair, &[b"http/1.1"]);
    let timeouts_before = handshake_failures(pair.server.metrics, "timeout").await;

    let outbound_trickle = async {
        let tcp = TcpStream::connect(pair.client.outbound)
            .await
            .expect("connect");
        trickle(tcp, "GET /slow HTTP/1.1\r\nHost: server\r\n").await
    };
    let inbound_trickle = async {
        let stream = tls_connect(tls.clone(), pair.server.inbound)
            .await
            .expect("a valid client completes the handshake");
        trickle(stream, "GET /slow-inbound HTTP/1.1\r\nHost: server\r\n").await
    };
    // The TCP connection opens, the ClientHello never comes.
    let silent_handshake = async {
        let tcp = TcpStream::connect(pair.server.inbound)
            .await
            .expect("connect");
        stall(tcp, b"").await
    };
    // Over mTLS: a valid peer that completes the handshake and then sends nothing.
    let silent_after_handshake = async {
        let stream = tls_connect(tls.clone(), pair.server.inbound)
            .await
            .expect("handshake");
        stall(stream, b"").await
    };
    // Over mTLS: half an HTTP/2 preface, then silence.
    let half_preface_inbound = async {
        let stream = tls_connect(tls.clone(), pair.server.inbound)
            .await
            .expect("handshake");
        stall(stream, &HALF_PREFACE[..]).await
    };
    // One complete request, then the keep-alive connection sits idle.
    let idle_keepalive = async {
        let mut tcp = TcpStream::connect(pair.client.outbound)
            .await
            .expect("connect");
        let _ = tcp
            .write_all(b"GET /keepalive HTTP/1.1\r\nHost: server\r\n\r\n")
            .await;
        read_until_closed(&mut tcp, PATIENCE).await
    };
    let (outbound, inbound, handshake, after_handshake, preface, idle) = tokio::join!(
        outbound_trickle,
        inbound_trickle,
        silent_handshake,
        silent_after_handshake,
        half_preface_inbound,
        idle_keepalive
    );

    let mut problems = Vec::new();
    for (what, t) in [("outbound", &outbound), ("inbound", &inbound)] {
        if !t.closed || t.reply.contains(" 200 ") {
            problems.push(format!(
                "{what}: a head trickled byte by byte was not cut off: {t:?}"
            ));
        }
    }
    if idle.status() != Some(200) {
        problems.push(format!("the keep-alive request was not served: {idle:?}"));
    }
    for (what, closed) in [
        ("an idle HTTP/1 keep-alive connection", idle.closed),
        ("a TLS handshake that never starts", handshake),
        ("half an HTTP/2 preface on the inbound port", preface),
        ("a silent peer after the TLS handshake", after_handshake),
    ] {
        if !closed {
            problems.push(format!("{what} held its connection open for {PATIENCE:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        pair.mesh.logs()
    );
    assert_eq!(
        pair.app.started("/slow") + pair.app.started("/slow-inbound"),
        0
    );
    assert!(
        settled_failures(pair.server.metrics, "timeout", timeouts_before + 1.0).await
            > timeouts_before,
        "the stalled handshake is counted as reason=\"timeout\""
    );
    assert!(pair.proxy("client").running() && pair.proxy("server").running());
    steady.finish(|| pair.mesh.logs()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn half_an_http2_preface_at_the_outbound_port_is_cut_off() {
    let _one_at_a_time = serial().await;
    let pair = Pair::start(PairOptions {
        client_args: vec![
            "--header-read-timeout".to_string(),
            HEADER_READ_TIMEOUT.into(),
        ],
        ..PairOptions::default()
    })
    .await;
    let steady = Steady::start(pair.client.outbound, "server");
    let tcp = TcpStream::connect(pair.client.outbound)
        .await
        .expect("connect");
    assert!(
        stall(tcp, &HALF_PREFACE[..]).await,
        "half an HTTP/2 preface held an outbound connection open for {PATIENCE:?}"
    );
    steady.finish(|| pair.mesh.logs()).await;
}

/// A client that asks for a large response and never reads it (slow read): once the
/// socket buffers are full the proxy's writes stall, and after the write stall timeout it
/// closes the connection instead of holding it, and the response behind it, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_off() {
    let _one_at_a_time = serial().await;
    let pair = Pair::start(PairOptions::client(&["--write-stall-timeout", "2s"])).await;
    let steady = Steady::start(pair.client.outbound, "server");
    let mut tcp = TcpStream::connect(pair.client.outbound)
        .await
        .expect("connect");
    tcp.write_all(b"GET /big HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .expect("request");
    // Read nothing while buffers fill and the proxy's writes stall past the timeout.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // What the buffers held, then the end: far less than the whole answer.
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = loop {
        match tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received += n,
            Err(_) => break false,
        }
        if received >= BIG_BODY {
            break false;
        }
    };
    assert!(
        ended && received < BIG_BODY / 2,
        "a client that read nothing for 8 s was still being served ({received} bytes, ended {ended})\n{}",
        pair.mesh.logs()
    );
    assert_eq!(pair.app.started("/big"), 1);
    steady.finish(|| pair.mesh.logs()).await;
}
