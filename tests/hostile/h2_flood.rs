//! HTTP/2 rapid reset (CVE-2023-44487) at the inbound port, from a peer with a valid
//! SVID: HEADERS then RST_STREAM as fast as the connection takes them. The proxy must
//! cut the flooding connection off and keep serving everyone else.

use std::time::Duration;

use crate::support::*;

/// Streams the flooder opens and cancels at most.
const FLOOD: usize = 20_000;

/// How the flood ended.
#[derive(Debug)]
struct Flood {
    /// Streams opened and reset before the proxy stopped the connection.
    sent: usize,
    /// The error the connection ended with, if it ended.
    error: Option<h2::Error>,
}

async fn rapid_reset(pair: &Pair) -> Flood {
    let tls = mesh_client(Some(client_svid(pair)), pair, &[b"h2"]);
    let stream = tls_connect(tls, pair.server.inbound)
        .await
        .expect("a valid peer completes the handshake");
    let (mut send, connection) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    let mut sent = 0;
    let mut error = None;
    while sent < FLOOD {
        let ready = match send.clone().ready().await {
            Ok(ready) => ready,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        send = ready;
        let request = http::Request::post("https://server/flood")
            .header("host", "server")
            .body(())
            .expect("request");
        match send.send_request(request, false) {
            Ok((_response, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    drop(send);
    // The connection's own end says why it ended (a GOAWAY's reason).
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), driver).await {
        error = Some(e);
    }
    Flood { sent, error }
}

/// The proxy ended the connection: `GOAWAY ENHANCE_YOUR_CALM` ("too_many_resets"), or,
/// when the flooder was still writing as the proxy hung up after its GOAWAY, the write
/// failing before the GOAWAY was read.
fn cut_off(e: &h2::Error) -> bool {
    (e.is_go_away() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)) || e.is_io()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_rapid_reset_flood_is_cut_off_and_the_proxy_keeps_serving() {
    let _one_at_a_time = serial().await;
    let mut pair = Pair::start(PairOptions::default()).await;
    let steady = Steady::start(pair.client.outbound, "server");

    let flood = rapid_reset(&pair).await;
    println!(
        "rapid reset: {} streams opened and reset before the proxy ended the connection ({:?}); the app saw {} of them",
        flood.sent,
        flood.error,
        pair.app.started("/flood")
    );
    assert!(
        flood.sent < FLOOD && flood.error.as_ref().is_some_and(cut_off),
        "the flooding connection was not cut off: {flood:?}\n{}",
        pair.mesh.logs()
    );

    // A second flood on a new connection is cut off the same way: nothing was worn down.
    let again = rapid_reset(&pair).await;
    assert!(
        again.sent < FLOOD && again.error.as_ref().is_some_and(cut_off),
        "second flood: {again:?}"
    );

    assert!(pair.proxy("server").running(), "the server proxy survived");
    let r = vigil_e2e::http1(pair.client.outbound, "server", "/after-flood", &[])
        .await
        .expect("a request after the flood");
    assert_eq!(r.status, 200, "{}", r.body);
    steady.finish(|| pair.mesh.logs()).await;
}
