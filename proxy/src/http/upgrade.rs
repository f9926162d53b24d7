//! HTTP/1.1 Upgrade (WebSocket) across the mesh. The client proxy turns the application's
//! `GET` + `Upgrade: <protocol>` into an HTTP/2 extended CONNECT (RFC 8441) to its peer;
//! the server proxy checks policy on it as the `GET` it was, replays the upgrade to the
//! application over HTTP/1.1, and answers `200` with the application's `101` headers. Once
//! both ends have switched, bytes flow between the two upgraded streams as in a tunnel.
//!
//! hyper does the framing on each side (`serve_connection_with_upgrades`, extended
//! CONNECT, the legacy client's upgrades); this module only decides what is an upgrade,
//! and [`crate::transport::serve::splice`] joins the two halves.

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Method, Request, Version};

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade: websocket` with
/// `Connection: upgrade`), if it is a `GET` that asks; upgrades to HTTP/2 (`h2c`) are not
/// carried, the proxies already speak HTTP/2 between themselves.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.method() != Method::GET || req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(UPGRADE)?;
    let name = protocol.to_str().ok()?;
    (asks && !name.trim().is_empty() && !name.to_ascii_lowercase().starts_with("h2c"))
        .then(|| protocol.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(Method::GET).uri("/chat");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_websocket_handshake_is_an_upgrade() {
        let req = get(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(&req).unwrap(), "websocket");
    }

    #[test]
    fn upgrade_needs_both_headers_a_get_and_no_h2c() {
        assert!(requested(&get(&[("upgrade", "websocket")])).is_none());
        assert!(requested(&get(&[("connection", "upgrade")])).is_none());
        assert!(requested(&get(&[("connection", "upgrade"), ("upgrade", "h2c")])).is_none());
        let mut post = get(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *post.method_mut() = Method::POST;
        assert!(requested(&post).is_none());
    }
}
