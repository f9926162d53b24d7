//! Istio's authorization semantics evaluated directly on the lowered policies.
//!
//! This is the reference the generated Rego is tested against: the importer computes the
//! expected decision of each generated test here, so the Rego and this evaluator are two
//! independent implementations that must agree. It is written to read like Istio's
//! documentation, not to be fast.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Value as Json};

use super::model::{mask, Action, Attribute, Match, Pattern, Policy, Rule};

/// The facts of one request or connection, as the proxy would see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Full SPIFFE ID; `None` without mTLS.
    pub source_principal: Option<String>,
    pub destination_principal: Option<String>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None` for a TCP connection.
    pub http: Option<HttpRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub host: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}

/// What Istio would decide, and which AUDIT policies match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub audited: BTreeSet<String>,
}

/// Istio's order: a matching DENY (or CUSTOM, imported as DENY) policy denies; with no ALLOW
/// policy for the workload the request is allowed; otherwise a matching ALLOW policy allows.
/// Policies outside the root namespace apply to workloads of their namespace only, read from
/// the destination's SPIFFE ID; when it has none and such policies exist, the request is denied.
pub(crate) fn evaluate(policies: &[Policy], request: &Request) -> Verdict {
    let workload = request
        .destination_principal
        .as_deref()
        .and_then(namespace_of);
    let applies = |p: &&Policy| p.mesh_wide || workload == Some(p.namespace.as_str());
    let in_scope: Vec<&Policy> = policies.iter().filter(applies).collect();
    let scope_known = workload.is_some() || policies.iter().all(|p| p.mesh_wide);

    let denied = in_scope
        .iter()
        .any(|p| p.action.denies() && policy_matches(p, request));
    let allow_policies: Vec<&&Policy> = in_scope
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    let allowed_by_one = allow_policies.iter().any(|p| policy_matches(p, request));
    let audited = in_scope
        .iter()
        .filter(|p| p.action == Action::Audit && policy_matches(p, request))
        .map(|p| p.name.clone())
        .collect();
    Verdict {
        allowed: scope_known && !denied && (allow_policies.is_empty() || allowed_by_one),
        audited,
    }
}

/// A policy matches when one of its rules does; with no rules it matches nothing.
fn policy_matches(policy: &Policy, request: &Request) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| rule_matches(policy.action, rule, request))
}

/// One source, one operation and every condition. For TCP, an ALLOW rule naming an HTTP-only
/// field never matches, while in other rules those fields are treated as matching.
fn rule_matches(action: Action, rule: &Rule, request: &Request) -> bool {
    if rule.dropped {
        return false;
    }
    if request.http.is_none() && action == Action::Allow && rule.has_http_only() {
        return false;
    }
    let holds = |m: &Match| match_holds(action, m, request);
    let any_of = |list: &[Vec<Match>]| list.is_empty() || list.iter().any(|s| s.iter().all(holds));
    any_of(&rule.from) && any_of(&rule.to) && rule.when.iter().all(holds)
}

fn match_holds(action: Action, m: &Match, request: &Request) -> bool {
    if request.http.is_none() && m.attribute.http_only() {
        // Only reached for DENY, AUDIT and CUSTOM rules (see `rule_matches`).
        return action.widens();
    }
    values_hold(m, request)
}

/// Whether the request's attribute is among the field's values (any, when there are none)
/// and among none of its `not` values.
pub(crate) fn values_hold(m: &Match, request: &Request) -> bool {
    let listed = m.values.is_empty()
        || m.values
            .iter()
            .any(|p| pattern_holds(&m.attribute, p, request));
    let excluded = m
        .not_values
        .iter()
        .any(|p| pattern_holds(&m.attribute, p, request));
    listed && !excluded
}

/// Whether the request's value of `attribute` matches one value of a field. An attribute the
/// request lacks (no mTLS identity, a missing header) matches no value.
pub(crate) fn pattern_holds(attribute: &Attribute, pattern: &Pattern, request: &Request) -> bool {
    let http = request.http.as_ref();
    let text: Option<String> = match attribute {
        Attribute::SourcePrincipal => request
            .source_principal
            .as_deref()
            .and_then(|p| p.strip_prefix("spiffe://"))
            .map(str::to_string),
        Attribute::SourceNamespace => request
            .source_principal
            .as_deref()
            .and_then(namespace_of)
            .map(str::to_string),
        Attribute::SourceIp => return ip_holds(request.source_ip, pattern),
        Attribute::DestinationIp => return ip_holds(request.destination_ip, pattern),
        Attribute::DestinationPort => return *pattern == Pattern::Port(request.destination_port),
        Attribute::Host => http.map(|h| h.host.to_ascii_lowercase()),
        Attribute::Method => http.map(|h| h.method.clone()),
        Attribute::Path => http.map(|h| h.path.split('?').next().unwrap_or("").to_string()),
        Attribute::Header(name) => {
            let value = http.and_then(|h| h.headers.get(name));
            if *pattern == Pattern::Present {
                return value.is_some();
            }
            value.cloned()
        }
    };
    let Some(text) = text else { return false };
    match pattern {
        Pattern::Present => !text.is_empty(),
        Pattern::Prefix(p) => text.starts_with(p.as_str()),
        Pattern::Suffix(s) => text.ends_with(s.as_str()),
        Pattern::Exact(e) => text == *e,
        Pattern::Cidr(..) | Pattern::Port(_) => false,
    }
}

fn ip_holds(address: IpAddr, pattern: &Pattern) -> bool {
    match pattern {
        Pattern::Cidr(network, length) => {
            address.is_ipv4() == network.is_ipv4() && mask(address, *length) == *network
        }
        _ => false,
    }
}

/// The `ns` segment of `spiffe://<trust domain>/ns/<ns>/sa/<sa>`; other shapes have none.
pub(crate) fn namespace_of(spiffe_id: &str) -> Option<&str> {
    let parts: Vec<&str> = spiffe_id.split('/').collect();
    match parts.as_slice() {
        ["spiffe:", "", _, "ns", ns, "sa", _] => Some(ns),
        _ => None,
    }
}

impl Request {
    /// The OPA-Envoy input document the proxy would build for this request.
    pub(crate) fn to_input(&self) -> Json {
        let peer = |principal: &Option<String>, ip: IpAddr, port: u16| {
            let mut peer = json!({"address": {"socketAddress": {
                "address": ip.to_string(),
                "portValue": port,
            }}});
            if let Some(p) = principal {
                peer["principal"] = json!(p);
            }
            peer
        };
        let mut attributes = json!({
            "source": peer(&self.source_principal, self.source_ip, 40000),
            "destination": peer(
                &self.destination_principal,
                self.destination_ip,
                self.destination_port,
            ),
        });
        if let Some(http) = &self.http {
            attributes["request"] = json!({"http": {
                "method": http.method,
                "path": http.path,
                "host": http.host,
                "headers": http.headers,
            }});
        }
        json!({ "attributes": attributes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{lower, string_pattern};
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            source_principal: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
            destination_principal: Some("spiffe://cluster.local/ns/foo/sa/httpbin".into()),
            source_ip: "10.0.0.1".parse().expect("ip"),
            destination_ip: "10.0.0.2".parse().expect("ip"),
            destination_port: 8080,
            http: Some(HttpRequest {
                method: method.into(),
                path: path.into(),
                host: "httpbin.foo".into(),
                headers: BTreeMap::new(),
            }),
        }
    }

    fn decide(yaml: &str, request: &Request) -> bool {
        let lowered = lower(yaml, "istio-system").expect("lowers");
        evaluate(&lowered.policies, request).allowed
    }

    const ALLOW_READ: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep]}
    - source: {namespaces: [test]}
    to:
    - operation: {methods: [GET], paths: [/info*]}
    - operation: {methods: [POST], paths: [/data]}
";

    #[test]
    fn string_matching_follows_istio() {
        let r = request("GET", "/info/x?debug=1");
        let path = |p: &str| pattern_holds(&Attribute::Path, &string_pattern(p), &r);
        assert!(path("/info*"));
        assert!(path("*x"), "the query string is not part of the path");
        assert!(path("/info/x"));
        assert!(!path("/info"));
        assert!(path("*"));
        assert!(!path("/i*o/x"), "a `*` inside a value is literal");
    }

    #[test]
    fn allow_needs_a_matching_rule() {
        assert!(decide(ALLOW_READ, &request("GET", "/info/1")));
        assert!(decide(ALLOW_READ, &request("POST", "/data")));
        assert!(!decide(ALLOW_READ, &request("POST", "/info")));
        let mut other = request("GET", "/info");
        other.source_principal = Some("spiffe://cluster.local/ns/test/sa/any".into());
        assert!(decide(ALLOW_READ, &other), "the namespace source");
        other.source_principal = Some("spiffe://cluster.local/ns/prod/sa/any".into());
        assert!(!decide(ALLOW_READ, &other));
        other.source_principal = None;
        assert!(
            !decide(ALLOW_READ, &other),
            "no mTLS identity, no principal"
        );
    }

    #[test]
    fn policies_of_another_namespace_do_not_apply() {
        let mut r = request("DELETE", "/");
        r.destination_principal = Some("spiffe://cluster.local/ns/bar/sa/x".into());
        assert!(decide(ALLOW_READ, &r), "no ALLOW policy for bar: allowed");
        r.destination_principal = None;
        assert!(
            !decide(ALLOW_READ, &r),
            "unknown workload namespace: denied"
        );
    }

    #[test]
    fn deny_wins_and_empty_policies() {
        let deny_post = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [POST], ports: ['8080']}}]}]
";
        assert!(!decide(deny_post, &request("POST", "/")));
        assert!(decide(deny_post, &request("GET", "/")));
        let mut tcp = request("GET", "/");
        tcp.http = None;
        assert!(!decide(deny_post, &tcp), "DENY: HTTP-only fields match TCP");
        tcp.destination_port = 9000;
        assert!(decide(deny_post, &tcp));

        let allow_nothing = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {}
";
        assert!(!decide(allow_nothing, &request("GET", "/")));
        let allow_all = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec: {rules: [{}]}
";
        assert!(decide(allow_all, &request("GET", "/")));
        let deny_nothing = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: istio-system}
spec: {action: DENY}
";
        assert!(decide(deny_nothing, &request("GET", "/")));
    }

    #[test]
    fn allow_with_http_fields_never_matches_tcp() {
        let mut tcp = request("GET", "/");
        tcp.http = None;
        assert!(!decide(ALLOW_READ, &tcp));
        let ports_only = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp, namespace: foo}
spec:
  rules: [{to: [{operation: {ports: ['8080']}}]}]
";
        assert!(decide(ports_only, &tcp));
    }

    #[test]
    fn negative_fields_and_conditions() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: n, namespace: foo}
spec:
  rules:
  - from: [{source: {notIpBlocks: [10.0.0.0/24]}}]
    when:
    - {key: 'request.headers[X-Token]', values: ['*']}
    - {key: destination.port, notValues: ['9090']}
";
        let mut r = request("GET", "/");
        r.source_ip = "10.0.1.1".parse().expect("ip");
        assert!(!decide(yaml, &r), "header missing");
        if let Some(h) = r.http.as_mut() {
            h.headers.insert("x-token".into(), String::new());
        }
        assert!(decide(yaml, &r), "present, even empty");
        r.source_ip = "10.0.0.9".parse().expect("ip");
        assert!(!decide(yaml, &r), "excluded block");
    }

    #[test]
    fn audit_does_not_decide() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-get, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [GET]}}]}]
";
        let lowered = lower(yaml, "istio-system").expect("lowers");
        let verdict = evaluate(&lowered.policies, &request("GET", "/"));
        assert!(verdict.allowed);
        assert_eq!(
            verdict.audited,
            BTreeSet::from(["istio-system/audit-get".to_string()])
        );
    }

    #[test]
    fn untranslatable_allow_rules_are_dropped_and_deny_fields_widened() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ['*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-deny, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
    when: [{key: 'request.auth.claims[group]', notValues: [admins]}]
";
        let lowered = lower(yaml, "istio-system").expect("lowers");
        assert_eq!(lowered.untranslated.len(), 2, "{:?}", lowered.untranslated);
        assert!(lowered.policies[0].rules[0].dropped);
        assert!(!lowered.policies[1].rules[0].dropped);
        assert!(
            !decide(yaml, &request("GET", "/")),
            "ALLOW policy exists, matches nothing"
        );
    }

    #[test]
    fn namespaces_read_the_spiffe_id() {
        assert_eq!(namespace_of("spiffe://td/ns/a/sa/b"), Some("a"));
        assert_eq!(namespace_of("spiffe://td/ns/a/sa/b/c"), None);
        assert_eq!(namespace_of("td/ns/a/sa/b"), None);
    }
}
