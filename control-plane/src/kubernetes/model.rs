//! Kubernetes objects → the [`MeshModel`] the mesh file also produces.
//!
//! - Workloads are injected Pods (label `vigil.io/injected=true`) that have a pod IP and a
//!   ServiceAccount that exists: identity `spiffe://<td>/ns/<ns>/sa/<sa>`, inbound address
//!   `<pod IP>:15006`, app port the first TCP container port, the other TCP ports opaque.
//! - Services become one model service per TCP port: the first keeps the Service's name,
//!   further ports are `<name>-<port name>`. Their virtual addresses are the ClusterIPs on
//!   that port (a headless Service's are its endpoints' pod addresses), so transparent
//!   interception resolves the original destination.
//! - Endpoints come from EndpointSlices: ready addresses whose `targetRef` is a meshed pod;
//!   the pod decides the identity the caller's proxy demands of the endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use vigil_identity::SpiffeId;

use vigil_api::traffic::TrafficPolicy;

use crate::gateway::{RouteObject, ServicePorts};
use crate::inject::{INBOUND_PORT, INJECTED_LABEL, PROXY_CONTAINER};
use crate::model::{Endpoint, MeshModel, Protocol, Service, Workload};

/// Service annotation holding the traffic policy (retries, timeouts, breaker) as JSON.
pub const TRAFFIC_ANNOTATION: &str = "vigil.io/traffic";
/// Pod annotation naming the services the workload calls, separated by commas (host
/// names, `name.namespace`, or `ip:port`): its proxy is then sent only those, and asks for
/// others the first time it meets them.
pub const CALLS_ANNOTATION: &str = "vigil.io/calls";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `(namespace, name)` of an object.
pub type ObjectKey = (String, String);

/// What the cluster holds, as the watches see it.
#[derive(Default, Clone)]
pub struct ClusterObjects {
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<KubeService>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// ServiceAccounts that exist: a deleted one takes its pods out of the mesh.
    pub service_accounts: BTreeSet<ObjectKey>,
    /// Gateway API HTTPRoutes and GRPCRoutes (none when the cluster lacks their CRDs).
    pub routes: Vec<RouteObject>,
}

/// Builds the mesh model. Objects that cannot be used are left out, never fatal.
pub fn mesh_model(trust_domain: &str, objects: &ClusterObjects) -> MeshModel {
    mesh_model_and_problems(trust_domain, objects).0
}

/// The mesh model and what was left out of it and why (a route Vigil cannot apply, a
/// traffic annotation proxies would refuse), for the caller to report once.
pub fn mesh_model_and_problems(
    trust_domain: &str,
    objects: &ClusterObjects,
) -> (MeshModel, Vec<String>) {
    let mut workloads: Vec<Workload> = objects
        .pods
        .iter()
        .filter_map(|p| workload(trust_domain, p, &objects.service_accounts))
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let by_pod: BTreeMap<(&str, &str), &Workload> = workloads
        .iter()
        .map(|w| ((w.namespace.as_str(), w.name.as_str()), w))
        .collect();

    let mut problems = Vec::new();
    let mut services = Vec::new();
    let mut ports = ServicePorts::default();
    for svc in &objects.services {
        let (Some(name), Some(namespace)) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let model_ports = model_ports(svc);
        for (_, number, model_name) in &model_ports {
            ports.add(namespace, name, *number, model_name);
        }
        services.extend(services_of(
            svc,
            &model_ports,
            &objects.slices,
            &by_pod,
            &mut problems,
        ));
    }
    if !objects.routes.is_empty() {
        problems.extend(
            crate::gateway::attach(&objects.routes, &mut services, &ports)
                .into_iter()
                .map(|p| p.to_string()),
        );
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let model = MeshModel {
        trust_domain: trust_domain.to_string(),
        workloads,
        services,
    };
    (model, problems)
}

/// The TCP ports of a Service, each with its number and model service name: the first
/// keeps the Service's name, the others are `<name>-<port name>` (`<name>-<port>` when
/// unnamed). An ExternalName Service has none.
fn model_ports(svc: &KubeService) -> Vec<(&ServicePort, u16, String)> {
    let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.port).ok().map(|n| (n, p)))
        .enumerate()
        .map(|(index, (number, port))| {
            let model_name = if index == 0 {
                name.to_string()
            } else {
                format!(
                    "{name}-{}",
                    port.name.clone().unwrap_or_else(|| port.port.to_string())
                )
            };
            (port, number, model_name)
        })
        .collect()
}

fn workload(trust_domain: &str, pod: &Pod, accounts: &BTreeSet<ObjectKey>) -> Option<Workload> {
    let meta = &pod.metadata;
    let injected = meta
        .labels
        .as_ref()
        .is_some_and(|l| l.get(INJECTED_LABEL).map(String::as_str) == Some("true"));
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if !injected || spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let name = meta.name.clone()?;
    let namespace = meta.namespace.clone()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let service_account = spec
        .service_account_name
        .clone()
        .or_else(|| spec.service_account.clone())
        .unwrap_or_else(|| "default".into());
    if !accounts.contains(&(namespace.clone(), service_account.clone())) {
        tracing::debug!(%namespace, pod = %name, %service_account, "pod left out: its ServiceAccount does not exist");
        return None;
    }
    let spiffe_id = match SpiffeId::workload(trust_domain, &namespace, &service_account) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%namespace, pod = %name, error = %e, "pod left out: no valid identity");
            return None;
        }
    };
    let mut ports: Vec<u16> = Vec::new();
    for c in spec.containers.iter().filter(|c| c.name != PROXY_CONTAINER) {
        for p in c.ports.iter().flatten() {
            let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
            if let (true, Ok(port)) = (tcp, u16::try_from(p.container_port)) {
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    let app_port = ports.first().copied().unwrap_or(0);
    Some(Workload {
        name,
        namespace,
        service_account,
        spiffe_id,
        app_port,
        tcp_ports: ports.into_iter().skip(1).collect(),
        inbound_address: SocketAddr::new(ip, INBOUND_PORT),
        labels: meta.labels.clone().unwrap_or_default(),
        calls: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(CALLS_ANNOTATION))
            .map(|calls| {
                calls
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
    })
}

fn services_of(
    svc: &KubeService,
    model_ports: &[(&ServicePort, u16, String)],
    slices: &[Arc<EndpointSlice>],
    pods: &BTreeMap<(&str, &str), &Workload>,
    problems: &mut Vec<String>,
) -> Vec<Service> {
    let (Some(name), Some(namespace), Some(spec)) = (
        svc.metadata.name.as_deref(),
        svc.metadata.namespace.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    if model_ports.is_empty() {
        return Vec::new();
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let traffic = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRAFFIC_ANNOTATION))
        .and_then(|t| match TrafficPolicy::parse(t) {
            // Checked as the proxies will check it: one they would refuse would stop
            // every snapshot that carries it.
            Ok(_) => serde_json::from_str(t).ok(),
            Err(e) => {
                problems.push(format!(
                    "Service {namespace}/{name}: annotation {TRAFFIC_ANNOTATION} ignored: {e} (see docs/traffic.md)"
                ));
                None
            }
        });
    let own_slices: Vec<&EndpointSlice> = slices
        .iter()
        .map(Arc::as_ref)
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        })
        .collect();

    let mut out = Vec::new();
    for &(port, service_port, ref model_name) in model_ports {
        let endpoints = endpoints_for(port, namespace, &own_slices, pods);
        let mut virtual_addresses: Vec<SocketAddr> = cluster_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, service_port))
            .collect();
        if cluster_ips.is_empty() {
            // Headless: callers dial the pods themselves, on the target port.
            virtual_addresses.extend(endpoint_pod_addresses(port, &own_slices, pods));
        }
        let target_port = match &port.target_port {
            Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
            Some(IntOrString::String(s)) => s
                .parse()
                .ok()
                .or_else(|| endpoints.first().map(|e: &Endpoint| e.target_port)),
            None => Some(service_port),
        };
        out.push(Service {
            name: model_name.clone(),
            namespace: namespace.to_string(),
            port: service_port,
            protocol: protocol_of(port),
            target_port,
            hosts: Vec::new(),
            virtual_addresses,
            endpoints,
            traffic: traffic.clone(),
        });
    }
    out
}

/// Ready endpoints of one service port that are meshed pods, as their proxies' addresses.
fn endpoints_for(
    port: &ServicePort,
    namespace: &str,
    slices: &[&EndpointSlice],
    pods: &BTreeMap<(&str, &str), &Workload>,
) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (slice_port, endpoint, _) in slice_endpoints(port, slices) {
        let Some(target) = endpoint.target_ref.as_ref() else {
            continue;
        };
        if target.kind.as_deref() != Some("Pod") {
            continue;
        }
        let pod_ns = target.namespace.as_deref().unwrap_or(namespace);
        let Some(workload) = target.name.as_deref().and_then(|n| pods.get(&(pod_ns, n))) else {
            continue;
        };
        let e = Endpoint {
            address: workload.inbound_address,
            spiffe_id: workload.spiffe_id.clone(),
            workload: workload.name.clone(),
            target_port: slice_port,
        };
        if !endpoints.contains(&e) {
            endpoints.push(e);
        }
    }
    endpoints.sort_by(|a, b| (a.address, &a.workload).cmp(&(b.address, &b.workload)));
    endpoints
}

/// `<pod IP>:<target port>` of the meshed endpoints of a headless service port.
fn endpoint_pod_addresses(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    pods: &BTreeMap<(&str, &str), &Workload>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (slice_port, endpoint, namespace) in slice_endpoints(port, slices) {
        let meshed = endpoint.target_ref.as_ref().is_some_and(|t| {
            let ns = t.namespace.as_deref().unwrap_or(namespace);
            t.name
                .as_deref()
                .is_some_and(|n| pods.contains_key(&(ns, n)))
        });
        if !meshed {
            continue;
        }
        for a in &endpoint.addresses {
            if let Ok(ip) = a.parse::<IpAddr>() {
                let addr = SocketAddr::new(ip, slice_port);
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
    }
    out.sort();
    out
}

/// Every ready endpoint of the slices, with the slice's port number for this service port.
fn slice_endpoints<'a>(
    port: &'a ServicePort,
    slices: &'a [&'a EndpointSlice],
) -> impl Iterator<Item = (u16, &'a k8s_openapi::api::discovery::v1::Endpoint, &'a str)> + 'a {
    slices.iter().flat_map(move |slice| {
        let slice_port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let number = slice_port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
        slice
            .endpoints
            .iter()
            .filter(move |_| number.is_some())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .map(move |e| (number.unwrap_or(0), e, namespace))
    })
}

/// `appProtocol`, else the port name's prefix (`grpc-web`, `tcp-db`), as Istio reads them.
fn protocol_of(port: &ServicePort) -> Protocol {
    let declared = port
        .app_protocol
        .clone()
        .or_else(|| port.name.clone())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let prefix = declared.split(['-', '/']).next().unwrap_or("");
    match prefix {
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "postgres" | "dns" => Protocol::Tcp,
        // http, http2, grpc, kubernetes.io/h2c, and unnamed ports: the proxy detects HTTP.
        _ => Protocol::Http,
    }
}
