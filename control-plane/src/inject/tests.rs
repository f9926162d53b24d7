//! Injection tested on real AdmissionReview payloads recorded from API servers
//! (`tests/fixtures/kubernetes/admission`, see its SOURCES.md).

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
pub(super) fn patched(request: &Value, response: &Value) -> Value {
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

pub(super) fn arg_after<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
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

/// The proxy container of an injected pod, native or classic.
pub(super) fn proxy_of(pod: &Value) -> &Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER)
        .expect("the pod has a vigil-proxy container")
}

/// The original probes handed to the proxy (`VIGIL_APP_PROBES`), parsed.
fn app_probes(pod: &Value) -> Value {
    let env = proxy_of(pod)["env"].as_array().expect("proxy env");
    let value = env
        .iter()
        .find(|e| e["name"] == probes::APP_PROBES_ENV)
        .and_then(|e| e["value"].as_str())
        .expect("VIGIL_APP_PROBES is set on the proxy");
    serde_json::from_str(value).expect("VIGIL_APP_PROBES is JSON")
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["containers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .expect("container")
}

#[test]
fn probes_are_rewritten_to_the_proxy_health_port_and_no_port_is_excluded() {
    // Kubewarden's manager: httpGet probes on numeric port 8081 (a bare AdmissionRequest in
    // the recording, wrapped here in the v1 envelope the API server sends).
    let request = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": fixture_json("admission/admissionrequest-v1-pod-create-replicaset-controller-probes.json"),
    });
    let before = request["request"]["object"].clone();
    let pod = patched(&request, &webhook(&request));
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], INIT_CONTAINER);
    assert!(
        !args(init).contains(&"--exclude-inbound-ports"),
        "probe ports stay intercepted: {:?}",
        args(init)
    );
    let manager = container(&pod, "manager");
    assert_eq!(
        manager["livenessProbe"],
        json!({
            "httpGet": {"path": "/app-health/manager/livez", "port": METRICS_PORT, "scheme": "HTTP"},
            "initialDelaySeconds": 15, "timeoutSeconds": 1, "periodSeconds": 20,
            "successThreshold": 1, "failureThreshold": 3,
        })
    );
    assert_eq!(
        manager["readinessProbe"]["httpGet"]["path"],
        "/app-health/manager/readyz"
    );
    assert_eq!(manager["readinessProbe"]["initialDelaySeconds"], 5);
    assert_eq!(
        container(&pod, "kube-rbac-proxy"),
        container(&before, "kube-rbac-proxy"),
        "a container without probes is untouched"
    );
    assert_eq!(
        app_probes(&pod),
        json!({
            "/app-health/manager/livez": {
                "httpGet": {"path": "/healthz", "port": 8081, "scheme": "HTTP"},
                "timeoutSeconds": 1,
            },
            "/app-health/manager/readyz": {
                "httpGet": {"path": "/readyz", "port": 8081, "scheme": "HTTP"},
                "timeoutSeconds": 1,
            },
        })
    );
    assert!(pod["metadata"]["annotations"]
        .get("vigil.io/probe-ports")
        .is_none());

    // CoreDNS: probes on *named* ports liveness-probe (8080) and readiness-probe (8181).
    let mut coredns = fixture_json("pod/pod-coredns-named-port-probes-kind-v1.34.json");
    let outcome = inject_pod(&mut coredns, &config()).expect("injects");
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!args(&coredns["spec"]["initContainers"][0]).contains(&"--exclude-inbound-ports"));
    let dns = container(&coredns, "coredns");
    assert_eq!(
        dns["livenessProbe"]["httpGet"],
        json!({"path": "/app-health/coredns/livez", "port": METRICS_PORT, "scheme": "HTTP"})
    );
    assert_eq!(dns["livenessProbe"]["initialDelaySeconds"], 60);
    assert_eq!(dns["livenessProbe"]["failureThreshold"], 5);
    assert_eq!(
        app_probes(&coredns),
        json!({
            "/app-health/coredns/livez": {
                "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                "timeoutSeconds": 5,
            },
            "/app-health/coredns/readyz": {
                "httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"},
                "timeoutSeconds": 1,
            },
        })
    );
}

#[test]
fn tcp_grpc_and_serving_port_probes_go_through_the_proxy() {
    let mut pod = json!({
        "metadata": {"name": "web"},
        "spec": {
            "initContainers": [
                {"name": "migrate", "image": "busybox"},
                {"name": "cache", "image": "redis", "restartPolicy": "Always",
                 "ports": [{"name": "redis", "containerPort": 6379}],
                 "startupProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 2}},
            ],
            "containers": [{
                "name": "web", "image": "nginx",
                "ports": [{"name": "http", "containerPort": 80}, {"name": "grpc", "containerPort": 9000}],
                "readinessProbe": {
                    "httpGet": {"port": "http", "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]},
                    "timeoutSeconds": 3,
                },
                "livenessProbe": {"grpc": {"port": 9000, "service": "liveness"}, "periodSeconds": 7},
                "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]}},
            }, {
                "name": "side", "image": "busybox",
                "livenessProbe": {"httpGet": {"path": "/", "port": "nope"}},
                "readinessProbe": {"tcpSocket": {"host": "db.example", "port": 5432}},
            }],
        },
    });
    let Ok(Outcome::Injected { warnings, .. }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert!(!args(&pod["spec"]["initContainers"][0]).contains(&"--exclude-inbound-ports"));
    let health = |path: &str| json!({"path": path, "port": METRICS_PORT, "scheme": "HTTP"});
    let web = container(&pod, "web");
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": health("/app-health/web/readyz"), "timeoutSeconds": 3})
    );
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": health("/app-health/web/livez"), "periodSeconds": 7})
    );
    assert_eq!(
        web["startupProbe"],
        json!({"exec": {"command": ["cat", "/tmp/started"]}}),
        "exec probes run in the container and stay as they are"
    );
    let cache = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "cache"))
        .expect("the pod's own native sidecar");
    assert_eq!(
        cache["startupProbe"],
        json!({"httpGet": health("/app-health/cache/startupz"), "periodSeconds": 2})
    );
    let side = container(&pod, "side");
    assert_eq!(
        side["livenessProbe"]["httpGet"]["port"], "nope",
        "an unresolvable port is left as written"
    );
    assert_eq!(
        side["readinessProbe"]["tcpSocket"]["host"], "db.example",
        "a probe of another host does not reach the pod and is left as written"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w
                .contains("container side: livenessProbe port \"nope\" is not a declared port")),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        app_probes(&pod),
        json!({
            "/app-health/web/readyz": {
                "httpGet": {"path": "/", "port": 80, "scheme": "HTTP",
                            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]},
                "timeoutSeconds": 3,
            },
            "/app-health/web/livez": {"grpc": {"port": 9000, "service": "liveness"}, "timeoutSeconds": 1},
            "/app-health/cache/startupz": {"tcpSocket": {"port": 6379}, "timeoutSeconds": 1},
        })
    );
}

#[test]
fn opting_out_of_the_rewrite_keeps_probes_and_warns_when_they_would_fail() {
    let pod_with = |annotations: Value| {
        json!({
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"containers": [{
                "name": "web", "image": "nginx",
                "ports": [{"containerPort": 80}, {"name": "health", "containerPort": 8081}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                "livenessProbe": {"tcpSocket": {"port": "health"}},
            }]},
        })
    };
    let mut pod = pod_with(json!({probes::ANNOTATION_REWRITE_PROBES: "false"}));
    let before = pod["spec"]["containers"].clone();
    let Ok(Outcome::Injected { warnings, .. }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert_eq!(pod["spec"]["containers"], before, "probes kept as written");
    assert!(proxy_of(&pod)["env"]
        .as_array()
        .is_some_and(|env| env.iter().all(|e| e["name"] != probes::APP_PROBES_ENV)));
    for port in [
        "port 80 (web readinessProbe)",
        "port 8081 (web livenessProbe)",
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(port) && w.contains("vigil.io/exclude-inbound-ports")),
            "{port}: {warnings:?}"
        );
    }

    // The author excluded the health port on purpose: only the serving port is warned about.
    let mut pod = pod_with(json!({
        probes::ANNOTATION_REWRITE_PROBES: "false",
        ANNOTATION_EXCLUDE_INBOUND_PORTS: "8081",
    }));
    let Ok(Outcome::Injected { warnings, .. }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert_eq!(
        arg_after(&pod["spec"]["initContainers"][0], "--exclude-inbound-ports"),
        Some("8081")
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("port 80 "), "{warnings:?}");

    let mut pod = pod_with(json!({probes::ANNOTATION_REWRITE_PROBES: "maybe"}));
    let Ok(Outcome::Injected { warnings, .. }) = inject_pod(&mut pod, &config()) else {
        panic!("not injected");
    };
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"maybe\" is neither true nor false")),
        "{warnings:?}"
    );
    assert_eq!(
        container(&pod, "web")["readinessProbe"]["httpGet"]["port"],
        METRICS_PORT
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
    // Linkerd's input pod probes port 9090: rewritten to the proxy, not excluded.
    assert!(!out.contains("--exclude-inbound-ports"), "{out}");
    let pod = serde_yaml::Deserializer::from_str(&out)
        .last()
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc).expect("the injected pod is YAML")
        })
        .expect("documents");
    assert_eq!(
        container(&pod, "nginx")["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/nginx/readyz", "port": METRICS_PORT, "scheme": "HTTP"})
    );
    assert_eq!(
        app_probes(&pod)["/app-health/nginx/readyz"]["httpGet"],
        json!({"path": "/metrics", "port": 9090, "scheme": "HTTP"})
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
    let id = crate::own_identity::control_plane_id("cluster.local", "vigil-system").expect("id");
    let svid = vigil_identity::SvidStore::new();
    svid.set(crate::own_identity::issue_own(&ca, &id).expect("own certificate"));
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

    // Namespaces enforcing baseline or restricted are sent to the path without interception.
    let request = fixture_json("admission/admissionreview-v1-pod-create-kubectl-apply-2025.json");
    let (status, body) = post(
        webhook::INJECT_WITHOUT_INTERCEPTION_PATH,
        request.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pod = patched(&request, &serde_json::from_str(&body).expect("JSON"));
    assert_eq!(names(&pod["spec"]["initContainers"])[0], "vigil-proxy");
    assert_eq!(
        pod["metadata"]["annotations"][ANNOTATION_INTERCEPTION],
        "none"
    );

    let (status, body) = post("/inject", b"GET me a pod".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("not JSON"), "{body}");
    let (status, _) = post("/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);
}
