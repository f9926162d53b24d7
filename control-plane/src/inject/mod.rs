//! Sidecar injection: what a pod needs to join the mesh, added to its spec.
//!
//! One mutation, [`inject_pod`], serves both the mutating webhook ([`webhook`], port 15017)
//! and `vigil inject` on YAML files ([`offline`]). It adds:
//!
//! - `vigil-init`, an init container with `NET_ADMIN`/`NET_RAW` that writes the iptables
//!   rules sending the pod's TCP through the proxy (inbound → 15006, outbound → 15001).
//!   The `baseline` and `restricted` Pod Security levels refuse those capabilities, so
//!   with `vigil.io/interception: none` (which the webhook applies in namespaces that
//!   enforce either level) there is no init container and nothing is intercepted: the app
//!   sends its requests to the proxy on 127.0.0.1:15001 itself, peers reach it through
//!   the proxy's 15006, and its own ports stay reachable without mTLS
//!   (see `docs/kubernetes.md`);
//! - `vigil-proxy`, as a native sidecar (init container with `restartPolicy: Always`, the
//!   default) or a classic sidecar container (`vigil.io/sidecar-mode: classic`);
//! - a projected ServiceAccount token with audience `vigil` (the proxy's bootstrap
//!   credential, checked by the control plane with a TokenReview) and the trust bundle
//!   (from the `vigil.io/trust-bundle` annotation, through the downward API);
//! - an annotation marking the pod injected, so it is never injected twice, and a label
//!   (`vigil.io/injected=true`) the control plane's pod watch selects on.
//!
//! Kubelet probes go through the proxy, never around it: [`probes`] rewrites them to the
//! proxy's health port, which performs the original check against the app on loopback
//! (see `docs/kubernetes.md`).

pub mod offline;
pub mod probes;
pub mod webhook;

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// Pod annotation: `enabled` or `disabled`, overriding the namespace's choice.
pub const ANNOTATION_INJECT: &str = "vigil.io/inject";
/// Set by the injector: the pod already carries the sidecar.
pub const ANNOTATION_INJECTED: &str = "vigil.io/injected";
/// Label set by the injector: the control plane watches only pods that carry it.
pub const INJECTED_LABEL: &str = "vigil.io/injected";
/// `native` (default: an init container with `restartPolicy: Always`) or `classic`.
pub const ANNOTATION_SIDECAR_MODE: &str = "vigil.io/sidecar-mode";
/// PEM roots the proxy trusts to reach the control plane, mounted as a file.
pub const ANNOTATION_TRUST_BUNDLE: &str = "vigil.io/trust-bundle";
/// Comma-separated inbound ports that bypass the proxy.
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "vigil.io/exclude-inbound-ports";
/// Comma-separated outbound destination ports that bypass the proxy.
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "vigil.io/exclude-outbound-ports";
/// Comma-separated IPv4 CIDRs whose outbound traffic bypasses the proxy.
pub const ANNOTATION_EXCLUDE_OUTBOUND_CIDRS: &str = "vigil.io/exclude-outbound-cidrs";
/// `iptables` (default) or `none`: whether `vigil-init` redirects the pod's traffic.
pub const ANNOTATION_INTERCEPTION: &str = "vigil.io/interception";
/// `deny` (default) or `allow`: whether the pod may reach addresses outside the mesh.
pub const ANNOTATION_EGRESS: &str = "vigil.io/egress";
/// Threads carrying the proxy's traffic (default 2).
pub const ANNOTATION_WORKER_THREADS: &str = "vigil.io/proxy-worker-threads";
/// The proxy's own default: one traffic worker, which uses the least CPU per request.
const DEFAULT_WORKER_THREADS: u16 = 1;
/// Proxy resources: `vigil.io/proxy-{cpu,memory}-{request,limit}`.
pub const ANNOTATION_PROXY_RESOURCES: [(&str, &str, &str); 4] = [
    ("vigil.io/proxy-cpu-request", "requests", "cpu"),
    ("vigil.io/proxy-cpu-limit", "limits", "cpu"),
    ("vigil.io/proxy-memory-request", "requests", "memory"),
    ("vigil.io/proxy-memory-limit", "limits", "memory"),
];

/// Names of what the injector adds.
pub const PROXY_CONTAINER: &str = "vigil-proxy";
pub const INIT_CONTAINER: &str = "vigil-init";
pub const TOKEN_VOLUME: &str = "vigil-token";
pub const TRUST_VOLUME: &str = "vigil-trust";
/// Where the proxy finds its projected token and the trust bundle.
pub const TOKEN_DIR: &str = "/var/run/secrets/vigil.io/token";
pub const TRUST_DIR: &str = "/var/run/vigil/trust";
/// The audience the projected token is minted for, and the TokenReview asks about.
pub const TOKEN_AUDIENCE: &str = "vigil";

/// Tells the proxy which namespace the control plane's identity names (read by
/// `vigil_proxy::config::ControlPlaneIdentity`).
pub const CONTROL_PLANE_NAMESPACE_ENV: &str = "VIGIL_CONTROL_PLANE_NAMESPACE";

/// Proxy ports (see ARCHITECTURE.md).
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;
pub const METRICS_PORT: u16 = 15090;

/// What the injector puts into pods.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image holding `vigil-proxy` and `vigil-init`.
    pub proxy_image: String,
    pub image_pull_policy: Option<String>,
    pub trust_domain: String,
    /// The control plane's namespace: the proxy expects the control plane to present
    /// `spiffe://<trust domain>/ns/<this>/sa/vigil-control-plane`.
    pub control_plane_namespace: String,
    /// Control plane identity and discovery services as `host:port`.
    pub identity_address: String,
    pub discovery_address: String,
    /// UID (and GID) the proxy runs as; its own traffic is not intercepted.
    pub proxy_uid: u32,
    /// PEM roots for the `vigil.io/trust-bundle` annotation; `None` leaves it to the webhook.
    pub trust_bundle_pem: Option<String>,
    /// Lifetime of the projected token (the kubelet refreshes it at 80%).
    pub token_expiration_seconds: u32,
    /// Proxy resources when the pod's annotations say nothing.
    pub default_resources: ProxyResources,
    /// Interception when the pod's `vigil.io/interception` annotation says nothing.
    pub interception: Interception,
}

/// How the pod's traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interception {
    /// `vigil-init` (root, `NET_ADMIN`, `NET_RAW`) redirects every TCP connection: the
    /// app needs no change and cannot go around the proxy.
    #[default]
    Iptables,
    /// No init container, so the pod passes the `restricted` Pod Security level. Nothing
    /// is enforced: the app must call 127.0.0.1:15001 itself, and its ports still take
    /// plaintext from anyone who reaches the pod.
    None,
    /// The same rules as `Iptables`, written by the `vigil-cni` plugin on the node as the
    /// pod's network is set up: no privileged init container, so the pod passes the
    /// `restricted` Pod Security level and is still intercepted. Needs the mesh installed
    /// with the CNI plugin (`manifests/cni/`).
    Cni,
}

/// Requests and limits of the proxy container, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyResources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        ProxyResources {
            cpu_request: Some("100m".into()),
            cpu_limit: None,
            memory_request: Some("64Mi".into()),
            memory_limit: Some("256Mi".into()),
        }
    }
}

impl InjectConfig {
    /// The defaults for a control plane installed in `namespace`, reached at its Service.
    pub fn for_namespace(namespace: &str) -> InjectConfig {
        InjectConfig {
            control_plane_namespace: namespace.to_string(),
            ..InjectConfig::default()
        }
        .reached_at(&crate::own_identity::service_host(namespace))
    }

    /// This config with proxies dialling the control plane at `host`: identity on 15012,
    /// discovery on 15010.
    pub fn reached_at(self, host: &str) -> InjectConfig {
        InjectConfig {
            identity_address: format!("{host}:15012"),
            discovery_address: format!("{host}:15010"),
            ..self
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        let namespace = crate::own_identity::DEFAULT_NAMESPACE;
        InjectConfig {
            proxy_image: format!("vigil/proxy:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            trust_domain: "cluster.local".into(),
            control_plane_namespace: namespace.into(),
            // Set by `reached_at` below, from the one place that names the ports.
            identity_address: String::new(),
            discovery_address: String::new(),
            proxy_uid: 1337,
            trust_bundle_pem: None,
            token_expiration_seconds: 43200,
            default_resources: ProxyResources::default(),
            interception: Interception::default(),
        }
        .reached_at(&crate::own_identity::service_host(namespace))
    }
}

/// How the proxy joins the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+): starts before
    /// the app and its other init containers, stops after them, and never keeps a Job alive.
    Native,
    /// A regular container listed first.
    Classic,
}

/// What [`inject_pod`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected {
        mode: SidecarMode,
        /// Things the pod's author should know (bad annotations, probes left failing).
        warnings: Vec<String>,
    },
    Skipped {
        reason: String,
    },
}

/// A pod template the injector cannot work on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InjectError {
    #[error("{0} is not an object")]
    NotAnObject(&'static str),
    #[error("the pod has no spec.containers")]
    NoContainers,
}

/// Adds the sidecar to a pod or pod template (`{metadata, spec}`) in place, unless it is
/// already injected, opted out, or on the host network.
pub fn inject_pod(pod: &mut Value, cfg: &InjectConfig) -> Result<Outcome, InjectError> {
    let pod = pod
        .as_object_mut()
        .ok_or(InjectError::NotAnObject("the pod"))?;
    let annotations = annotations_of(pod);
    if annotations.contains_key(ANNOTATION_INJECTED) {
        return Ok(skipped("already injected (vigil.io/injected is set)"));
    }
    let mut warnings = Vec::new();
    match annotations.get(ANNOTATION_INJECT).map(String::as_str) {
        Some("disabled") | Some("false") => {
            return Ok(skipped("vigil.io/inject is disabled on the pod"));
        }
        None | Some("enabled") | Some("true") => {}
        Some(other) => warnings.push(format!(
            "vigil.io/inject={other:?} is neither enabled nor disabled; injecting"
        )),
    }
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or(InjectError::NotAnObject("spec"))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(skipped(
            "the pod uses the host network, whose traffic cannot be intercepted per pod",
        ));
    }
    spec.get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or(InjectError::NoContainers)?;
    let has_proxy = |list: Option<&Value>| {
        list.and_then(Value::as_array).is_some_and(|l| {
            l.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
        })
    };
    if has_proxy(spec.get("containers")) || has_proxy(spec.get("initContainers")) {
        return Ok(skipped("the pod already has a vigil-proxy container"));
    }

    let mode = match annotations.get(ANNOTATION_SIDECAR_MODE).map(String::as_str) {
        None | Some("native") => SidecarMode::Native,
        Some("classic") => SidecarMode::Classic,
        Some(other) => {
            warnings.push(format!(
                "vigil.io/sidecar-mode={other:?} is neither native nor classic; using native"
            ));
            SidecarMode::Native
        }
    };

    let exclude_inbound = port_list(
        &annotations,
        ANNOTATION_EXCLUDE_INBOUND_PORTS,
        &mut warnings,
    );
    let exclude_outbound = port_list(
        &annotations,
        ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
        &mut warnings,
    );
    let exclude_cidrs = cidr_list(&annotations, &mut warnings);
    let resources = proxy_resources(&annotations, &cfg.default_resources, &mut warnings);

    let egress = match annotations.get(ANNOTATION_EGRESS).map(String::as_str) {
        None | Some("deny") => "deny",
        Some("allow") => "allow",
        Some(other) => {
            warnings.push(format!(
                "vigil.io/egress={other:?} is neither allow nor deny; traffic leaving the mesh stays denied"
            ));
            "deny"
        }
    };

    let threads = match annotations.get(ANNOTATION_WORKER_THREADS) {
        None => DEFAULT_WORKER_THREADS,
        Some(v) => match v.trim().parse::<u16>() {
            Ok(n @ 1..=64) => n,
            _ => {
                warnings.push(format!(
                    "vigil.io/proxy-worker-threads={v:?} is not a number from 1 to 64; using {DEFAULT_WORKER_THREADS}"
                ));
                DEFAULT_WORKER_THREADS
            }
        },
    };

    let rewrite_probes = match annotations
        .get(probes::ANNOTATION_REWRITE_PROBES)
        .map(String::as_str)
    {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            warnings.push(format!(
                "{}={other:?} is neither true nor false; rewriting the probes",
                probes::ANNOTATION_REWRITE_PROBES
            ));
            true
        }
    };
    let app_probes = probes::rewrite(spec, rewrite_probes, &exclude_inbound, &mut warnings);

    let interception = match annotations.get(ANNOTATION_INTERCEPTION).map(String::as_str) {
        None => cfg.interception,
        Some("iptables") => Interception::Iptables,
        Some("none") => Interception::None,
        Some("cni") => Interception::Cni,
        Some(other) => {
            warnings.push(format!(
                "{ANNOTATION_INTERCEPTION}={other:?} is none of iptables, cni or none; using {}",
                interception_name(cfg.interception)
            ));
            cfg.interception
        }
    };
    // What the CNI plugin reads from the pod to write its rules.
    let mut for_cni: Vec<(&str, String)> = Vec::new();
    let init = match interception {
        Interception::Iptables => Some(init_container(
            cfg,
            &exclude_inbound,
            &exclude_outbound,
            &exclude_cidrs,
        )),
        Interception::Cni => {
            for_cni.push(("vigil.io/proxy-uid", cfg.proxy_uid.to_string()));
            for_cni.push((ANNOTATION_EXCLUDE_INBOUND_PORTS, join(&exclude_inbound)));
            for_cni.push((ANNOTATION_EXCLUDE_OUTBOUND_PORTS, join(&exclude_outbound)));
            for_cni.push(("vigil.io/exclude-outbound-cidrs", exclude_cidrs.join(",")));
            restricted_seccomp(spec)?;
            None
        }
        Interception::None => {
            warnings.push(
                "traffic is not intercepted (vigil.io/interception: none): the app must send its \
                 requests to the proxy at 127.0.0.1:15001 with the service as Host, and its own \
                 ports still accept plaintext from anyone who reaches the pod"
                    .into(),
            );
            restricted_seccomp(spec)?;
            None
        }
    };
    let mut proxy = proxy_container(cfg, resources, egress, threads, &app_probes);
    let inits = spec
        .entry("initContainers")
        .or_insert_with(|| Value::Array(vec![]));
    let inits = inits
        .as_array_mut()
        .ok_or(InjectError::NotAnObject("spec.initContainers"))?;
    match mode {
        SidecarMode::Native => {
            if let Some(p) = proxy.as_object_mut() {
                p.insert("restartPolicy".into(), json!("Always"));
            }
            inits.splice(0..0, init.into_iter().chain([proxy]));
        }
        SidecarMode::Classic => {
            let own_inits = !inits.is_empty();
            if let Some(init) = init {
                inits.insert(0, init);
            }
            if own_inits {
                warnings.push(
                    "classic sidecar: the pod's own init containers run before the proxy starts, \
                     so their TCP connections fail; use the native mode"
                        .into(),
                );
            }
            spec.get_mut("containers")
                .and_then(Value::as_array_mut)
                .ok_or(InjectError::NoContainers)?
                .insert(0, proxy);
        }
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(vec![]));
    volumes
        .as_array_mut()
        .ok_or(InjectError::NotAnObject("spec.volumes"))?
        .extend(volumes_for(cfg));

    let metadata = pod
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(InjectError::NotAnObject("metadata"))?;
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(InjectError::NotAnObject("metadata.labels"))?;
    labels.insert(INJECTED_LABEL.into(), json!("true"));
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(InjectError::NotAnObject("metadata.annotations"))?;
    annotations.insert(ANNOTATION_INJECTED.into(), json!("true"));
    annotations.insert(
        ANNOTATION_INTERCEPTION.into(),
        json!(interception_name(interception)),
    );
    for (key, value) in for_cni {
        annotations.insert(key.into(), json!(value));
    }
    if let Some(pem) = &cfg.trust_bundle_pem {
        annotations.insert(ANNOTATION_TRUST_BUNDLE.into(), json!(pem));
    }
    if annotations.contains_key("prometheus.io/scrape") {
        warnings.push(
            "the pod has its own prometheus.io annotations; the proxy's metrics on 15090 are not announced"
                .into(),
        );
    } else {
        annotations.insert("prometheus.io/scrape".into(), json!("true"));
        annotations.insert("prometheus.io/port".into(), json!(METRICS_PORT.to_string()));
        annotations.insert("prometheus.io/path".into(), json!("/metrics"));
    }
    Ok(Outcome::Injected { mode, warnings })
}

/// Fills in a missing trust bundle on a pod injected offline without one. Returns whether
/// it changed anything.
pub fn complete_trust_bundle(pod: &mut Value, cfg: &InjectConfig) -> bool {
    let Some(pem) = &cfg.trust_bundle_pem else {
        return false;
    };
    let Some(annotations) = pod
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    if !annotations.contains_key(ANNOTATION_INJECTED)
        || annotations.contains_key(ANNOTATION_TRUST_BUNDLE)
    {
        return false;
    }
    annotations.insert(ANNOTATION_TRUST_BUNDLE.into(), json!(pem));
    true
}

/// The restricted Pod Security level also wants a seccomp profile on the app's
/// containers; the runtime's default is what it asks for.
fn restricted_seccomp(spec: &mut Map<String, Value>) -> Result<(), InjectError> {
    spec.entry("securityContext")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or(InjectError::NotAnObject("spec.securityContext"))?
        .entry("seccompProfile")
        .or_insert_with(|| json!({"type": "RuntimeDefault"}));
    Ok(())
}

fn interception_name(interception: Interception) -> &'static str {
    match interception {
        Interception::Iptables => "iptables",
        Interception::None => "none",
        Interception::Cni => "cni",
    }
}

fn skipped(reason: &str) -> Outcome {
    Outcome::Skipped {
        reason: reason.into(),
    }
}

fn annotations_of(pod: &Map<String, Value>) -> std::collections::BTreeMap<String, String> {
    pod.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn init_container(
    cfg: &InjectConfig,
    exclude_inbound: &BTreeSet<u16>,
    exclude_outbound: &BTreeSet<u16>,
    exclude_cidrs: &[String],
) -> Value {
    let mut args = vec![
        "--proxy-uid".to_string(),
        cfg.proxy_uid.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
    ];
    if !exclude_inbound.is_empty() {
        args.push("--exclude-inbound-ports".into());
        args.push(join(exclude_inbound));
    }
    if !exclude_outbound.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(join(exclude_outbound));
    }
    if !exclude_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".into());
        args.push(exclude_cidrs.join(","));
    }
    let mut c = json!({
        "name": INIT_CONTAINER,
        "image": cfg.proxy_image,
        "command": ["vigil-init"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    set_pull_policy(&mut c, cfg);
    c
}

fn proxy_container(
    cfg: &InjectConfig,
    resources: Value,
    egress: &str,
    threads: u16,
    app_probes: &Map<String, Value>,
) -> Value {
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = |name: &str, mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("name".into(), json!(name));
        }
        v
    };
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": cfg.proxy_image,
        "args": [
            "--trust-domain", cfg.trust_domain,
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--token-kind", "kubernetes",
            "--trust-bundle", format!("{TRUST_DIR}/bundle.pem"),
            "--identity-addr", cfg.identity_address,
            "--discovery-addr", cfg.discovery_address,
            "--inbound", format!("0.0.0.0:{INBOUND_PORT}"),
            "--outbound", format!("127.0.0.1:{OUTBOUND_PORT}"),
            "--admin", format!("127.0.0.1:{ADMIN_PORT}"),
            "--metrics", format!("0.0.0.0:{METRICS_PORT}"),
            "--egress", egress,
            "--worker-threads", threads.to_string(),
        ],
        "env": [
            env("POD_NAME", field("metadata.name")),
            env("POD_NAMESPACE", field("metadata.namespace")),
            env("POD_IP", field("status.podIP")),
            json!({"name": CONTROL_PLANE_NAMESPACE_ENV, "value": cfg.control_plane_namespace}),
        ],
        "ports": [
            {"name": "vigil-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "vigil-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        // The kubelet probes the metrics port (the admin port is loopback-only). As a
        // native sidecar the startup probe holds the app's containers back until the
        // proxy has its certificate, a snapshot and a policy bundle, so the app's first
        // calls do not meet `503 not-ready`; five minutes before the kubelet restarts it.
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": METRICS_PORT},
            "periodSeconds": 1,
            "failureThreshold": 300,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": METRICS_PORT},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": METRICS_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "runAsUser": cfg.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true},
        ],
    });
    if !app_probes.is_empty() {
        if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
            env.push(json!({
                "name": probes::APP_PROBES_ENV,
                "value": Value::Object(app_probes.clone()).to_string(),
            }));
        }
    }
    set_pull_policy(&mut c, cfg);
    c
}

fn set_pull_policy(container: &mut Value, cfg: &InjectConfig) {
    if let (Some(policy), Some(c)) = (&cfg.image_pull_policy, container.as_object_mut()) {
        c.insert("imagePullPolicy".into(), json!(policy));
    }
}

fn volumes_for(cfg: &InjectConfig) -> [Value; 2] {
    [
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": cfg.token_expiration_seconds,
                "path": "token",
            }}]},
        }),
        json!({
            "name": TRUST_VOLUME,
            "downwardAPI": {"items": [{
                "path": "bundle.pem",
                "fieldRef": {"fieldPath": format!("metadata.annotations['{ANNOTATION_TRUST_BUNDLE}']")},
            }]},
        }),
    ]
}

fn port_list(
    annotations: &std::collections::BTreeMap<String, String>,
    key: &str,
    warnings: &mut Vec<String>,
) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for item in split_list(annotations.get(key)) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => {
                ports.insert(p);
            }
            _ => warnings.push(format!("{key}: {item:?} is not a port; ignored")),
        }
    }
    ports
}

fn cidr_list(
    annotations: &std::collections::BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut cidrs = Vec::new();
    for item in split_list(annotations.get(ANNOTATION_EXCLUDE_OUTBOUND_CIDRS)) {
        let valid = item.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
        });
        if valid {
            cidrs.push(item.to_string());
        } else {
            warnings.push(format!(
                "{ANNOTATION_EXCLUDE_OUTBOUND_CIDRS}: {item:?} is not an IPv4 CIDR; ignored"
            ));
        }
    }
    cidrs
}

fn split_list(value: Option<&String>) -> impl Iterator<Item = &str> {
    value
        .map(|v| v.as_str())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn proxy_resources(
    annotations: &std::collections::BTreeMap<String, String>,
    defaults: &ProxyResources,
    warnings: &mut Vec<String>,
) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    let default_of = |key: &str| match key {
        "vigil.io/proxy-cpu-request" => defaults.cpu_request.clone(),
        "vigil.io/proxy-cpu-limit" => defaults.cpu_limit.clone(),
        "vigil.io/proxy-memory-request" => defaults.memory_request.clone(),
        _ => defaults.memory_limit.clone(),
    };
    for (key, section, resource) in ANNOTATION_PROXY_RESOURCES {
        let value = match annotations.get(key) {
            Some(v) if is_quantity(v) => Some(v.clone()),
            Some(v) => {
                warnings.push(format!(
                    "{key}: {v:?} is not a Kubernetes quantity; using the default"
                ));
                default_of(key)
            }
            None => default_of(key),
        };
        if let Some(v) = value {
            let target = if section == "requests" {
                &mut requests
            } else {
                &mut limits
            };
            target.insert(resource.into(), json!(v));
        }
    }
    let mut r = Map::new();
    if !requests.is_empty() {
        r.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        r.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(r)
}

/// A Kubernetes resource quantity: a decimal number and an optional SI/binary suffix or
/// exponent (`100m`, `0.5`, `64Mi`, `1e3`).
pub fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let exponent_ok = |e: &str| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(exponent_ok);
    number_ok && suffix_ok
}

fn join(ports: &BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod tests;
