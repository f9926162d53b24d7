//! Header hygiene shared by inbound and outbound: hop-by-hop headers never cross a
//! proxy, and identity is only ever asserted by the proxy that verified it.
//!
//! Names the proxy looks for on every request are `HeaderName` constants: a lookup by
//! `&str` parses and lower-cases the name before it hashes it, and both proxies make
//! about twenty such lookups per request.

use http::header::{HeaderMap, HeaderName, CONNECTION, TE};
use vigil_api::headers::{HOP_BY_HOP, IDENTITY_HEADERS};

/// Header carrying the verified peer SPIFFE ID to the application.
pub const PEER_IDENTITY: HeaderName = HeaderName::from_static(vigil_api::headers::PEER_IDENTITY);

/// Set by the client proxy on a request it received as HTTP/1 (`HTTP/1.1`, `HTTP/1.0`)
/// and carries to its peer over HTTP/2, so the server proxy hands it to the application
/// as HTTP/1 again. A request without it was HTTP/2 end to end (gRPC) and reaches the
/// application as HTTP/2. Only proxies set it: one arriving from an application is dropped.
pub const ORIGINAL_PROTOCOL: HeaderName = HeaderName::from_static("x-vigil-orig-proto");

/// The request id: the server proxy sets one on every request that arrives without it,
/// and the policy input, the logs and the app all see the same one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id: 32 lowercase hex digits of a random 128-bit number, written on the
/// stack (no string is formatted for every request).
pub fn new_request_id() -> http::HeaderValue {
    let mut id = [0u8; 32];
    data_encoding::HEXLOWER.encode_mut(&rand::random::<u128>().to_be_bytes(), &mut id);
    http::HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// [`HOP_BY_HOP`] as names, entry by entry (a list of another length does not compile).
static HOP_BY_HOP_NAMES: [HeaderName; 7] = [
    HeaderName::from_static(HOP_BY_HOP[0]),
    HeaderName::from_static(HOP_BY_HOP[1]),
    HeaderName::from_static(HOP_BY_HOP[2]),
    HeaderName::from_static(HOP_BY_HOP[3]),
    HeaderName::from_static(HOP_BY_HOP[4]),
    HeaderName::from_static(HOP_BY_HOP[5]),
    HeaderName::from_static(HOP_BY_HOP[6]),
];

/// [`IDENTITY_HEADERS`] as names.
static IDENTITY_NAMES: [HeaderName; 3] = [
    HeaderName::from_static(IDENTITY_HEADERS[0]),
    HeaderName::from_static(IDENTITY_HEADERS[1]),
    HeaderName::from_static(IDENTITY_HEADERS[2]),
];

/// Whether any header present is one of `names`: one pass over the few names a request
/// carries, with no parsing or hashing, instead of a lookup per name looked for.
fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|name| names.contains(name))
}

/// Removes hop-by-hop headers, including those the Connection header names. `te:
/// trailers`, the one TE value HTTP/2 allows and that gRPC servers require, is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Almost every request has none; a header the Connection header names only counts
    // when Connection is there too.
    if !any_of(headers, &HOP_BY_HOP_NAMES) {
        return;
    }
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP_NAMES {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(TE, http::HeaderValue::from_static("trailers"));
    }
}

/// The authority a request names: its URI authority (HTTP/2, absolute form), else its
/// Host header.
pub fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Removes every header that claims an identity.
pub fn strip_identity(headers: &mut HeaderMap) {
    if !any_of(headers, &IDENTITY_NAMES) {
        return;
    }
    for name in &IDENTITY_NAMES {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_te_trailers_only() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            let id = id.to_str().expect("ascii");
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        assert_ne!(a, b);
    }

    #[test]
    fn a_request_with_no_such_header_keeps_every_header() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("server"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        strip_identity(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn strips_claimed_identities() {
        let mut h = HeaderMap::new();
        h.insert(
            PEER_IDENTITY,
            HeaderValue::from_static("spiffe://evil/ns/a/sa/b"),
        );
        h.insert("X-Forwarded-Client-Cert", HeaderValue::from_static("By=x"));
        strip_identity(&mut h);
        assert!(h.is_empty());
    }
}
