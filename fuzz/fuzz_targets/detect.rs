//! Outbound protocol detection on a client's first bytes: never panics, and only calls
//! a prefix HTTP when it really starts with a request line (or the HTTP/2 preface).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_proxy::outbound::{classify, Detected};

const METHODS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PRI * HTTP/2.0",
];

fuzz_target!(|data: &[u8]| {
    let answer = classify(data);
    let starts_http = METHODS.iter().any(|m| data.starts_with(m));
    let could_become_http = METHODS
        .iter()
        .any(|m| data.len() < m.len() && m.starts_with(data));
    match answer {
        Some(Detected::Http) => assert!(starts_http, "called HTTP: {data:?}"),
        Some(Detected::Opaque) => assert!(
            !starts_http && !could_become_http,
            "called opaque: {data:?}"
        ),
        Some(Detected::Closed) => panic!("classify never says closed"),
        None => assert!(
            data.is_empty() || could_become_http,
            "undecided on {data:?}"
        ),
    }
    // Every prefix of an HTTP answer was undecided or HTTP, never opaque.
    if answer == Some(Detected::Http) {
        for n in 1..data.len() {
            assert_ne!(classify(&data[..n]), Some(Detected::Opaque));
        }
    }
});
