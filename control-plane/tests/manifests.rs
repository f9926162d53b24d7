//! Every file in manifests/ and every `vigil inject` output is valid Kubernetes, checked
//! offline with the `kubernetes-validate` package (custom resources against their CRDs);
//! `kubectl kustomize` renders both installs (iptables and CNI) and an overlay into
//! another namespace, and what it renders validates too.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `vigil inject` on `input`, returning the output file and the report.
fn inject(input: &Path, dir: &Path, extra: &[&str]) -> (PathBuf, String) {
    let output = dir.join(format!(
        "injected-{}",
        input
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x.yaml")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("inject")
        .arg("-f")
        .arg(input)
        .arg("-o")
        .arg(&output)
        .args(extra)
        .output()
        .expect("running vigil inject");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vigil inject failed:\n{report}");
    (output, report)
}

fn require_validator() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the kubernetes-validate Python package is missing: install it with \
             `pip install kubernetes-validate` (scripts/test.sh does)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "python3 is missing ({e}): install python3 and `pip install kubernetes-validate`"
        ),
    }
}

#[test]
fn manifests_and_injected_workloads_validate() {
    require_validator();
    let manifests = repo().join("manifests");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("write");

    let (workloads, report) = inject(
        &repo().join("control-plane/tests/data/workloads.yaml"),
        dir.path(),
        &["--trust-bundle", bundle.to_str().unwrap_or_default()],
    );
    for object in [
        "Deployment/web",
        "StatefulSet/db",
        "DaemonSet/agent",
        "Job/migrate",
        "CronJob/report",
        "Pod/debug",
    ] {
        assert!(
            report.contains(&format!("injected {object}")),
            "{object}:\n{report}"
        );
    }
    // Recorded objects from other meshes' injectors and tests (tests/fixtures/kubernetes).
    let fixtures = repo().join("tests/fixtures/kubernetes");
    let (istio, _) = inject(
        &fixtures.join("tokenreview/projected-token-istio-injected-deployment.yaml"),
        dir.path(),
        &[],
    );
    let (docs_pod, _) = inject(
        &fixtures.join("tokenreview/projected-token-volume-pod-k8s-docs.yaml"),
        dir.path(),
        &[],
    );

    let mut files = yaml_files(&manifests.join("base"));
    files.extend(yaml_files(&manifests.join("base/crds")));
    files.extend(yaml_files(&manifests.join("examples")));
    // The CNI overlay's own objects (its other file is a patch, not an object).
    files.push(manifests.join("cni/vigil-cni.yaml"));
    files.extend([workloads, istio, docs_pod]);
    let (ok, text) = validate(&files);
    assert!(ok, "manifests do not validate:\n{text}");
    assert!(text.contains("ok    "), "{text}");
}

/// Runs the validator on `files` (custom resources against manifests/base/crds): whether
/// every object passed, and its report.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("control-plane/tests/validate_manifests.py"));
    for crd in yaml_files(&repo().join("manifests/base/crds")) {
        cmd.arg("--crd").arg(crd);
    }
    let out = cmd.args(files).output().expect("running the validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains(" 0 failed"), text)
}

/// `kubectl kustomize DIR`, as documents. Fails, never skips, without a kubectl whose
/// kustomize reads the manifests (kustomize v4 or later: kubectl 1.21 or later).
fn kustomize(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl is needed to render manifests/ ({e}): install kubectl 1.21 or later \
                 (Kubernetes' packages, pkgs.k8s.io, or Google Cloud's google-cloud-cli); \
                 Debian 12's kubernetes-client (1.20) is too old for `patches:`"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed (kubectl 1.21 or later is needed):\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc).expect("rendered YAML");
            serde_json::to_value(value).expect("as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[serde_json::Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

fn control_plane_env(objects: &[serde_json::Value]) -> Vec<serde_json::Value> {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "vigil-control-plane")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
}

#[test]
fn kubectl_kustomize_renders_both_installs_and_they_validate() {
    require_validator();
    let manifests = repo().join("manifests");
    let base = kustomize(&manifests);
    let cni = kustomize(&manifests.join("cni"));
    // Every object file of base/ is in the rendered install.
    let rendered = kinds(&base);
    for file in yaml_files(&manifests.join("base"))
        .into_iter()
        .chain(yaml_files(&manifests.join("base/crds")))
    {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("YAML"))
                .expect("JSON");
            if v.is_null() {
                continue;
            }
            let id = format!(
                "{}/{}",
                v["kind"].as_str().unwrap_or("?"),
                v["metadata"]["name"].as_str().unwrap_or("?")
            );
            assert!(
                rendered.contains(&id),
                "{id} of {} is not rendered",
                file.display()
            );
        }
    }
    assert!(
        rendered.contains(&"ConfigMap/vigil-grafana-dashboard".to_string()),
        "{rendered:?}"
    );
    let dashboard = base
        .iter()
        .find(|o| o["metadata"]["name"] == "vigil-grafana-dashboard")
        .expect("dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    // The CNI install is the same plus the plugin, and injects for it.
    let with_cni = kinds(&cni);
    for id in &rendered {
        assert!(with_cni.contains(id), "{id} missing from manifests/cni");
    }
    assert!(
        with_cni.contains(&"DaemonSet/vigil-cni".to_string()),
        "{with_cni:?}"
    );
    let cni_env = |objects: &[serde_json::Value]| {
        control_plane_env(objects)
            .iter()
            .any(|e| e["name"] == "VIGIL_INTERCEPTION" && e["value"] == "cni")
    };
    assert!(
        cni_env(&cni),
        "the CNI install's control plane injects for the plugin"
    );
    assert!(!cni_env(&base), "the default install keeps vigil-init");

    // The documented overlay into another namespace moves everything, the RBAC subjects
    // and the webhook's Service included: nothing is left in vigil-system.
    let overlay = tempfile::tempdir().expect("overlay dir");
    let canonical = manifests.canonicalize().expect("manifests path");
    let up = "../".repeat(overlay.path().components().count().saturating_sub(1));
    let relative = format!(
        "{up}{}",
        canonical.to_string_lossy().trim_start_matches('/')
    );
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: mesh-ops\nresources:\n  - {relative}\n"
        ),
    )
    .expect("overlay");
    let moved = kustomize(overlay.path());
    let text = serde_json::to_string(&moved).expect("JSON");
    assert!(
        !text.contains("vigil-system"),
        "left in vigil-system: {text}"
    );
    let webhook = moved
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook");
    for w in webhook["webhooks"].as_array().expect("webhooks") {
        assert_eq!(w["clientConfig"]["service"]["namespace"], "mesh-ops", "{w}");
    }
    let pod_namespace = control_plane_env(&moved)
        .into_iter()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .expect("the control plane learns its namespace");
    assert_eq!(
        pod_namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    // What kubectl would apply validates, like the files it comes from.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, objects) in [("base", &base), ("cni", &cni), ("mesh-ops", &moved)] {
        let path = dir.path().join(format!("rendered-{name}.yaml"));
        let text: String = objects
            .iter()
            .filter(|o| o["kind"] != "CustomResourceDefinition")
            .map(|o| format!("---\n{}", serde_yaml::to_string(o).expect("YAML")))
            .collect();
        std::fs::write(&path, text).expect("rendered");
        files.push(path);
    }
    let (ok, text) = validate(&files);
    assert!(ok, "the rendered installs do not validate:\n{text}");
}

#[test]
fn the_cni_patch_names_what_the_base_names_and_the_dashboard_covers_the_metrics() {
    let manifests = repo().join("manifests");
    let patch =
        std::fs::read_to_string(manifests.join("cni/interception-cni.yaml")).expect("patch");
    let base = std::fs::read_to_string(manifests.join("base/control-plane.yaml")).expect("base");
    for needed in ["name: vigil-control-plane", "name: control-plane"] {
        assert!(
            patch.contains(needed) && base.contains(needed),
            "the CNI patch must name what the base names: {needed}"
        );
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(manifests.join("base/grafana/vigil-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for metric in [
        "vigil_requests_total",
        "vigil_request_duration_seconds_bucket",
        "vigil_policy_decisions_total",
        "vigil_tls_handshake_failures_total",
        "vigil_certificate_expiry_timestamp_seconds",
        "vigil_retries_total",
        "vigil_tcp_sent_bytes_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
    for label in [
        "direction",
        "peer_identity",
        "service",
        "outcome",
        "response_code",
        "local_workload",
        "peer_workload",
        "reason",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(label)),
            "no panel uses the {label} label"
        );
    }
}
