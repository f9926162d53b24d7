//! `vigil-cni`: a chained CNI plugin (CNI spec 1.0) that writes the interception rules of
//! [`crate::interception`] into a pod's network namespace as the pod is created, so that
//! meshed pods need no init container with NET_ADMIN and NET_RAW (which the `baseline` and
//! `restricted` Pod Security levels refuse).
//!
//! The container runtime runs the plugin after the pod's network is set up, with the
//! command and the pod in environment variables (`CNI_COMMAND`, `CNI_NETNS`, `CNI_ARGS`
//! with `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, ...) and the network configuration on
//! standard input. The plugin reads the pod from the Kubernetes API and intercepts only
//! pods the injector marked `vigil.io/interception: cni`; every other pod is passed
//! through untouched. Results and errors are JSON on standard output, as the spec says.
//!
//! Entering the pod's namespace is left to `nsenter` (util-linux), which keeps this crate
//! free of `unsafe` `setns` calls.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::interception::{install, Cidr, InterceptionConfig, Step};

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.4.0", "1.0.0", "1.1.0", "0.3.1"];

/// The annotation the injector sets on pods whose interception the plugin writes.
pub const INTERCEPTION_ANNOTATION: &str = "vigil.io/interception";

/// The network configuration the runtime passes on standard input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The result of the plugins before this one, returned unchanged.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// How to reach the Kubernetes API.
    pub kubernetes: KubernetesAccess,
    /// The iptables program in the host's filesystem.
    #[serde(default = "default_iptables")]
    pub iptables: PathBuf,
    /// The nsenter program in the host's filesystem.
    #[serde(default = "default_nsenter")]
    pub nsenter: PathBuf,
}

fn default_iptables() -> PathBuf {
    "iptables".into()
}

fn default_nsenter() -> PathBuf {
    "nsenter".into()
}

/// Where the API server is and the credential to read pods with (the plugin's
/// ServiceAccount token, written on the node by the plugin's installer).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct KubernetesAccess {
    /// `https://HOST:PORT` (or `http://127.0.0.1:PORT` behind `kubectl proxy`).
    pub server: String,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The CA that signed the API server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// What the runtime says through the environment.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, split: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the `CNI_*` variables.
    pub fn from_env() -> Invocation {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Invocation {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_cni_args(&var("CNI_ARGS")),
        }
    }

    fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.as_str(),
            self.args.get("K8S_POD_NAME")?.as_str(),
        ))
    }
}

/// `KEY=VALUE;KEY=VALUE`.
pub fn parse_cni_args(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A CNI error: printed as the spec's error object, with a non-zero exit.
#[derive(Debug)]
pub struct CniError {
    /// 1-99 are the spec's (4: invalid configuration, 7: invalid network config, 11: try
    /// again later); 100 and above are the plugin's own.
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.to_string(),
            details: details.into(),
        }
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": if cni_version.is_empty() { "1.0.0" } else { cni_version },
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The plugin's own error codes.
const ERR_KUBERNETES: u32 = 100;
const ERR_IPTABLES: u32 = 101;

/// What a pod asked for, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodDecision {
    /// Not meshed, or meshed another way: the plugin changes nothing.
    PassThrough(String),
    Intercept(InterceptionConfig),
}

/// Decides from a Pod object (JSON, as the API returns it) whether and how to intercept.
pub fn decide(pod: &Value) -> Result<PodDecision, String> {
    let annotations = pod["metadata"]["annotations"].as_object();
    let get = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::trim)
    };
    match get(INTERCEPTION_ANNOTATION) {
        Some("cni") => {}
        other => {
            return Ok(PodDecision::PassThrough(format!(
                "{INTERCEPTION_ANNOTATION} is {}",
                other.map_or("not set".to_string(), |v| format!("{v:?}"))
            )))
        }
    }
    let ports = |key: &str| -> Result<Vec<u16>, String> {
        get(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|_| format!("{key}: {p:?} is not a port")))
            .collect()
    };
    let cidrs = |key: &str| -> Result<Vec<Cidr>, String> {
        get(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<Cidr>().map_err(|e| format!("{key}: {e}")))
            .collect()
    };
    let mut config = InterceptionConfig::default();
    if let Some(uid) = get("vigil.io/proxy-uid") {
        config.proxy_uid = uid
            .parse()
            .map_err(|_| format!("vigil.io/proxy-uid: {uid:?} is not a UID"))?;
    }
    config.exclude_inbound_ports = ports("vigil.io/exclude-inbound-ports")?;
    config.exclude_outbound_ports = ports("vigil.io/exclude-outbound-ports")?;
    config.exclude_inbound_cidrs = cidrs("vigil.io/exclude-inbound-cidrs")?;
    config.exclude_outbound_cidrs = cidrs("vigil.io/exclude-outbound-cidrs")?;
    Ok(PodDecision::Intercept(config))
}

/// Runs one invocation and returns what goes to standard output.
pub async fn handle(invocation: &Invocation, stdin: &str) -> Result<Value, (CniError, String)> {
    if invocation.command == "VERSION" {
        let version = serde_json::from_str::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| "1.0.0".into());
        return Ok(json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        (
            CniError::new(
                7,
                "invalid network configuration",
                format!("{e}: vigil-cni needs cniVersion and kubernetes.server"),
            ),
            String::new(),
        )
    })?;
    let fail = |e: CniError| (e, conf.cni_version.clone());
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(fail(CniError::new(
            1,
            "incompatible CNI version",
            format!(
                "{} is not one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        )));
    }
    // A chained plugin hands on what the plugins before it produced.
    let passed_on = conf
        .prev_result
        .clone()
        .unwrap_or_else(|| json!({"cniVersion": conf.cni_version}));
    match invocation.command.as_str() {
        "ADD" | "CHECK" => {}
        // The namespace goes with the pod, and the rules with it: nothing to undo, and
        // DEL must succeed even when the pod or its namespace are already gone.
        "DEL" | "GC" | "STATUS" => return Ok(Value::Null),
        other => {
            return Err(fail(CniError::new(
                4,
                "unknown CNI_COMMAND",
                format!("{other:?}; expected ADD, CHECK, DEL or VERSION"),
            )))
        }
    }
    let Some((namespace, name)) = invocation.pod() else {
        // Not a Kubernetes pod (no K8S_POD_* in CNI_ARGS): nothing of Vigil's.
        return Ok(passed_on);
    };
    if invocation.netns.is_empty() {
        return Err(fail(CniError::new(
            4,
            "CNI_NETNS is not set",
            "the runtime must name the pod's network namespace",
        )));
    }
    let pod = fetch_pod(&conf.kubernetes, namespace, name)
        .await
        .map_err(|e| {
            fail(CniError::new(
                ERR_KUBERNETES,
                "cannot read the pod from the Kubernetes API",
                format!("{namespace}/{name}: {e:#}"),
            ))
        })?;
    let config = match decide(&pod).map_err(|e| {
        fail(CniError::new(
            ERR_KUBERNETES,
            "the pod's Vigil annotations are invalid",
            format!("{namespace}/{name}: {e}"),
        ))
    })? {
        PodDecision::PassThrough(_) => return Ok(passed_on),
        PodDecision::Intercept(config) => config,
    };
    let steps = if invocation.command == "CHECK" {
        install(&config)
            .into_iter()
            .filter(|s| s.check_args().is_some())
            .collect()
    } else {
        install(&config)
    };
    for step in &steps {
        run_step(
            &conf,
            &invocation.netns,
            step,
            invocation.command == "CHECK",
        )
        .map_err(|e| {
            fail(CniError::new(
                ERR_IPTABLES,
                "cannot write the pod's interception rules",
                format!("{namespace}/{name}: {e}"),
            ))
        })?;
    }
    Ok(passed_on)
}

/// Runs one iptables step in the pod's network namespace. With `check_only`, the rule
/// must be there already (CHECK).
fn run_step(conf: &NetConf, netns: &str, step: &Step, check_only: bool) -> Result<(), String> {
    let run = |args: &[String]| -> Result<Result<(), String>, String> {
        let out = std::process::Command::new(&conf.nsenter)
            .arg(format!("--net={netns}"))
            .arg("--")
            .arg(&conf.iptables)
            .args(args)
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} (install util-linux on the node): {e}",
                    conf.nsenter.display()
                )
            })?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        })
    };
    if let Some(check) = step.check_args() {
        match run(&check)? {
            Ok(()) => return Ok(()),
            Err(e) if check_only => {
                return Err(format!("rule missing: iptables {} ({e})", check.join(" ")))
            }
            Err(_) => {}
        }
    }
    match run(&step.args())? {
        Ok(()) => Ok(()),
        Err(_) if step.may_fail() => Ok(()),
        Err(e) => Err(format!("iptables {} failed: {e}", step.args().join(" "))),
    }
}

/// `GET /api/v1/namespaces/NS/pods/NAME`, with the token, over TLS verified by the CA.
async fn fetch_pod(
    access: &KubernetesAccess,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Value> {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    let uri: http::Uri = access.server.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("kubernetes.server {:?} has no host", access.server))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
    let mut request = http::Request::get(&path).header(http::header::HOST, host.as_str());
    if let Some(file) = &access.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("reading the token {}: {e}", file.display()))?;
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{}: no answer within 5 s", access.server))??;
    let response = if https {
        let mut roots = rustls::RootCertStore::empty();
        let ca_file = access
            .ca_file
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("kubernetes.ca_file is needed for an https server"))?;
        let pem = std::fs::read(ca_file)
            .map_err(|e| anyhow::anyhow!("reading the CA {}: {e}", ca_file.display()))?;
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(vigil_identity::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(server_name, tcp)
            .await?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "the API server answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn send<T>(
    io: T,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// The plugin's entry in a node's CNI configuration: where the API server is and the
/// files holding the credential to read pods with.
pub fn plugin_entry(server: &str, token_file: &str, ca_file: &str) -> Value {
    json!({
        "type": "vigil-cni",
        "kubernetes": {"server": server, "token_file": token_file, "ca_file": ca_file},
    })
}

/// Adds `entry` as the last plugin of a network configuration list (replacing an earlier
/// entry of Vigil's), so it runs after the pod's network exists. Returns whether the list
/// changed.
pub fn chain_into(conflist: &mut Value, entry: &Value) -> Result<bool, String> {
    let plugins = conflist
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("not a network configuration list: it has no \"plugins\" array")?;
    let before = plugins.clone();
    plugins.retain(|p| p["type"] != "vigil-cni");
    plugins.push(entry.clone());
    Ok(*plugins != before)
}

/// Removes Vigil's entry from a network configuration list. Returns whether it was there.
pub fn unchain_from(conflist: &mut Value) -> bool {
    let Some(plugins) = conflist.get_mut("plugins").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = plugins.len();
    plugins.retain(|p| p["type"] != "vigil-cni");
    plugins.len() != before
}

/// The node's network configuration the runtime uses: the first `.conflist` in `dir` by
/// name, as the runtime picks it.
pub fn primary_conflist(dir: &std::path::Path) -> Result<PathBuf, String> {
    let mut lists: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "reading {}: {e} (is the node's CNI configuration directory mounted?)",
                dir.display()
            )
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    lists.sort();
    lists.into_iter().next().ok_or_else(|| {
        format!(
            "no .conflist in {}: install the cluster's network plugin first (vigil-cni chains after it)",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_chains_last_once_and_comes_out_again() {
        // Flannel's list as its DaemonSet writes it (kube-flannel.yml).
        let mut list = json!({
            "name": "cbr0",
            "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        let entry = plugin_entry(
            "https://10.96.0.1:443",
            "/etc/cni/net.d/vigil-cni/token",
            "/etc/cni/net.d/vigil-cni/ca.crt",
        );
        assert_eq!(chain_into(&mut list, &entry), Ok(true));
        assert_eq!(chain_into(&mut list, &entry), Ok(false), "once");
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "vigil-cni"]);
        assert!(unchain_from(&mut list));
        assert_eq!(list["plugins"].as_array().map(Vec::len), Some(2));
        assert!(chain_into(&mut json!({"type": "bridge"}), &entry).is_err());
    }

    #[test]
    fn cni_args_split_into_pairs() {
        let args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0");
        assert_eq!(args["K8S_POD_NAMESPACE"], "shop");
        assert_eq!(args["K8S_POD_NAME"], "web-0");
    }

    #[test]
    fn only_pods_marked_for_cni_are_intercepted_with_their_exclusions() {
        let pod = |annotations: Value| json!({"metadata": {"annotations": annotations}});
        assert!(matches!(
            decide(&pod(json!({}))),
            Ok(PodDecision::PassThrough(_))
        ));
        assert!(matches!(
            decide(&pod(json!({"vigil.io/interception": "iptables"}))),
            Ok(PodDecision::PassThrough(_))
        ));
        let Ok(PodDecision::Intercept(config)) = decide(&pod(json!({
            "vigil.io/interception": "cni",
            "vigil.io/proxy-uid": "2102",
            "vigil.io/exclude-inbound-ports": "8081, 9000",
            "vigil.io/exclude-outbound-cidrs": "169.254.169.254/32",
        }))) else {
            panic!("a marked pod is intercepted");
        };
        assert_eq!(config.proxy_uid, 2102);
        assert_eq!(config.exclude_inbound_ports, [8081, 9000]);
        assert_eq!(config.exclude_outbound_cidrs.len(), 1);
        let err = decide(&pod(json!({
            "vigil.io/interception": "cni",
            "vigil.io/exclude-outbound-ports": "http",
        })))
        .expect_err("a bad port");
        assert!(err.contains("exclude-outbound-ports"), "{err}");
    }

    #[tokio::test]
    async fn version_and_bad_configurations_answer_as_the_spec_says() {
        let version = Invocation {
            command: "VERSION".into(),
            ..Default::default()
        };
        let answer = handle(&version, r#"{"cniVersion":"1.0.0"}"#)
            .await
            .expect("version");
        assert_eq!(answer["cniVersion"], "1.0.0");
        assert!(answer["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "1.0.0")));

        let add = Invocation {
            command: "ADD".into(),
            ..Default::default()
        };
        let (err, _) = handle(&add, "{not json").await.expect_err("bad config");
        assert_eq!(err.code, 7);
        let (err, _) = handle(
            &add,
            r#"{"cniVersion":"9.9.9","kubernetes":{"server":"http://127.0.0.1:1"}}"#,
        )
        .await
        .expect_err("bad version");
        assert_eq!(err.code, 1);

        // Not a Kubernetes pod: the previous result goes on unchanged.
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]});
        let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "vigil-cni",
            "kubernetes": {"server": "http://127.0.0.1:1"}, "prevResult": prev});
        let out = handle(&add, &conf.to_string()).await.expect("passed on");
        assert_eq!(out, prev);

        // DEL always succeeds.
        let del = Invocation {
            command: "DEL".into(),
            ..Default::default()
        };
        assert!(handle(&del, &conf.to_string()).await.is_ok());
    }
}
