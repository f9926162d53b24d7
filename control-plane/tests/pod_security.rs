//! The `restricted` Pod Security level and injected pods, on AdmissionReviews recorded
//! from API servers (tests/fixtures/kubernetes/admission). With `vigil.io/interception:
//! none` (the webhook's path for namespaces enforcing baseline or restricted), everything
//! Vigil adds passes the level's rules; with iptables interception the init container
//! cannot, and the check says why. The patched pods are also valid Kubernetes, checked
//! offline with kubernetes-validate like every manifest (manifests.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::{json, Value};
use vigil::inject::{webhook::review, InjectConfig, Interception};

const POD_REVIEWS: [&str; 4] = [
    "admissionreview-v1-pod-create-kubectl-gke.json",
    "admissionreview-v1-pod-create-replicaset-controller.json",
    "admissionreview-v1-pod-create-kubectl-run-nodeselector.json",
    "admissionreview-v1-pod-create-kubectl-apply-2025.json",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pod the API server creates: the review's object with the webhook's patch applied.
fn injected(file: &str, cfg: &InjectConfig) -> Value {
    injected_with(file, cfg, |_| {})
}

/// As [`injected`], with the recorded pod changed by `edit` first.
fn injected_with(file: &str, cfg: &InjectConfig, edit: impl FnOnce(&mut Value)) -> Value {
    let path = repo()
        .join("tests/fixtures/kubernetes/admission")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (recorded payloads live there)", path.display()));
    let mut request: Value = serde_json::from_str(&text).expect("JSON");
    edit(&mut request["request"]["object"]);
    let text = request.to_string();
    let response = review(text.as_bytes(), cfg).expect("the review is answered");
    let patch = response["response"]["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no patch in {response}"));
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("JSONPatch");
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    pod
}

fn restricted_config() -> InjectConfig {
    InjectConfig {
        interception: Interception::None,
        trust_bundle_pem: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
        ..InjectConfig::default()
    }
}

/// The containers Vigil added to `pod`.
fn vigil_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("vigil-")))
        .collect()
}

/// The `restricted` level's container rules (Kubernetes "Pod Security Standards",
/// v1.33): what `container` breaks, given the pod-level `securityContext`.
fn restricted_violations(container: &Value, pod_security: &Value) -> Vec<String> {
    let sc = &container["securityContext"];
    let name = container["name"].as_str().unwrap_or("?");
    let either = |field: &str| {
        if sc[field].is_null() {
            &pod_security[field]
        } else {
            &sc[field]
        }
    };
    let mut broken = Vec::new();
    if sc["privileged"] == json!(true) {
        broken.push(format!("{name}: privileged"));
    }
    if sc["allowPrivilegeEscalation"] != json!(false) {
        broken.push(format!("{name}: allowPrivilegeEscalation is not false"));
    }
    let drops = sc["capabilities"]["drop"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !drops.contains(&json!("ALL")) {
        broken.push(format!("{name}: capabilities do not drop ALL"));
    }
    for added in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        if added != "NET_BIND_SERVICE" {
            broken.push(format!("{name}: adds capability {added}"));
        }
    }
    if either("runAsNonRoot") != &json!(true) {
        broken.push(format!("{name}: runAsNonRoot is not true"));
    }
    if either("runAsUser") == &json!(0) {
        broken.push(format!("{name}: runs as UID 0"));
    }
    let seccomp = either("seccompProfile")["type"].as_str();
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        broken.push(format!(
            "{name}: no RuntimeDefault or Localhost seccomp profile"
        ));
    }
    broken
}

#[test]
fn without_interception_everything_vigil_adds_passes_the_restricted_level() {
    for file in POD_REVIEWS {
        let pod = injected(file, &restricted_config());
        let added = vigil_containers(&pod);
        let names: Vec<_> = added.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(
            names,
            ["vigil-proxy"],
            "{file}: the proxy and no init container"
        );
        for c in &added {
            let broken = restricted_violations(c, &pod["spec"]["securityContext"]);
            assert!(broken.is_empty(), "{file}: {broken:?}");
            assert_eq!(
                c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{file}"
            );
        }
        assert_eq!(
            pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{file}: the app's containers get the runtime's seccomp profile too"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["vigil.io/interception"],
            "none"
        );
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            if name.starts_with("vigil-") {
                assert!(
                    volume.get("projected").is_some() || volume.get("downwardAPI").is_some(),
                    "{file}: {name} is a volume type restricted allows"
                );
            }
        }
    }
}

#[test]
fn with_the_cni_plugin_pods_are_intercepted_and_pass_the_restricted_level() {
    let cfg = InjectConfig {
        interception: Interception::Cni,
        ..restricted_config()
    };
    for file in POD_REVIEWS {
        let pod = injected_with(file, &cfg, |pod| {
            pod["metadata"]["annotations"]["vigil.io/exclude-outbound-ports"] = json!("5432");
        });
        let added = vigil_containers(&pod);
        let names: Vec<_> = added.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["vigil-proxy"], "{file}: no init container");
        for c in &added {
            let broken = restricted_violations(c, &pod["spec"]["securityContext"]);
            assert!(broken.is_empty(), "{file}: {broken:?}");
        }
        assert_eq!(
            pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{file}"
        );
        // What vigil-cni reads from the pod to write its rules.
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["vigil.io/interception"], "cni", "{file}");
        assert_eq!(annotations["vigil.io/proxy-uid"], "1337", "{file}");
        assert_eq!(
            annotations["vigil.io/exclude-outbound-ports"], "5432",
            "{file}"
        );
        let decided = vigil_proxy_decision(&pod);
        assert!(decided.contains("5432"), "{file}: {decided}");
    }
}

/// What the CNI plugin makes of an injected pod, as its iptables steps.
fn vigil_proxy_decision(pod: &Value) -> String {
    match vigil_proxy::cni::decide(pod).expect("valid annotations") {
        vigil_proxy::cni::PodDecision::Intercept(config) => {
            vigil_proxy::interception::install(&config)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        }
        other => panic!("not intercepted: {other:?}"),
    }
}

#[test]
fn iptables_interception_keeps_the_init_container_that_restricted_refuses() {
    let pod = injected(POD_REVIEWS[0], &InjectConfig::default());
    let security = &pod["spec"]["securityContext"];
    let init = vigil_containers(&pod)
        .into_iter()
        .find(|c| c["name"] == "vigil-init")
        .expect("vigil-init");
    let broken = restricted_violations(init, security);
    for why in [
        "adds capability \"NET_ADMIN\"",
        "adds capability \"NET_RAW\"",
        "runs as UID 0",
    ] {
        assert!(
            broken.iter().any(|b| b.contains(why)),
            "{why} not in {broken:?}"
        );
    }
    let proxy = vigil_containers(&pod)
        .into_iter()
        .find(|c| c["name"] == "vigil-proxy")
        .expect("vigil-proxy");
    assert_eq!(
        restricted_violations(proxy, security),
        Vec::<String>::new(),
        "the proxy itself passes in either mode"
    );
}

#[test]
fn the_pod_annotation_chooses_interception_either_way() {
    let annotate = |value: &'static str| {
        move |pod: &mut Value| {
            pod["metadata"]["annotations"]["vigil.io/interception"] = json!(value);
        }
    };
    let names = |pod: &Value| -> Vec<String> {
        vigil_containers(pod)
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let file = POD_REVIEWS[3];
    let pod = injected_with(file, &InjectConfig::default(), annotate("none"));
    assert_eq!(names(&pod), ["vigil-proxy"], "opted out of interception");
    let pod = injected_with(file, &restricted_config(), annotate("iptables"));
    assert_eq!(
        names(&pod),
        ["vigil-init", "vigil-proxy"],
        "asked for interception where the webhook would leave it out"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["vigil.io/interception"],
        "iptables"
    );
}

#[test]
fn pods_injected_without_interception_are_valid_kubernetes() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the kubernetes-validate Python package is missing: install it with \
         `pip install kubernetes-validate` (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for file in POD_REVIEWS {
        let mut pod = injected(file, &restricted_config());
        // The review's object may leave out what every manifest carries.
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        let path = dir.path().join(file.replace(".json", ".yaml"));
        std::fs::write(&path, serde_json::to_string_pretty(&pod).expect("JSON")).expect("write");
        files.push(path);
    }
    let out = Command::new("python3")
        .arg(repo().join("control-plane/tests/validate_manifests.py"))
        .args(&files)
        .output()
        .expect("running the validator");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0 failed"),
        "injected pods do not validate:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
