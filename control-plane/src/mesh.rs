//! The local mesh file: the embedded default source of truth when there is no Kubernetes.
//!
//! It is parsed into [`MeshFile`] and then turned into the same [`MeshModel`] that the
//! Kubernetes source fills, so everything downstream (identity, discovery, dashboard) is
//! indifferent to where the mesh came from.
//!
//! Join tokens are the local mode's only proof of identity, so a file whose tokens could
//! be guessed is refused at load time (zxcvbn's estimate, see [`MIN_JOIN_TOKEN_BITS`]),
//! and the identity service finds a token's workload through a [`JoinTokenIndex`] rather
//! than by comparing it with every token in the file.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_identity::SpiffeId;

use crate::model::{Endpoint, MeshModel, Protocol, Service, Workload};

/// Default lifetime of an issued SVID.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Shortest join token accepted.
pub const MIN_JOIN_TOKEN_CHARS: usize = 16;

/// Weakest join token accepted: zxcvbn's estimate of the guesses an attacker needs, in
/// bits. zxcvbn counts guesses in a `u64`, so 64 is its ceiling: a token must look as hard
/// as anything it can measure. `openssl rand -hex 16` (128 random bits) reaches it, and so
/// does a long passphrase of unrelated words; names, repeats, sequences and dates do not.
pub const MIN_JOIN_TOKEN_BITS: f64 = 64.0;

/// Hashes of join tokens (with their known words) zxcvbn already found strong.
static STRONG_TOKENS: StrongTokens = StrongTokens(std::sync::Mutex::new(None));

struct StrongTokens(std::sync::Mutex<Option<std::collections::HashSet<[u8; 32]>>>);

impl StrongTokens {
    /// At most this many are remembered; past it the set starts over.
    const LIMIT: usize = 1_000_000;

    fn with<R>(&self, f: impl FnOnce(&mut std::collections::HashSet<[u8; 32]>) -> R) -> R {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = guard.get_or_insert_with(Default::default);
        if set.len() >= Self::LIMIT {
            set.clear();
        }
        f(set)
    }
}

/// How the operator is told to make a good token.
const GENERATE_TOKEN_HINT: &str = "generate one with `openssl rand -hex 16`";

/// A mesh file as written by an operator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// SPIFFE trust domain, e.g. `vigil.local`.
    pub trust_domain: String,
    /// Lifetime of issued workload certificates (`24h`, `10s`, ...).
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    pub certificate_lifetime: Duration,
    #[serde(default)]
    pub control_plane: ControlPlaneAddresses,
    /// Rego bundle in force for every workload that no entry of `policies` selects; the
    /// shipped default policy when absent.
    #[serde(default)]
    pub policy: Option<PolicySettings>,
    /// Bundles attached to workloads. A workload runs the first entry, in file order,
    /// whose targets select it, and the mesh-wide `policy` when none does.
    #[serde(default)]
    pub policies: Vec<AttachedPolicySettings>,
    #[serde(default)]
    pub workloads: Vec<WorkloadEntry>,
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    /// Gateway API `HTTPRoute` and `GRPCRoute` objects, written as for Kubernetes, whose
    /// `parentRefs` name services of this file (see [`crate::gateway`]).
    #[serde(default)]
    pub routes: Vec<crate::gateway::RouteObject>,
}

fn default_lifetime() -> Duration {
    DEFAULT_CERT_LIFETIME
}

/// Where the control plane listens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneAddresses {
    pub identity: SocketAddr,
    pub discovery: SocketAddr,
    pub dashboard: SocketAddr,
    /// Sidecar-injection webhook (HTTPS). Only Kubernetes calls it; in local mode it is
    /// served when the port is free and skipped with a warning otherwise.
    pub webhook: SocketAddr,
    /// Host names the dashboard answers to besides localhost, 127.0.0.1 and [::1] (a
    /// reverse proxy's name, say); requests for any other name get 403.
    pub dashboard_hosts: Vec<String>,
    /// Further replicas of the control plane, each started with `--replica N` (1 for the
    /// first here) on the same mesh file and data directory. Proxies are given every
    /// replica's address and move to another when theirs stops answering.
    pub replicas: Vec<ReplicaAddresses>,
}

/// Where one more replica of the control plane listens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAddresses {
    pub identity: SocketAddr,
    pub discovery: SocketAddr,
    pub dashboard: SocketAddr,
    /// The injection webhook of this replica; none when left out.
    #[serde(default)]
    pub webhook: Option<SocketAddr>,
}

impl ControlPlaneAddresses {
    /// Every replica's identity address, the first replica's first.
    pub fn identity_addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.identity)
            .chain(self.replicas.iter().map(|r| r.identity))
            .collect()
    }

    /// Every replica's discovery address, the first replica's first.
    pub fn discovery_addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.discovery)
            .chain(self.replicas.iter().map(|r| r.discovery))
            .collect()
    }

    /// Every replica's dashboard address, the first replica's first.
    pub fn dashboard_addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.dashboard)
            .chain(self.replicas.iter().map(|r| r.dashboard))
            .collect()
    }

    /// The addresses replica `n` serves on (0 is the one the `control_plane:` fields
    /// name, 1 the first of `replicas:`), with the rest of the settings shared.
    pub fn replica(&self, n: usize) -> Result<ControlPlaneAddresses, MeshError> {
        if n == 0 {
            return Ok(self.clone());
        }
        let r = self.replicas.get(n - 1).ok_or_else(|| {
            MeshError::Invalid(format!(
                "there is no control plane replica {n}: the mesh file lists {} under control_plane.replicas (replica 0 is control_plane itself)",
                self.replicas.len()
            ))
        })?;
        Ok(ControlPlaneAddresses {
            identity: r.identity,
            discovery: r.discovery,
            dashboard: r.dashboard,
            // Replicas without a webhook of their own bind port 0: nothing calls it locally.
            webhook: r
                .webhook
                .unwrap_or_else(|| SocketAddr::new(r.identity.ip(), 0)),
            ..self.clone()
        })
    }

    /// Replicas must not share an address.
    fn validate(&self) -> Result<(), MeshError> {
        let mut seen = BTreeSet::new();
        for (n, addresses) in [
            self.identity_addresses(),
            self.discovery_addresses(),
            self.dashboard_addresses(),
        ]
        .into_iter()
        .enumerate()
        {
            for addr in addresses {
                if !seen.insert(addr) {
                    let what = ["identity", "discovery", "dashboard"][n];
                    return Err(MeshError::Invalid(format!(
                        "control plane address {addr} is used twice (seen again as a {what} address); give each replica its own identity, discovery and dashboard addresses"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Default for ControlPlaneAddresses {
    fn default() -> Self {
        ControlPlaneAddresses {
            identity: SocketAddr::from(([127, 0, 0, 1], 15012)),
            discovery: SocketAddr::from(([127, 0, 0, 1], 15010)),
            dashboard: SocketAddr::from(([127, 0, 0, 1], 15080)),
            webhook: SocketAddr::from(([127, 0, 0, 1], 15017)),
            dashboard_hosts: Vec::new(),
            replicas: Vec::new(),
        }
    }
}

/// The policy bundle the control plane compiles and distributes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Directory of Rego and data files, relative to the mesh file.
    pub dir: PathBuf,
    #[serde(default = "default_rule")]
    pub rule: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub log_allows: bool,
    /// Buffer up to this many request body bytes so policies can read
    /// `input.parsed_body`; 0 (the default) leaves bodies streaming untouched.
    #[serde(default)]
    pub request_body_bytes: u32,
    /// Keep each logged decision's input document, so that `vigil policy replay` can
    /// evaluate a candidate policy against it (with `log_allows` for allowed requests too).
    #[serde(default)]
    pub record_input: Option<InputRecordingSettings>,
    /// A candidate bundle (directory) evaluated beside this one on live traffic and never
    /// enforced: where it would decide otherwise is counted and logged.
    #[serde(default)]
    pub candidate: Option<PathBuf>,
}

/// A policy bundle attached to the workloads its targets select.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedPolicySettings {
    /// Shown by the dashboard and `vigil check`, and in the proxies' `/config`.
    pub name: String,
    /// Which workloads run this bundle: any target that selects a workload will do.
    pub targets: Vec<PolicyTarget>,
    /// The bundle and how it is evaluated, as for the mesh-wide `policy`.
    pub bundle: PolicySettings,
}

/// Selects workloads: every field given must match (an empty target selects all).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTarget {
    /// The workloads' namespace; any namespace when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Workload names; any workload when empty.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Labels the workload must all carry.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl PolicyTarget {
    /// Whether this target selects `workload`.
    pub fn selects(&self, workload: &Workload) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == workload.namespace)
            && (self.workloads.is_empty() || self.workloads.contains(&workload.name))
            && self
                .labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
    }
}

/// What decision records keep of the input (`record_input: {}` takes the defaults).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputRecordingSettings {
    /// Headers whose values are written as `REDACTED` (default: authorization,
    /// proxy-authorization, cookie).
    #[serde(default = "default_redacted_headers")]
    pub redact_headers: Vec<String>,
    /// Inputs longer than this many bytes of JSON are left out of the record.
    #[serde(default = "default_recorded_input_bytes")]
    pub max_bytes: u32,
    /// Keep request bodies (off: bodies carry personal data).
    #[serde(default)]
    pub bodies: bool,
}

impl Default for InputRecordingSettings {
    fn default() -> Self {
        InputRecordingSettings {
            redact_headers: default_redacted_headers(),
            max_bytes: default_recorded_input_bytes(),
            bodies: false,
        }
    }
}

fn default_redacted_headers() -> Vec<String> {
    vigil_authz::InputRecording::DEFAULT_REDACTED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

fn default_recorded_input_bytes() -> u32 {
    vigil_authz::InputRecording::DEFAULT_MAX_BYTES as u32
}

impl InputRecordingSettings {
    /// The settings as sent to proxies.
    pub fn wire(&self) -> vigil_api::InputRecording {
        vigil_api::InputRecording {
            redact_headers: self
                .redact_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            max_bytes: self.max_bytes,
            bodies: self.bodies,
        }
    }
}

fn default_rule() -> String {
    "data.vigil.authz.allow".to_string()
}

/// One workload and the addresses of its sidecar.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEntry {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Defaults to the workload name.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Secret the workload's proxy presents to obtain its certificate.
    pub join_token: String,
    /// Port the application listens on, on 127.0.0.1.
    pub app_port: u16,
    /// Labels, as a pod's: policies can select workloads by them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Further application ports that accept opaque TCP through the mesh.
    #[serde(default)]
    pub tcp_ports: Vec<u16>,
    /// The services this workload calls (host names, `name.namespace`, or `ip:port`).
    /// When given, its proxy is sent only those (and those its upstream listeners name),
    /// and asks the control plane for any other the first time the application calls
    /// it; when left out, every service.
    #[serde(default)]
    pub calls: Option<Vec<String>>,
    #[serde(default)]
    pub proxy: ProxyAddresses,
    /// How a launcher (`vigil demo`, the quickstart) starts the application; optional.
    #[serde(default)]
    pub command: Vec<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// The listening addresses of one sidecar.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyAddresses {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    /// Extra outbound listeners each bound to one service (`127.0.0.1:16000: echo`), for
    /// opaque TCP clients in explicit mode, where no Host header names the service.
    pub upstreams: std::collections::BTreeMap<SocketAddr, String>,
}

impl Default for ProxyAddresses {
    fn default() -> Self {
        ProxyAddresses {
            inbound: SocketAddr::from(([127, 0, 0, 1], 15006)),
            outbound: SocketAddr::from(([127, 0, 0, 1], 15001)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 15090)),
            upstreams: Default::default(),
        }
    }
}

/// A service: a name callers use and the workloads behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Port callers address the service on.
    #[serde(default = "default_service_port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Port on the endpoint workloads; their app port when absent.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// Workload names.
    pub endpoints: Vec<String>,
    /// Extra host names that mean this service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Addresses that mean this service under transparent interception (a ClusterIP).
    #[serde(default)]
    pub virtual_addresses: Vec<SocketAddr>,
    /// Traffic policy (timeouts, retries, circuit breaking, limits, per-route overrides
    /// and fault injection), carried to the proxies as JSON; defaults when absent. The
    /// proxies parse it strictly and refuse a snapshot with a bad one: see
    /// `docs/traffic.md` for the fields.
    #[serde(default)]
    pub traffic: Option<serde_json::Value>,
}

fn default_service_port() -> u16 {
    80
}

/// A mesh file that could not be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read mesh file {path}: {source} (check the path passed to --mesh)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mesh file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("mesh file is inconsistent: {0}")]
    Invalid(String),
    /// A join token anyone could guess; never carries the token itself.
    #[error(
        "workload {workload:?} has a join token that is too easy to guess ({problem}): \
         anyone who guesses it gets the workload's identity; {hint}",
        hint = GENERATE_TOKEN_HINT
    )]
    WeakJoinToken { workload: String, problem: String },
}

impl MeshFile {
    /// Reads and validates a mesh file.
    pub fn load(path: &Path) -> Result<MeshFile, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut mesh = Self::parse(&text).map_err(|e| match e {
            MeshError::Parse { message, .. } => MeshError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        // Relative policy paths are relative to the mesh file, not the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        for policy in mesh
            .policy
            .iter_mut()
            .chain(mesh.policies.iter_mut().map(|p| &mut p.bundle))
        {
            if let Some(candidate) = policy.candidate.as_mut() {
                if candidate.is_relative() {
                    *candidate = base.join(&*candidate);
                }
            }
            if policy.dir.is_relative() {
                policy.dir = base.join(&policy.dir);
            }
        }
        Ok(mesh)
    }

    /// Parses and validates mesh YAML.
    pub fn parse(text: &str) -> Result<MeshFile, MeshError> {
        let mesh: MeshFile = serde_yaml::from_str(text).map_err(|e| MeshError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        mesh.validate()?;
        Ok(mesh)
    }

    fn validate(&self) -> Result<(), MeshError> {
        self.control_plane.validate()?;
        let mut names = BTreeSet::new();
        let mut tokens = BTreeSet::new();
        for w in &self.workloads {
            if !names.insert(w.name.as_str()) {
                return Err(MeshError::Invalid(format!(
                    "workload {:?} is declared twice; workload names must be unique",
                    w.name
                )));
            }
            self.check_join_token(w)?;
            if !tokens.insert(w.join_token.as_str()) {
                return Err(MeshError::Invalid(format!(
                    "workload {:?} reuses another workload's join token; each workload needs its own",
                    w.name
                )));
            }
            SpiffeId::workload(&self.trust_domain, &w.namespace, w.service_account())
                .map_err(|e| MeshError::Invalid(format!("workload {:?}: {e}", w.name)))?;
        }
        let mut services = BTreeSet::new();
        for s in &self.services {
            if !services.insert((s.namespace.as_str(), s.name.as_str())) {
                return Err(MeshError::Invalid(format!(
                    "service {}.{} is declared twice",
                    s.name, s.namespace
                )));
            }
            for e in &s.endpoints {
                if !names.contains(e.as_str()) {
                    return Err(MeshError::Invalid(format!(
                        "service {:?} names endpoint {e:?}, which is not a declared workload",
                        s.name
                    )));
                }
            }
        }
        for s in &self.services {
            if let Some(traffic) = &s.traffic {
                vigil_api::traffic::TrafficPolicy::parse(&traffic.to_string()).map_err(|e| {
                    MeshError::Invalid(format!(
                        "service {}.{} has a traffic policy proxies would refuse: {e} (see docs/traffic.md)",
                        s.name, s.namespace
                    ))
                })?;
            }
        }
        if !self.routes.is_empty() {
            let mut services = self.model_services(&HashMap::new());
            let ports = crate::gateway::ServicePorts::of_model(&services);
            let problems = crate::gateway::attach(&self.routes, &mut services, &ports);
            if let Some(p) = problems.first() {
                return Err(MeshError::Invalid(format!(
                    "{p}{}",
                    match problems.len() {
                        1 => String::new(),
                        n => format!(" (and {} more problems with routes)", n - 1),
                    }
                )));
            }
        }
        for w in &self.workloads {
            for target in w.proxy.upstreams.values() {
                if !self.services.iter().any(|s| s.matches_host(target)) {
                    return Err(MeshError::Invalid(format!(
                        "workload {:?} has an upstream to {target:?}, which is not a declared service",
                        w.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a join token that is short or that zxcvbn can guess in fewer than
    /// 2^[`MIN_JOIN_TOKEN_BITS`] tries. The workload's own names count as known words: a
    /// token built from them is no secret.
    fn check_join_token(&self, w: &WorkloadEntry) -> Result<(), MeshError> {
        let weak = |problem: String| MeshError::WeakJoinToken {
            workload: w.name.clone(),
            problem,
        };
        let chars = w.join_token.chars().count();
        if chars < MIN_JOIN_TOKEN_CHARS {
            return Err(weak(format!(
                "shorter than {MIN_JOIN_TOKEN_CHARS} characters: {chars}"
            )));
        }
        let known = [
            w.name.as_str(),
            w.namespace.as_str(),
            w.service_account(),
            self.trust_domain.as_str(),
        ];
        // zxcvbn takes about a millisecond a token: a mesh of thousands re-read on every
        // change would spend seconds re-judging tokens it already judged. Tokens found
        // strong are remembered by a hash of the token and its known words.
        let mut key = Sha256::new();
        for part in std::iter::once(w.join_token.as_str()).chain(known) {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        let key: [u8; 32] = key.finalize().into();
        if STRONG_TOKENS.with(|strong| strong.contains(&key)) {
            return Ok(());
        }
        let estimate = zxcvbn::zxcvbn(&w.join_token, &known);
        let bits = (estimate.guesses() as f64).log2();
        if bits < MIN_JOIN_TOKEN_BITS {
            return Err(weak(format!(
                "about {bits:.0} bits by zxcvbn's estimate, at least {MIN_JOIN_TOKEN_BITS:.0} needed"
            )));
        }
        STRONG_TOKENS.with(|strong| strong.insert(key));
        Ok(())
    }

    /// The services of the file, with the endpoints among `workloads` (by name).
    fn model_services(&self, workloads: &HashMap<&str, &Workload>) -> Vec<Service> {
        self.services
            .iter()
            .map(|s| {
                let endpoints = s
                    .endpoints
                    .iter()
                    .filter_map(|name| workloads.get(name.as_str()).copied())
                    .map(|w| Endpoint {
                        address: w.inbound_address,
                        spiffe_id: w.spiffe_id.clone(),
                        workload: w.name.clone(),
                        target_port: s.target_port.unwrap_or(w.app_port),
                    })
                    .collect();
                Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    port: s.port,
                    protocol: s.protocol,
                    target_port: s.target_port,
                    hosts: s.hosts.clone(),
                    virtual_addresses: s.virtual_addresses.clone(),
                    endpoints,
                    traffic: s.traffic.clone(),
                }
            })
            .collect()
    }

    /// The internal model: what discovery serves, whatever the source.
    pub fn model(&self) -> Result<MeshModel, MeshError> {
        let mut workloads = Vec::new();
        for w in &self.workloads {
            let spiffe_id =
                SpiffeId::workload(&self.trust_domain, &w.namespace, w.service_account())
                    .map_err(|e| MeshError::Invalid(format!("workload {:?}: {e}", w.name)))?;
            workloads.push(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account().to_string(),
                spiffe_id,
                app_port: w.app_port,
                tcp_ports: w.tcp_ports.clone(),
                inbound_address: w.proxy.inbound,
                labels: w.labels.clone(),
                calls: w.calls.as_ref().map(|calls| {
                    calls
                        .iter()
                        .chain(w.proxy.upstreams.values())
                        .cloned()
                        .collect()
                }),
            });
        }
        // Endpoints name workloads: one lookup each, not a scan of every workload.
        let by_name: HashMap<&str, &Workload> =
            workloads.iter().map(|w| (w.name.as_str(), w)).collect();
        let mut services = self.model_services(&by_name);
        if !self.routes.is_empty() {
            // Checked when the file was read: nothing is left out here.
            let ports = crate::gateway::ServicePorts::of_model(&services);
            crate::gateway::attach(&self.routes, &mut services, &ports);
        }
        Ok(MeshModel {
            trust_domain: self.trust_domain.clone(),
            workloads,
            services,
        })
    }

    /// The lookup table from join tokens to workloads; build it once per mesh file.
    pub fn join_token_index(&self) -> JoinTokenIndex {
        JoinTokenIndex {
            by_digest: self
                .workloads
                .iter()
                .enumerate()
                .map(|(i, w)| (token_digest(&w.join_token), i))
                .collect(),
        }
    }
}

/// The workloads of one [`MeshFile`] by the SHA-256 of their join token, so checking a
/// token costs one hash and one lookup whatever the size of the mesh. Keyed by digest,
/// the lookup's timing depends only on a hash the caller cannot steer toward a real
/// token, and the final comparison is in constant time.
#[derive(Debug, Clone, Default)]
pub struct JoinTokenIndex {
    by_digest: HashMap<[u8; 32], usize>,
}

impl JoinTokenIndex {
    /// The workload of `mesh` (the file this index was built from) whose token this is.
    pub fn workload<'m>(&self, mesh: &'m MeshFile, token: &str) -> Option<&'m WorkloadEntry> {
        use subtle::ConstantTimeEq;
        let i = *self.by_digest.get(&token_digest(token))?;
        let w = mesh.workloads.get(i)?;
        bool::from(w.join_token.as_bytes().ct_eq(token.as_bytes())).then_some(w)
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl WorkloadEntry {
    /// The service account, defaulting to the workload name.
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }
}

impl ServiceEntry {
    fn matches_host(&self, host: &str) -> bool {
        host == self.name
            || host == format!("{}.{}", self.name, self.namespace)
            || self.hosts.iter().any(|h| h == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
trust_domain: vigil.local
certificate_lifetime: 10s
workloads:
  - name: client
    namespace: demo
    join_token: 446e058ca19b93489808d5357442e0f4
    app_port: 8081
    proxy: { inbound: "127.0.0.1:15106", outbound: "127.0.0.1:15101", admin: "127.0.0.1:15100", metrics: "127.0.0.1:15190" }
  - name: server
    namespace: demo
    service_account: web
    join_token: 6d3dc512e0a3d71a84dc27e75545bc9c
    app_port: 8082
services:
  - name: server
    namespace: demo
    endpoints: [server]
"#;

    #[test]
    fn parses_and_builds_the_model() {
        let mesh = MeshFile::parse(MESH).expect("valid mesh");
        assert_eq!(mesh.certificate_lifetime, Duration::from_secs(10));
        let model = mesh.model().expect("model");
        let server = &model.services[0];
        assert_eq!(server.port, 80);
        assert_eq!(server.endpoints[0].address.port(), 15006);
        assert_eq!(
            server.endpoints[0].spiffe_id.to_string(),
            "spiffe://vigil.local/ns/demo/sa/web"
        );
    }

    #[test]
    fn routes_in_the_mesh_file_attach_to_its_services_and_mistakes_are_refused() {
        let with_routes = format!(
            "{MESH}{}",
            r#"  - name: server-v2
    namespace: demo
    endpoints: [server]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: canary, namespace: demo}
    spec:
      parentRefs: [{kind: Service, name: server}]
      rules:
      - backendRefs: [{name: server, port: 80, weight: 90}, {name: server-v2, port: 80, weight: 10}]
"#
        );
        let mesh = MeshFile::parse(&with_routes).expect("valid mesh");
        let model = mesh.model().expect("model");
        let traffic = model.services[0].traffic.as_ref().expect("routes attached");
        assert_eq!(traffic["unmatched"], "not-found");
        assert_eq!(
            traffic["routes"][0]["backends"][1]["service"],
            "server-v2.demo"
        );
        assert_eq!(traffic["routes"][0]["backends"][1]["weight"], 10);

        let wrong = with_routes.replace("name: server, port: 80", "name: server, port: 81");
        let wrong = wrong.replace(
            "parentRefs: [{kind: Service, name: server}]",
            "parentRefs: [{kind: Service, name: serve}]",
        );
        let err = MeshFile::parse(&wrong)
            .expect_err("unknown parent")
            .to_string();
        assert!(
            err.contains("HTTPRoute demo/canary: parent Service demo/serve is not in the mesh"),
            "{err}"
        );

        let bad_traffic = MESH.replace(
            "    endpoints: [server]",
            "    endpoints: [server]\n    traffic: {timout: 1s}",
        );
        let err = MeshFile::parse(&bad_traffic)
            .expect_err("bad traffic")
            .to_string();
        assert!(
            err.contains("service server.demo has a traffic policy proxies would refuse: timout: unknown field `timout`"),
            "{err}"
        );
    }

    #[test]
    fn token_decides_the_workload() {
        let mesh = MeshFile::parse(MESH).expect("valid mesh");
        let index = mesh.join_token_index();
        let server = "6d3dc512e0a3d71a84dc27e75545bc9c";
        assert_eq!(
            index.workload(&mesh, server).map(|w| w.name.as_str()),
            Some("server")
        );
        assert!(index.workload(&mesh, &server[..31]).is_none());
        assert!(index.workload(&mesh, &format!("{server}0")).is_none());
        assert!(index.workload(&mesh, "").is_none());
    }

    /// A token anyone could guess is refused when the file is loaded, with the way to
    /// make a good one, and the message never repeats the token.
    #[test]
    fn guessable_join_tokens_are_refused_with_how_to_make_one() {
        let server = "6d3dc512e0a3d71a84dc27e75545bc9c";
        for weak in [
            "aaaaaaaaaaaaaaaa",
            "abababababababababababab",
            "0123456789abcdef",
            "server-token-0123456789",
            "demo-server-password-2024",
            "web-web-web-web-web-web",
        ] {
            let err = MeshFile::parse(&MESH.replace(server, weak))
                .expect_err(weak)
                .to_string();
            assert!(
                err.contains("\"server\" has a join token that is too easy to guess"),
                "{weak}: {err}"
            );
            assert!(err.contains("openssl rand -hex 16"), "{err}");
            assert!(!err.contains(weak), "the message repeats the token: {err}");
        }
        let short = MeshFile::parse(&MESH.replace(server, "Zq8#vK2$"))
            .expect_err("short")
            .to_string();
        assert!(short.contains("shorter than 16 characters"), "{short}");

        // What the hint produces, and a passphrase of unrelated words, are accepted.
        for strong in [
            "ba8997493b19582f79526e3d829752a8",
            "MEe+dueGFj8xMqGfrsVtBg==",
            "lantern-orbit-quarry-velvet-mosaic",
        ] {
            MeshFile::parse(&MESH.replace(server, strong)).expect(strong);
        }
    }

    /// The mesh files Vigil ships load as they are, join tokens included.
    #[test]
    fn every_example_mesh_file_loads() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&examples).expect("examples/") {
            let path = entry.expect("entry").path().join("mesh.yaml");
            if path.exists() {
                MeshFile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 2, "only {loaded} example mesh files found");
    }

    #[test]
    fn rejects_inconsistent_meshes_with_a_reason() {
        let dup = MESH.replace(
            "6d3dc512e0a3d71a84dc27e75545bc9c",
            "446e058ca19b93489808d5357442e0f4",
        );
        let err = MeshFile::parse(&dup).expect_err("shared token").to_string();
        assert!(
            err.contains("reuses another workload's join token"),
            "{err}"
        );

        let unknown = MESH.replace("endpoints: [server]", "endpoints: [nope]");
        let err = MeshFile::parse(&unknown)
            .expect_err("unknown endpoint")
            .to_string();
        assert!(err.contains("not a declared workload"), "{err}");

        let typo = MESH.replace("app_port: 8081", "app_prot: 8081");
        let err = MeshFile::parse(&typo).expect_err("typo").to_string();
        assert!(err.contains("app_prot"), "{err}");
    }

    #[test]
    fn replicas_each_serve_on_their_own_addresses() {
        let replicated = MESH.replace(
            "workloads:",
            "control_plane:\n  replicas:\n    - { identity: \"127.0.0.1:25012\", discovery: \"127.0.0.1:25010\", dashboard: \"127.0.0.1:25080\" }\nworkloads:",
        );
        let mesh = MeshFile::parse(&replicated).expect("valid mesh");
        let cp = &mesh.control_plane;
        assert_eq!(
            cp.discovery_addresses(),
            [
                "127.0.0.1:15010".parse().unwrap(),
                "127.0.0.1:25010".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        let second = cp.replica(1).expect("replica 1");
        assert_eq!(second.identity, "127.0.0.1:25012".parse().unwrap());
        assert_eq!(second.webhook.port(), 0, "no webhook unless given one");
        assert_eq!(cp.replica(0).expect("replica 0").identity, cp.identity);
        let err = cp.replica(2).expect_err("no such replica").to_string();
        assert!(
            err.contains("lists 1 under control_plane.replicas"),
            "{err}"
        );

        let clash = replicated.replace("127.0.0.1:25010", "127.0.0.1:15010");
        let err = MeshFile::parse(&clash)
            .expect_err("shared address")
            .to_string();
        assert!(err.contains("127.0.0.1:15010 is used twice"), "{err}");
    }
}
