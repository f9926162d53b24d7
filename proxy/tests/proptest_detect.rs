//! Property tests of outbound protocol detection (`outbound::classify`): it never panics,
//! its answers never change as more bytes arrive, every request line is HTTP (a standard
//! method as soon as its space arrives, any other method once its line is whole), and
//! bytes that an HTTP parser (httparse, independent of the proxy's code) rejects are
//! opaque TCP.

use proptest::prelude::*;
use vigil_proxy::outbound::{classify, Detected, MAX_DETECT_BYTES, MAX_METHOD_BYTES};

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `bytes` starts, or could still start, with a standard method and its space
/// or the HTTP/2 preface.
fn could_start_standard(bytes: &[u8]) -> bool {
    METHODS
        .iter()
        .map(|m| format!("{m} ").into_bytes())
        .chain(std::iter::once(b"PRI * HTTP/2.0".to_vec()))
        .any(|p| p.starts_with(bytes) || bytes.starts_with(&p))
}

/// What httparse makes of `bytes` as the start of a request: `Err` when no more bytes
/// could make it one; otherwise whether the request line is whole. Only the first line
/// is judged (ended there by an empty line), as detection looks no further.
fn httparse_line(bytes: &[u8]) -> Result<bool, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 1];
    let mut req = httparse::Request::new(&mut headers);
    match bytes.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let mut line = bytes[..=end].to_vec();
            line.extend_from_slice(if line.ends_with(b"\r\n") {
                b"\r\n"
            } else {
                b"\n"
            });
            req.parse(&line).map(|status| status.is_complete())
        }
        None => req.parse(bytes).map(|_| false),
    }
}

fn request_line() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            proptest::sample::select(&METHODS[..]).prop_map(str::to_string),
            "PROPFIND|MKCOL|PURGE|REPORT|MKCALENDAR|[A-Z]{1,12}|[a-z][a-z-]{0,10}",
        ],
        "/[!-~]{0,80}",
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        prop_oneof![Just("\r\n"), Just("\n")],
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(method, target, version, end, rest)| {
            let mut line = format!("{method} {target} {version}{end}").into_bytes();
            line.extend(rest);
            line
        })
}

/// Bytes that are mostly request-line-like, so the interesting cases come up often.
fn near_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "([A-Za-z]{1,6}|[A-Z]{30,36})( |  )[!-~ ]{0,12}( HTTP/1\\.[0-2]|HTTP/2\\.0)?(\r\n|\n|\r)?[!-~]{0,4}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = classify(&bytes);
    }

    #[test]
    fn request_lines_are_http_and_no_prefix_of_one_is_opaque(line in request_line()) {
        prop_assert_eq!(classify(&line), Some(Detected::Http));
        for n in 1..line.len() {
            prop_assert_ne!(classify(&line[..n]), Some(Detected::Opaque), "prefix {}", n);
        }
    }

    #[test]
    fn answers_never_change_as_more_bytes_arrive(bytes in near_request()) {
        let mut decided = None;
        for n in 1..=bytes.len() {
            let now = classify(&bytes[..n]);
            if let Some(first) = &decided {
                prop_assert_eq!(now.as_ref(), Some(first), "changed its mind at {}", n);
            } else if now.is_some() {
                decided = now;
            }
        }
    }

    #[test]
    fn http_is_what_an_http_parser_accepts(bytes in near_request()) {
        // httparse skips empty lines before a request (RFC 9112 section 2.2 allows it);
        // detection does not, and calls such bytes opaque.
        prop_assume!(!bytes.starts_with(b"\r") && !bytes.starts_with(b"\n"));
        let parsed = httparse_line(&bytes);
        match classify(&bytes) {
            Some(Detected::Http) => prop_assert!(
                could_start_standard(&bytes) || parsed == Ok(true),
                "called HTTP, httparse says {:?}", parsed
            ),
            // httparse takes bytes over 0x7f in a target (hyper's URI parser does not, so
            // detection does not either) and methods of any length.
            Some(Detected::Opaque) => prop_assert!(
                parsed.is_err()
                    || bytes.iter().take_while(|b| b.is_ascii_alphanumeric()).count() > MAX_METHOD_BYTES
                    || bytes.len() >= MAX_DETECT_BYTES
                    || bytes.iter().take_while(|b| **b != b'\n').any(|b| *b > 0x7f),
                "called opaque, httparse says {:?}", parsed
            ),
            Some(Detected::Closed) => prop_assert!(false, "classify never says closed"),
            None => prop_assert!(
                parsed == Ok(false) || could_start_standard(&bytes),
                "undecided, httparse says {:?}", parsed
            ),
        }
    }

    #[test]
    fn the_http2_preface_is_http(cut in 14usize..=24) {
        prop_assert_eq!(classify(&PREFACE[..cut]), Some(Detected::Http));
    }
}

#[test]
fn empty_input_is_undecided() {
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"GE"), None);
    assert_eq!(classify(b"GET"), None);
    assert_eq!(classify(b"GET "), Some(Detected::Http));
}
