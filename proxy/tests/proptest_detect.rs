//! Property tests of outbound protocol detection (`outbound::classify`): it never panics,
//! every request line of a standard method is HTTP, and bytes that cannot start one are
//! opaque TCP.

use proptest::prelude::*;
use vigil_proxy::outbound::{classify, Detected};

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `bytes` is a (possibly partial) start of some request line classify knows.
fn could_start_http(bytes: &[u8]) -> bool {
    METHODS
        .iter()
        .map(|m| format!("{m} ").into_bytes())
        .chain(std::iter::once(b"PRI * HTTP/2.0".to_vec()))
        .any(|p| p.starts_with(bytes) || bytes.starts_with(&p))
}

fn request_line() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(&METHODS[..]),
        "/[!-~]{0,80}",
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(method, target, version, rest)| {
            let mut line = format!("{method} {target} {version}\r\n").into_bytes();
            line.extend(rest);
            line
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = classify(&bytes);
    }

    #[test]
    fn request_lines_are_http(line in request_line()) {
        prop_assert_eq!(classify(&line), Some(Detected::Http));
        // Any prefix long enough to hold the method and its space is HTTP already; a
        // shorter one is undecided, never opaque.
        for n in 1..line.len() {
            prop_assert_ne!(classify(&line[..n]), Some(Detected::Opaque), "prefix {}", n);
        }
    }

    #[test]
    fn the_http2_preface_is_http(cut in 14usize..=24) {
        prop_assert_eq!(classify(&PREFACE[..cut]), Some(Detected::Http));
    }

    #[test]
    fn bytes_that_cannot_start_a_request_are_opaque(
        bytes in proptest::collection::vec(any::<u8>(), 1..128)
            .prop_filter("not a request start", |b| !could_start_http(b))
    ) {
        prop_assert_eq!(classify(&bytes), Some(Detected::Opaque));
    }

    #[test]
    fn a_lowercase_or_unknown_method_is_not_http(
        method in "[a-z]{3,7}|PROPFIND|MKCOL|PURGE|BREW",
        target in "/[!-~]{0,20}",
    ) {
        let line = format!("{method} {target} HTTP/1.1\r\n");
        prop_assert_eq!(classify(line.as_bytes()), Some(Detected::Opaque));
    }
}

#[test]
fn empty_input_is_undecided() {
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"GE"), None);
    assert_eq!(classify(b"GET"), None);
    assert_eq!(classify(b"GET "), Some(Detected::Http));
}
