//! The OPA-Envoy policy input document: built from arbitrary request facts without
//! panicking, with every header name lower-case in the document.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use vigil_authz::{AuthzInput, BodyInput, HttpAttributes, InputKind};

/// Splits the input into fields at 0xff bytes (a byte never valid in UTF-8).
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0xff).collect()
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data);
    let text =
        |i: usize| String::from_utf8_lossy(f.get(i).copied().unwrap_or_default()).into_owned();
    let (method, path, host, id) = (text(0), text(1), text(2), text(3));
    let body = f.get(4).copied().unwrap_or_default();
    let flags = f.get(5).and_then(|b| b.first()).copied().unwrap_or(0);
    let mut headers = http::HeaderMap::new();
    for pair in f.get(6..).unwrap_or_default().chunks(2) {
        let name = http::HeaderName::from_bytes(pair[0]);
        let value = http::HeaderValue::from_bytes(pair.get(1).copied().unwrap_or_default());
        if let (Ok(n), Ok(v)) = (name, value) {
            headers.append(n, v);
        }
    }
    let content_type = match flags % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/x-www-form-urlencoded"),
        _ => Some("text/plain"),
    };
    let source: SocketAddr = if flags & 4 == 0 {
        ([10, 0, 0, 1], 1234).into()
    } else {
        (
            std::net::Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 1]),
            1,
        )
            .into()
    };
    let input = AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: &id,
            method: &method,
            path: &path,
            host: &host,
            scheme: "https",
            protocol: "HTTP/1.1",
            headers: &headers,
            body: (flags & 8 != 0).then_some(BodyInput {
                bytes: body,
                truncated: flags & 16 != 0,
                content_type,
            }),
        }),
        source_address: source,
        destination_address: ([127, 0, 0, 1], 15006).into(),
        source_principal: (flags & 32 != 0).then_some("spiffe://vigil.local/ns/a/sa/b"),
        destination_principal: None,
    };
    let doc = input.to_json();
    let names = doc["attributes"]["request"]["http"]["headers"]
        .as_object()
        .expect("headers is an object");
    for name in names.keys() {
        assert_eq!(
            name,
            &name.to_ascii_lowercase(),
            "header name not lower-case"
        );
    }
    for name in headers.keys() {
        assert!(names.contains_key(name.as_str()), "header {name} missing");
    }
});
