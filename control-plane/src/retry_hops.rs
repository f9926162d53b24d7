//! Retries stacked along a request path. When a service's callers retry its responses
//! and that service's own workloads call another service whose callers retry too, one
//! failure deep in the path is tried at both hops: up to attempts × attempts requests
//! reach the last service, and the healthy services on the way carry the extra load.
//! `vigil check` warns about such paths; which services call which is read from the
//! running proxies' outbound metrics, since the mesh file does not say.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::mesh::MeshFile;

/// Where a service's callers send a request again after it reached the service: the
/// routes (path prefixes, or `all routes`) that retry a status or gRPC code, and their
/// tries in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRetries {
    pub routes: Vec<String>,
    pub attempts: u64,
}

/// What a service's `traffic` section retries beyond connect failures, if anything.
/// Mirrors the proxy's reading of the section (docs/traffic.md): `on` lists
/// `connect-failure`, statuses and gRPC code names; a route's `on`, `attempts` replace
/// the service's; 3 attempts when none are written.
pub fn response_retries(traffic: Option<&Value>) -> Option<ResponseRetries> {
    let traffic = traffic?;
    let service = &traffic["retries"];
    let retries_responses = |on: &Value| {
        on.as_array().is_some_and(|list| {
            list.iter()
                .any(|o| o.is_number() || o.as_str().is_some_and(|s| s != "connect-failure"))
        })
    };
    let attempts_of = |r: &Value, default: u64| r["attempts"].as_u64().unwrap_or(default);
    let base_attempts = attempts_of(service, 3);
    let base_on = retries_responses(&service["on"]);
    let mut routes = Vec::new();
    let mut most = 0;
    for (i, route) in traffic["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let r = &route["retries"];
        let on = if r["on"].is_null() {
            base_on
        } else {
            retries_responses(&r["on"])
        };
        let attempts = attempts_of(r, base_attempts);
        if on && attempts > 1 {
            // The route's label, as the proxies' metrics give it.
            let label = route["name"]
                .as_str()
                .or(route["path_prefix"].as_str())
                .map_or_else(|| format!("routes[{i}]"), str::to_string);
            routes.push(label);
            most = most.max(attempts);
        }
    }
    if base_on && base_attempts > 1 {
        routes.push("all other routes".to_string());
        most = most.max(base_attempts);
    }
    (!routes.is_empty()).then_some(ResponseRetries {
        routes,
        attempts: most,
    })
}

/// A path on which responses are retried at two hops: `caller` calls `first`, whose
/// workload `via` calls `second`, and callers of both retry responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackedRetries {
    pub caller: String,
    pub first: String,
    pub via: String,
    pub second: String,
    /// Tries that can reach `second` for one request into `first`.
    pub worst_case: u64,
}

/// Paths with retries at more than one hop. `calls` holds (workload, service it calls
/// as `name.namespace`) pairs seen by the proxies.
pub fn stacked(mesh: &MeshFile, calls: &BTreeSet<(String, String)>) -> Vec<StackedRetries> {
    let services: BTreeMap<String, (&Vec<String>, Option<ResponseRetries>)> = mesh
        .services
        .iter()
        .map(|s| {
            (
                format!("{}.{}", s.name, s.namespace),
                (&s.endpoints, response_retries(s.traffic.as_ref())),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (caller, first) in calls {
        let Some((endpoints, Some(first_retries))) = services.get(first) else {
            continue;
        };
        for via in endpoints.iter() {
            for (from, second) in calls.iter().filter(|(w, _)| w == via) {
                if let Some((_, Some(second_retries))) = services.get(second) {
                    out.push(StackedRetries {
                        caller: caller.clone(),
                        first: first.clone(),
                        via: from.clone(),
                        second: second.clone(),
                        worst_case: first_retries.attempts * second_retries.attempts,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_statuses_and_grpc_codes_count_and_routes_override_the_service() {
        assert_eq!(
            response_retries(None),
            None,
            "the default: connect failures"
        );
        assert_eq!(
            response_retries(Some(&json!({"retries": {"on": ["connect-failure"]}}))),
            None
        );
        let route = json!({"routes": [{"path_prefix": "/stock", "retries": {"on": [503]}}]});
        assert_eq!(
            response_retries(Some(&route)),
            Some(ResponseRetries {
                routes: vec!["/stock".into()],
                attempts: 3
            })
        );
        let off = json!({"retries": {"on": ["unavailable"], "attempts": 1}});
        assert_eq!(response_retries(Some(&off)), None, "one try is no retry");
        let service = json!({"retries": {"on": [502], "attempts": 2},
                             "routes": [{"path_prefix": "/pay", "retries": {"on": ["connect-failure"]}}]});
        assert_eq!(
            response_retries(Some(&service)),
            Some(ResponseRetries {
                routes: vec!["all other routes".into()],
                attempts: 2
            })
        );
    }

    #[test]
    fn a_path_retried_at_two_hops_is_found() {
        let mut mesh = MeshFile::parse(crate::demo_mesh::MESH_YAML).expect("demo mesh");
        let calls: BTreeSet<(String, String)> = [
            ("loadgen", "web.shop"),
            ("web", "orders.shop"),
            ("orders", "inventory.shop"),
            ("orders", "payments.shop"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            stacked(&mesh, &calls),
            vec![],
            "the demo retries at one hop"
        );
        let orders = mesh
            .services
            .iter_mut()
            .find(|s| s.name == "orders")
            .expect("orders");
        orders.traffic = Some(json!({"retries": {"on": [503, "connect-failure"]}}));
        let found = stacked(&mesh, &calls);
        assert_eq!(
            found,
            vec![StackedRetries {
                caller: "web".into(),
                first: "orders.shop".into(),
                via: "orders".into(),
                second: "inventory.shop".into(),
                worst_case: 9,
            }]
        );
    }
}
