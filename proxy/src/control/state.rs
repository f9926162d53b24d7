//! The proxy's live view of the mesh, rebuilt from each discovery snapshot and read
//! lock-free on every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use vigil_identity::SpiffeId;

use crate::traffic::TrafficPolicy;

/// This proxy's own workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub spiffe_id: String,
    pub app_port: u16,
    pub tcp_ports: Vec<u16>,
}

impl WorkloadInfo {
    /// Whether inbound may open an opaque tunnel to this application port: only a port
    /// declared as TCP, and never the HTTP port, which must receive nothing but requests
    /// the proxy parsed, checked and stripped of forged identity headers.
    pub fn accepts_tunnel_to(&self, port: u16) -> bool {
        port != self.app_port && self.tcp_ports.contains(&port)
    }
}

/// A peer proxy and the identity it must prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub address: SocketAddr,
    #[serde(serialize_with = "display")]
    pub spiffe_id: SpiffeId,
    pub workload: String,
    pub target_port: u16,
}

/// How a service's traffic is carried, as the mesh declares it (never as a client's
/// first bytes suggest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Requests, each parsed, checked against policy and forwarded; the default.
    Http,
    /// Opaque bytes in a tunnel, checked against policy once per connection.
    Tcp,
}

impl AppProtocol {
    /// The snapshot's protocol name. Anything but `tcp` is HTTP: when in doubt the proxy
    /// parses and enforces per request rather than tunnel.
    pub fn from_wire(name: &str) -> AppProtocol {
        if name.eq_ignore_ascii_case("tcp") {
            AppProtocol::Tcp
        } else {
            AppProtocol::Http
        }
    }
}

/// A service as this proxy routes to it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    pub protocol: AppProtocol,
    pub hosts: Vec<String>,
    /// Addresses that mean this service under transparent interception.
    pub virtual_addresses: Vec<SocketAddr>,
    pub endpoints: Vec<EndpointView>,
    /// Timeouts, retries, circuit breaking and limits, defaults filled in.
    pub traffic: Arc<TrafficPolicy>,
    /// `name.namespace`, made once per snapshot and shared by every request's record.
    #[serde(skip)]
    pub label: Arc<str>,
}

impl ServiceView {
    /// `name.namespace`, the label used in logs and metrics.
    pub fn qualified_name(&self) -> String {
        self.label.to_string()
    }
}

/// Everything the proxy knows from its latest snapshot.
#[derive(Debug, Serialize)]
pub struct MeshView {
    pub version: String,
    pub trust_domain: String,
    pub workload: WorkloadInfo,
    pub services: Vec<Arc<ServiceView>>,
    /// The view holds only the services the workload declared it calls and those the
    /// proxy asked for since; any other is asked for the first time it is met.
    pub scoped: bool,
    /// This workload's `name.namespace`: the service label of inbound requests that
    /// name no mesh service.
    #[serde(skip)]
    pub workload_label: Arc<str>,
    #[serde(skip)]
    by_host: HashMap<String, Arc<ServiceView>>,
    #[serde(skip)]
    by_address: HashMap<SocketAddr, Arc<ServiceView>>,
}

/// A snapshot that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot has no workload section")]
    NoWorkload,
    #[error("snapshot field {field} is invalid: {value:?}")]
    Invalid { field: &'static str, value: String },
    #[error("service {service}: traffic policy refused: {reason} (see docs/traffic.md)")]
    Traffic { service: String, reason: String },
}

impl MeshView {
    /// Validates and indexes a snapshot.
    pub fn from_snapshot(snapshot: &vigil_api::Snapshot) -> Result<MeshView, SnapshotError> {
        let services = snapshot
            .services
            .iter()
            .map(service_view)
            .collect::<Result<Vec<_>, _>>()?;
        MeshView::assemble(snapshot, services)
    }

    /// Applies an incremental snapshot (one with `incremental` set) to this view, the one
    /// its `base_version` names: services it lists replace or join this view's, those it
    /// removes go, every other is kept as it is (not parsed again).
    pub fn from_delta(&self, snapshot: &vigil_api::Snapshot) -> Result<MeshView, SnapshotError> {
        let changed = snapshot
            .services
            .iter()
            .map(service_view)
            .collect::<Result<Vec<_>, _>>()?;
        let key = |s: &ServiceView| (s.name.clone(), s.namespace.clone(), s.port);
        let mut gone: std::collections::HashSet<(String, String, u16)> =
            changed.iter().map(|s| key(s)).collect();
        for k in &snapshot.removed_services {
            gone.insert((
                k.name.clone(),
                k.namespace.clone(),
                port(k.port, "removed.port")?,
            ));
        }
        let services = self
            .services
            .iter()
            .filter(|s| !gone.contains(&key(s)))
            .cloned()
            .chain(changed)
            .collect();
        MeshView::assemble(snapshot, services)
    }

    /// The view of `snapshot`'s workload with `services`, indexed.
    fn assemble(
        snapshot: &vigil_api::Snapshot,
        services: Vec<Arc<ServiceView>>,
    ) -> Result<MeshView, SnapshotError> {
        let w = snapshot
            .workload
            .as_ref()
            .ok_or(SnapshotError::NoWorkload)?;
        let workload = WorkloadInfo {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            spiffe_id: w.spiffe_id.clone(),
            app_port: port(w.app_port, "workload.app_port")?,
            tcp_ports: w
                .tcp_ports
                .iter()
                .map(|p| port(*p, "workload.tcp_ports"))
                .collect::<Result<_, _>>()?,
        };
        let mut by_host = HashMap::new();
        let mut by_address = HashMap::new();
        for view in &services {
            for h in &view.hosts {
                by_host.insert(h.to_ascii_lowercase(), view.clone());
            }
            for addr in &view.virtual_addresses {
                by_address.insert(*addr, view.clone());
            }
        }
        Ok(MeshView {
            version: snapshot.version.clone(),
            scoped: snapshot.scoped,
            trust_domain: snapshot.trust_domain.clone(),
            workload_label: Arc::from(format!("{}.{}", workload.name, workload.namespace)),
            workload,
            services,
            by_host,
            by_address,
        })
    }

    /// The service a Host header or authority names; the port, if any, is ignored.
    pub fn service_for_host(&self, host: &str) -> Option<&Arc<ServiceView>> {
        let name = strip_port(host);
        // Hosts almost always arrive in lower case: copied only when they are not.
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        self.by_host.get(name.trim_end_matches('.'))
    }

    /// The service an intercepted connection's original destination means.
    pub fn service_for_address(&self, addr: SocketAddr) -> Option<&Arc<ServiceView>> {
        self.by_address.get(&addr)
    }
}

/// One service of a snapshot, validated.
fn service_view(s: &vigil_api::Service) -> Result<Arc<ServiceView>, SnapshotError> {
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| {
            Ok(EndpointView {
                address: e.address.parse().map_err(|_| SnapshotError::Invalid {
                    field: "endpoint.address",
                    value: e.address.clone(),
                })?,
                spiffe_id: SpiffeId::parse(&e.spiffe_id).map_err(|_| SnapshotError::Invalid {
                    field: "endpoint.spiffe_id",
                    value: e.spiffe_id.clone(),
                })?,
                workload: e.workload.clone(),
                target_port: port(e.target_port, "endpoint.target_port")?,
            })
        })
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    let traffic = TrafficPolicy::parse(&s.traffic_json).map_err(|e| SnapshotError::Traffic {
        service: format!("{}.{}", s.name, s.namespace),
        reason: e.to_string(),
    })?;
    let virtual_addresses = s
        .virtual_addresses
        .iter()
        .map(|a| {
            a.parse().map_err(|_| SnapshotError::Invalid {
                field: "service.virtual_addresses",
                value: a.clone(),
            })
        })
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    Ok(Arc::new(ServiceView {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        port: port(s.port, "service.port")?,
        protocol: AppProtocol::from_wire(&s.protocol),
        hosts: s.hosts.clone(),
        virtual_addresses,
        endpoints,
        traffic: Arc::new(traffic),
        label: Arc::from(format!("{}.{}", s.name, s.namespace)),
    }))
}

pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

fn port(value: u32, field: &'static str) -> Result<u16, SnapshotError> {
    u16::try_from(value).map_err(|_| SnapshotError::Invalid {
        field,
        value: value.to_string(),
    })
}

fn display<S: serde::Serializer>(v: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> vigil_api::Snapshot {
        vigil_api::Snapshot {
            version: "v1".into(),
            trust_domain: "vigil.local".into(),
            workload: Some(vigil_api::Workload {
                name: "client".into(),
                namespace: "demo".into(),
                service_account: "client".into(),
                spiffe_id: "spiffe://vigil.local/ns/demo/sa/client".into(),
                app_port: 8080,
                tcp_ports: vec![9000],
            }),
            services: vec![vigil_api::Service {
                name: "server".into(),
                namespace: "demo".into(),
                port: 80,
                hosts: vec!["server".into(), "server.demo.svc.cluster.local".into()],
                protocol: "http".into(),
                endpoints: vec![
                    vigil_api::Endpoint {
                        address: "127.0.0.1:15006".into(),
                        spiffe_id: "spiffe://vigil.local/ns/demo/sa/server".into(),
                        workload: "server-a".into(),
                        target_port: 8080,
                    },
                    vigil_api::Endpoint {
                        address: "127.0.0.1:15016".into(),
                        spiffe_id: "spiffe://vigil.local/ns/demo/sa/server".into(),
                        workload: "server-b".into(),
                        target_port: 8080,
                    },
                ],
                virtual_addresses: vec!["10.96.0.10:80".into()],
                target_port: 0,
                traffic_json: String::new(),
            }],
            trust_bundle_der: vec![],
            policy: None,
            jwt_bundle: String::new(),
            candidate_policy: None,
            ..Default::default()
        }
    }

    #[test]
    fn resolves_hosts_with_and_without_ports() {
        let view = MeshView::from_snapshot(&snapshot()).expect("valid");
        for host in ["server", "server:80", "SERVER.demo.svc.cluster.local:8080"] {
            assert_eq!(
                view.service_for_host(host).map(|s| s.name.as_str()),
                Some("server"),
                "{host}"
            );
        }
        assert!(view.service_for_host("other").is_none());
        let vip = "10.96.0.10:80".parse().expect("addr");
        assert!(view.service_for_address(vip).is_some());
    }

    #[test]
    fn parses_each_services_traffic_policy() {
        let mut snap = snapshot();
        snap.services[0].traffic_json = r#"{"timeout":"2s"}"#.into();
        let view = MeshView::from_snapshot(&snap).expect("valid");
        let s = view.service_for_host("server").expect("service");
        assert_eq!(s.traffic.timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.traffic.retries.attempts, 3, "defaults fill the rest");
    }

    #[test]
    fn refuses_garbage_in_a_snapshot() {
        let mut bad = snapshot();
        bad.services[0].endpoints[0].spiffe_id = "https://evil".into();
        assert!(MeshView::from_snapshot(&bad).is_err());
        let mut bad = snapshot();
        bad.services[0].port = 70000;
        assert!(MeshView::from_snapshot(&bad).is_err());
        let mut bad = snapshot();
        bad.services[0].traffic_json = r#"{"retries":{"attempts":"many"}}"#.into();
        let err = MeshView::from_snapshot(&bad)
            .expect_err("bad traffic")
            .to_string();
        assert!(
            err.contains(
                "service server.demo: traffic policy refused: retries.attempts: invalid type"
            ),
            "{err}"
        );
    }

    /// An incremental snapshot replaces the services it lists, drops those it removes and
    /// keeps every other one as it was, the very same view.
    #[test]
    fn a_delta_changes_only_what_it_names() {
        let mut base = snapshot();
        let mut other = base.services[0].clone();
        other.name = "other".into();
        other.hosts = vec!["other".into()];
        other.virtual_addresses = vec![];
        base.services.push(other.clone());
        let view = MeshView::from_snapshot(&base).expect("valid");
        let kept = view.service_for_host("other").expect("other").clone();

        let mut moved = base.services[0].clone();
        moved.endpoints[0].address = "10.9.9.9:15006".into();
        let mut added = other.clone();
        added.name = "added".into();
        added.hosts = vec!["added".into()];
        let delta = vigil_api::Snapshot {
            version: "v2".into(),
            incremental: true,
            base_version: base.version.clone(),
            services: vec![moved, added],
            ..base.clone()
        };
        let next = view.from_delta(&delta).expect("applies");
        assert_eq!(next.version, "v2");
        assert_eq!(next.services.len(), 3);
        let server = next.service_for_host("server").expect("server");
        assert_eq!(server.endpoints[0].address.to_string(), "10.9.9.9:15006");
        assert!(next.service_for_host("added").is_some());
        assert!(
            Arc::ptr_eq(next.service_for_host("other").expect("other"), &kept),
            "an unchanged service is kept, not parsed again"
        );

        let removal = vigil_api::Snapshot {
            version: "v3".into(),
            incremental: true,
            base_version: "v2".into(),
            services: vec![],
            removed_services: vec![vigil_api::ServiceKey {
                name: "other".into(),
                namespace: other.namespace.clone(),
                port: other.port,
            }],
            ..base.clone()
        };
        let last = next.from_delta(&removal).expect("applies");
        assert!(last.service_for_host("other").is_none());
        assert_eq!(last.services.len(), 2);
    }
}
