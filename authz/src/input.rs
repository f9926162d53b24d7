//! The request facts and the OPA-Envoy `ext_authz` v3 input document built from them.
//!
//! The document is built directly as a regorus [`Value`] (no JSON text in between), with object
//! keys interned per thread so building it allocates only for the request's own strings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use percent_encoding::percent_decode_str;
use regorus::Value;

/// The facts about one request or connection, borrowed from the proxy.
#[derive(Clone, Copy, Debug)]
pub struct AuthzInput<'a> {
    /// HTTP request or plain TCP connection.
    pub kind: InputKind<'a>,
    /// The peer's address.
    pub source_address: SocketAddr,
    /// The local address the connection arrived on.
    pub destination_address: SocketAddr,
    /// The peer's SPIFFE ID, verified from its mTLS certificate (never taken from a header).
    pub source_principal: Option<&'a str>,
    /// This workload's own SPIFFE ID.
    pub destination_principal: Option<&'a str>,
}

/// What is being authorized.
#[derive(Clone, Copy, Debug)]
pub enum InputKind<'a> {
    /// A TCP connection: only addresses and principals are known.
    Tcp,
    /// An HTTP request.
    Http(HttpAttributes<'a>),
}

/// The HTTP request, as received.
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// Request id (e.g. `x-request-id`).
    pub id: &'a str,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path and `?query`, as received (not decoded).
    pub path: &'a str,
    /// Host (`:authority`).
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The (possibly truncated) body, when the proxy buffered it.
    pub body: Option<BodyInput<'a>>,
}

/// A buffered request body.
#[derive(Clone, Copy, Debug)]
pub struct BodyInput<'a> {
    /// The bytes buffered (at most the configured limit).
    pub bytes: &'a [u8],
    /// Whether the body was longer than what was buffered.
    pub truncated: bool,
    /// Content type; when `None`, the `content-type` header is used.
    pub content_type: Option<&'a str>,
}

/// Object keys of the document, created once per thread.
struct Keys {
    attributes: Value,
    source: Value,
    destination: Value,
    address: Value,
    socket_address: Value,
    port_value: Value,
    principal: Value,
    request: Value,
    http: Value,
    id: Value,
    method: Value,
    path: Value,
    host: Value,
    scheme: Value,
    protocol: Value,
    headers: Value,
    body: Value,
    parsed_path: Value,
    parsed_query: Value,
    parsed_body: Value,
    truncated_body: Value,
    pseudo_authority: Value,
    pseudo_method: Value,
    pseudo_path: Value,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            attributes: "attributes".into(),
            source: "source".into(),
            destination: "destination".into(),
            address: "address".into(),
            socket_address: "socketAddress".into(),
            port_value: "portValue".into(),
            principal: "principal".into(),
            request: "request".into(),
            http: "http".into(),
            id: "id".into(),
            method: "method".into(),
            path: "path".into(),
            host: "host".into(),
            scheme: "scheme".into(),
            protocol: "protocol".into(),
            headers: "headers".into(),
            body: "body".into(),
            parsed_path: "parsed_path".into(),
            parsed_query: "parsed_query".into(),
            parsed_body: "parsed_body".into(),
            truncated_body: "truncated_body".into(),
            pseudo_authority: ":authority".into(),
            pseudo_method: ":method".into(),
            pseudo_path: ":path".into(),
        }
    }
}

thread_local! {
    static KEYS: Keys = Keys::new();
}

impl AuthzInput<'_> {
    /// Builds the OPA-Envoy input document:
    /// `attributes.{source,destination}.{address.socketAddress.{address,portValue},principal}`,
    /// and for HTTP `attributes.request.http.{id,method,path,host,scheme,protocol,headers[,body]}`,
    /// `parsed_path`, `parsed_query` and, with a body, `parsed_body` and `truncated_body`.
    pub fn to_value(&self) -> Value {
        KEYS.try_with(|keys| self.build(keys))
            .unwrap_or_else(|_| self.build(&Keys::new()))
    }

    fn build(&self, k: &Keys) -> Value {
        let mut attributes = BTreeMap::new();
        attributes.insert(
            k.source.clone(),
            peer(k, self.source_address, self.source_principal),
        );
        attributes.insert(
            k.destination.clone(),
            peer(k, self.destination_address, self.destination_principal),
        );
        let mut doc = BTreeMap::new();
        if let InputKind::Http(http) = &self.kind {
            let (path_part, query_part) = split_target(http.path);
            let headers = headers_value(k, http);

            let mut req = BTreeMap::new();
            req.insert(k.id.clone(), Value::from(http.id));
            req.insert(k.method.clone(), Value::from(http.method));
            req.insert(k.path.clone(), Value::from(http.path));
            req.insert(k.host.clone(), Value::from(http.host));
            req.insert(k.scheme.clone(), Value::from(http.scheme));
            req.insert(k.protocol.clone(), Value::from(http.protocol));
            if let Some(body) = &http.body {
                let text = String::from_utf8_lossy(body.bytes);
                let content_type = body.content_type.map(Cow::Borrowed).or_else(|| {
                    http.headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()))
                });
                // Like OPA-Envoy, a truncated body is not parsed: half a document would mislead.
                if !body.truncated {
                    if let Some(parsed) = parse_body(&text, content_type.as_deref()) {
                        doc.insert(k.parsed_body.clone(), parsed);
                    }
                }
                doc.insert(k.truncated_body.clone(), Value::Bool(body.truncated));
                req.insert(k.body.clone(), Value::from(text.as_ref()));
            }
            req.insert(k.headers.clone(), headers);

            let mut request = BTreeMap::new();
            request.insert(k.http.clone(), Value::from(req));
            attributes.insert(k.request.clone(), Value::from(request));

            doc.insert(k.parsed_path.clone(), parsed_path(path_part));
            doc.insert(k.parsed_query.clone(), parsed_query(query_part));
        }
        doc.insert(k.attributes.clone(), Value::from(attributes));
        Value::from(doc)
    }

    /// The document as JSON, for logs and the CLI.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_value()).unwrap_or(serde_json::Value::Null)
    }
}

fn peer(k: &Keys, addr: SocketAddr, principal: Option<&str>) -> Value {
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; policies match IPv4 CIDRs.
    let ip = addr.ip().to_canonical();
    let mut socket = BTreeMap::new();
    socket.insert(k.address.clone(), Value::from(ip.to_string()));
    socket.insert(k.port_value.clone(), Value::from(u64::from(addr.port())));
    let mut address = BTreeMap::new();
    address.insert(k.socket_address.clone(), Value::from(socket));
    let mut peer = BTreeMap::new();
    peer.insert(k.address.clone(), Value::from(address));
    // Absent, not "": OPA-Envoy omits empty proto fields, and a policy must not be able to
    // mistake "no identity" for an identity.
    if let Some(p) = principal {
        peer.insert(k.principal.clone(), Value::from(p));
    }
    Value::from(peer)
}

/// Header names are already lower-case in `http::HeaderMap`; repeated headers are joined with
/// ", " like Envoy does. The pseudo-headers Envoy adds are included too.
fn headers_value(k: &Keys, http: &HttpAttributes<'_>) -> Value {
    let mut map = BTreeMap::new();
    for name in http.headers.keys() {
        let mut values = http.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
        for v in values {
            joined.push_str(", ");
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        map.insert(Value::from(name.as_str()), Value::from(joined));
    }
    map.insert(k.pseudo_authority.clone(), Value::from(http.host));
    map.insert(k.pseudo_method.clone(), Value::from(http.method));
    map.insert(k.pseudo_path.clone(), Value::from(http.path));
    Value::from(map)
}

/// Splits a request target into its path and query, dropping any fragment and, for
/// absolute-form targets (`http://host/p`), the scheme and authority.
fn split_target(target: &str) -> (&str, &str) {
    let target = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        _ => target,
    };
    let target = target.split('#').next().unwrap_or("");
    match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    }
}

/// `/a/b%20c/` becomes `["a", "b c", ""]`, as OPA-Envoy splits the decoded path.
fn parsed_path(path: &str) -> Value {
    let segments: Vec<Value> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| Value::from(percent_decode_str(s).decode_utf8_lossy().as_ref()))
        .collect();
    Value::from(segments)
}

/// `a=1&a=2&b` becomes `{"a": ["1", "2"], "b": [""]}` (Go's `url.ParseQuery`).
fn parsed_query(query: &str) -> Value {
    let mut grouped: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for pair in query.split('&') {
        // Go rejects parameters containing ';' (and OPA-Envoy then drops them).
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        for (name, value) in form_urlencoded::parse(pair.as_bytes()) {
            grouped
                .entry(Value::from(name.as_ref()))
                .or_default()
                .push(Value::from(value.as_ref()));
        }
    }
    Value::from(
        grouped
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn parse_body(text: &str, content_type: Option<&str>) -> Option<Value> {
    let content_type = content_type?;
    if content_type.contains("application/json") {
        if text.trim().is_empty() {
            return None;
        }
        // A body that is not valid JSON leaves parsed_body undefined rather than failing the
        // whole request; policies that need it simply don't match.
        Value::from_json_str(text).ok()
    } else if content_type.contains("application/x-www-form-urlencoded") {
        Some(parsed_query(text))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?x=1#f"), ("/a/b", "x=1"));
        assert_eq!(split_target("/a#f?x"), ("/a", ""));
        assert_eq!(split_target("http://h:80/p?q"), ("/p", "q"));
        assert_eq!(split_target("*"), ("*", ""));
    }
}
