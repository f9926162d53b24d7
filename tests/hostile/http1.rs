//! Malformed and smuggled HTTP/1 at the outbound port (where the local app speaks plain
//! HTTP), and oversized request heads.

use crate::support::*;

/// The request a smuggling attempt hides after (or inside) the first one's body.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: server\r\n\r\n";

enum Expect {
    /// The proxy answers this status itself, closes, and the app never sees the path.
    Refused(u16),
    /// A body the proxy cannot decode: never a 2xx, and the app never gets it whole.
    BrokenBody,
    /// Served once (the body framing is chunked), then the connection is closed so
    /// nothing after it is read as a request.
    ServedOnceThenClosed,
}

fn cases() -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let chunk = format!("{:x}\r\n{HIDDEN}\r\n0\r\n\r\n", HIDDEN.len());
    vec![
        (
            "bad chunk size",
            "POST /bad-chunk HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(),
            BrokenBody,
        ),
        (
            "chunk size overflow",
            "POST /chunk-overflow HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n".into(),
            BrokenBody,
        ),
        (
            "chunk without its CRLF",
            "POST /chunk-crlf HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n".into(),
            BrokenBody,
        ),
        (
            "CL.TE: Content-Length covers a request hidden after the last chunk",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: server\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{HIDDEN}",
                5 + HIDDEN.len()
            ),
            ServedOnceThenClosed,
        ),
        (
            "TE.CL: a short Content-Length, a request hidden inside the chunk",
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: server\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
            ),
            ServedOnceThenClosed,
        ),
        (
            "TE obfuscated as xchunked beside Content-Length",
            format!("POST /te-x HTTP/1.1\r\nHost: server\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "chunked not the final coding",
            format!("POST /te-last HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "a second Transfer-Encoding header undoing chunked",
            format!("POST /te-twice HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "whitespace before the colon",
            format!("POST /te-space HTTP/1.1\r\nHost: server\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "obsolete line folding",
            format!("POST /obs-fold HTTP/1.1\r\nHost: server\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "two different Content-Lengths",
            format!("POST /cl-twice HTTP/1.1\r\nHost: server\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{HIDDEN}", 5 + HIDDEN.len()),
            Refused(400),
        ),
        (
            "negative Content-Length",
            "POST /cl-negative HTTP/1.1\r\nHost: server\r\nContent-Length: -1\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /te-http10 HTTP/1.0\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{HIDDEN}"),
            Refused(400),
        ),
        (
            "NUL in a header value",
            "GET /nul HTTP/1.1\r\nHost: server\r\nX-Bad: a\0b\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "bare CR in a header value",
            "GET /bare-cr HTTP/1.1\r\nHost: server\r\nX-Bad: a\rb\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "space in a header name",
            "GET /name-space HTTP/1.1\r\nHost: server\r\nX Bad: b\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "space in the request target",
            "GET /a b HTTP/1.1\r\nHost: server\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "unknown HTTP version",
            "GET /version HTTP/9.9\r\nHost: server\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "a head over 64 KiB",
            format!("GET /too-big HTTP/1.1\r\nHost: server\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024)),
            Refused(431),
        ),
        (
            "more headers than the parser holds",
            format!(
                "GET /too-many HTTP/1.1\r\nHost: server\r\n{}\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            Refused(431),
        ),
    ]
}

/// The path a raw request asks for.
fn path_of(request: &str) -> &str {
    request.split(' ').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_http1_is_refused_and_nothing_is_smuggled() {
    let _one_at_a_time = serial().await;
    let pair = Pair::start(PairOptions::default()).await;
    let steady = Steady::start(pair.client.outbound, "server");
    let outbound = pair.client.outbound;

    // A head just under the limit still goes through the whole pair.
    let big = format!(
        "GET /big-ok HTTP/1.1\r\nHost: server\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let ok = raw_exchange(outbound, big.as_bytes()).await;
    assert_eq!(ok.status(), Some(200), "a 60 KiB head: {}", ok.text());

    let mut problems = Vec::new();
    for (what, request, expect) in cases() {
        let path = path_of(&request).to_string();
        let got = raw_exchange(outbound, request.as_bytes()).await;
        let status = got.status();
        let fine = match expect {
            Expect::Refused(want) => {
                status == Some(want)
                    && got.closed
                    && got.responses() == 1
                    && pair.app.started(&path) == 0
            }
            Expect::BrokenBody => {
                !matches!(status, Some(200..=299)) && pair.app.completed(&path) == 0
            }
            Expect::ServedOnceThenClosed => got.responses() <= 1 && got.closed,
        };
        if !fine {
            problems.push(format!(
                "{what}: status {status:?}, closed {}, responses {}, app saw {} (complete {}):\n{}",
                got.closed,
                got.responses(),
                pair.app.started(&path),
                pair.app.completed(&path),
                got.text().chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(
        pair.app.started("/smuggled"),
        0,
        "a hidden request reached the app; it saw {:?}",
        pair.app.seen()
    );
    // The TE.CL body arrived as a body, in one piece.
    assert_eq!(pair.app.completed("/te-cl"), 1, "{:?}", pair.app.seen());

    steady.finish(|| pair.mesh.logs()).await;
}
