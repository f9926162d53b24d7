//! The Gateway API's own example and conformance routes (tests/fixtures/kubernetes/
//! gateway-api, see its SOURCES.md), turned into traffic policies and checked the way a
//! proxy uses them: parsed by the proxies' parser and asked which route a request takes.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use vigil_api::traffic::{RequestHead, Route, TrafficPolicy};

use super::*;
use crate::fixtures::fixture;

fn route(file: &str) -> RouteObject {
    serde_yaml::from_str(&fixture(&format!("gateway-api/{file}")))
        .unwrap_or_else(|e| panic!("{file} is not a route Vigil reads: {e}"))
}

/// The recorded route with its Gateway parent replaced by a Service, as a mesh user
/// would attach it.
fn attached_to(mut route: RouteObject, service: &str, port: Option<u16>) -> RouteObject {
    route.spec.parent_refs = vec![ParentRef {
        group: Some(String::new()),
        kind: Some("Service".into()),
        name: service.into(),
        namespace: None,
        port,
    }];
    route
}

fn service(namespace: &str, name: &str, port: u16) -> Service {
    Service {
        name: name.into(),
        namespace: namespace.into(),
        port,
        protocol: crate::model::Protocol::Http,
        target_port: None,
        hosts: vec![],
        virtual_addresses: vec![],
        endpoints: vec![],
        traffic: None,
    }
}

fn services(namespace: &str, names: &[(&str, u16)]) -> Vec<Service> {
    names
        .iter()
        .map(|(n, p)| service(namespace, n, *p))
        .collect()
}

/// Attaches `routes` and returns the services, failing on any problem.
fn attach_ok(routes: &[RouteObject], mut services: Vec<Service>) -> Vec<Service> {
    let ports = ServicePorts::of_model(&services);
    let problems = attach(routes, &mut services, &ports);
    assert!(problems.is_empty(), "{problems:?}");
    services
}

fn policy(services: &[Service], name: &str) -> TrafficPolicy {
    let s = services.iter().find(|s| s.name == name).expect("service");
    let json = s
        .traffic
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_default();
    TrafficPolicy::parse(&json).unwrap_or_else(|e| panic!("proxies would refuse {json}: {e}"))
}

fn pick(p: &TrafficPolicy, method: Method, path: &str, headers: &[(&str, &str)]) -> Arc<Route> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    p.select(&RequestHead {
        method: &method,
        path,
        query,
        headers: &map,
    })
}

/// `service=weight` of a route's backends.
fn backends(r: &Route) -> Vec<String> {
    r.backends
        .iter()
        .map(|b| format!("{}={}", b.service, b.weight))
        .collect()
}

#[test]
fn a_grpc_route_splits_a_service_by_weight() {
    let ns = "gateway-conformance-mesh";
    let out = attach_ok(
        &[route("mesh-grpcroute-weight.yaml")],
        services(ns, &[("echo", 7070), ("echo-v1", 7070), ("echo-v2", 7070)]),
    );
    let p = policy(&out, "echo");
    let r = pick(&p, Method::POST, "/any.Service/Method", &[]);
    assert_eq!(
        backends(&r),
        [
            "echo-v1.gateway-conformance-mesh=70",
            "echo-v2.gateway-conformance-mesh=30"
        ]
    );
    assert_eq!(r.label(), "mesh-grpc-weighted-backends/rule-0");
    // The backends themselves are left alone.
    assert!(out
        .iter()
        .filter(|s| s.name != "echo")
        .all(|s| s.traffic.is_none()));
}

#[test]
fn grpc_methods_become_paths_and_earlier_rules_win_ties() {
    let ns = "gateway-conformance-mesh";
    let out = attach_ok(
        &[route("mesh-grpcroute-request-header-modifier.yaml")],
        services(ns, &[("echo", 7070), ("echo-v1", 7070), ("echo-v2", 7070)]),
    );
    let p = policy(&out, "echo");
    let service = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    let echo = pick(&p, Method::POST, &format!("{service}/Echo"), &[]);
    assert_eq!(echo.label(), "grpc-request-header-modifier/rule-0");
    let mut headers = HeaderMap::new();
    headers.insert("x-header-set", HeaderValue::from_static("some-other-value"));
    echo.request_headers
        .as_ref()
        .expect("modifier")
        .apply(&mut headers);
    assert_eq!(headers["x-header-set"], "set-overwrites-values");

    let two = pick(&p, Method::POST, &format!("{service}/EchoTwo"), &[]);
    assert_eq!(backends(&two), ["echo-v2.gateway-conformance-mesh=1"]);
    let mut headers = HeaderMap::new();
    headers.insert("x-header-remove-1", HeaderValue::from_static("gone"));
    headers.insert("x-header-add-1", HeaderValue::from_static("kept"));
    two.request_headers
        .as_ref()
        .expect("modifier")
        .apply(&mut headers);
    assert!(!headers.contains_key("x-header-remove-1"));
    assert_eq!(headers.get_all("x-header-add-1").iter().count(), 2);
    assert_eq!(headers["x-header-set-2"], "header-set-2");

    // Another method of the service matches no rule: 404, as the Gateway API says.
    assert!(pick(&p, Method::POST, &format!("{service}/EchoThree"), &[]).not_found);
}

#[test]
fn path_prefixes_name_their_rules_and_unmatched_paths_get_404() {
    let ns = "gateway-conformance-infra";
    let out = attach_ok(
        &[route("mesh-httproute-named-rule.yaml")],
        services(ns, &[("echo", 80), ("echo-v1", 8080), ("echo-v2", 8080)]),
    );
    let p = policy(&out, "echo");
    let named = pick(&p, Method::GET, "/named/x", &[]);
    assert_eq!(named.label(), "http-named-rules/named-rule");
    assert_eq!(backends(&named), ["echo-v1.gateway-conformance-infra=1"]);
    let unnamed = pick(&p, Method::GET, "/unnamed", &[]);
    assert_eq!(unnamed.label(), "http-named-rules/rule-1");
    assert!(pick(&p, Method::GET, "/namedx", &[]).not_found);
    assert!(pick(&p, Method::GET, "/", &[]).not_found);
}

#[test]
fn header_matches_follow_the_gateway_api_precedence() {
    let ns = "gateway-conformance-infra";
    let out = attach_ok(
        &[attached_to(
            route("httproute-header-matching.yaml"),
            "web",
            None,
        )],
        services(
            ns,
            &[
                ("web", 80),
                ("infra-backend-v1", 8080),
                ("infra-backend-v2", 8080),
            ],
        ),
    );
    let p = policy(&out, "web");
    let v1 = "infra-backend-v1.gateway-conformance-infra=1";
    let v2 = "infra-backend-v2.gateway-conformance-infra=1";
    for (headers, expect) in [
        (vec![("version", "one")], v1),
        (vec![("version", "two")], v2),
        // Two header matches outrank one, whatever the rule order.
        (vec![("version", "two"), ("color", "orange")], v1),
        (vec![("color", "blue")], v1),
        (vec![("color", "green")], v1),
        (vec![("color", "red")], v2),
        (vec![("color", "yellow")], v2),
    ] {
        let r = pick(&p, Method::GET, "/", &headers);
        assert_eq!(backends(&r), [expect], "{headers:?}");
    }
    assert!(pick(&p, Method::GET, "/", &[("version", "three")]).not_found);
}

#[test]
fn method_matches_and_zero_weights_are_kept() {
    let ns = "gateway-conformance-infra";
    let out = attach_ok(
        &[
            attached_to(route("httproute-method-matching.yaml"), "web", None),
            attached_to(route("httproute-weight.yaml"), "split", Some(80)),
        ],
        services(
            ns,
            &[
                ("web", 80),
                ("split", 80),
                ("infra-backend-v1", 8080),
                ("infra-backend-v2", 8080),
                ("infra-backend-v3", 8080),
            ],
        ),
    );
    let web = policy(&out, "web");
    assert_eq!(
        backends(&pick(&web, Method::POST, "/", &[])),
        ["infra-backend-v1.gateway-conformance-infra=1"]
    );
    assert_eq!(
        backends(&pick(&web, Method::GET, "/", &[])),
        ["infra-backend-v2.gateway-conformance-infra=1"]
    );
    assert!(pick(&web, Method::PUT, "/", &[]).not_found);
    let split = policy(&out, "split");
    assert_eq!(
        backends(&pick(&split, Method::GET, "/x", &[])),
        [
            "infra-backend-v1.gateway-conformance-infra=70",
            "infra-backend-v2.gateway-conformance-infra=30",
            "infra-backend-v3.gateway-conformance-infra=0"
        ]
    );
}

#[test]
fn a_gateways_routes_are_left_to_the_gateway() {
    let before = services("default", &[("backend-svc", 8080), ("timeout-svc", 8080)]);
    let out = attach_ok(
        &[route("http-retries.yaml"), route("timeout-example.yaml")],
        before.clone(),
    );
    assert_eq!(out, before);
}

#[test]
fn timeouts_and_retries_carry_over() {
    let out = attach_ok(
        &[
            attached_to(route("timeout-example.yaml"), "timeout-svc", Some(8080)),
            attached_to(route("http-retries.yaml"), "backend-svc", None),
        ],
        services("default", &[("backend-svc", 8080), ("timeout-svc", 8080)]),
    );
    let t = pick(&policy(&out, "timeout-svc"), Method::GET, "/timeout/x", &[]);
    assert_eq!(t.timeout, std::time::Duration::from_secs(10));
    assert_eq!(
        t.retries.per_try_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let r = pick(&policy(&out, "backend-svc"), Method::GET, "/", &[]);
    // Two retries are three tries.
    assert_eq!(r.retries.attempts, 3);
    assert!(r
        .retries
        .retries_status(&Method::GET, http::StatusCode::BAD_GATEWAY));
    assert!(!r
        .retries
        .retries_status(&Method::GET, http::StatusCode::NOT_IMPLEMENTED));
    assert!(r.retries.retries_connect_failures());
    assert_eq!(
        r.retries.backoff.base,
        std::time::Duration::from_millis(100)
    );
}

#[test]
fn what_cannot_be_applied_is_reported_and_never_served_without_it() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mixed, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web}
  - {group: "", kind: Service, name: web, namespace: other}
  - {group: "", kind: Service, name: nowhere}
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: RegularExpression, value: "/(["}}]
  - matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /far}}]
    backendRefs: [{name: web, namespace: other, port: 80}]
"#;
    let route: RouteObject = serde_yaml::from_str(text).expect("route");
    let mut out = services("shop", &[("web", 80)]);
    let ports = ServicePorts::of_model(&out);
    let problems: Vec<String> = attach(&[route], &mut out, &ports)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    let has = |text: &str| problems.iter().any(|p| p.contains(text));
    assert!(has("rule 1 left out: match[0].path: \"/([\" is not a regular expression Vigil can use (error: unclosed character class)"), "{problems:?}");
    assert!(
        has("parent Service other/web is in another namespace"),
        "{problems:?}"
    );
    assert!(
        has("parent Service shop/nowhere is not in the mesh"),
        "{problems:?}"
    );
    let p = policy(&out, "web");
    let old = pick(&p, Method::GET, "/old/x", &[]);
    assert!(old
        .unsupported
        .as_deref()
        .is_some_and(|u| u.contains("URLRewrite")));
    let gone = pick(&p, Method::GET, "/gone", &[]);
    assert_eq!(backends(&gone), ["unresolved/missing.shop:80=1"]);
    let far = pick(&p, Method::GET, "/far", &[]);
    assert!(far
        .unsupported
        .as_deref()
        .is_some_and(|u| u.contains("ReferenceGrant")));
}

#[test]
fn a_rule_without_backends_sends_to_its_service_and_keeps_the_services_policy() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: headers, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-served-by, value: mesh}]}
"#;
    let route: RouteObject = serde_yaml::from_str(text).expect("route");
    let mut web = service("shop", "web", 80);
    web.traffic = Some(serde_json::json!({"timeout": "3s", "routes": [{"path_prefix": "/x"}]}));
    let out = attach_ok(&[route], vec![web]);
    let p = policy(&out, "web");
    let r = pick(&p, Method::GET, "/anything", &[]);
    assert!(r.backends.is_empty());
    assert!(r.response_headers.is_some());
    assert_eq!(
        r.timeout,
        std::time::Duration::from_secs(3),
        "the service's timeout"
    );
    assert_eq!(p.routes.len(), 1, "the routes replace the service's own");
}
