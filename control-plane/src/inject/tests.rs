//! Injection tested on real AdmissionReview payloads recorded from API servers
//! (`shared/fixtures/kubernetes/admission`, see its SOURCES.md).

use base64::Engine;
use serde_json::{json, Value};

use super::offline::inject_yaml;
use super::webhook::review;
use super::*;
use crate::fixtures::{fixture, fixture_json};

const POD_REVIEWS: [&str; 4] = [
    "admission/admissionreview-v1-pod-create-kubectl-gke.json",
    "admission/admissionreview-v1-pod-create-replicaset-controller.json",
    "admission/admissionreview-v1-pod-create-kubectl-run-nodeselector.json",
    "admission/admissionreview-v1-pod-create-kubectl-apply-2025.json",
];

fn config() -> InjectConfig {
    InjectConfig {
        trust_bundle_pem: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
        ..InjectConfig::default()
    }
}

/// The response's JSONPatch applied to the request's pod, as the API server does.
fn patched(request: &Value, response: &Value) -> Value {
    let mut pod = request["request"]["object"].clone();
    if let Some(p) = response["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is JSONPatch");
        json_patch::patch(&mut pod, &patch).expect("patch applies to the pod");
    }
    pod
}

fn webhook(request: &Value) -> Value {
    review(request.to_string().as_bytes(), &config()).expect("a valid review is answered")
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn arg_after<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let a = args(container);
    a.iter()
        .position(|x| *x == flag)
        .and_then(|i| a.get(i + 1).copied())
}

#[test]
fn every_recorded_pod_create_gets_a_native_sidecar_patch() {
    for file in POD_REVIEWS {
        let request = fixture_json(file);
        let response = webhook(&request);
        // The envelope the API server expects, shaped like the recorded response.
        let recorded =
            fixture_json("admission/admissionreview-v1-response-jsonpatch-minikube.json");
        assert_eq!(response["apiVersion"], recorded["apiVersion"], "{file}");
        assert_eq!(response["kind"], recorded["kind"], "{file}");
        assert_eq!(
            response["response"]["uid"], request["request"]["uid"],
            "{file}"
        );
        assert_eq!(response["response"]["allowed"], true, "{file}");
        assert_eq!(response["response"]["patchType"], "JSONPatch", "{file}");

        let before = &request["request"]["object"];
        let pod = patched(&request, &response);
        let inits = &pod["spec"]["initContainers"];
        assert_eq!(&names(inits)[..2], ["vigil-init", "vigil-proxy"], "{file}");
        assert_eq!(
            inits[1]["restartPolicy"], "Always",
            "{file}: native sidecar"
        );
        // The app starts once the proxy is ready, probed where the kubelet can reach.
        let startup = &inits[1]["startupProbe"]["httpGet"];
        assert_eq!(
            (&startup["path"], &startup["port"]),
            (&json!("/ready"), &json!(METRICS_PORT))
        );
        assert_eq!(inits[1]["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(inits[1]["livenessProbe"]["httpGet"]["path"], "/live");
        assert_eq!(
            names(&pod["spec"]["containers"]),
            names(&before["spec"]["containers"]),
            "{file}: the app's containers are untouched"
        );
        assert_eq!(
            pod["spec"]["containers"], before["spec"]["containers"],
            "{file}"
        );
        let caps = &inits[0]["securityContext"]["capabilities"]["add"];
        assert_eq!(caps, &json!(["NET_ADMIN", "NET_RAW"]), "{file}");
        assert_eq!(inits[1]["securityContext"]["runAsUser"], 1337, "{file}");
        assert_eq!(arg_after(&inits[1], "--token-kind"), Some("kubernetes"));
        assert_eq!(
            arg_after(&inits[1], "--egress"),
            Some("deny"),
            "{file}: leaving the mesh is denied unless annotated"
        );
        assert_eq!(
            arg_after(&inits[1], "--token-file"),
            Some("/var/run/secrets/vigil.io/token/token")
        );
        let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
        let token = volumes
            .iter()
            .find(|v| v["name"] == TOKEN_VOLUME)
            .expect("token volume");
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "vigil"
        );
        // The pod's own volumes (legacy token secret, kube-api-access) are still there.
        for v in before["spec"]["volumes"].as_array().into_iter().flatten() {
            assert!(volumes.contains(v), "{file}: volume {} kept", v["name"]);
        }
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[ANNOTATION_INJECTED], "true");
        assert!(annotations[ANNOTATION_TRUST_BUNDLE]
            .as_str()
            .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
        assert_eq!(annotations["prometheus.io/port"], "15090");

        // Never twice: the injected pod, submitted again, comes back without a patch.
        let mut again = request.clone();
        again["request"]["object"] = pod;
        let second = webhook(&again);
        assert_eq!(second["response"]["allowed"], true);
        assert!(
            second["response"].get("patch").is_none(),
            "{file}: injected twice"
        );
    }
}

#[test]
fn probe_ports_are_excluded_from_interception_named_or_numeric() {
    // Kubewarden's manager: httpGet probes on numeric port 8081 (a bare AdmissionRequest in
    // the recording, wrapped here in the v1 envelope the API server sends).
    let request = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": fixture_json("admission/admissionrequest-v1-pod-create-replicaset-controller-probes.json"),
    });
    let pod = patched(&request, &webhook(&request));
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(arg_after(init, "--exclude-inbound-ports"), Some("8081"));
    assert_eq!(
        pod["metadata"]["annotations"][ANNOTATION_PROBE_PORTS],
        "8081"
    );

    // CoreDNS: probes on *named* ports liveness-probe (8080) and readiness-probe (8181).
    let mut coredns = fixture_json("pod/pod-coredns-named-port-probes-kind-v1.34.json");
    let outcome = inject_pod(&mut coredns, &config()).expect("injects");
    assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
    let init = &coredns["spec"]["initContainers"][0];
    assert_eq!(
        arg_after(init, "--exclude-inbound-ports"),
        Some("8080,8181")
    );
}

#[test]
fn a_probe_on_the_serving_port_is_warned_about() {
    let mut pod = json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{
            "name": "web", "image": "nginx",
            "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
            "livenessProbe": {"httpGet": {"path": "/", "port": "nope"}},
        }]},
    });
    let Ok(Outcome::Injected { warnings, .. }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("port 80, its serving port")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"nope\" is not a declared port")),
        "{warnings:?}"
    );
}

#[test]
fn annotations_choose_mode_resources_and_exclusions() {
    let mut pod = json!({
        "metadata": {"name": "batch", "annotations": {
            ANNOTATION_SIDECAR_MODE: "classic",
            "vigil.io/proxy-cpu-request": "250m",
            "vigil.io/proxy-memory-limit": "1Gi",
            "vigil.io/proxy-cpu-limit": "lots",
            ANNOTATION_EXCLUDE_OUTBOUND_PORTS: "5432, 6379",
            ANNOTATION_EXCLUDE_OUTBOUND_CIDRS: "169.254.169.254/32,not-a-cidr",
            ANNOTATION_EXCLUDE_INBOUND_PORTS: "9000",
            ANNOTATION_EGRESS: "allow",
            ANNOTATION_WORKER_THREADS: "4",
        }},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    let Ok(Outcome::Injected { mode, warnings }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert_eq!(mode, SidecarMode::Classic);
    let proxy = &pod["spec"]["containers"][0];
    assert_eq!(proxy["name"], PROXY_CONTAINER);
    assert!(proxy.get("restartPolicy").is_none());
    assert_eq!(names(&pod["spec"]["initContainers"]), ["vigil-init"]);
    assert_eq!(arg_after(proxy, "--egress"), Some("allow"));
    assert_eq!(arg_after(proxy, "--worker-threads"), Some("4"));
    assert_eq!(proxy["resources"]["requests"]["cpu"], "250m");
    assert_eq!(proxy["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(proxy["resources"]["limits"]["memory"], "1Gi");
    assert!(
        proxy["resources"]["limits"].get("cpu").is_none(),
        "bad value falls back to the default (none)"
    );
    assert!(warnings
        .iter()
        .any(|w| w.contains("\"lots\" is not a Kubernetes quantity")));
    assert!(warnings
        .iter()
        .any(|w| w.contains("\"not-a-cidr\" is not an IPv4 CIDR")));
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(
        arg_after(init, "--exclude-outbound-ports"),
        Some("5432,6379")
    );
    assert_eq!(
        arg_after(init, "--exclude-outbound-cidrs"),
        Some("169.254.169.254/32")
    );
    assert_eq!(arg_after(init, "--exclude-inbound-ports"), Some("9000"));
}

#[test]
fn opted_out_and_host_network_pods_are_left_alone() {
    for (annotations, host_network, reason) in [
        (json!({ANNOTATION_INJECT: "disabled"}), false, "disabled"),
        (json!({}), true, "host network"),
        (
            json!({ANNOTATION_INJECTED: "true"}),
            false,
            "already injected",
        ),
    ] {
        let mut pod = json!({
            "metadata": {"annotations": annotations},
            "spec": {"hostNetwork": host_network, "containers": [{"name": "a", "image": "a"}]},
        });
        let before = pod.clone();
        match inject_pod(&mut pod, &config()) {
            Ok(Outcome::Skipped { reason: r }) => assert!(r.contains(reason), "{r}"),
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(pod, before);
    }
}

#[test]
fn malformed_reviews_get_a_clear_error_never_a_panic() {
    let cfg = config();
    let err = review(b"{not json", &cfg).expect_err("not JSON");
    assert!(err.to_string().contains("not JSON"), "{err}");

    // The kubewarden recording is a bare AdmissionRequest without the v1 envelope.
    let bare =
        fixture("admission/admissionrequest-v1-pod-create-replicaset-controller-probes.json");
    let err = review(bare.as_bytes(), &cfg).expect_err("no envelope");
    assert!(
        err.to_string()
            .contains("expected an admission.k8s.io/v1 AdmissionReview"),
        "{err}"
    );

    let mut v1beta1 = fixture_json(POD_REVIEWS[0]);
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert!(review(v1beta1.to_string().as_bytes(), &cfg).is_err());

    let empty = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let err = review(empty.to_string().as_bytes(), &cfg).expect_err("no request");
    assert!(err.to_string().contains("no request"), "{err}");

    let mut no_uid = fixture_json(POD_REVIEWS[0]);
    no_uid["request"]["uid"] = json!(42);
    assert!(review(no_uid.to_string().as_bytes(), &cfg).is_err());

    // A pod the injector cannot work on: allowed unchanged, with a warning.
    let mut odd = fixture_json(POD_REVIEWS[0]);
    odd["request"]["object"]["spec"] = json!({"containers": []});
    let response = review(odd.to_string().as_bytes(), &cfg).expect("answered");
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none());
    let warning = response["response"]["warnings"][0]
        .as_str()
        .unwrap_or_default();
    assert!(warning.contains("not injected"), "{warning}");
}

#[test]
fn other_kinds_and_operations_pass_untouched() {
    let slice = fixture_json("admission/admissionreview-v1-endpointslice-update-k3s.json");
    let response = webhook(&slice);
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["uid"], slice["request"]["uid"]);
    assert!(response["response"].get("patch").is_none());

    let mut update = fixture_json(POD_REVIEWS[1]);
    update["request"]["operation"] = json!("UPDATE");
    assert!(webhook(&update)["response"].get("patch").is_none());
}

#[test]
fn the_webhook_completes_a_trust_bundle_left_out_offline() {
    let offline = InjectConfig {
        trust_bundle_pem: None,
        ..config()
    };
    let mut request = fixture_json(POD_REVIEWS[2]);
    let pod = &mut request["request"]["object"];
    inject_pod(pod, &offline).expect("injects");
    assert!(pod["metadata"]["annotations"]
        .get(ANNOTATION_TRUST_BUNDLE)
        .is_none());
    let response = webhook(&request);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(patch.as_array().map(Vec::len), Some(1), "{patch}");
    assert_eq!(
        patch[0]["path"],
        "/metadata/annotations/vigil.io~1trust-bundle"
    );
}

#[test]
fn offline_injection_covers_workload_kinds_and_is_idempotent() {
    let linkerd_input = fixture("admission/jsonpatch-linkerd-proxy-injector-input-pod.yaml")
        .replace("apiVersion: apps/v1", "apiVersion: v1");
    let template = |kind: &str, api: &str| {
        format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n        ports:\n        - containerPort: 80\n"
        )
    };
    let text = [
        template("Deployment", "apps/v1"),
        template("StatefulSet", "apps/v1"),
        template("DaemonSet", "apps/v1"),
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {name: job, image: busybox}\n".into(),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n".into(),
        linkerd_input,
    ]
    .join("---\n");
    let (out, reports) = inject_yaml(&text, &config()).expect("injects");
    let objects: Vec<&str> = reports.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(
        objects,
        [
            "Deployment/web",
            "StatefulSet/web",
            "DaemonSet/web",
            "Job/once",
            "Pod/nginx"
        ]
    );
    assert!(reports.iter().all(|r| matches!(
        r.outcome,
        Outcome::Injected {
            mode: SidecarMode::Native,
            ..
        }
    )));
    assert_eq!(out.matches("name: vigil-proxy").count(), 5, "{out}");
    assert!(
        out.contains("kind: Service"),
        "other documents pass through"
    );
    // Linkerd's input pod probes port 9090: excluded from interception.
    let pod = out.split("---\n").last().unwrap_or_default();
    assert!(
        pod.contains("- --exclude-inbound-ports\n    - '9090'"),
        "{pod}"
    );

    let (again, reports) = inject_yaml(&out, &config()).expect("second pass");
    assert_eq!(again, out, "injecting injected YAML changes nothing");
    assert!(reports.iter().all(
        |r| matches!(&r.outcome, Outcome::Skipped { reason } if reason.contains("already injected"))
    ));
}

#[test]
fn offline_errors_name_the_document() {
    let err =
        inject_yaml("kind: Service\n---\nkind: [unclosed\n", &config()).expect_err("bad YAML");
    assert!(err.to_string().contains("document 2"), "{err}");
    let err = inject_yaml(
        "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
        &config(),
    )
    .expect_err("no template");
    assert!(err.to_string().contains("Deployment/x"), "{err}");
}

#[test]
fn quantities() {
    for q in ["100m", "0.5", "64Mi", "1e3", "2E-2", "1", "1.5Gi"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "m", "1.2.3", "10MB", "ten", "1e", "-"] {
        assert!(!is_quantity(q), "{q}");
    }
}

/// The webhook as the API server meets it: HTTPS with the control plane's certificate,
/// verified against the mesh root by DNS name, POST /inject.
#[tokio::test]
async fn the_webhook_serves_reviews_over_tls_to_a_client_that_verifies_its_dns_name() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;

    let ca = vigil_identity::CertificateAuthority::generate("cluster.local").expect("ca");
    let id = crate::control_plane::control_plane_id("cluster.local").expect("id");
    let svid = vigil_identity::SvidStore::new();
    svid.set(crate::control_plane::issue_own(&ca, &id).expect("own certificate"));
    let tls = vigil_identity::server_config(
        svid,
        &vigil_identity::TlsOptions {
            alpn: vec![b"http/1.1".to_vec()],
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Arc::new(arc_swap::ArcSwap::from_pointee(config()));
    tokio::spawn(webhook::serve(listener, tls, config));

    let mut roots = rustls::RootCertStore::empty();
    for root in ca.trust_bundle().roots() {
        roots.add(root.clone()).expect("root");
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(vigil_identity::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let post = |path: &'static str, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name =
                rustls_pki_types::ServerName::try_from("vigil-control-plane.vigil-system.svc")
                    .expect("name");
            let tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .expect("the webhook's certificate verifies for its Service DNS name");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("http");
            tokio::spawn(conn);
            let request = http::Request::post(path)
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body)))
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let review = fixture("admission/admissionreview-v1-pod-create-kubectl-apply-2025.json");
    let (status, body) = post("/inject", review.into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let response: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(response["response"]["patchType"], "JSONPatch");

    let (status, body) = post("/inject", b"GET me a pod".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("not JSON"), "{body}");
    let (status, _) = post("/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);
}
