//! A peer proxy killed mid-stream: the caller's response ends in an error at once (never
//! a hang, never a clean end that would pass a truncated body off as whole), and the
//! caller's proxy goes on serving other services.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::support::*;

/// How long a broken stream may take to report itself before the test calls it a hang.
const PROMPTLY: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_killed_mid_stream_fails_the_stream_promptly_and_nothing_else() {
    let _one_at_a_time = serial().await;
    let mut pair = Pair::start(PairOptions {
        bystander: true,
        ..PairOptions::default()
    })
    .await;
    let steady = Steady::start(pair.client.outbound, "bystander");

    let tcp = tokio::net::TcpStream::connect(pair.client.outbound)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::get("/stream")
        .header("host", "server")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for _ in 0..3 {
        let frame = tokio::time::timeout(PROMPTLY, body.frame())
            .await
            .expect("the stream flows");
        assert!(matches!(frame, Some(Ok(_))), "{frame:?}");
    }

    pair.mesh.kill_proxy("server");

    let ended = tokio::time::timeout(PROMPTLY, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await;
    match ended {
        Err(_) => panic!(
            "the stream hung after its peer proxy died\n{}",
            pair.mesh.logs()
        ),
        Ok(Ok(())) => panic!(
            "the stream ended cleanly after its peer died: a truncated body passed off as complete"
        ),
        Ok(Err(e)) => println!("peer killed mid-stream: the caller saw {e}"),
    }

    // New calls to the dead peer fail fast with the proxy's own reason.
    let r = tokio::time::timeout(
        PROMPTLY,
        vigil_e2e::http1(pair.client.outbound, "server", "/after-kill", &[]),
    )
    .await
    .expect("a call to a dead peer does not hang")
    .expect("the client proxy answers");
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(r.headers.contains_key("x-vigil-error"), "{:?}", r.headers);

    assert!(pair.proxy("client").running(), "the client proxy survived");
    let r = vigil_e2e::http1(pair.client.outbound, "bystander", "/still-there", &[])
        .await
        .expect("bystander");
    assert_eq!(r.status, 200, "{}", r.body);
    steady.finish(|| pair.mesh.logs()).await;
}
