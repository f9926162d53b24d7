//! Outbound protocol detection on a client's first bytes: never panics, never changes
//! its answer as more bytes arrive, and calls bytes HTTP only when they start with a
//! standard method (or the HTTP/2 preface) or an independent parser (httparse) accepts
//! their whole request line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_proxy::outbound::{classify, Detected, MAX_DETECT_BYTES, MAX_METHOD_BYTES};

const STANDARD: [&[u8]; 10] = [
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

/// httparse on the first line alone: `Err` when no more bytes could make it a request
/// line, else whether it is whole.
fn httparse_line(data: &[u8]) -> Result<bool, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 1];
    let mut req = httparse::Request::new(&mut headers);
    match data.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let mut line = data[..=end].to_vec();
            line.extend_from_slice(if line.ends_with(b"\r\n") { b"\r\n" } else { b"\n" });
            req.parse(&line).map(|s| s.is_complete())
        }
        None => req.parse(data).map(|_| false),
    }
}

fuzz_target!(|data: &[u8]| {
    let answer = classify(data);
    let standard = STANDARD
        .iter()
        .any(|m| data.starts_with(m) || m.starts_with(data));
    let first_line = data.iter().take_while(|b| **b != b'\n');
    // Detection does not skip leading empty lines, take bytes over 0x7f in a target
    // (hyper's URI parser refuses them) or methods over MAX_METHOD_BYTES; httparse does.
    let method = data
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        .count();
    let outside = method > MAX_METHOD_BYTES
        || data.starts_with(b"\r")
        || data.starts_with(b"\n")
        || first_line.clone().any(|b| *b > 0x7f)
        || data.len() >= MAX_DETECT_BYTES;
    if !outside && !data.is_empty() {
        let parsed = httparse_line(data);
        match &answer {
            Some(Detected::Http) => assert!(
                standard || parsed == Ok(true),
                "called HTTP, httparse says {parsed:?}: {data:?}"
            ),
            Some(Detected::Opaque) => {
                assert!(parsed.is_err(), "called opaque, httparse says {parsed:?}: {data:?}")
            }
            Some(Detected::Closed) => panic!("classify never says closed"),
            None => assert!(
                standard || parsed == Ok(false),
                "undecided, httparse says {parsed:?}: {data:?}"
            ),
        }
    }
    // Once decided, every longer prefix gets the same answer.
    if let Some(decided) = &answer {
        let mut first = None;
        for n in 1..=data.len() {
            if let Some(d) = classify(&data[..n]) {
                first = Some(d);
                break;
            }
        }
        assert_eq!(first.as_ref(), Some(decided), "changed its mind: {data:?}");
    }
});
