//! The control plane's internal model of the mesh, filled by the mesh file or by
//! Kubernetes, and turned into per-proxy discovery snapshots.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_identity::SpiffeId;

/// Everything discovery needs to know about the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshModel {
    pub trust_domain: String,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
}

/// A workload with a sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub spiffe_id: SpiffeId,
    pub app_port: u16,
    pub tcp_ports: Vec<u16>,
    /// The sidecar's inbound (mTLS) address.
    pub inbound_address: SocketAddr,
}

/// How a service's traffic is treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

/// A named service and its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: Option<u16>,
    pub hosts: Vec<String>,
    pub virtual_addresses: Vec<SocketAddr>,
    pub endpoints: Vec<Endpoint>,
    pub traffic: Option<serde_json::Value>,
}

/// One endpoint of a service: a peer proxy and the identity it must prove.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub spiffe_id: SpiffeId,
    pub workload: String,
    /// Port on the endpoint workload the traffic is for.
    pub target_port: u16,
}

impl Service {
    /// Every name a caller may use for this service.
    pub fn all_hosts(&self) -> Vec<String> {
        let mut hosts = vec![
            self.name.clone(),
            format!("{}.{}", self.name, self.namespace),
            format!("{}.{}.svc", self.name, self.namespace),
            format!("{}.{}.svc.cluster.local", self.name, self.namespace),
        ];
        for h in &self.hosts {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        hosts
    }
}

impl MeshModel {
    /// The workload a verified SPIFFE ID and a claimed name designate together. The
    /// name only picks among workloads sharing the identity; it can never widen it.
    pub fn workload_for(&self, id: &SpiffeId, name: &str) -> Option<&Workload> {
        let mut same_identity = self.workloads.iter().filter(|w| &w.spiffe_id == id);
        if name.is_empty() {
            return same_identity.next();
        }
        same_identity.find(|w| w.name == name)
    }

    /// The discovery snapshot for one workload's proxy.
    pub fn snapshot_for(
        &self,
        workload: &Workload,
        trust_bundle: &[Vec<u8>],
        policy: Option<vigil_api::PolicyBundle>,
    ) -> vigil_api::Snapshot {
        let services = self
            .services
            .iter()
            .map(|s| vigil_api::Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                port: u32::from(s.port),
                hosts: s.all_hosts(),
                protocol: match s.protocol {
                    Protocol::Http => "http".into(),
                    Protocol::Tcp => "tcp".into(),
                },
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| vigil_api::Endpoint {
                        address: e.address.to_string(),
                        spiffe_id: e.spiffe_id.to_string(),
                        workload: e.workload.clone(),
                        target_port: u32::from(e.target_port),
                    })
                    .collect(),
                virtual_addresses: s.virtual_addresses.iter().map(|a| a.to_string()).collect(),
                target_port: s.target_port.map(u32::from).unwrap_or(0),
                traffic_json: s
                    .traffic
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        let mut snapshot = vigil_api::Snapshot {
            version: String::new(),
            trust_domain: self.trust_domain.clone(),
            workload: Some(vigil_api::Workload {
                name: workload.name.clone(),
                namespace: workload.namespace.clone(),
                service_account: workload.service_account.clone(),
                spiffe_id: workload.spiffe_id.to_string(),
                app_port: u32::from(workload.app_port),
                tcp_ports: workload.tcp_ports.iter().map(|p| u32::from(*p)).collect(),
            }),
            services,
            trust_bundle_der: trust_bundle.to_vec(),
            policy,
        };
        snapshot.version = snapshot_version(&snapshot);
        snapshot
    }
}

/// A content hash, so a proxy (and `vigil check`) can tell whether two snapshots differ.
fn snapshot_version(snapshot: &vigil_api::Snapshot) -> String {
    use prost::Message;
    let digest = Sha256::digest(snapshot.encode_to_vec());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
