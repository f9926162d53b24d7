//! The request facts and the OPA-Envoy `ext_authz` v3 input document built from them.
//!
//! The document is built directly as a regorus [`Value`] (no JSON text in between), with object
//! keys interned per thread. A request without a body is filled into the last such document
//! its thread built, once the evaluator has let go of it: its objects are reused and only the
//! strings that changed are allocated (`AuthzInput::document_for`, `Filling`).
//!
//! What OPA-Envoy cannot parse fails closed, as it does ([`InputError`]): it parses the path
//! with Go's `url.Parse` (a bad %-escape or a control character is an error), and a JSON or
//! form body that does not parse is an error. Vigil is stricter on two points: a query string
//! that Go's `url.ParseQuery` rejects (`;` separators, bad %-escapes) is an error rather than
//! a `parsed_query` missing the offending parameters, and a path starting with `//` (which Go
//! reads as a host followed by a path) is an error rather than a `parsed_path` missing its
//! first segment.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use regorus::value::{IterMut, Object};
use regorus::{Rc, Value};

use crate::go_url::{check_query, parsed_query, unescape};
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
/// Each fixed-shape object is a copy of a template holding its (sorted) keys, or the last
/// request's object made from it, filled in place by [`Filling`].
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
    empty_string: Value,
    socket: Shape,
    peer_address: Shape,
    peer: Shape,
    peer_with_principal: Shape,
    peer_principal_only: Shape,
    attributes_tcp: Shape,
    attributes_http: Shape,
    request_http: Shape,
    http_attributes: Shape,
    http_attributes_with_body: Shape,
    doc_tcp: Shape,
    doc_http: Shape,
    version: Value,
    /// `{"encoding": "protojson", "ext_authz": "v3"}`, as OPA-Envoy sets it for v3 requests.
    version_value: Value,
}

/// A fixed-shape object of the document: a template to copy, and its keys in order.
struct Shape {
    /// Kept as a B-tree, not frozen: [`Filling`] walks its copies' values in key order, which
    /// only a B-tree object offers without searching for each key.
    template: Object,
    keys: Box<[Value]>,
}

fn shape(keys: &[&Value]) -> Shape {
    let map: BTreeMap<Value, Value> = keys.iter().map(|k| ((*k).clone(), Value::Null)).collect();
    Shape {
        keys: map.keys().cloned().collect(),
        template: Object::from(map),
    }
}

/// An object of the document being filled in place, its values set in key order. It is the
/// object already in the slot when no one else holds it and its keys are the shape's (the last
/// request's, see [`AuthzInput::document_for`]), else a copy of it or of the shape.
///
/// Walking the values in order costs no key comparisons, where a lookup per key costs several.
/// The code that fills an object names its keys in the shape's order. A key out of order, or
/// one left unset (which would leave an earlier request's value in the document), is a bug in
/// that code: it panics rather than let such a document through, and the tests fill every
/// shape after every other.
struct Filling<'a> {
    entries: IterMut<'a>,
}

impl<'a> Filling<'a> {
    fn new(slot: &'a mut Value, shape: &Shape) -> Filling<'a> {
        if !matches!(slot, Value::Object(object) if same_keys(object, shape)) {
            *slot = Value::Object(Rc::new(shape.template.clone()));
        }
        let object = match slot {
            Value::Object(object) => Rc::make_mut(object),
            _ => unreachable!("the slot was just given an object"),
        };
        Filling {
            entries: object.iter_mut(),
        }
    }

    /// The value under `key`, which must be the shape's next key.
    fn slot(&mut self, key: &Value) -> &'a mut Value {
        match self.entries.next() {
            Some((next, slot)) if same_key(next, key) => slot,
            other => panic!(
                "input document: {key} filled where the shape has {:?}",
                other.map(|(next, _)| next)
            ),
        }
    }

    fn set(&mut self, key: &Value, value: Value) {
        *self.slot(key) = value;
    }

    fn text(&mut self, key: &Value, text: &str) {
        set_text(self.slot(key), text);
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        if self.entries.len() > 0 && !std::thread::panicking() {
            panic!("input document: {} keys left unset", self.entries.len());
        }
    }
}

/// Sets `text` in `slot`, keeping the string already there when it is the same.
fn set_text(slot: &mut Value, text: &str) {
    if !matches!(slot, Value::String(old) if **old == *text) {
        *slot = Value::from(text);
    }
}

/// Keys are interned per thread and every object of the document is filled from a shape, so
/// the same key is the same string.
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => Rc::ptr_eq(a, b),
        _ => false,
    }
}

/// Whether `object` has exactly the keys of `shape` (see [`same_key`]); an object made some
/// other way only fails the test and is replaced.
fn same_keys(object: &Object, shape: &Shape) -> bool {
    object.len() == shape.keys.len()
        && object
            .keys()
            .zip(shape.keys.iter())
            .all(|(a, b)| same_key(a, b))
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
        let version = v("version");
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
            doc_tcp: shape(&[&attributes, &version]),
            doc_http: shape(&[
                &attributes,
                &parsed_body,
                &parsed_path,
                &parsed_query,
                &truncated_body,
                &version,
            ]),
            version_value: Value::from(
                [("encoding", "protojson"), ("ext_authz", "v3")]
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            empty_object: Value::new_object(),
            empty_string: Value::from(""),
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
            version,
        }
    }
}

thread_local! {
    static SHAPES: Shapes = Shapes::new();
    /// The last body-less document this thread built, to be filled again by the next.
    static LAST_DOCUMENT: Cell<Option<Value>> = const { Cell::new(None) };
}

/// Why a request cannot be turned into an input document; the decision is then
/// [`Decision::Error`](crate::Decision::Error), which the proxy turns into a fail-closed
/// refusal, as OPA-Envoy does when it cannot build its input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The path does not parse (bad %-escape, control character, `//` prefix).
    #[error("request path {path:?} cannot be parsed: {reason}")]
    Path {
        /// The request target as received.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The query string does not parse (`;` separator, bad %-escape).
    #[error("query string {query:?} cannot be parsed: {reason}")]
    Query {
        /// The query string as received.
        query: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body does not parse as its content type says it should.
    #[error("request body declared as {content_type} cannot be parsed: {reason}")]
    Body {
        /// The body's content type.
        content_type: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// How to treat the parts of a request that do not parse.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parsing {
    /// Fail, as the proxy must before a decision.
    Strict,
    /// Leave them out of the document, for display and tools.
    Lenient,
}

impl AuthzInput<'_> {
    /// Builds the OPA-Envoy input document:
    /// `attributes.{source,destination}.{address.socketAddress.{address,portValue},principal}`,
    /// `version`, and for HTTP `attributes.request.http.{id,method,path,host,scheme,protocol,
    /// headers[,body]}`, `parsed_path`, `parsed_query`, `parsed_body` (null when there is no
    /// body to parse) and `truncated_body`. Fails on what OPA-Envoy cannot parse (see
    /// [`InputError`]).
    pub fn document(&self) -> Result<Value, InputError> {
        self.document_for(InputNeeds::ALL)
    }

    /// The document for display and tools: like [`document`](Self::document), but the parsed
    /// parts that cannot be parsed are left out instead of failing.
    pub fn to_value(&self) -> Value {
        let mut document = Value::Undefined;
        let mut build =
            |s: &Shapes| self.build(s, InputNeeds::ALL, Parsing::Lenient, &mut document);
        let built = match SHAPES.try_with(|s| build(s)) {
            Ok(built) => built,
            Err(_) => build(&Shapes::new()),
        };
        match built {
            Ok(()) => document,
            Err(_) => Value::Undefined,
        }
    }

    /// The document with only the optional parts the bundle can observe.
    ///
    /// A request without a body is built into the last such document its thread built: after
    /// a decision the evaluator lets go of its document, so its objects are filled again in
    /// place and its strings kept where they did not change, where building anew would
    /// allocate them and free the old ones. Every value is set again, so the document is the
    /// same as one built anew. One document is kept per thread, and never one with a body.
    pub(crate) fn document_for(&self, needs: InputNeeds) -> Result<Value, InputError> {
        let build = |document: &mut Value| {
            let mut build = |s: &Shapes| self.build(s, needs, Parsing::Strict, document);
            match SHAPES.try_with(|s| build(s)) {
                Ok(built) => built,
                Err(_) => build(&Shapes::new()),
            }
        };
        let fresh = || {
            let mut document = Value::Undefined;
            build(&mut document).map(|()| document)
        };
        if !matches!(&self.kind, InputKind::Http(http) if http.body.is_none()) {
            return fresh();
        }
        LAST_DOCUMENT
            .try_with(|last| {
                let mut document = last.take().unwrap_or(Value::Undefined);
                let built = build(&mut document);
                last.set(Some(document.clone()));
                built.map(|()| document)
            })
            .unwrap_or_else(|_| fresh())
    }

    /// Writes to `key` everything [`document_for`](Self::document_for) reads for `needs`,
    /// each part length-prefixed, so equal keys mean equal documents (and the same error, or
    /// none, building them). It is stricter than the document where that is cheaper: headers
    /// in the order they came, addresses as given. A bundle's remembered decisions are found
    /// by this key without building the document (see `engine.rs`).
    pub(crate) fn key_for(&self, needs: InputNeeds, key: &mut Vec<u8>) {
        fn part(key: &mut Vec<u8>, bytes: &[u8]) {
            key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            key.extend_from_slice(bytes);
        }
        fn optional(key: &mut Vec<u8>, bytes: Option<&[u8]>) {
            match bytes {
                Some(b) => {
                    key.push(1);
                    part(key, b);
                }
                None => key.push(0),
            }
        }
        optional(key, self.source_principal.map(str::as_bytes));
        optional(key, self.destination_principal.map(str::as_bytes));
        if needs.addresses {
            for address in [self.source_address, self.destination_address] {
                match address.ip() {
                    std::net::IpAddr::V4(ip) => part(key, &ip.octets()),
                    std::net::IpAddr::V6(ip) => part(key, &ip.octets()),
                }
                key.extend_from_slice(&address.port().to_le_bytes());
            }
        }
        let InputKind::Http(http) = &self.kind else {
            key.push(b'T');
            return;
        };
        key.push(b'H');
        for field in [
            http.method,
            http.path,
            http.host,
            http.scheme,
            http.protocol,
        ] {
            part(key, field.as_bytes());
        }
        if needs.request_id {
            part(key, http.id.as_bytes());
        }
        if needs.headers {
            part(key, &(http.headers.len() as u64).to_le_bytes());
            for (name, value) in http.headers {
                part(key, name.as_str().as_bytes());
                part(key, value.as_bytes());
            }
        }
        match &http.body {
            None => key.push(0),
            Some(body) => {
                key.push(if body.truncated { 2 } else { 1 });
                part(key, body.bytes);
                let content_type = match body.content_type {
                    Some(t) => Some(t.as_bytes()),
                    None => http
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.as_bytes()),
                };
                optional(key, content_type);
            }
        }
    }

    /// Builds the document into `document` (see [`document_for`](Self::document_for)). What
    /// can fail is worked out first: on an error `document` is left as it was.
    fn build(
        &self,
        s: &Shapes,
        needs: InputNeeds,
        parsing: Parsing,
        document: &mut Value,
    ) -> Result<(), InputError> {
        let InputKind::Http(http) = &self.kind else {
            let mut doc = Filling::new(document, &s.doc_tcp);
            let mut attributes = Filling::new(doc.slot(&s.attributes), &s.attributes_tcp);
            let destination = attributes.slot(&s.destination);
            let source = attributes.slot(&s.source);
            self.peers(s, needs, source, destination);
            drop(attributes);
            doc.set(&s.version, s.version_value.clone());
            return Ok(());
        };
        // Lenient parsing leaves a part out (undefined) instead of failing.
        let lenient = |r: Result<Value, InputError>| match (r, parsing) {
            (Ok(v), _) => Ok(v),
            (Err(_), Parsing::Lenient) => Ok(Value::Null),
            (Err(e), Parsing::Strict) => Err(e),
        };

        let target = split_target(http.path).map_err(|reason| InputError::Path {
            path: http.path.to_string(),
            reason,
        });
        let (path_part, query_part) = match (target, parsing) {
            (Ok(t), _) => t,
            (Err(e), Parsing::Strict) => return Err(e),
            (Err(_), Parsing::Lenient) => ("", ""),
        };
        let old_parsed_path = match &*document {
            Value::Object(doc) => doc.get(&s.parsed_path),
            _ => None,
        };
        let parsed_path =
            lenient(
                parsed_path(path_part, old_parsed_path).map_err(|reason| InputError::Path {
                    path: http.path.to_string(),
                    reason,
                }),
            )?;
        // An unparseable query fails the request whether or not the policy reads it; one the
        // policy cannot read is only checked, not built.
        let query_error = |reason| InputError::Query {
            query: query_part.to_string(),
            reason,
        };
        let parsed_query = if query_part.is_empty() {
            s.empty_object.clone()
        } else if needs.parsed_query {
            lenient(parsed_query(query_part).map_err(query_error))?
        } else {
            if let Err(reason) = check_query(query_part) {
                lenient(Err(query_error(reason)))?;
            }
            s.empty_object.clone()
        };
        let (body, parsed_body) = match &http.body {
            None => (None, Value::Null),
            Some(body) => {
                let text = String::from_utf8_lossy(body.bytes);
                let content_type = body.content_type.map(Cow::Borrowed).or_else(|| {
                    http.headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()))
                });
                // Like OPA-Envoy, a truncated body is not parsed: half a document would mislead.
                let parsed = if body.truncated {
                    Value::Null
                } else {
                    lenient(parse_body(&text, content_type.as_deref()))?
                };
                (Some(Value::from(text.as_ref())), parsed)
            }
        };

        // Keys in each shape's (sorted) order; see `Filling`.
        let mut doc = Filling::new(document, &s.doc_http);
        let mut attributes = Filling::new(doc.slot(&s.attributes), &s.attributes_http);
        let destination = attributes.slot(&s.destination);
        let mut request = Filling::new(attributes.slot(&s.request), &s.request_http);
        let source = attributes.slot(&s.source);
        self.peers(s, needs, source, destination);
        let mut fields = match body {
            None => Filling::new(request.slot(&s.http), &s.http_attributes),
            Some(body) => {
                let mut fields = Filling::new(request.slot(&s.http), &s.http_attributes_with_body);
                fields.set(&s.body, body);
                fields
            }
        };
        let headers = fields.slot(&s.headers);
        let host = fields.slot(&s.host);
        let id = fields.slot(&s.id);
        let method = fields.slot(&s.method);
        let path = fields.slot(&s.path);
        set_text(host, http.host);
        if needs.request_id {
            set_text(id, http.id);
        } else {
            // Unobservable by the bundle: the same (empty) value for every request.
            *id = s.empty_string.clone();
        }
        set_text(method, http.method);
        set_text(path, http.path);
        *headers = if needs.headers {
            headers_value(s, http, method, path, host)
        } else {
            s.empty_object.clone()
        };
        fields.text(&s.protocol, http.protocol);
        fields.text(&s.scheme, http.scheme);
        drop(fields);
        drop(request);
        drop(attributes);
        doc.set(&s.parsed_body, parsed_body);
        doc.set(&s.parsed_path, parsed_path);
        doc.set(&s.parsed_query, parsed_query);
        doc.set(
            &s.truncated_body,
            Value::Bool(http.body.is_some_and(|b| b.truncated)),
        );
        doc.set(&s.version, s.version_value.clone());
        Ok(())
    }

    /// Sets the `source` and `destination` peers.
    fn peers(&self, s: &Shapes, needs: InputNeeds, source: &mut Value, destination: &mut Value) {
        peer(s, needs, self.source_address, self.source_principal, source);
        peer(
            s,
            needs,
            self.destination_address,
            self.destination_principal,
            destination,
        );
    }

    /// The document as JSON, for logs and the CLI (parts that do not parse are left out).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_value()).unwrap_or(serde_json::Value::Null)
    }
}

/// A peer (`source` or `destination`) into `slot`.
fn peer(
    s: &Shapes,
    needs: InputNeeds,
    addr: SocketAddr,
    principal: Option<&str>,
    slot: &mut Value,
) {
    // Absent, not "": OPA-Envoy omits empty proto fields, and a policy must not be able to
    // mistake "no identity" for an identity.
    if !needs.addresses {
        match principal {
            Some(p) => Filling::new(slot, &s.peer_principal_only).text(&s.principal, p),
            None => *slot = s.empty_object.clone(),
        }
        return;
    }
    let shape = match principal {
        Some(_) => &s.peer_with_principal,
        None => &s.peer,
    };
    let mut peer = Filling::new(slot, shape);
    let mut address = Filling::new(peer.slot(&s.address), &s.peer_address);
    let mut socket = Filling::new(address.slot(&s.socket_address), &s.socket);
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; policies match IPv4 CIDRs.
    socket.text(&s.address, &addr.ip().to_canonical().to_string());
    socket.set(&s.port_value, Value::from(u64::from(addr.port())));
    drop(socket);
    drop(address);
    if let Some(p) = principal {
        peer.text(&s.principal, p);
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

/// Splits a request target into its path and query as Go's `url.Parse` does (dropping any
/// fragment and, for absolute-form targets such as `http://host/p`, the scheme and authority).
fn split_target(target: &str) -> Result<(&str, &str), String> {
    if target.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("it contains a control character".to_string());
    }
    let target = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        _ => target,
    };
    let (target, fragment) = target.split_once('#').unwrap_or((target, ""));
    unescape(fragment, false)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path.starts_with("//") && !path.starts_with("///") {
        return Err(
            "it starts with `//`, which OPA-Envoy's parser reads as a host name followed by a \
             path, dropping the first segment"
                .to_string(),
        );
    }
    Ok((path, query))
}

/// `/a%2Fb/c%20d/` becomes `["a", "b", "c d", ""]`: OPA-Envoy splits the decoded path, trimmed
/// of its leading slashes.
/// `old`, the last request's, is given back when its segments are the same.
fn parsed_path(path: &str, old: Option<&Value>) -> Result<Value, String> {
    let decoded = unescape(path, false)?;
    let segments = decoded.trim_start_matches('/').split('/');
    if let Some(Value::Array(array)) = old {
        let same = segments.clone().map(Some).eq(array.iter().map(|v| match v {
            Value::String(s) => Some(s.as_ref()),
            _ => None,
        }));
        if same {
            return Ok(Value::Array(array.clone()));
        }
    }
    Ok(Value::from(segments.map(Value::from).collect::<Vec<_>>()))
}

/// `parsed_body` as OPA-Envoy builds it: JSON and form bodies parsed, null otherwise (and for
/// an empty body); a body that does not parse as its content type says is an error.
fn parse_body(text: &str, content_type: Option<&str>) -> Result<Value, InputError> {
    let Some(content_type) = content_type else {
        return Ok(Value::Null);
    };
    let error = |reason: String| InputError::Body {
        content_type: content_type.to_string(),
        reason,
    };
    if content_type.contains("application/json") {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Value::from_json_str(text).map_err(|e| error(format!("{e:#}")))
    } else if content_type.contains("application/x-www-form-urlencoded") {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        parsed_query(text).map_err(error)
    } else {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query a bundle cannot read is only checked: the check fails exactly where building
    /// it fails, with the same reason, so such a request is refused as before.
    #[test]
    fn checking_a_query_fails_where_parsing_it_fails() {
        for query in [
            "a=1",
            "a=1&b=2&a=3",
            "&&a=&=b&",
            "q=%41%2f+x",
            "a=1;b=2",
            "a=1&b;",
            "a=%zz",
            "%4=1",
            "a=1&b=%",
            "a=%e2%82%ac&b=%E2%82",
            ";",
        ] {
            let parsed = parsed_query(query).map(|_| ());
            assert_eq!(check_query(query), parsed, "{query}");
        }
        assert!(check_query("a=%zz").is_err() && check_query("a=1;").is_err());
    }

    /// Requests that differ in one part each (and some alike), as (headers, attributes).
    fn variants() -> Vec<AuthzInput<'static>> {
        fn headers(pairs: &[(&'static str, &'static str)]) -> &'static http::HeaderMap {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            Box::leak(Box::new(map))
        }
        let base = HttpAttributes {
            id: "1",
            method: "GET",
            path: "/a?x=1",
            host: "shop",
            scheme: "https",
            protocol: "HTTP/1.1",
            headers: headers(&[("accept", "*/*")]),
            body: None,
        };
        let body = |bytes: &'static [u8], truncated, content_type| BodyInput {
            bytes,
            truncated,
            content_type,
        };
        let https = [
            base,
            HttpAttributes { id: "2", ..base },
            HttpAttributes {
                method: "POST",
                ..base
            },
            HttpAttributes {
                path: "/a?x=2",
                ..base
            },
            HttpAttributes {
                path: "/b?x=1",
                ..base
            },
            HttpAttributes {
                path: "/a?x=%zz",
                ..base
            },
            HttpAttributes {
                host: "shop2",
                ..base
            },
            HttpAttributes {
                scheme: "http",
                ..base
            },
            HttpAttributes {
                protocol: "HTTP/2",
                ..base
            },
            HttpAttributes {
                headers: headers(&[("accept", "text/html")]),
                ..base
            },
            HttpAttributes {
                headers: headers(&[("accept", "*/*"), ("accept", "x")]),
                ..base
            },
            HttpAttributes {
                headers: headers(&[]),
                ..base
            },
            HttpAttributes {
                body: Some(body(b"{}", false, Some("application/json"))),
                ..base
            },
            HttpAttributes {
                body: Some(body(b"{}", true, Some("application/json"))),
                ..base
            },
            HttpAttributes {
                body: Some(body(b"[]", false, Some("application/json"))),
                ..base
            },
            HttpAttributes {
                body: Some(body(b"a=1", false, None)),
                ..base
            },
            HttpAttributes {
                headers: headers(&[("content-type", "application/x-www-form-urlencoded")]),
                body: Some(body(b"a=1", false, None)),
                ..base
            },
        ];
        let at = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let mut all = Vec::new();
        for http in https {
            all.push(AuthzInput {
                kind: InputKind::Http(http),
                source_address: at(1),
                destination_address: at(2),
                source_principal: Some("spiffe://vigil.local/ns/a/sa/web"),
                destination_principal: Some("spiffe://vigil.local/ns/a/sa/shop"),
            });
        }
        let first = all[0];
        all.push(AuthzInput {
            source_address: at(3),
            ..first
        });
        all.push(AuthzInput {
            destination_address: at(4),
            ..first
        });
        all.push(AuthzInput {
            source_principal: None,
            ..first
        });
        all.push(AuthzInput {
            source_principal: Some("spiffe://vigil.local/ns/a/sa/x"),
            ..first
        });
        all.push(AuthzInput {
            destination_principal: None,
            ..first
        });
        all.push(AuthzInput {
            kind: InputKind::Tcp,
            ..first
        });
        all.push(AuthzInput {
            kind: InputKind::Tcp,
            source_address: at(3),
            ..first
        });
        all
    }

    #[test]
    fn equal_keys_mean_equal_documents_for_what_a_bundle_observes() {
        let all = variants();
        for needs in [
            InputNeeds::ALL,
            InputNeeds {
                headers: false,
                addresses: false,
                parsed_query: false,
                request_id: false,
            },
            InputNeeds {
                headers: true,
                addresses: false,
                parsed_query: true,
                request_id: false,
            },
        ] {
            let keyed: Vec<(Vec<u8>, Result<Value, InputError>)> = all
                .iter()
                .map(|input| {
                    let mut key = Vec::new();
                    input.key_for(needs, &mut key);
                    (key, input.document_for(needs))
                })
                .collect();
            for (i, (key_a, doc_a)) in keyed.iter().enumerate() {
                for (key_b, doc_b) in &keyed[i + 1..] {
                    if key_a == key_b {
                        assert_eq!(doc_a, doc_b, "one key for two documents ({needs:?})");
                    }
                }
            }
            // What the bundle cannot observe does not split the key.
            if !needs.request_id {
                assert_eq!(keyed[0].0, keyed[1].0, "the request id is not in the key");
            }
        }
    }

    /// Every combination of what a bundle can observe.
    fn all_needs() -> impl Iterator<Item = InputNeeds> {
        (0..16u8).map(|bits| InputNeeds {
            headers: bits & 1 != 0,
            addresses: bits & 2 != 0,
            parsed_query: bits & 4 != 0,
            request_id: bits & 8 != 0,
        })
    }

    /// A request's document filled into the last one is the document built anew, whatever
    /// the request before it was; and a last document still held elsewhere (by a remembered
    /// decision or the evaluator, say) is never changed by the next request.
    #[test]
    fn a_document_filled_again_is_the_document_built_anew() {
        let anew = |input: &AuthzInput<'_>, needs| {
            let mut document = Value::Undefined;
            SHAPES
                .with(|s| input.build(s, needs, Parsing::Strict, &mut document))
                .map(|()| document)
        };
        let text = |document: &Result<Value, InputError>| format!("{document:?}");
        let all = variants();
        for needs in all_needs() {
            for before in &all {
                for input in &all {
                    let held = before.document_for(needs);
                    let held_text = text(&held);
                    assert_eq!(
                        input.document_for(needs),
                        anew(input, needs),
                        "{input:?} after {before:?}, the last document held ({needs:?})"
                    );
                    assert_eq!(text(&held), held_text, "a held document changed");
                    drop(held);
                    before.document_for(needs).ok();
                    assert_eq!(
                        input.document_for(needs),
                        anew(input, needs),
                        "{input:?} after {before:?} ({needs:?})"
                    );
                }
            }
        }
    }

    /// The point of filling again: a request without a body reuses the last document's
    /// objects once the evaluator has let go of it.
    #[test]
    fn a_request_without_a_body_reuses_the_last_document() {
        let all = variants();
        let (first, other_path) = (all[0], all[4]);
        let pointer = |document: &Value| match document {
            Value::Object(object) => Rc::as_ptr(object),
            _ => std::ptr::null(),
        };
        let needs = InputNeeds::ALL;
        let last = pointer(&first.document_for(needs).expect("builds"));
        let next = first.document_for(needs).expect("builds");
        assert_eq!(pointer(&next), last, "same request, same objects");
        drop(next);
        let next = other_path.document_for(needs).expect("builds");
        assert_eq!(pointer(&next), last, "another path, same objects");
        // Held elsewhere: the next request gets a copy.
        let again = first.document_for(needs).expect("builds");
        assert_ne!(pointer(&again), last);
        assert_eq!(next, anew_document(&other_path));
    }

    fn anew_document(input: &AuthzInput<'_>) -> Value {
        let mut document = Value::Undefined;
        SHAPES
            .with(|s| input.build(s, InputNeeds::ALL, Parsing::Strict, &mut document))
            .expect("builds");
        document
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?x=1#f"), Ok(("/a/b", "x=1")));
        assert_eq!(split_target("/a#f?x"), Ok(("/a", "")));
        assert_eq!(split_target("http://h:80/p?q"), Ok(("/p", "q")));
        assert_eq!(split_target("*"), Ok(("*", "")));
        assert_eq!(split_target("///x"), Ok(("///x", "")));
        assert!(split_target("//admin/x").is_err());
        assert!(split_target("/a\tb").is_err());
        assert!(split_target("/a#%zz").is_err());
    }

    #[test]
    fn paths_decode_before_splitting() {
        let json = |v: Value| serde_json::to_value(v).expect("json");
        assert_eq!(
            json(parsed_path("/api%2Fproducts", None).expect("parses")),
            serde_json::json!(["api", "products"])
        );
        assert_eq!(
            json(parsed_path("//a+b/c%20d/", None).expect("parses")),
            serde_json::json!(["a+b", "c d", ""])
        );
        assert_eq!(
            parsed_path("/api/products/%zz", None),
            Err("invalid URL escape \"%zz\"".to_string())
        );
        assert!(parsed_path("/a%2", None).is_err());
    }

    #[test]
    fn queries_parse_like_go() {
        let json = |v: Value| serde_json::to_value(v).expect("json");
        assert_eq!(
            json(parsed_query("a=1&a=2&b&=x&c=&&d=x+y%2B").expect("parses")),
            serde_json::json!({"a": ["1", "2"], "b": [""], "": ["x"], "c": [""], "d": ["x y+"]})
        );
        assert!(parsed_query("debug=true;x=1").is_err());
        assert!(parsed_query("q=%zz&page=1").is_err());
        assert!(parsed_query("%zz=1").is_err());
    }

    #[test]
    fn bodies() {
        let json = Some("application/json");
        assert_eq!(parse_body("", json), Ok(Value::Null));
        assert_eq!(parse_body("null", json), Ok(Value::Null));
        assert!(parse_body("   ", json).is_err());
        assert!(parse_body(r#"{"quantity": NaN}"#, json).is_err());
        assert!(parse_body(r#"{"a": 1} x"#, json).is_err());
        assert_eq!(parse_body("hello", Some("text/plain")), Ok(Value::Null));
        let form = Some("application/x-www-form-urlencoded");
        assert!(parse_body("a=1;b=2", form).is_err());
        assert_eq!(parse_body("", form), Ok(Value::Null));
    }
}
