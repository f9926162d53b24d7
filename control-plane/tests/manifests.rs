//! Every file in manifests/ and every `vigil inject` output is valid Kubernetes, checked
//! offline with the `kubernetes-validate` package (custom resources against their CRDs).

use std::path::{Path, PathBuf};
use std::process::Command;

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

    let mut files = yaml_files(&manifests);
    files.extend(yaml_files(&manifests.join("crds")));
    files.extend(yaml_files(&manifests.join("examples")));
    // The CNI overlay's own objects (its other file is a patch, not an object).
    files.push(manifests.join("cni/vigil-cni.yaml"));
    files.extend([workloads, istio, docs_pod]);
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("control-plane/tests/validate_manifests.py"));
    for crd in yaml_files(&manifests.join("crds")) {
        cmd.arg("--crd").arg(crd);
    }
    let out = cmd.args(&files).output().expect("running the validator");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "manifests do not validate:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ok    ") && text.contains(" 0 failed"),
        "{text}"
    );
}

#[test]
fn kustomization_lists_existing_files_and_the_dashboard_covers_the_metrics() {
    let manifests = repo().join("manifests");
    let kustomization = std::fs::read_to_string(manifests.join("kustomization.yaml"))
        .expect("manifests/kustomization.yaml");
    for line in kustomization.lines() {
        let item = line.trim().trim_start_matches("- ").trim();
        if item.ends_with(".yaml") || item.ends_with(".json") {
            assert!(
                manifests.join(item).exists(),
                "kustomization names missing {item}"
            );
        }
    }
    // The CNI overlay names its own files and the base.
    let cni = std::fs::read_to_string(manifests.join("cni/kustomization.yaml"))
        .expect("manifests/cni/kustomization.yaml");
    for file in yaml_files(&manifests.join("cni")) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            cni.contains(name),
            "{name} is not in cni/kustomization.yaml"
        );
    }
    assert!(cni.contains("- .."), "the CNI overlay builds on the base");
    let patch =
        std::fs::read_to_string(manifests.join("cni/interception-cni.yaml")).expect("patch");
    let base = std::fs::read_to_string(manifests.join("control-plane.yaml")).expect("base");
    for needed in ["name: vigil-control-plane", "name: control-plane"] {
        assert!(
            patch.contains(needed) && base.contains(needed),
            "the CNI patch must name what the base names: {needed}"
        );
    }
    for file in yaml_files(&manifests) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            kustomization.contains(name),
            "{name} is not in kustomization.yaml"
        );
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(manifests.join("grafana/vigil-dashboard.json"))
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
