//! Gateway API routes for the mesh (GAMMA): `HTTPRoute` and `GRPCRoute` objects whose
//! `parentRefs` name a Service become that service's traffic routes, which every caller's
//! proxy applies on its way out. Cluster mode watches them; the mesh file takes the same
//! objects under `routes:`.
//!
//! What a route becomes ([`vigil_api::traffic::RouteConfig`], one per match):
//! - matches: `path` (Exact, PathPrefix, RegularExpression), `method`, `headers` and
//!   `queryParams`; a GRPCRoute's `method` (service and method, Exact or
//!   RegularExpression) becomes a path match on `/service/method`;
//! - `backendRefs` become weighted backends; a rule without any sends to the parent
//!   Service itself;
//! - `RequestHeaderModifier` and `ResponseHeaderModifier` filters; any other filter makes
//!   the rule answer 500 `unsupported-route` (the Gateway API forbids skipping a filter);
//! - `timeouts.request` and `timeouts.backendRequest`, and the experimental `retry`
//!   (`codes`, `attempts`, `backoff`);
//! - the Gateway API's precedence across every rule of every route attached to a
//!   Service (exact path, then the longest prefix, method, most headers, most query
//!   parameters, oldest route, then by name), written out as the order of the routes,
//!   which proxies try first to last. A request no rule matches gets 404 `no-route`.
//!
//! Left out, and reported as problems: routes in another namespace than their Service
//! (GAMMA's consumer routes, which would make routes depend on the caller) and
//! `backendRefs` to another namespace (which need a ReferenceGrant).
//!
//! The object types are written here rather than taken from the `gateway-api` crate: it
//! pins kube 4 and k8s-openapi 0.28, and Vigil uses kube 5 and k8s-openapi 0.29, so it
//! would bring a second copy of both. Only the fields Vigil reads are declared.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vigil_api::traffic::TrafficPolicy;

use crate::model::Service;

/// The API group of the routes Vigil reads.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// An `HTTPRoute` or a `GRPCRoute`, as stored by the API server or written in a mesh file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteObject {
    #[serde(default)]
    pub api_version: String,
    pub kind: String,
    pub metadata: RouteMeta,
    #[serde(default)]
    pub spec: RouteSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// RFC 3339, as the API server writes it; routes without one (a mesh file's) count as
    /// older than any that has one, and then go by name.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    #[serde(default)]
    pub retry: Option<Retry>,
}

/// An HTTPRoute match or a GRPCRoute match: their `method` fields differ in shape.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub method: Option<MethodMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MethodMatch {
    /// HTTPRoute: `GET`.
    Http(String),
    /// GRPCRoute: `{service, method, type}`.
    Grpc(GrpcMethod),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethod {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderFilter>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<NameValue>,
    #[serde(default)]
    pub add: Vec<NameValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// The experimental channel's `HTTPRouteRetry`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    #[serde(default)]
    pub codes: Vec<u16>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

impl RouteObject {
    /// `HTTPRoute shop/reviews`, as messages name it.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind,
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }

    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn is_grpc(&self) -> bool {
        self.kind == "GRPCRoute"
    }
}

/// A route, or a part of one, that Vigil could not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    pub route: String,
    pub message: String,
}

impl std::fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.route, self.message)
    }
}

/// Which model service each port of each Service is: the mesh file's services have one
/// port each and keep their names; in cluster mode a Service's first port keeps its name
/// and the others are `name-<port name>`.
#[derive(Debug, Clone, Default)]
pub struct ServicePorts(Vec<ServicePort>);

#[derive(Debug, Clone)]
struct ServicePort {
    namespace: String,
    service: String,
    port: u16,
    model: String,
}

impl ServicePorts {
    /// The services of a mesh file.
    pub fn of_model(services: &[Service]) -> ServicePorts {
        let mut ports = ServicePorts::default();
        for s in services {
            ports.add(&s.namespace, &s.name, s.port, &s.name);
        }
        ports
    }

    /// Port `port` of Service `namespace/service` is model service `model`.
    pub fn add(&mut self, namespace: &str, service: &str, port: u16, model: &str) {
        self.0.push(ServicePort {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port,
            model: model.to_string(),
        });
    }

    /// The model services a reference means: every port of the Service without `port`.
    fn lookup(&self, namespace: &str, service: &str, port: Option<u16>) -> Vec<String> {
        self.0
            .iter()
            .filter(|p| p.namespace == namespace && p.service == service)
            .filter(|p| port.is_none_or(|want| want == p.port))
            .map(|p| p.model.clone())
            .collect()
    }
}

/// One rule match of one route, attached to one service, with what decides its place.
struct Entry {
    key: PrecedenceKey,
    route: Value,
}

/// The Gateway API's precedence, smallest first.
type PrecedenceKey = (
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    String,
    String,
    usize,
    usize,
);

/// Attaches `routes` to the `services` their parentRefs name (found through `index`):
/// each such service's traffic policy gets the routes, in precedence order, in place of
/// any it had, and answers unmatched requests with 404. Returns what could not be
/// applied; the rest is.
pub fn attach(
    routes: &[RouteObject],
    services: &mut [Service],
    index: &ServicePorts,
) -> Vec<RouteProblem> {
    let mut problems = Vec::new();
    let mut by_service: BTreeMap<(String, String), Vec<Entry>> = BTreeMap::new();
    for route in routes {
        let problem = |message: String| RouteProblem {
            route: route.describe(),
            message,
        };
        if !matches!(route.kind.as_str(), "HTTPRoute" | "GRPCRoute") {
            problems.push(problem(format!(
                "kind {} is not a route Vigil reads (HTTPRoute, GRPCRoute)",
                route.kind
            )));
            continue;
        }
        let ns = route.namespace();
        for parent in &route.spec.parent_refs {
            let is_service = parent.kind.as_deref() == Some("Service")
                && matches!(parent.group.as_deref(), None | Some("") | Some("core"));
            if !is_service {
                // A Gateway's route: the gateway's business, not the mesh's.
                continue;
            }
            let parent_ns = parent.namespace.as_deref().unwrap_or(ns);
            if parent_ns != ns {
                problems.push(problem(format!(
                    "its parent Service {parent_ns}/{} is in another namespace; Vigil applies only routes in their Service's own namespace",
                    parent.name
                )));
                continue;
            }
            let targets = index.lookup(ns, &parent.name, parent.port);
            if targets.is_empty() {
                problems.push(problem(format!(
                    "parent Service {ns}/{}{} is not in the mesh",
                    parent.name,
                    parent
                        .port
                        .map(|p| format!(" port {p}"))
                        .unwrap_or_default()
                )));
                continue;
            }
            for target in targets {
                let entries = by_service
                    .entry((ns.to_string(), target.clone()))
                    .or_default();
                for (ri, rule) in route.spec.rules.iter().enumerate() {
                    match rule_routes(route, ri, rule, index) {
                        Ok(routes) => {
                            for (key, mut r) in routes {
                                // Check it as the proxies will, alone, so one bad rule
                                // costs only itself.
                                let alone = json!({ "routes": [r.take()] });
                                match TrafficPolicy::parse(&alone.to_string()) {
                                    Ok(_) => entries.push(Entry {
                                        key,
                                        route: alone["routes"][0].clone(),
                                    }),
                                    Err(e) => problems.push(problem(format!(
                                        "rule {ri} left out: {}",
                                        e.to_string().replace("routes[0].", "")
                                    ))),
                                }
                            }
                        }
                        Err(message) => {
                            problems.push(problem(format!("rule {ri} left out: {message}")))
                        }
                    }
                }
            }
        }
    }
    for ((ns, name), mut entries) in by_service {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let Some(service) = services
            .iter_mut()
            .find(|s| s.namespace == ns && s.name == name)
        else {
            continue;
        };
        let mut traffic = match service.traffic.take() {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        traffic.insert(
            "routes".into(),
            Value::Array(entries.into_iter().map(|e| e.route).collect()),
        );
        traffic.insert("unmatched".into(), Value::from("not-found"));
        service.traffic = Some(Value::Object(traffic));
    }
    problems
}

/// One traffic route per match of `rule` (one for a rule without matches), each with its
/// precedence key.
fn rule_routes(
    route: &RouteObject,
    ri: usize,
    rule: &Rule,
    index: &ServicePorts,
) -> Result<Vec<(PrecedenceKey, Value)>, String> {
    let ns = route.namespace();
    let label = format!(
        "{}/{}",
        route.metadata.name,
        rule.name.clone().unwrap_or_else(|| format!("rule-{ri}"))
    );
    let mut common = Map::new();
    common.insert("name".into(), Value::from(label));
    let mut unsupported: Vec<String> = Vec::new();
    for f in &rule.filters {
        match (
            f.kind.as_str(),
            &f.request_header_modifier,
            &f.response_header_modifier,
        ) {
            ("RequestHeaderModifier", Some(m), _) => {
                common.insert("request_headers".into(), header_modifier(m));
            }
            ("ResponseHeaderModifier", _, Some(m)) => {
                common.insert("response_headers".into(), header_modifier(m));
            }
            (kind, _, _) => unsupported.push(format!("filter {kind} is not supported by Vigil")),
        }
    }
    let mut backends = Vec::new();
    for b in &rule.backend_refs {
        let b_ns = b.namespace.as_deref().unwrap_or(ns);
        let is_service = matches!(b.kind.as_deref(), None | Some("Service"))
            && matches!(b.group.as_deref(), None | Some("") | Some("core"));
        if !is_service {
            unsupported.push(format!(
                "backendRef {} of kind {} is not a Service",
                b.name,
                b.kind.as_deref().unwrap_or("Service")
            ));
            continue;
        }
        if b_ns != ns {
            unsupported.push(format!(
                "backendRef {b_ns}/{} is in another namespace, which needs a ReferenceGrant Vigil does not read",
                b.name
            ));
            continue;
        }
        if !b.filters.is_empty() {
            unsupported.push(format!(
                "backendRef {} has filters, which Vigil does not support",
                b.name
            ));
            continue;
        }
        let service = match index.lookup(ns, &b.name, b.port).first() {
            Some(model_name) => format!("{model_name}.{ns}"),
            // Never a host name, so the proxy answers its share with 500 `no-backend`,
            // as the Gateway API has it for a backend that does not exist.
            None => format!(
                "unresolved/{}.{ns}{}",
                b.name,
                b.port.map(|p| format!(":{p}")).unwrap_or_default()
            ),
        };
        backends.push(json!({ "service": service, "weight": b.weight.unwrap_or(1) }));
    }
    if !unsupported.is_empty() {
        common.insert("unsupported".into(), Value::from(unsupported.join("; ")));
    } else if !backends.is_empty() {
        common.insert("backends".into(), Value::Array(backends));
    }
    if let Some(t) = &rule.timeouts {
        if let Some(request) = t.request.as_deref().and_then(|d| duration(d).transpose()) {
            common.insert("timeout".into(), Value::from(request?));
        }
        if let Some(per_try) = t
            .backend_request
            .as_deref()
            .and_then(|d| duration(d).transpose())
        {
            common.insert("retries".into(), json!({ "per_try_timeout": per_try? }));
        }
    }
    if let Some(retry) = &rule.retry {
        let retries = common
            .entry("retries")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("retries is not an object")?;
        let mut on: Vec<Value> = retry.codes.iter().map(|c| Value::from(*c)).collect();
        on.push(Value::from("connect-failure"));
        retries.insert("on".into(), Value::Array(on));
        // The Gateway API counts retries; Vigil counts tries.
        let attempts = retry.attempts.unwrap_or(1).saturating_add(1).min(10);
        retries.insert("attempts".into(), Value::from(attempts));
        if let Some(backoff) = retry
            .backoff
            .as_deref()
            .and_then(|d| duration(d).transpose())
        {
            let backoff = backoff?;
            let base = humantime::parse_duration(&backoff).map_err(|e| e.to_string())?;
            let max = base.max(std::time::Duration::from_millis(250));
            retries.insert(
                "backoff".into(),
                json!({ "base": backoff, "max": humantime::format_duration(max).to_string() }),
            );
        }
    }

    let created = route
        .metadata
        .creation_timestamp
        .clone()
        .unwrap_or_default();
    let full_name = format!("{ns}/{}", route.metadata.name);
    let matches: Vec<Match> = if rule.matches.is_empty() {
        vec![Match::default()]
    } else {
        rule.matches.clone()
    };
    let mut out = Vec::with_capacity(matches.len());
    for (mi, m) in matches.iter().enumerate() {
        let (converted, (rank, length)) = if route.is_grpc() {
            grpc_match(m)?
        } else {
            http_match(m)?
        };
        let method = if matches!(m.method, Some(MethodMatch::Http(_))) {
            0
        } else {
            1
        };
        let key = (
            rank,
            Reverse(length),
            method,
            Reverse(m.headers.len()),
            Reverse(m.query_params.len()),
            created.clone(),
            full_name.clone(),
            ri,
            mi,
        );
        let mut r = common.clone();
        r.insert("match".into(), Value::Array(vec![converted]));
        out.push((key, Value::Object(r)));
    }
    Ok(out)
}

/// An HTTPRoute match, and its path's rank (exact 0, prefix 1, regex 2) and length.
fn http_match(m: &Match) -> Result<(Value, (u8, usize)), String> {
    let mut out = Map::new();
    let (path, rank) = match &m.path {
        None => (("prefix", "/".to_string()), (1, 1)),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => (("exact", value.clone()), (0, value.len())),
                "PathPrefix" => (("prefix", value.clone()), (1, value.len())),
                "RegularExpression" => (("regex", value.clone()), (2, value.len())),
                other => return Err(format!("path match type {other} is not one Vigil knows")),
            }
        }
    };
    out.insert("path".into(), json!({ path.0: path.1 }));
    match &m.method {
        Some(MethodMatch::Http(method)) => {
            out.insert("method".into(), Value::from(method.clone()));
        }
        Some(MethodMatch::Grpc(_)) => return Err("an HTTPRoute method match is a string".into()),
        None => {}
    }
    if !m.headers.is_empty() {
        out.insert("headers".into(), value_matches(&m.headers)?);
    }
    if !m.query_params.is_empty() {
        out.insert("query".into(), value_matches(&m.query_params)?);
    }
    Ok((Value::Object(out), rank))
}

/// A GRPCRoute match as a path match on `/service/method`; its rank follows the
/// GRPCRoute precedence (characters of service and method).
fn grpc_match(m: &Match) -> Result<(Value, (u8, usize)), String> {
    let mut out = Map::new();
    let mut length = 0;
    match &m.method {
        Some(MethodMatch::Grpc(g)) => {
            let service = g.service.as_deref().filter(|s| !s.is_empty());
            let method = g.method.as_deref().filter(|s| !s.is_empty());
            length = service.map_or(0, str::len) + method.map_or(0, str::len);
            let path = match (g.kind.as_deref().unwrap_or("Exact"), service, method) {
                (_, None, None) => None,
                ("Exact", Some(s), Some(m)) => Some(json!({ "exact": format!("/{s}/{m}") })),
                ("Exact", s, m) => Some(json!({ "regex": format!(
                    "/{}/{}",
                    s.map_or("[^/]+".to_string(), regex::escape),
                    m.map_or("[^/]+".to_string(), regex::escape),
                )})),
                ("RegularExpression", s, m) => Some(json!({ "regex": format!(
                    "/{}/{}",
                    s.map_or("[^/]+".to_string(), |s| format!("(?:{s})")),
                    m.map_or("[^/]+".to_string(), |m| format!("(?:{m})")),
                )})),
                (other, _, _) => {
                    return Err(format!(
                        "gRPC method match type {other} is not one Vigil knows"
                    ))
                }
            };
            if let Some(path) = path {
                out.insert("path".into(), path);
            }
        }
        Some(MethodMatch::Http(_)) => {
            return Err("a GRPCRoute method match is an object (service, method)".into())
        }
        None => {}
    }
    if !m.headers.is_empty() {
        out.insert("headers".into(), value_matches(&m.headers)?);
    }
    // gRPC ranks only by characters of service and method, then headers.
    Ok((Value::Object(out), (1, length)))
}

fn value_matches(list: &[ValueMatch]) -> Result<Value, String> {
    list.iter()
        .map(|v| match v.kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(json!({ "name": v.name, "exact": v.value })),
            "RegularExpression" => Ok(json!({ "name": v.name, "regex": v.value })),
            other => Err(format!("match type {other} is not one Vigil knows")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn header_modifier(m: &HeaderFilter) -> Value {
    let entries = |list: &[NameValue]| {
        list.iter()
            .map(|e| json!({ "name": e.name, "value": e.value }))
            .collect::<Vec<_>>()
    };
    json!({ "set": entries(&m.set), "add": entries(&m.add), "remove": m.remove })
}

/// A Gateway API duration (`1h`, `250ms`, `1m30s`) as Vigil writes one; `None` for `0s`,
/// which the Gateway API uses to turn a timeout off (the service's timeout then applies).
fn duration(text: &str) -> Result<Option<String>, String> {
    let valid = !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || "hms".contains(c));
    let parsed = valid
        .then(|| humantime::parse_duration(text).ok())
        .flatten()
        .ok_or_else(|| {
            format!("{text:?} is not a Gateway API duration (such as 500ms, 10s or 1m30s)")
        })?;
    if parsed.is_zero() {
        return Ok(None);
    }
    Ok(Some(humantime::format_duration(parsed).to_string()))
}

#[cfg(test)]
mod tests;
