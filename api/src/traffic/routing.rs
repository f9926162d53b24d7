//! What picks a route and where it sends a request: matches on path, method, headers and
//! query parameters; weighted backends; header modifiers. The semantics are those of the
//! Gateway API's `HTTPRoute` (which the control plane translates into this form):
//!
//! - a route matches when any one of its `match` entries does, and an entry matches when
//!   all of its conditions hold;
//! - `path.prefix` matches whole path segments: `/foo` matches `/foo`, `/foo/` and
//!   `/foo/bar`, never `/foobar`; `path.exact` the path alone (no query); `path.regex`
//!   the whole path;
//! - header names are case-insensitive, and a header matches when any of its values does;
//!   query parameter names are case-sensitive and the first value counts;
//! - regular expressions are Rust's `regex` syntax (RE2's, as the Gateway API suggests),
//!   anchored at both ends.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::MethodName;
use crate::headers::{HOP_BY_HOP, IDENTITY_HEADERS};

/// One way a request can take a route; every condition written must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// How a path is matched: `{"prefix": "/api"}`, `{"exact": "/login"}` or
/// `{"regex": "/users/[0-9]+"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A header or query parameter condition: `{"name": "x-canary", "exact": "1"}` or
/// `{"name": "user", "regex": "test-.*"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Where a route's requests go instead of the service's own endpoints: another service
/// (a host name it answers to, such as `reviews-v2.shop`) and its share.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub service: String,
    /// Relative share of the route's requests; 0 sends it none.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Headers changed on the way: `set` replaces, `add` appends, `remove` drops, in that
/// order.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEntry {
    pub name: String,
    pub value: String,
}

/// Limits that keep one bad route from costing every request: the Gateway API's own.
pub const MAX_MATCHES: usize = 64;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Compiled size of one regular expression.
const MAX_REGEX_BYTES: usize = 256 * 1024;

/// What of a request a route can match on.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> RequestHead<'a> {
        RequestHead {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }
    }
}

/// A [`RouteMatch`] ready to test requests against.
#[derive(Debug, Clone)]
pub(super) struct Matcher {
    source: RouteMatch,
    path: Option<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(HeaderName, StringMatcher)>,
    query: Vec<(String, StringMatcher)>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    /// Without its trailing slashes; empty matches every path.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum StringMatcher {
    Exact(String),
    Regex(Regex),
}

impl StringMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(v) => v == value,
            StringMatcher::Regex(r) => r.is_match(value),
        }
    }
}

fn regex(at: &str, pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| {
            // regex's own message spans lines (the pattern, a caret, the error).
            let reason = e.to_string();
            let reason = reason.lines().last().unwrap_or_default().trim().to_string();
            format!("{at}: {pattern:?} is not a regular expression Vigil can use ({reason})")
        })
}

fn value_matcher(at: &str, m: &ValueMatch) -> Result<StringMatcher, String> {
    match (&m.exact, &m.regex) {
        (Some(v), None) => Ok(StringMatcher::Exact(v.clone())),
        (None, Some(r)) => Ok(StringMatcher::Regex(regex(&format!("{at}.regex"), r)?)),
        _ => Err(format!("{at} needs exactly one of `exact` or `regex`")),
    }
}

impl Matcher {
    pub(super) fn compile(at: &str, source: &RouteMatch) -> Result<Matcher, String> {
        let path = match &source.path {
            None => None,
            Some(PathMatch::Exact(p)) | Some(PathMatch::Prefix(p)) if !p.starts_with('/') => {
                return Err(format!("{at}.path must start with '/', got {p:?}"))
            }
            Some(PathMatch::Exact(p)) => Some(PathMatcher::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => {
                Some(PathMatcher::Prefix(p.trim_end_matches('/').to_string()))
            }
            Some(PathMatch::Regex(r)) => Some(PathMatcher::Regex(regex(&format!("{at}.path"), r)?)),
        };
        let mut headers = Vec::with_capacity(source.headers.len());
        for (i, h) in source.headers.iter().enumerate() {
            let here = format!("{at}.headers[{i}]");
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{here}.name: {:?} is not a header name", h.name))?;
            // The Gateway API: only the first condition on a name counts.
            if headers.iter().any(|(n, _)| *n == name) {
                continue;
            }
            headers.push((name, value_matcher(&here, h)?));
        }
        let mut query = Vec::with_capacity(source.query.len());
        for (i, q) in source.query.iter().enumerate() {
            let here = format!("{at}.query[{i}]");
            if q.name.is_empty() {
                return Err(format!("{here}.name must not be empty"));
            }
            if query.iter().any(|(n, _)| *n == q.name) {
                continue;
            }
            query.push((q.name.clone(), value_matcher(&here, q)?));
        }
        Ok(Matcher {
            source: source.clone(),
            path,
            method: source.method.as_ref().map(|m| m.0.clone()),
            headers,
            query,
        })
    }

    pub(super) fn matches(&self, req: &RequestHead<'_>) -> bool {
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathMatcher::Exact(p)) => req.path == p,
            Some(PathMatcher::Prefix(p)) => {
                req.path.starts_with(p.as_str())
                    && (req.path.len() == p.len() || req.path.as_bytes()[p.len()] == b'/')
            }
            Some(PathMatcher::Regex(r)) => r.is_match(req.path),
        };
        if !path_ok {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, m)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        });
        if !headers_ok {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        // One pass over the query: the first value of each name a condition reads.
        let mut first: Vec<Option<std::borrow::Cow<'_, str>>> = vec![None; self.query.len()];
        for (k, v) in form_urlencoded::parse(req.query.unwrap_or_default().as_bytes()) {
            if let Some(i) = self.query.iter().position(|(name, _)| *name == k) {
                first[i].get_or_insert(v);
            }
        }
        self.query
            .iter()
            .zip(first)
            .all(|((_, m), v)| v.is_some_and(|v| m.matches(&v)))
    }
}

/// A [`HeaderModifier`] with its names and values parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderChanges {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderChanges {
    pub(super) fn compile(at: &str, m: &HeaderModifier) -> Result<HeaderChanges, String> {
        let entry = |kind: &str, i: usize, e: &HeaderEntry| {
            let here = format!("{at}.{kind}[{i}]");
            let name = header_name(&here, &e.name)?;
            let value = HeaderValue::from_str(&e.value)
                .map_err(|_| format!("{here}.value: {:?} is not a header value", e.value))?;
            Ok::<_, String>((name, value))
        };
        Ok(HeaderChanges {
            set: (m.set.iter().enumerate())
                .map(|(i, e)| entry("set", i, e))
                .collect::<Result<_, _>>()?,
            add: (m.add.iter().enumerate())
                .map(|(i, e)| entry("add", i, e))
                .collect::<Result<_, _>>()?,
            remove: (m.remove.iter().enumerate())
                .map(|(i, n)| header_name(&format!("{at}.remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Headers a route may not touch: they carry the connection itself ([`HOP_BY_HOP`], the
/// host, the length), or an identity only a proxy asserts ([`IDENTITY_HEADERS`], and any
/// `x-vigil-` header).
fn header_name(at: &str, name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{at}: {name:?} is not a header name"))?;
    let name_str = parsed.as_str();
    let reserved = matches!(name_str, "host" | "content-length")
        || name_str.starts_with("x-vigil-")
        || HOP_BY_HOP.contains(&name_str)
        || IDENTITY_HEADERS.contains(&name_str);
    if reserved {
        return Err(format!(
            "{at}: header {name:?} cannot be changed by a route (it belongs to the connection or to the mesh's identity headers)"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a Method, uri: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        RequestHead {
            method,
            path,
            query,
            headers,
        }
    }

    fn matcher(json: &str) -> Matcher {
        let m: RouteMatch = serde_json::from_str(json).expect("a match");
        Matcher::compile("match[0]", &m).expect("compiles")
    }

    #[test]
    fn prefixes_match_whole_segments_and_exact_paths_ignore_the_query() {
        let none = HeaderMap::new();
        let get = Method::GET;
        let prefix = matcher(r#"{"path": {"prefix": "/foo/"}}"#);
        for (uri, expect) in [
            ("/foo", true),
            ("/foo/", true),
            ("/foo/bar", true),
            ("/foobar", false),
            ("/fo", false),
        ] {
            assert_eq!(prefix.matches(&head(&get, uri, &none)), expect, "{uri}");
        }
        assert!(matcher(r#"{"path": {"prefix": "/"}}"#).matches(&head(&get, "/x", &none)));
        let exact = matcher(r#"{"path": {"exact": "/login"}}"#);
        assert!(exact.matches(&head(&get, "/login?next=/", &none)));
        assert!(!exact.matches(&head(&get, "/login/", &none)));
        let re = matcher(r#"{"path": {"regex": "/users/[0-9]+"}}"#);
        assert!(re.matches(&head(&get, "/users/42", &none)));
        assert!(!re.matches(&head(&get, "/users/42/x", &none)), "anchored");
    }

    #[test]
    fn every_condition_of_a_match_must_hold() {
        let m = matcher(
            r#"{"method": "post", "headers": [{"name": "X-Canary", "exact": "1"},
                {"name": "user", "regex": "test-.*"}], "query": [{"name": "v", "exact": "2"}]}"#,
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", HeaderValue::from_static("1"));
        headers.append("user", HeaderValue::from_static("alice"));
        headers.append("user", HeaderValue::from_static("test-bob"));
        let post = Method::POST;
        assert!(m.matches(&head(&post, "/?v=2&v=3", &headers)));
        assert!(
            !m.matches(&head(&post, "/?v=3&v=2", &headers)),
            "first value"
        );
        assert!(!m.matches(&head(&Method::GET, "/?v=2", &headers)));
        assert!(
            !m.matches(&head(&post, "/?V=2", &headers)),
            "names are exact"
        );
        headers.insert("x-canary", HeaderValue::from_static("2"));
        assert!(!m.matches(&head(&post, "/?v=2", &headers)));
    }

    #[test]
    fn header_changes_apply_in_order_and_refuse_mesh_headers() {
        let m: HeaderModifier = serde_json::from_str(
            r#"{"set": [{"name": "x-a", "value": "set"}], "add": [{"name": "x-b", "value": "2"}],
                "remove": ["x-c"]}"#,
        )
        .expect("modifier");
        let changes = HeaderChanges::compile("request_headers", &m).expect("valid");
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        changes.apply(&mut h);
        assert_eq!(h.get("x-a").map(|v| v.as_bytes()), Some(&b"set"[..]));
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-c"));
        for name in ["x-vigil-peer-identity", "host", "x-forwarded-client-cert"] {
            let m = HeaderModifier {
                set: vec![HeaderEntry {
                    name: name.into(),
                    value: "forged".into(),
                }],
                ..Default::default()
            };
            let err = HeaderChanges::compile("request_headers", &m).expect_err(name);
            assert!(err.contains("cannot be changed"), "{err}");
        }
    }

    #[test]
    fn bad_conditions_say_where() {
        for (json, expect) in [
            (r#"{"path": {"prefix": "api"}}"#, "must start with '/'"),
            (r#"{"path": {"regex": "("}}"#, "not a regular expression"),
            (r#"{"headers": [{"name": "x"}]}"#, "exactly one of"),
            (
                r#"{"headers": [{"name": "bad name", "exact": "1"}]}"#,
                "not a header name",
            ),
        ] {
            let m: RouteMatch = serde_json::from_str(json).expect(json);
            let err = Matcher::compile("routes[0].match[0]", &m).expect_err(json);
            assert!(err.contains(expect), "{json}: {err}");
            assert!(err.starts_with("routes[0].match[0]"), "{err}");
        }
    }
}
