//! The request facts and the OPA-Envoy `ext_authz` v3 input document built from them.
//!
//! The document is built directly as a regorus [`Value`] (no JSON text in between), with object
//! keys interned per thread so building it allocates only for the request's own strings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use percent_encoding::percent_decode_str;
use regorus::value::Object;
use regorus::{Rc, Value};

use crate::usage::InputNeeds;

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

/// Object keys and object shapes of the document, created once per thread.
///
/// Each fixed-shape object is cloned from a frozen template holding its (sorted) keys and then
/// filled in place, which skips building and freezing a `BTreeMap` per object per request.
struct Shapes {
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
    empty_object: Value,
    socket: Object,
    peer_address: Object,
    peer: Object,
    peer_with_principal: Object,
    peer_principal_only: Object,
    attributes_tcp: Object,
    attributes_http: Object,
    request_http: Object,
    http_attributes: Object,
    http_attributes_with_body: Object,
    doc_tcp: Object,
    doc_http: Object,
    doc_http_with_body: Object,
    doc_http_with_parsed_body: Object,
}

/// A frozen object with these keys (values null), to clone and fill.
fn shape(keys: &[&Value]) -> Object {
    let map: BTreeMap<Value, Value> = keys.iter().map(|k| ((*k).clone(), Value::Null)).collect();
    match Value::from(map) {
        Value::Object(o) => o.as_ref().clone(),
        _ => Object::new(),
    }
}

/// Clones `shape` and sets its values.
fn fill<const N: usize>(shape: &Object, entries: [(&Value, Value); N]) -> Value {
    let mut object = shape.clone();
    for (key, value) in entries {
        match object.get_mut(key) {
            Some(slot) => *slot = value,
            // Only if a shape lacks a key: still correct, just slower.
            None => {
                object.insert(key.clone(), value);
            }
        }
    }
    Value::Object(Rc::new(object))
}

impl Shapes {
    fn new() -> Shapes {
        let v = |s: &str| Value::from(s);
        let (attributes, source, destination) = (v("attributes"), v("source"), v("destination"));
        let (address, socket_address, port_value) =
            (v("address"), v("socketAddress"), v("portValue"));
        let (principal, request, http, id) = (v("principal"), v("request"), v("http"), v("id"));
        let (method, path, host, scheme) = (v("method"), v("path"), v("host"), v("scheme"));
        let (protocol, headers, body) = (v("protocol"), v("headers"), v("body"));
        let (parsed_path, parsed_query) = (v("parsed_path"), v("parsed_query"));
        let (parsed_body, truncated_body) = (v("parsed_body"), v("truncated_body"));
        let http_keys = [&headers, &host, &id, &method, &path, &protocol, &scheme];
        let http_body_keys = [
            &body, &headers, &host, &id, &method, &path, &protocol, &scheme,
        ];
        Shapes {
            socket: shape(&[&address, &port_value]),
            peer_address: shape(&[&socket_address]),
            peer: shape(&[&address]),
            peer_with_principal: shape(&[&address, &principal]),
            peer_principal_only: shape(&[&principal]),
            attributes_tcp: shape(&[&source, &destination]),
            attributes_http: shape(&[&source, &destination, &request]),
            request_http: shape(&[&http]),
            http_attributes: shape(&http_keys),
            http_attributes_with_body: shape(&http_body_keys),
            doc_tcp: shape(&[&attributes]),
            doc_http: shape(&[&attributes, &parsed_path, &parsed_query]),
            doc_http_with_body: shape(&[&attributes, &parsed_path, &parsed_query, &truncated_body]),
            doc_http_with_parsed_body: shape(&[
                &attributes,
                &parsed_path,
                &parsed_query,
                &truncated_body,
                &parsed_body,
            ]),
            empty_object: Value::new_object(),
            pseudo_authority: v(":authority"),
            pseudo_method: v(":method"),
            pseudo_path: v(":path"),
            attributes,
            source,
            destination,
            address,
            socket_address,
            port_value,
            principal,
            request,
            http,
            id,
            method,
            path,
            host,
            scheme,
            protocol,
            headers,
            body,
            parsed_path,
            parsed_query,
            parsed_body,
            truncated_body,
        }
    }
}

thread_local! {
    static SHAPES: Shapes = Shapes::new();
}

impl AuthzInput<'_> {
    /// Builds the OPA-Envoy input document:
    /// `attributes.{source,destination}.{address.socketAddress.{address,portValue},principal}`,
    /// and for HTTP `attributes.request.http.{id,method,path,host,scheme,protocol,headers[,body]}`,
    /// `parsed_path`, `parsed_query` and, with a body, `parsed_body` and `truncated_body`.
    pub fn to_value(&self) -> Value {
        self.document_for(InputNeeds::ALL)
    }

    /// The document with only the optional parts the bundle can observe.
    pub(crate) fn document_for(&self, needs: InputNeeds) -> Value {
        SHAPES
            .try_with(|shapes| self.build(shapes, needs))
            .unwrap_or_else(|_| self.build(&Shapes::new(), needs))
    }

    fn build(&self, s: &Shapes, needs: InputNeeds) -> Value {
        let source = peer(s, needs, self.source_address, self.source_principal);
        let destination = peer(
            s,
            needs,
            self.destination_address,
            self.destination_principal,
        );
        let InputKind::Http(http) = &self.kind else {
            let attributes = fill(
                &s.attributes_tcp,
                [(&s.source, source), (&s.destination, destination)],
            );
            return fill(&s.doc_tcp, [(&s.attributes, attributes)]);
        };

        let (path_part, query_part) = split_target(http.path);
        let method = Value::from(http.method);
        let path = Value::from(http.path);
        let host = Value::from(http.host);
        let headers = if needs.headers {
            headers_value(s, http, &method, &path, &host)
        } else {
            s.empty_object.clone()
        };
        let common = [
            (&s.headers, headers),
            (&s.host, host),
            (&s.id, Value::from(http.id)),
            (&s.method, method),
            (&s.path, path),
            (&s.protocol, Value::from(http.protocol)),
            (&s.scheme, Value::from(http.scheme)),
        ];
        let parsed_path = parsed_path(path_part);
        let parsed_query = if query_part.is_empty() || !needs.parsed_query {
            s.empty_object.clone()
        } else {
            parsed_query(query_part)
        };

        let Some(body) = &http.body else {
            let attributes =
                http_attributes(s, source, destination, fill(&s.http_attributes, common));
            return fill(
                &s.doc_http,
                [
                    (&s.attributes, attributes),
                    (&s.parsed_path, parsed_path),
                    (&s.parsed_query, parsed_query),
                ],
            );
        };

        let text = String::from_utf8_lossy(body.bytes);
        let content_type = body.content_type.map(Cow::Borrowed).or_else(|| {
            http.headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
        });
        // Like OPA-Envoy, a truncated body is not parsed: half a document would mislead.
        let parsed_body = if body.truncated {
            None
        } else {
            parse_body(&text, content_type.as_deref())
        };
        let [c0, c1, c2, c3, c4, c5, c6] = common;
        let http_value = fill(
            &s.http_attributes_with_body,
            [
                (&s.body, Value::from(text.as_ref())),
                c0,
                c1,
                c2,
                c3,
                c4,
                c5,
                c6,
            ],
        );
        let attributes = http_attributes(s, source, destination, http_value);
        let truncated = Value::Bool(body.truncated);
        match parsed_body {
            Some(parsed) => fill(
                &s.doc_http_with_parsed_body,
                [
                    (&s.attributes, attributes),
                    (&s.parsed_path, parsed_path),
                    (&s.parsed_query, parsed_query),
                    (&s.truncated_body, truncated),
                    (&s.parsed_body, parsed),
                ],
            ),
            None => fill(
                &s.doc_http_with_body,
                [
                    (&s.attributes, attributes),
                    (&s.parsed_path, parsed_path),
                    (&s.parsed_query, parsed_query),
                    (&s.truncated_body, truncated),
                ],
            ),
        }
    }

    /// The document as JSON, for logs and the CLI.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_value()).unwrap_or(serde_json::Value::Null)
    }
}

fn http_attributes(s: &Shapes, source: Value, destination: Value, http: Value) -> Value {
    let request = fill(&s.request_http, [(&s.http, http)]);
    fill(
        &s.attributes_http,
        [
            (&s.source, source),
            (&s.destination, destination),
            (&s.request, request),
        ],
    )
}

fn peer(s: &Shapes, needs: InputNeeds, addr: SocketAddr, principal: Option<&str>) -> Value {
    if !needs.addresses {
        return match principal {
            Some(p) => fill(&s.peer_principal_only, [(&s.principal, Value::from(p))]),
            None => s.empty_object.clone(),
        };
    }
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; policies match IPv4 CIDRs.
    let ip = addr.ip().to_canonical();
    let socket = fill(
        &s.socket,
        [
            (&s.address, Value::from(ip.to_string())),
            (&s.port_value, Value::from(u64::from(addr.port()))),
        ],
    );
    let address = fill(&s.peer_address, [(&s.socket_address, socket)]);
    // Absent, not "": OPA-Envoy omits empty proto fields, and a policy must not be able to
    // mistake "no identity" for an identity.
    match principal {
        Some(p) => fill(
            &s.peer_with_principal,
            [(&s.address, address), (&s.principal, Value::from(p))],
        ),
        None => fill(&s.peer, [(&s.address, address)]),
    }
}

/// Header names are already lower-case in `http::HeaderMap`; repeated headers are joined with
/// ", " like Envoy does. The pseudo-headers Envoy adds are included too.
fn headers_value(
    s: &Shapes,
    http: &HttpAttributes<'_>,
    method: &Value,
    path: &Value,
    host: &Value,
) -> Value {
    let mut entries: Vec<(Value, Value)> = Vec::with_capacity(http.headers.keys_len() + 3);
    entries.push((s.pseudo_authority.clone(), host.clone()));
    entries.push((s.pseudo_method.clone(), method.clone()));
    entries.push((s.pseudo_path.clone(), path.clone()));
    let mut joined = String::new();
    for name in http.headers.keys() {
        let mut values = http.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let value = match values.next() {
            None => text_value(first.as_bytes()),
            Some(second) => {
                joined.clear();
                joined.push_str(&String::from_utf8_lossy(first.as_bytes()));
                for v in std::iter::once(second).chain(values) {
                    joined.push_str(", ");
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Value::from(joined.as_str())
            }
        };
        entries.push((Value::from(name.as_str()), value));
    }
    // Sorting by &str first is cheap and lets BTreeMap bulk-build from sorted input instead of
    // searching the tree per insert (keys are all strings, so the orders agree).
    entries.sort_unstable_by(|a, b| str_key(&a.0).cmp(str_key(&b.0)));
    Value::from(entries.into_iter().collect::<BTreeMap<_, _>>())
}

fn str_key(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        _ => "",
    }
}

/// Bytes as a string value, replacing invalid UTF-8 (one allocation in the common case).
fn text_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(_) => Value::from(String::from_utf8_lossy(bytes).as_ref()),
    }
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
