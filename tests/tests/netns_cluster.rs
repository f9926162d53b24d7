//! Cluster mode end to end, installed in a namespace of its own (`mesh-ops`, not
//! `vigil-system`): the control plane runs `--kubernetes` in its own network-namespace
//! "pod" against a Kubernetes API (the small API server of `vigil_e2e::fake_kube`, since
//! there is no cluster here) and creates its CA Secret there; its injection webhook is
//! called over TLS as the API server calls it, checking the certificate's name in
//! `mesh-ops`; the pods it injects run the injected init container (iptables) and proxy
//! (ServiceAccount token, trust bundle from the pod annotation) in their own network
//! namespaces; the proxies get certificates through TokenReviews and the mesh from the
//! API's Pods, Services and EndpointSlices, and an application's call to a ClusterIP
//! crosses the mesh over mutual TLS with its caller's identity. An HTTPRoute served by
//! the API decides which paths reach the service; the dashboard reads the pods' proxies
//! it watches; and `vigil check --kubernetes` reads the install back as healthy. Needs
//! root.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use vigil_e2e::binary;
use vigil_e2e::fake_kube::{FakeKube, TokenOwner};
use vigil_e2e::netns::{require_tools, Cluster, Pod};

const CONTROL_PLANE_NS: &str = "mesh-ops";
const APPS: &str = "apps";
const APP_PORT: u16 = 8080;
/// Service `b`'s ClusterIP: on the pods' subnet, so a pod has a route to it and its
/// OUTPUT rules redirect the connection to the proxy (there is no kube-proxy here).
const CLUSTER_IP: &str = "10.200.0.200";

/// The first object of `kind` in `manifests/base/<file>`.
fn manifest_object(file: &str, kind: &str) -> Value {
    let path = vigil_e2e::workspace_root()
        .join("manifests/base")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("manifest");
    let found = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).ok()?;
            serde_json::to_value(v).ok()
        })
        .find(|v| v["kind"] == kind);
    found.unwrap_or_else(|| panic!("no {kind} in {}", path.display()))
}

fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": APPS}})
}

/// The recorded pod (`kubectl run`), as a Deployment of `name` would make it.
fn app_pod(name: &str) -> Value {
    let path = vigil_e2e::workspace_root().join(
        "tests/fixtures/kubernetes/admission/admissionreview-v1-pod-create-kubectl-run-nodeselector.json",
    );
    let review: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("recorded review"))
            .expect("JSON");
    let mut pod = review["request"]["object"].clone();
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(APPS);
    pod["metadata"]["labels"] = json!({"app": name});
    pod["spec"]["serviceAccountName"] = json!(name);
    pod["spec"]["containers"][0]["name"] = json!("app");
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": APP_PORT, "protocol": "TCP"}]);
    pod
}

/// The AdmissionReview the API server sends the webhook for `pod`, in the recorded
/// review's envelope.
fn admission_review(pod: &Value) -> Value {
    let path = vigil_e2e::workspace_root().join(
        "tests/fixtures/kubernetes/admission/admissionreview-v1-pod-create-kubectl-run-nodeselector.json",
    );
    let mut review: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("recorded review"))
            .expect("JSON");
    review["request"]["namespace"] = json!(APPS);
    review["request"]["name"] = pod["metadata"]["name"].clone();
    review["request"]["object"] = pod.clone();
    review
}

/// POSTs `body` to the webhook inside the control plane's pod over TLS, verifying its
/// certificate for `server_name` against `ca_pem`, as the API server does.
fn call_webhook(
    cluster: &Cluster,
    cp: &Pod,
    ca_pem: &str,
    server_name: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let tcp = cluster.in_netns(&cp.netns, || {
        std::net::TcpStream::connect("127.0.0.1:15017")
    })??;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let text = body.to_string();
    write!(
        tls,
        "POST /inject?timeout=10s HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    let mut answer = Vec::new();
    // The server closes after answering; a TLS close without close_notify is an error
    // rustls reports after the data, which is all here.
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer: {answer}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "webhook answered {head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(serde_json::from_str(&body)?)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A container of the injected pod, by name, wherever the injector put it.
fn container<'p>(pod: &'p Value, name: &str) -> &'p Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in the injected pod: {pod}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[test]
fn cluster_mode_in_its_own_namespace_injects_issues_and_carries_traffic() {
    require_tools();
    let mut cluster = Cluster::new().expect("switch namespace");
    let cp = cluster.add_pod("cp", 2).expect("control plane pod");
    let a = cluster.add_pod("a", 11).expect("pod a");
    let b = cluster.add_pod("b", 12).expect("pod b");

    // The API, reachable on loopback inside the control plane's pod.
    let api = cluster
        .in_netns(&cp.netns, FakeKube::start)
        .expect("API server in the control plane's pod");
    for name in ["a", "b"] {
        api.put(service_account(name));
    }
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "b", "namespace": APPS},
        "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                 "selector": {"app": "b"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": APP_PORT}]},
    }));
    api.put(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "b-x7k2p", "namespace": APPS,
                     "labels": {"kubernetes.io/service-name": "b"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [b.ip.to_string()], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "b", "namespace": APPS}}],
        "ports": [{"name": "http", "port": APP_PORT, "protocol": "TCP"}],
    }));
    // A mesh route for b: only /whoami is served; anything else gets 404 `no-route`.
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "b-whoami", "namespace": APPS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "b", "port": 80}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/whoami"}}],
                       "backendRefs": [{"name": "b", "port": 80}]}],
        },
    }));
    // What `kubectl apply -k` of the overlay into mesh-ops leaves in the API: the
    // namespaces, the control plane's Deployment (ready) and the webhook configuration
    // (without a caBundle: the control plane sets it).
    for (name, labels) in [
        (CONTROL_PLANE_NS, json!({})),
        (APPS, json!({"vigil.io/inject": "enabled"})),
    ] {
        api.put(json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": labels}}));
    }
    let mut deployment = manifest_object("control-plane.yaml", "Deployment");
    deployment["metadata"]["namespace"] = json!(CONTROL_PLANE_NS);
    deployment["status"] = json!({"replicas": 2, "readyReplicas": 1});
    api.put(deployment);
    let mut webhook = manifest_object("webhook.yaml", "MutatingWebhookConfiguration");
    for w in webhook["webhooks"].as_array_mut().expect("webhooks") {
        w["clientConfig"]["service"]["namespace"] = json!(CONTROL_PLANE_NS);
    }
    api.put(webhook);
    let kubeconfig = cluster.path("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");

    let control_plane = cluster
        .spawn(
            &cp.netns,
            "control-plane",
            None,
            Path::new("/usr/bin/env"),
            &[
                format!("KUBECONFIG={}", kubeconfig.display()),
                binary("vigil").display().to_string(),
                "control-plane".into(),
                "--kubernetes".into(),
                "--namespace".into(),
                CONTROL_PLANE_NS.into(),
                "--control-plane-host".into(),
                cp.ip.to_string(),
            ],
        )
        .expect("control plane");
    cluster
        .wait_for_log(
            control_plane,
            "control plane serving from the Kubernetes API",
            Duration::from_secs(60),
        )
        .expect("control plane serving");

    // The CA it created, in its own namespace.
    let secret = api
        .get("v1", "Secret", CONTROL_PLANE_NS, "vigil-ca")
        .expect("the CA Secret in mesh-ops");
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["ca.crt"].as_str().expect("ca.crt"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .expect("base64");
    assert!(ca_pem.contains("BEGIN CERTIFICATE"), "{ca_pem}");

    // Each pod through the webhook, as the API server sends it on creation.
    let service_name = format!("vigil-control-plane.{CONTROL_PLANE_NS}.svc");
    let mut injected = Vec::new();
    for pod in [&a, &b] {
        let review = admission_review(&app_pod(&pod.name));
        let answer = call_webhook(&cluster, &cp, &ca_pem, &service_name, &review)
            .unwrap_or_else(|e| panic!("webhook for {}: {e:#}\n{}", pod.name, cluster.logs()));
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{answer}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("a patch"))
            .expect("base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("JSONPatch");
        let mut object = review["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies");
        object["status"] = json!({"phase": "Running", "podIP": pod.ip.to_string(),
                                   "podIPs": [{"ip": pod.ip.to_string()}]});
        injected.push(object);
    }
    for (pod, object) in [&a, &b].into_iter().zip(&injected) {
        assert_eq!(object["metadata"]["labels"]["vigil.io/injected"], "true");
        let proxy = container(object, "vigil-proxy");
        let args = strings(&proxy["args"]);
        let identity = format!("{}:15012", cp.ip);
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--identity-addr" && w[1] == identity),
            "{args:?}"
        );
        assert!(
            proxy["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "VIGIL_CONTROL_PLANE_NAMESPACE"
                    && e["value"] == CONTROL_PLANE_NS),
            "the proxy expects the control plane in mesh-ops: {proxy}"
        );
        assert_eq!(
            object["metadata"]["annotations"]["vigil.io/trust-bundle"].as_str(),
            Some(ca_pem.as_str()),
            "the trust bundle is the CA Secret's"
        );

        // The kubelet's part: the init container, the token and bundle files, the proxy.
        let init = container(object, "vigil-init");
        let init_args = strings(&init["args"]);
        let out = cluster
            .run(
                &pod.netns,
                &binary("vigil-init"),
                &init_args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .expect("vigil-init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = format!("token-of-{}-{}", pod.name, std::process::id());
        api.token(
            &token,
            TokenOwner {
                namespace: APPS.into(),
                service_account: pod.name.clone(),
                pod: pod.name.clone(),
            },
        );
        let token_file = cluster.path(&format!("token-{}", pod.name));
        std::fs::write(&token_file, &token).expect("token file");
        let bundle_file = cluster.path(&format!("bundle-{}.pem", pod.name));
        std::fs::write(&bundle_file, &ca_pem).expect("bundle file");
        let mut command: Vec<String> = Vec::new();
        for e in proxy["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("");
            let value = match (
                e["value"].as_str(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(v), _) => v.to_string(),
                (None, Some("metadata.name")) => pod.name.clone(),
                (None, Some("metadata.namespace")) => APPS.to_string(),
                (None, Some("status.podIP")) => pod.ip.to_string(),
                _ => continue,
            };
            command.push(format!("{name}={value}"));
        }
        command.push(binary("vigil-proxy").display().to_string());
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--token-file" => {
                    args.next();
                    command.extend(["--token-file".into(), token_file.display().to_string()]);
                }
                "--trust-bundle" => {
                    args.next();
                    command.extend(["--trust-bundle".into(), bundle_file.display().to_string()]);
                }
                _ => command.push(arg),
            }
        }
        let uid = proxy["securityContext"]["runAsUser"]
            .as_u64()
            .expect("the proxy's UID") as u32;
        cluster
            .spawn(
                &pod.netns,
                &format!("proxy-{}", pod.name),
                Some(uid),
                Path::new("/usr/bin/env"),
                &command,
            )
            .expect("proxy");
    }
    // The pods as the API now has them: injected and running.
    for object in &injected {
        api.put(object.clone());
    }
    cluster.start_demo_server(&b, "b", APP_PORT).expect("app b");

    for pod in [&a, &b] {
        cluster
            .wait_proxy_ready(pod, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    // The kubelet reports the proxies ready.
    for mut object in injected {
        object["status"]["containerStatuses"] = json!([
            {"name": "app", "ready": true, "restartCount": 0, "image": "app", "imageID": ""}]);
        object["status"]["initContainerStatuses"] = json!([
            {"name": "vigil-init", "ready": false, "restartCount": 0, "image": "proxy", "imageID": ""},
            {"name": "vigil-proxy", "ready": true, "restartCount": 0, "image": "proxy", "imageID": ""}]);
        api.put(object);
    }

    // a's application calls b's ClusterIP: through both proxies over mTLS, with a's
    // identity as the API's TokenReview vouched for it, on the API's route.
    let target = format!("{CLUSTER_IP}:80");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = cluster.demo_call(&a, &target, "/whoami");
        if answer.contains(": 200 OK") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        answer.contains(": 200 OK"),
        "a → b's ClusterIP: {answer}\n{}",
        cluster.logs()
    );
    assert!(
        answer.contains("\"caller\":\"spiffe://cluster.local/ns/apps/sa/a\""),
        "b's app sees a's verified identity: {answer}"
    );
    let unrouted = cluster.demo_call(&a, &target, "/elsewhere");
    eprintln!("a → b: {answer}\na → b /elsewhere: {unrouted}");
    assert!(
        unrouted.contains("404") && unrouted.contains("no-route"),
        "the API's HTTPRoute decides what reaches b: {unrouted}"
    );
    // The dashboard in cluster mode reads the proxies the watch found, on their metrics
    // port: both ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = cluster.demo_call(&cp, "127.0.0.1:15080", "/api/workloads");
        let listed: Value = answer
            .find('{')
            .and_then(|i| serde_json::from_str(&answer[i..]).ok())
            .unwrap_or(Value::Null);
        let ready: Vec<String> = listed["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["ready"] == true && w["reachable"] == true)
            .map(|w| {
                format!(
                    "{} {}",
                    w["name"].as_str().unwrap_or(""),
                    w["metrics"].as_str().unwrap_or("")
                )
            })
            .collect();
        if ready == [format!("a {}:15090", a.ip), format!("b {}:15090", b.ip)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard does not show both proxies ready: {answer}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // `vigil check --kubernetes` reads the same API and finds the install healthy, the
    // webhook's caBundle included, which the control plane set to its CA.
    let out = cluster
        .run(
            &cp.netns,
            Path::new("/usr/bin/env"),
            &[
                &format!("KUBECONFIG={}", kubeconfig.display()),
                &binary("vigil").display().to_string(),
                "check",
                "--kubernetes",
                "--namespace",
                CONTROL_PLANE_NS,
            ],
        )
        .expect("vigil check runs");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "✓ control plane: Deployment mesh-ops/vigil-control-plane: 1/2 replicas ready",
        "✓ CA: Secret mesh-ops/vigil-ca holds the mesh's CA",
        "call the control plane in mesh-ops and trust the mesh's CA",
        "✓ meshed namespaces: apps",
        "✓ meshed pods: 2 injected pod(s), none left out",
        "✓ gateway API routes: served: 1 HTTPRoute(s), 0 GRPCRoute(s)",
        "✓ mesh model: 2 workload(s), 1 service(s), 1 route(s)",
    ] {
        assert!(
            report.contains(line),
            "{line}
{report}"
        );
    }

    // Everything it asked the API for, it asked in the namespaces it was given.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /api/v1/namespaces/mesh-ops/secrets")),
        "{requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("vigil-system")),
        "nothing asked of vigil-system: {requests:#?}"
    );
}
