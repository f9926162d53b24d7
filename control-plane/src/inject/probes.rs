//! Kubelet probes through the sidecar, never around it.
//!
//! The kubelet probes from the node, in plaintext and without a mesh identity, while every
//! inbound port of an injected pod lands on the proxy's mutual-TLS listener. Excluding the
//! probed ports from interception would open them (often the app's serving port) to anyone,
//! with no policy. So, as Istio does with `/app-health/<container>/<probe>`, every `httpGet`,
//! `tcpSocket` and `grpc` probe of the app's containers is rewritten to an `httpGet` on the
//! proxy's health port (the metrics port, which already answers the proxy's own probes), at
//! `/app-health/<container>/<livez|readyz|startupz>`. The original checks go to the proxy
//! as JSON in `VIGIL_APP_PROBES`; the proxy performs them against the app on loopback
//! (`vigil_proxy::admin::probes`). Timing fields stay as they were; `exec` probes run inside the
//! container and are left alone.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::METRICS_PORT;

/// Pod annotation: `"false"` keeps the pod's probes as written (they then go through
/// interception, so their ports must be excluded with `vigil.io/exclude-inbound-ports`).
pub const ANNOTATION_REWRITE_PROBES: &str = "vigil.io/rewrite-app-probers";
/// The proxy's environment variable holding the original probes.
pub const APP_PROBES_ENV: &str = "VIGIL_APP_PROBES";
/// Where the proxy answers rewritten probes.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The probe fields of a container and the last segment of their rewritten path.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The kubelet's default when a probe sets no `timeoutSeconds`.
const DEFAULT_TIMEOUT_SECONDS: u64 = 1;

/// One probe the kubelet would make against a pod port, and the container port it uses.
struct AppProbe {
    /// What the proxy performs: `{httpGet|tcpSocket|grpc: {...}, timeoutSeconds}`.
    check: Value,
    port: u16,
}

/// Rewrites the probes of `spec`'s app containers (and of its own native sidecars) to the
/// proxy's health port, returning the original checks by their new path, for
/// `VIGIL_APP_PROBES`. With `rewrite` false nothing changes; the warnings then name the
/// probe ports that are not excluded from interception, whose probes would fail.
pub fn rewrite(
    spec: &mut Map<String, Value>,
    rewrite: bool,
    excluded_inbound: &std::collections::BTreeSet<u16>,
    warnings: &mut Vec<String>,
) -> Map<String, Value> {
    let mut originals = Map::new();
    let mut unreachable = BTreeMap::<u16, Vec<String>>::new();
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut() {
            // Plain init containers take no probes; native sidecars (restartPolicy: Always) do.
            if list == "initContainers"
                && container.get("restartPolicy").and_then(Value::as_str) != Some("Always")
            {
                continue;
            }
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for (field, suffix) in PROBES {
                let Some(probe) = container.get(field).and_then(Value::as_object) else {
                    continue;
                };
                let target = match original(probe, container) {
                    Ok(Some(target)) => target,
                    Ok(None) => continue,
                    Err(problem) => {
                        warnings.push(format!(
                            "container {name}: {field} {problem}; left as written, it goes \
                             through the proxy and fails"
                        ));
                        continue;
                    }
                };
                if !rewrite {
                    if !excluded_inbound.contains(&target.port) {
                        unreachable
                            .entry(target.port)
                            .or_default()
                            .push(format!("{name} {field}"));
                    }
                    continue;
                }
                let path = format!("{APP_HEALTH_PREFIX}{name}/{suffix}");
                if let Some(probe) = container.get_mut(field).and_then(Value::as_object_mut) {
                    for handler in ["httpGet", "tcpSocket", "grpc"] {
                        probe.remove(handler);
                    }
                    probe.insert(
                        "httpGet".into(),
                        json!({"path": path, "port": METRICS_PORT, "scheme": "HTTP"}),
                    );
                }
                originals.insert(path, target.check);
            }
        }
    }
    for (port, probes) in unreachable {
        warnings.push(format!(
            "{ANNOTATION_REWRITE_PROBES}=false: port {port} ({}) is intercepted, so the kubelet's \
             plaintext probes on it fail; add it to vigil.io/exclude-inbound-ports (it is then \
             open to anyone, without policy) or let Vigil rewrite the probes",
            probes.join(", ")
        ));
    }
    originals
}

/// The check a probe makes against the pod, with named ports resolved through the
/// container's `ports`; `None` for probes that do not reach a pod port (`exec`, or a
/// `host` of their own), an error for a port that resolves to nothing.
fn original(
    probe: &Map<String, Value>,
    container: &Map<String, Value>,
) -> Result<Option<AppProbe>, String> {
    let timeout = probe
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    let has_own_host = |handler: &Value| {
        handler
            .get("host")
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty())
    };
    let (kind, handler) = if let Some(h) = probe.get("httpGet") {
        ("httpGet", h)
    } else if let Some(h) = probe.get("tcpSocket") {
        ("tcpSocket", h)
    } else if let Some(h) = probe.get("grpc") {
        ("grpc", h)
    } else {
        return Ok(None);
    };
    if has_own_host(handler) {
        // The kubelet probes that host, not the pod: interception is not in the way.
        return Ok(None);
    }
    let port_value = handler.get("port").unwrap_or(&Value::Null);
    let port = resolve_port(port_value, container)
        .ok_or_else(|| format!("port {port_value} is not a declared port of the container"))?;
    let check = match kind {
        "httpGet" => {
            let mut get = Map::new();
            let path = handler.get("path").and_then(Value::as_str).unwrap_or("");
            get.insert(
                "path".into(),
                json!(if path.is_empty() { "/" } else { path }),
            );
            get.insert("port".into(), json!(port));
            get.insert(
                "scheme".into(),
                handler.get("scheme").cloned().unwrap_or(json!("HTTP")),
            );
            if let Some(headers) = handler
                .get("httpHeaders")
                .and_then(Value::as_array)
                .filter(|h| !h.is_empty())
            {
                get.insert("httpHeaders".into(), Value::Array(headers.clone()));
            }
            json!({ "httpGet": get, "timeoutSeconds": timeout })
        }
        "tcpSocket" => json!({ "tcpSocket": {"port": port}, "timeoutSeconds": timeout }),
        _ => {
            let mut grpc = Map::new();
            grpc.insert("port".into(), json!(port));
            if let Some(service) = handler.get("service").and_then(Value::as_str) {
                grpc.insert("service".into(), json!(service));
            }
            json!({ "grpc": grpc, "timeoutSeconds": timeout })
        }
    };
    Ok(Some(AppProbe { check, port }))
}

/// A probe's port: a number, a number as text, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Map<String, Value>) -> Option<u16> {
    let number = match port {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok().or_else(|| {
            container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s.as_str()))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        }),
        _ => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p != 0)
}
