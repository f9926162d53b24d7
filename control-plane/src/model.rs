//! The control plane's internal model of the mesh, filled by the mesh file or by
//! Kubernetes, and turned into per-proxy discovery snapshots.
//!
//! Discovery finds a proxy's workload through a [`WorkloadIndex`], built once per model
//! and shared by every stream, rather than by scanning every workload on each change.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_api::wire::EncodedSnapshot;
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
    /// The workload's labels (a pod's), which policy targets select on.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The services the workload calls, when declared (host names, `name.namespace`, or
    /// `ip:port`): its proxy is then sent only those, and asks for others on first use.
    /// `None`: every service.
    pub calls: Option<Vec<String>>,
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
        pick_by_name(self.workloads.iter().filter(|w| &w.spiffe_id == id), name)
    }

    /// The workloads of this model by identity; build it once per model, not per lookup.
    pub fn workload_index(&self) -> WorkloadIndex {
        let mut by_identity: HashMap<SpiffeId, Vec<usize>> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            by_identity.entry(w.spiffe_id.clone()).or_default().push(i);
        }
        WorkloadIndex { by_identity }
    }

    /// The services of this model as every proxy receives them; build it once per model
    /// and share it, rather than once per proxy.
    pub fn shared_services(&self) -> SharedServices {
        let services: Vec<vigil_api::Service> = self
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
        let mut digest = Sha256::new();
        let mut encoded = Vec::with_capacity(services.len());
        let mut keys = Vec::with_capacity(services.len());
        let names = services
            .iter()
            .map(|s| {
                let mut names: Vec<String> =
                    s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                names.extend(s.virtual_addresses.iter().cloned());
                names
            })
            .collect();
        for service in &services {
            let bytes = Bytes::from(service.encode_to_vec());
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(&bytes);
            encoded.push(bytes);
            keys.push(vigil_api::ServiceKey {
                name: service.name.clone(),
                namespace: service.namespace.clone(),
                port: service.port,
            });
        }
        SharedServices {
            encoded,
            keys,
            names,
            digest: digest.finalize().into(),
        }
    }

    /// The discovery snapshot for one workload's proxy.
    pub fn snapshot_for(
        &self,
        workload: &Workload,
        trust_bundle: &[Vec<u8>],
        policy: Option<&crate::served_policy::ServedPolicy>,
    ) -> EncodedSnapshot {
        let shared = self.shared_services();
        let mut snapshot = self.snapshot_with(&shared, workload, trust_bundle, policy, "", true);
        match Scope::of(workload, &[]) {
            Some(scope) => {
                snapshot.services = shared.encoded_in(&scope).0;
                snapshot.scoped = true;
                snapshot.version = scoped_version(&snapshot.version, &scope);
            }
            None => snapshot.services = shared.encoded(),
        }
        snapshot
    }

    /// The discovery snapshot for one workload's proxy, from parts encoded once for all
    /// proxies ([`MeshModel::shared_services`], the policy's encoding): only the proxy's
    /// own part is encoded and hashed here. Its version covers `shared`, but the caller
    /// adds the services themselves, whole ([`SharedServices::encoded`]) or as a delta.
    /// The policy bundle is copied in only with `send_policy` (a proxy that has it, by
    /// [`policy_key`], is not sent it again); the version covers it either way.
    pub fn snapshot_with(
        &self,
        shared: &SharedServices,
        workload: &Workload,
        trust_bundle: &[Vec<u8>],
        policy: Option<&crate::served_policy::ServedPolicy>,
        jwt_bundle: &str,
        send_policy: bool,
    ) -> EncodedSnapshot {
        let policy_sent = policy.filter(|_| send_policy);
        let own = Bytes::from(
            vigil_api::Workload {
                name: workload.name.clone(),
                namespace: workload.namespace.clone(),
                service_account: workload.service_account.clone(),
                spiffe_id: workload.spiffe_id.to_string(),
                app_port: u32::from(workload.app_port),
                tcp_ports: workload.tcp_ports.iter().map(|p| u32::from(*p)).collect(),
            }
            .encode_to_vec(),
        );
        let facts = workload_facts(workload);
        let mut digest = Sha256::new();
        for part in [
            &shared.digest[..],
            self.trust_domain.as_bytes(),
            &own,
            facts.as_bytes(),
            jwt_bundle.as_bytes(),
            policy.map_or(&[][..], |p| &p.digest()[..]),
        ]
        .into_iter()
        .chain(trust_bundle.iter().map(Vec::as_slice))
        {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        let digest = digest.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        EncodedSnapshot {
            version: format!("sha256:{hex}"),
            trust_domain: self.trust_domain.clone(),
            workload: own,
            services: Vec::new(),
            trust_bundle_der: trust_bundle.iter().cloned().map(Bytes::from).collect(),
            policy: policy_sent.map_or_else(Bytes::new, |p| p.encoded_for(&facts)),
            jwt_bundle: jwt_bundle.to_string(),
            candidate_policy: policy_sent
                .map_or_else(Bytes::new, |p| p.encoded_candidate_for(&facts)),
            incremental: false,
            base_version: String::new(),
            removed_services: Vec::new(),
            more: false,
            scoped: false,
        }
    }
}

/// What the policy sent to `workload`'s proxy depends on: the bundle and candidate as
/// encoded, and the workload's facts. Equal keys, equal bytes.
pub fn policy_key(
    policy: Option<&crate::served_policy::ServedPolicy>,
    workload: &Workload,
) -> [u8; 32] {
    let mut digest = Sha256::new();
    if let Some(policy) = policy {
        digest.update(policy.digest());
        digest.update(workload_facts(workload).as_bytes());
    }
    digest.finalize().into()
}

/// The facts of `workload` policies read as `data.vigil.mesh.workload`.
fn workload_facts(workload: &Workload) -> String {
    serde_json::json!({
        "name": workload.name,
        "namespace": workload.namespace,
        "service_account": workload.service_account,
        "spiffe_id": workload.spiffe_id.to_string(),
        "labels": workload.labels,
    })
    .to_string()
}

/// Every service of a [`MeshModel`], each encoded once for every proxy, with a hash of
/// them all.
#[derive(Debug, Clone, Default)]
pub struct SharedServices {
    encoded: Vec<Bytes>,
    /// Each service's key, in the order of `encoded`.
    keys: Vec<vigil_api::ServiceKey>,
    /// Each service's names (lower-case hosts, virtual `ip:port`s), for [`Scope`]s.
    names: Vec<Vec<String>>,
    digest: [u8; 32],
}

impl SharedServices {
    /// Every service, encoded (cheap: the bytes are shared).
    pub fn encoded(&self) -> Vec<Bytes> {
        self.encoded.clone()
    }

    /// The services `scope` covers, encoded, with their keys.
    pub fn encoded_in(&self, scope: &Scope) -> (Vec<Bytes>, Vec<vigil_api::ServiceKey>) {
        (0..self.encoded.len())
            .filter(|&i| self.covered(scope, i))
            .map(|i| (self.encoded[i].clone(), self.keys[i].clone()))
            .unzip()
    }

    /// Whether service `i` is among those `scope` covers.
    pub fn covered(&self, scope: &Scope, i: usize) -> bool {
        self.names
            .get(i)
            .is_some_and(|names| names.iter().any(|n| scope.names.contains(n)))
    }

    /// Service `i`'s key and encoding.
    pub fn get(&self, i: usize) -> Option<(&vigil_api::ServiceKey, &Bytes)> {
        Some((self.keys.get(i)?, self.encoded.get(i)?))
    }

    /// The hash of every service: equal digests, equal service lists.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// What changed from `before` to these: the services added or changed (encoded) and
    /// the keys of those removed (encoded), for proxies that have `before`.
    pub fn delta_from(&self, before: &SharedServices) -> ServicesDelta {
        let old: HashMap<&vigil_api::ServiceKey, &Bytes> =
            before.keys.iter().zip(&before.encoded).collect();
        let new: std::collections::HashSet<&vigil_api::ServiceKey> = self.keys.iter().collect();
        let changed_at: Vec<usize> = self
            .keys
            .iter()
            .zip(&self.encoded)
            .enumerate()
            .filter(|(_, (key, bytes))| old.get(key) != Some(bytes))
            .map(|(i, _)| i)
            .collect();
        let changed = changed_at
            .iter()
            .map(|&i| self.encoded[i].clone())
            .collect();
        let removed_keys: Vec<vigil_api::ServiceKey> = before
            .keys
            .iter()
            .filter(|key| !new.contains(key))
            .cloned()
            .collect();
        let removed = removed_keys
            .iter()
            .map(|key| Bytes::from(key.encode_to_vec()))
            .collect();
        ServicesDelta {
            from: before.digest,
            changed,
            removed,
            changed_at,
            removed_keys,
        }
    }
}

/// The change between two service lists, made once per change for every proxy.
#[derive(Debug, Clone, Default)]
pub struct ServicesDelta {
    /// The digest of the list it applies to.
    pub from: [u8; 32],
    /// Services added or changed, encoded.
    pub changed: Vec<Bytes>,
    /// Keys of the services removed, encoded.
    pub removed: Vec<Bytes>,
    /// Where the added or changed services are in the new list, for scoped proxies.
    pub changed_at: Vec<usize>,
    /// Keys of the services removed.
    pub removed_keys: Vec<vigil_api::ServiceKey>,
}

/// The most names a proxy may ask for beyond those its workload declares.
pub const MAX_WANTED: usize = 1024;

/// The services one proxy is sent when its workload declares what it calls: those named
/// in `calls`, those its upstream listeners are bound to (the caller adds them to `calls`),
/// and those it asked for since (`also_wanted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    names: std::collections::HashSet<String>,
    digest: [u8; 32],
}

impl Scope {
    /// `None` when the workload declares nothing: its proxy gets every service.
    pub fn of(workload: &Workload, also_wanted: &[String]) -> Option<Scope> {
        let calls = workload.calls.as_ref()?;
        let mut names: Vec<String> = calls
            .iter()
            .chain(also_wanted.iter().take(MAX_WANTED))
            .map(|n| scope_name(n))
            .collect();
        names.sort();
        names.dedup();
        let mut digest = Sha256::new();
        for n in &names {
            digest.update((n.len() as u64).to_le_bytes());
            digest.update(n.as_bytes());
        }
        Some(Scope {
            names: names.into_iter().collect(),
            digest: digest.finalize().into(),
        })
    }

    /// Equal digests, equal scopes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// The version of a snapshot cut down to `scope`: the whole snapshot's version with the
/// scope mixed in, so a proxy that reconnects with another scope is sent a whole one.
pub fn scoped_version(version: &str, scope: &Scope) -> String {
    let mut digest = Sha256::new();
    digest.update(version.as_bytes());
    digest.update(scope.digest);
    let hex: String = digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// How a name in a scope is compared: an `ip:port` as written, a host name in lower case
/// without its port or final dot.
fn scope_name(name: &str) -> String {
    let name = name.trim();
    if name.parse::<SocketAddr>().is_ok() {
        return name.to_string();
    }
    let host = match name.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => name,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The workloads of one [`MeshModel`] by SPIFFE ID, in the model's order, so finding a
/// proxy's workload costs one lookup whatever the size of the mesh.
#[derive(Debug, Clone, Default)]
pub struct WorkloadIndex {
    by_identity: HashMap<SpiffeId, Vec<usize>>,
}

impl WorkloadIndex {
    /// Same answer as [`MeshModel::workload_for`] on `model`, the model this index was
    /// built from: the name only picks among workloads sharing the verified identity.
    pub fn workload<'m>(
        &self,
        model: &'m MeshModel,
        id: &SpiffeId,
        name: &str,
    ) -> Option<&'m Workload> {
        let same_identity = self
            .by_identity
            .get(id)?
            .iter()
            .filter_map(|&i| model.workloads.get(i));
        pick_by_name(same_identity, name)
    }
}

/// Among workloads sharing one verified identity, the one `name` claims, or the first
/// when no name is claimed; shared by the scan and the index so they cannot disagree.
fn pick_by_name<'m>(
    mut same_identity: impl Iterator<Item = &'m Workload>,
    name: &str,
) -> Option<&'m Workload> {
    if name.is_empty() {
        return same_identity.next();
    }
    same_identity.find(|w| w.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(workloads: usize) -> MeshModel {
        let workloads = (0..workloads)
            .map(|i| Workload {
                name: format!("w{i}"),
                namespace: "shop".into(),
                service_account: format!("sa{}", i / 2),
                spiffe_id: SpiffeId::workload("vigil.local", "shop", &format!("sa{}", i / 2))
                    .expect("id"),
                app_port: 8080,
                tcp_ports: vec![],
                inbound_address: SocketAddr::from(([127, 0, 0, 1], 15006)),
                labels: Default::default(),
                calls: None,
            })
            .collect();
        MeshModel {
            trust_domain: "vigil.local".into(),
            workloads,
            services: vec![],
        }
    }

    /// The index answers as the scan does: the name picks among workloads of the
    /// identity, never outside it, and an empty name means the first of them.
    #[test]
    fn the_index_finds_the_workload_the_scan_finds() {
        let model = model(6);
        let index = model.workload_index();
        let sa1 = SpiffeId::workload("vigil.local", "shop", "sa1").expect("id");
        let sa2 = SpiffeId::workload("vigil.local", "shop", "sa2").expect("id");
        let other = SpiffeId::workload("vigil.local", "shop", "nobody").expect("id");
        for (id, name) in [
            (&sa1, ""),
            (&sa1, "w2"),
            (&sa1, "w3"),
            (&sa1, "w4"),
            (&sa2, "w4"),
            (&other, ""),
            (&other, "w0"),
        ] {
            assert_eq!(
                index.workload(&model, id, name).map(|w| &w.name),
                model.workload_for(id, name).map(|w| &w.name),
                "{id} {name:?}"
            );
        }
        assert_eq!(
            index.workload(&model, &sa1, "").map(|w| w.name.as_str()),
            Some("w2")
        );
        assert!(index.workload(&model, &sa1, "w4").is_none());
    }

    /// Prints what finding every proxy's workload costs in a mesh of 5,000 workloads, as
    /// every stream does on each change: once by scanning, once through the index.
    #[test]
    fn finding_every_workload_of_a_large_mesh() {
        let model = model(5_000);
        let started = std::time::Instant::now();
        let scanned = model
            .workloads
            .iter()
            .filter(|w| model.workload_for(&w.spiffe_id, &w.name).is_some())
            .count();
        let scan = started.elapsed();
        let started = std::time::Instant::now();
        let index = model.workload_index();
        let indexed = model
            .workloads
            .iter()
            .filter(|w| index.workload(&model, &w.spiffe_id, &w.name).is_some())
            .count();
        let lookup = started.elapsed();
        assert_eq!((scanned, indexed), (5_000, 5_000));
        println!(
            "5,000 workloads, every one looked up: scan {scan:?}, index (built included) {lookup:?}"
        );
    }
    fn with_services(mut model: MeshModel, services: usize) -> MeshModel {
        model.services = (0..services)
            .map(|i| Service {
                name: format!("svc{i}"),
                namespace: "shop".into(),
                port: 80,
                protocol: Protocol::Http,
                target_port: None,
                hosts: vec![],
                virtual_addresses: vec![],
                endpoints: (0..2)
                    .map(|e| Endpoint {
                        address: SocketAddr::from(([10, 0, (i / 250) as u8, e], 15006)),
                        spiffe_id: SpiffeId::workload("vigil.local", "shop", "sa0").expect("id"),
                        workload: format!("w{e}"),
                        target_port: 8080,
                    })
                    .collect(),
                traffic: None,
            })
            .collect();
        model
    }

    /// The version still tells snapshots apart: a proxy sees a new one when a service
    /// or its own workload changes, and the same one otherwise.
    #[test]
    fn the_version_follows_services_and_the_workload() {
        let model = with_services(model(2), 3);
        let version = |m: &MeshModel, w: usize| m.snapshot_for(&m.workloads[w], &[], None).version;
        assert_eq!(version(&model, 0), version(&model, 0));
        assert_ne!(version(&model, 0), version(&model, 1));
        let mut moved = model.clone();
        moved.services[2].endpoints[1].address = "10.9.9.9:15006".parse().expect("addr");
        assert_ne!(version(&model, 0), version(&moved, 0));
        let shared = model.shared_services();
        let mut snapshot = model.snapshot_with(&shared, &model.workloads[0], &[], None, "", true);
        snapshot.services = shared.encoded();
        assert_eq!(snapshot, model.snapshot_for(&model.workloads[0], &[], None));
        let decoded = snapshot.decode_snapshot().expect("decodes");
        assert_eq!(decoded.services.len(), 3);
        assert_eq!(decoded.services[2].endpoints[1].workload, "w1");
    }

    /// A delta names what was added, changed and removed, and nothing else.
    #[test]
    fn a_delta_carries_only_what_changed() {
        let before = with_services(model(4), 3);
        let mut after = before.clone();
        after.services[1].endpoints[0].address = "10.9.9.9:15006".parse().expect("addr");
        let removed = after.services.remove(2);
        let delta = after
            .shared_services()
            .delta_from(&before.shared_services());
        assert_eq!(delta.from, *before.shared_services().digest());
        let changed: Vec<vigil_api::Service> = delta
            .changed
            .iter()
            .map(|b| vigil_api::Service::decode(b.as_ref()).expect("service"))
            .collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].name, after.services[1].name);
        let gone: Vec<vigil_api::ServiceKey> = delta
            .removed
            .iter()
            .map(|b| vigil_api::ServiceKey::decode(b.as_ref()).expect("key"))
            .collect();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, removed.name);
        let none = after.shared_services().delta_from(&after.shared_services());
        assert!(none.changed.is_empty() && none.removed.is_empty());
    }

    /// Prints what one change costs for 200 proxies in a mesh of 1,500 services: a
    /// snapshot built whole for each, and one built from services shared by all.
    #[test]
    fn snapshots_of_a_large_mesh() {
        let model = with_services(model(200), 1_500);
        let started = std::time::Instant::now();
        for w in &model.workloads {
            model.snapshot_for(w, &[], None);
        }
        let whole = started.elapsed();
        let started = std::time::Instant::now();
        let shared = model.shared_services();
        for w in &model.workloads {
            let mut snapshot = model.snapshot_with(&shared, w, &[], None, "", true);
            snapshot.services = shared.encoded();
        }
        let with_shared = started.elapsed();
        println!(
            "1,500 services, 200 proxies: each built whole {whole:?}, shared services {with_shared:?}"
        );
    }
}
