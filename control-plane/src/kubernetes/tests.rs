//! Cluster mode against recorded API objects (`tests/fixtures/kubernetes`) and, for the
//! client code, the real `kube::Client` talking to [`fake_api`].

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::api::WatchEvent;
use kube::runtime::{reflector, watcher};
use kube::Api;
use serde_json::{json, Value};
use tonic::Code;
use vigil_api::identity::Identity;
use vigil_api::{SignRequest, TokenKind};
use vigil_identity::{CertificateAuthority, WorkloadKey};

use super::ca_secret::{ca_from_secret, load_or_create};
use super::fake_api::{self, requests, status};
use super::model::{mesh_model, ClusterObjects};
use super::policy::{self, VigilPolicy};
use super::token_review::{identity_from_review, review_request, TokenReviews};
use crate::fixtures::{fixture, fixture_json};
use crate::identity_service::IdentityService;
use crate::inject::INJECTED_LABEL;
use crate::mesh::MeshFile;

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("not the expected object: {e}"))
}

fn repo_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The recorded CoreDNS pod, as the injector leaves it (the label is what injection adds).
fn injected_coredns() -> Pod {
    let mut pod = fixture_json("pod/pod-coredns-named-port-probes-kind-v1.34.json");
    pod["metadata"]["labels"][INJECTED_LABEL] = json!("true");
    parse(pod)
}

/// The recorded ServiceAccount (GKE, default/blee), renamed to CoreDNS's account.
fn coredns_account() -> ServiceAccount {
    let mut sa = fixture_json("serviceaccount/serviceaccount-gke.json");
    sa["metadata"]["name"] = json!("coredns");
    sa["metadata"]["namespace"] = json!("kube-system");
    parse(sa)
}

fn account_keys(accounts: &[ServiceAccount]) -> BTreeSet<(String, String)> {
    accounts
        .iter()
        .filter_map(|a| Some((a.metadata.namespace.clone()?, a.metadata.name.clone()?)))
        .collect()
}

/// The recorded kube-dns objects. They come from three clusters (SOURCES.md), so the
/// slice's one endpoint is pointed at the recorded kind pod, now ready.
fn kube_dns_objects() -> ClusterObjects {
    let pod = injected_coredns();
    let mut slice = fixture_json("endpointslice/endpointslice-kube-dns-k3s.json");
    let endpoint = &mut slice["endpoints"][0];
    endpoint["addresses"] = json!([pod.status.as_ref().and_then(|s| s.pod_ip.clone())]);
    endpoint["targetRef"]["name"] = json!(pod.metadata.name);
    endpoint["targetRef"]["uid"] = json!(pod.metadata.uid);
    endpoint["conditions"]["ready"] = json!(true);
    ClusterObjects {
        pods: vec![Arc::new(pod)],
        services: vec![Arc::new(parse(fixture_json(
            "service/service-kube-dns-kubeadm.json",
        )))],
        slices: vec![Arc::new(parse(slice))],
        service_accounts: account_keys(&[coredns_account()]),
        routes: vec![],
    }
}

#[test]
fn a_route_attached_to_a_port_of_a_service_reaches_that_ports_model_service() {
    let mut objects = kube_dns_objects();
    let route = |port: u16, path: &str| {
        serde_json::from_value::<crate::gateway::RouteObject>(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": format!("metrics-{port}"), "namespace": "kube-system",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "kube-dns", "port": port}],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                           "backendRefs": [{"name": "kube-dns", "port": 9153}]}]
            }
        }))
        .expect("route")
    };
    objects.routes = vec![route(9153, "/metrics"), route(54, "/nothing")];
    let (model, problems) = super::model::mesh_model_and_problems("cluster.local", &objects);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("kube-dns port 54 is not in the mesh"),
        "{problems:?}"
    );
    let metrics = model
        .services
        .iter()
        .find(|s| s.name == "kube-dns-metrics")
        .expect("the metrics port's service");
    let traffic = metrics.traffic.as_ref().expect("routes attached");
    assert_eq!(
        traffic["routes"][0]["backends"][0]["service"],
        "kube-dns-metrics.kube-system"
    );
    let dns = model
        .services
        .iter()
        .find(|s| s.name == "kube-dns")
        .expect("dns");
    assert!(dns.traffic.is_none(), "the other port keeps no routes");
}

#[test]
fn a_traffic_annotation_proxies_would_refuse_is_left_out_and_reported() {
    let mut objects = kube_dns_objects();
    let mut svc = (*objects.services[0]).clone();
    svc.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("vigil.io/traffic".into(), r#"{"timout": "1s"}"#.into());
    objects.services = vec![Arc::new(svc)];
    let (model, problems) = super::model::mesh_model_and_problems("cluster.local", &objects);
    assert!(model.services.iter().all(|s| s.traffic.is_none()));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown field `timout`")),
        "{problems:?}"
    );
}

const EQUIVALENT_MESH: &str = r#"
trust_domain: cluster.local
workloads:
  - name: coredns-66bc5c9577-2g8hl
    namespace: kube-system
    service_account: coredns
    join_token: not-used-in-cluster-mode
    app_port: 53
    tcp_ports: [9153, 8080, 8181]
    labels: { k8s-app: kube-dns, pod-template-hash: "66bc5c9577", vigil.io/injected: "true" }
    proxy: { inbound: "10.244.0.3:15006" }
services:
  - name: kube-dns
    namespace: kube-system
    port: 53
    protocol: tcp
    target_port: 53
    endpoints: [coredns-66bc5c9577-2g8hl]
    virtual_addresses: ["10.96.0.10:53"]
  - name: kube-dns-metrics
    namespace: kube-system
    port: 9153
    protocol: http
    target_port: 9153
    endpoints: [coredns-66bc5c9577-2g8hl]
    virtual_addresses: ["10.96.0.10:9153"]
"#;

#[test]
fn recorded_objects_give_the_same_snapshot_as_the_equivalent_mesh_file() {
    let from_cluster = mesh_model("cluster.local", &kube_dns_objects());
    let from_file = MeshFile::parse(EQUIVALENT_MESH)
        .expect("valid mesh file")
        .model()
        .expect("model");
    assert_eq!(from_cluster, from_file);
    let workload = &from_cluster.workloads[0];
    assert_eq!(
        workload.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/kube-system/sa/coredns"
    );
    let bundle = vec![b"root".to_vec()];
    assert_eq!(
        from_cluster.snapshot_for(workload, &bundle, None),
        from_file.snapshot_for(&from_file.workloads[0], &bundle, None),
        "a proxy cannot tell the two sources apart"
    );
}

#[test]
fn only_injected_pods_on_the_pod_network_with_a_service_account_are_workloads() {
    let mut list = fixture_json("pod/podlist-kube-system-kind-v1.34.json");
    let items = list["items"].as_array_mut().expect("items");
    for pod in items.iter_mut() {
        pod["metadata"]["labels"][INJECTED_LABEL] = json!("true");
    }
    let pods: Vec<Arc<Pod>> = items.iter().map(|p| Arc::new(parse(p.clone()))).collect();
    assert_eq!(pods.len(), 8);
    let mut objects = ClusterObjects {
        pods,
        service_accounts: account_keys(&[coredns_account()]),
        ..ClusterObjects::default()
    };
    let model = mesh_model("cluster.local", &objects);
    let names: Vec<&str> = model.workloads.iter().map(|w| w.name.as_str()).collect();
    // etcd, kindnet, kube-apiserver, kube-proxy... run on the host network.
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("coredns-")), "{names:?}");

    // Deleting the ServiceAccount takes its pods out of the mesh.
    objects.service_accounts.clear();
    assert!(mesh_model("cluster.local", &objects).workloads.is_empty());

    // Pods without the injection label are not workloads.
    let plain: Pod = parse(fixture_json(
        "pod/pod-coredns-named-port-probes-kind-v1.34.json",
    ));
    objects.pods = vec![Arc::new(plain)];
    objects.service_accounts = account_keys(&[coredns_account()]);
    assert!(mesh_model("cluster.local", &objects).workloads.is_empty());
}

#[test]
fn unready_and_unmeshed_endpoints_are_left_out() {
    let mut objects = kube_dns_objects();
    // The slice exactly as recorded: its endpoint is not ready and targets another pod.
    objects.slices = vec![Arc::new(parse(fixture_json(
        "endpointslice/endpointslice-kube-dns-k3s.json",
    )))];
    let model = mesh_model("cluster.local", &objects);
    assert_eq!(model.services.len(), 2);
    assert!(model.services.iter().all(|s| s.endpoints.is_empty()));

    // A named targetPort with no slice to resolve it: the service has no target port.
    objects.services = vec![Arc::new(parse(fixture_json(
        "service/service-named-targetport-gke.json",
    )))];
    let model = mesh_model("cluster.local", &objects);
    assert_eq!(model.services[0].name, "dictionary1");
    assert_eq!(model.services[0].target_port, None);
    assert!(!model.services[0].virtual_addresses.is_empty());
}

fn watch_events<K: serde::de::DeserializeOwned + Clone>(file: &str) -> Vec<watcher::Event<K>> {
    fixture(file)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            match serde_json::from_str::<WatchEvent<K>>(line).expect("a watch event") {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => Some(watcher::Event::Apply(o)),
                WatchEvent::Deleted(o) => Some(watcher::Event::Delete(o)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn recorded_watch_streams_drive_the_reflector_stores() {
    let events =
        watch_events::<Service>("watch/watch-services-kubectl-output-watch-events-kubeadm.jsonl");
    assert_eq!(events.len(), 5);
    let (reader, mut writer) = reflector::store::<Service>();
    let mut seen = Vec::new();
    for event in &events {
        writer.apply_watcher_event(event);
        let objects = ClusterObjects {
            services: reader.state(),
            ..ClusterObjects::default()
        };
        let mut names: Vec<String> = mesh_model("cluster.local", &objects)
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        names.sort();
        seen.push(names.join(","));
    }
    assert_eq!(
        seen[2],
        "default/kubernetes,default/nginx,kube-system/kube-dns,kube-system/kube-dns-metrics"
    );
    assert!(
        !seen[3].contains("nginx"),
        "DELETED removes it: {}",
        seen[3]
    );
    assert_eq!(seen[4], seen[2], "ADDED again brings it back");

    // Pods from the kind watch stream, once injected, are workloads.
    let events = watch_events::<Pod>("watch/watch-pods-kube-system-kind-v1.34.jsonl");
    let (reader, mut writer) = reflector::store::<Pod>();
    for event in events {
        let event = match event {
            watcher::Event::Apply(mut pod) => {
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(INJECTED_LABEL.into(), "true".into());
                watcher::Event::Apply(pod)
            }
            other => other,
        };
        writer.apply_watcher_event(&event);
    }
    let objects = ClusterObjects {
        pods: reader.state(),
        service_accounts: account_keys(&[coredns_account()]),
        ..ClusterObjects::default()
    };
    assert!(!mesh_model("cluster.local", &objects).workloads.is_empty());
}

// ---- TokenReview ----

fn token_review_client(response: Value) -> (TokenReviews, fake_api::Log) {
    let (client, log) = fake_api::client(move |_| (201, response.clone()));
    (
        TokenReviews {
            client,
            trust_domain: "cluster.local".into(),
        },
        log,
    )
}

async fn sign_with(
    check: TokenReviews,
    kind: TokenKind,
) -> Result<vigil_api::SignResponse, tonic::Status> {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").expect("ca"));
    let service = IdentityService::new(
        ca,
        Arc::new(check),
        Arc::new(|| std::time::Duration::from_secs(3600)),
    );
    let key = WorkloadKey::generate().expect("key");
    service
        .sign(tonic::Request::new(SignRequest {
            csr_der: key.csr_der().expect("csr"),
            token: "eyJhbGciOiJSUzI1NiJ9.projected.token".into(),
            kind: kind as i32,
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_authenticated_token_review_issues_the_service_account_identity() {
    let (check, log) = token_review_client(fixture_json(
        "tokenreview/tokenreview-v1-example-response-authenticated.json",
    ));
    let issued = sign_with(check, TokenKind::KubernetesServiceAccount)
        .await
        .expect("signed");
    assert_eq!(
        issued.spiffe_id,
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    assert_eq!(issued.workload, "checkout-7d9f8c6b5d-x2k8q");
    assert_eq!(issued.namespace, "shop");

    // The request is the documented TokenReview, with the proxy's token.
    let sent = requests(&log);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, "/apis/authentication.k8s.io/v1/tokenreviews");
    let mut expected = fixture_json("tokenreview/tokenreview-v1-example-request.json");
    expected["spec"]["token"] = json!("eyJhbGciOiJSUzI1NiJ9.projected.token");
    assert_eq!(sent[0].body, expected);
    assert_eq!(review_request("t")["spec"]["audiences"], json!(["vigil"]));
}

#[tokio::test]
async fn a_rejected_token_review_refuses_the_csr() {
    let (check, _) = token_review_client(fixture_json(
        "tokenreview/tokenreview-v1-example-response-rejected.json",
    ));
    let err = sign_with(check, TokenKind::KubernetesServiceAccount)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("invalid bearer token"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn wrong_audience_kind_or_user_refuses_and_api_errors_ask_for_a_retry() {
    let mut other_audience =
        fixture_json("tokenreview/tokenreview-v1-example-response-authenticated.json");
    other_audience["status"]["audiences"] = json!(["istio-ca"]);
    let (check, _) = token_review_client(other_audience);
    let err = sign_with(check, TokenKind::KubernetesServiceAccount)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("audience"), "{}", err.message());

    let mut node = fixture_json("tokenreview/tokenreview-v1-example-response-authenticated.json");
    node["status"]["user"]["username"] = json!("system:node:worker-1");
    let err = identity_from_review(&parse(node), "cluster.local").expect_err("not an SA");
    assert!(err.to_string().contains("not a ServiceAccount"), "{err}");

    // A join token is not accepted in cluster mode, and the API server is not even asked.
    let (check, log) = token_review_client(fixture_json(
        "tokenreview/tokenreview-v1-example-response-authenticated.json",
    ));
    let err = sign_with(check, TokenKind::Join)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(requests(&log).is_empty());

    // RBAC missing: the proxy is told to retry, the operator what to fix.
    let (client, _) = fake_api::client(|_| {
        (
            403,
            status(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden",
            ),
        )
    });
    let check = TokenReviews {
        client,
        trust_domain: "cluster.local".into(),
    };
    let err = sign_with(check, TokenKind::KubernetesServiceAccount)
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("rbac"), "{}", err.message());
}

// ---- CA Secret ----

fn secret_api(
    answer: impl Fn(&fake_api::Received) -> (u16, Value) + Send + Sync + 'static,
) -> (Api<Secret>, fake_api::Log) {
    let (client, log) = fake_api::client(answer);
    (Api::namespaced(client, "vigil-system"), log)
}

const SECRET_PATH: &str = "/api/v1/namespaces/vigil-system/secrets";

#[tokio::test]
async fn the_first_replica_creates_the_ca_secret_and_the_next_reads_it() {
    let (api, log) = secret_api(|r| match r.method.as_str() {
        "GET" => (
            404,
            status(404, "NotFound", "secrets \"vigil-ca\" not found"),
        ),
        _ => (201, r.body.clone()),
    });
    let created = load_or_create(&api, "vigil-ca", "cluster.local")
        .await
        .expect("created");
    let sent = requests(&log);
    assert_eq!(sent[0].path, format!("{SECRET_PATH}/vigil-ca"));
    assert_eq!(sent[1].method, "POST");
    assert_eq!(sent[1].path, format!("{SECRET_PATH}?"));
    let secret: Secret = parse(sent[1].body.clone());
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.name.as_deref(), Some("vigil-ca"));
    let data = secret.data.clone().expect("data");
    assert!(String::from_utf8_lossy(&data["tls.key"].0).contains("PRIVATE KEY"));

    // A second replica finds the Secret and uses the same CA.
    let stored = sent[1].body.clone();
    let (api, log) = secret_api(move |_| (200, stored.clone()));
    let loaded = load_or_create(&api, "vigil-ca", "cluster.local")
        .await
        .expect("loaded");
    assert_eq!(
        loaded.trust_bundle().roots(),
        created.trust_bundle().roots()
    );
    assert_eq!(requests(&log).len(), 1, "read only");
}

#[tokio::test]
async fn a_replica_that_loses_the_create_race_uses_the_winners_ca() {
    let (api, first) = secret_api(|r| match r.method.as_str() {
        "GET" => (404, status(404, "NotFound", "not found")),
        _ => (201, r.body.clone()),
    });
    load_or_create(&api, "vigil-ca", "cluster.local")
        .await
        .expect("created");
    let stored = requests(&first)[1].body.clone();
    let expected = ca_from_secret(&parse(stored.clone()), "cluster.local")
        .expect("usable")
        .expect("present");

    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = gets.clone();
    let (api, log) = secret_api(move |r| match r.method.as_str() {
        "GET" if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            (404, status(404, "NotFound", "not found"))
        }
        "GET" => (200, stored.clone()),
        _ => (
            409,
            status(409, "AlreadyExists", "secrets \"vigil-ca\" already exists"),
        ),
    });
    let loaded = load_or_create(&api, "vigil-ca", "cluster.local")
        .await
        .expect("loaded");
    assert_eq!(
        loaded.trust_bundle().roots(),
        expected.trust_bundle().roots()
    );
    let methods: Vec<String> = requests(&log).into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "POST", "GET"]);
}

#[tokio::test]
async fn an_empty_pre_created_secret_is_filled_with_its_resource_version() {
    let empty = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "vigil-ca", "namespace": "vigil-system", "resourceVersion": "4711"},
    });
    let (api, log) = secret_api(move |r| match r.method.as_str() {
        "GET" => (200, empty.clone()),
        _ => (200, r.body.clone()),
    });
    load_or_create(&api, "vigil-ca", "cluster.local")
        .await
        .expect("filled");
    let sent = requests(&log);
    assert_eq!(sent[1].method, "PUT");
    assert_eq!(sent[1].body["metadata"]["resourceVersion"], "4711");
    assert!(sent[1].body["data"]["tls.crt"].is_string());

    let half: Secret = parse(json!({
        "metadata": {"name": "vigil-ca"},
        "data": {"tls.crt": "LS0tLS0="},
    }));
    let err = ca_from_secret(&half, "cluster.local")
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("only one of")));
}

// ---- Policy ----

#[test]
fn the_crd_manifest_is_the_one_the_code_derives() {
    use kube::CustomResourceExt;
    let generated = serde_yaml::to_string(&VigilPolicy::crd()).expect("yaml");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/crds/vigilpolicies.yaml");
    if std::env::var_os("VIGIL_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, format!("# Generated from control-plane/src/kubernetes/policy.rs (VIGIL_UPDATE_MANIFESTS=1 cargo test -p vigil)\n{generated}")).expect("write");
    }
    let on_disk = std::fs::read_to_string(&path).expect("manifests/base/crds/vigilpolicies.yaml");
    let on_disk: Value = serde_yaml::from_str(&on_disk).expect("yaml");
    let generated: Value = serde_yaml::from_str(&generated).expect("yaml");
    assert_eq!(
        on_disk, generated,
        "manifests/base/crds/vigilpolicies.yaml is stale: run VIGIL_UPDATE_MANIFESTS=1 cargo test -p vigil"
    );
}

#[test]
fn policies_come_from_a_vigil_policy_or_a_config_map() {
    let deny_all: VigilPolicy = parse(json!({
        "apiVersion": "vigil.io/v1alpha1", "kind": "VigilPolicy",
        "metadata": {"name": "default", "namespace": "vigil-system"},
        "spec": {
            "modules": {"policy.rego": repo_file("policies/deny-all/policy.rego")},
            "dryRun": true,
        },
    }));
    let loaded = policy::select(Some(&deny_all), None, "cluster.local").expect("compiles");
    assert!(loaded.wire.dry_run);
    assert_eq!(loaded.wire.files[0].path, "policy.rego");

    let mut broken = deny_all.clone();
    broken
        .spec
        .modules
        .insert("policy.rego".into(), "package x\nallow if {".into());
    let err = policy::select(Some(&broken), None, "cluster.local")
        .err()
        .unwrap_or_default();
    assert!(
        err.starts_with("VigilPolicy default: policy bundle refused"),
        "{err}"
    );

    // The shipped ConfigMap carries the shipped default policy, for the cluster's domain.
    let manifest = repo_file("manifests/base/policy-configmap.yaml");
    let config_map: ConfigMap = serde_yaml::from_str(&manifest).expect("a ConfigMap");
    let data = config_map.data.clone().unwrap_or_default();
    assert_eq!(
        data["policy.rego"],
        repo_file("policies/default/policy.rego")
    );
    let loaded = policy::select(None, Some(&config_map), "cluster.local").expect("compiles");
    assert!(loaded
        .wire
        .files
        .iter()
        .any(|f| f.contents.contains("cluster.local")));

    let with_typo: ConfigMap = parse(json!({"metadata": {"name": "vigil-policy"}, "data": {
        "policy.rego": "package vigil.authz\nallow := true", "dryRun": "yes"}}));
    let err = policy::select(None, Some(&with_typo), "cluster.local")
        .err()
        .unwrap_or_default();
    assert!(err.contains("dryRun"), "{err}");

    // Neither: the built-in default.
    assert!(policy::select(None, None, "cluster.local").is_ok());
}

/// VigilPolicies with targets are attached to the pods they select, in name order; the
/// one named by --policy is the mesh-wide one; every bundle gets data.vigil.mesh.
#[test]
fn vigil_policies_with_targets_attach_to_the_pods_they_select() {
    let policy = |name: &str, targets: serde_json::Value| -> Arc<VigilPolicy> {
        Arc::new(parse(json!({
            "apiVersion": "vigil.io/v1alpha1", "kind": "VigilPolicy",
            "metadata": {"name": name, "namespace": "vigil-system"},
            "spec": {
                "modules": {"policy.rego": "package vigil.authz\nallow := data.vigil.mesh.trust_domain == \"cluster.local\""},
                "targets": targets,
            },
        })))
    };
    let policies = vec![
        policy("z-kube-system", json!([{"namespace": "kube-system"}])),
        policy("default", json!([])),
        policy("a-dns", json!([{"labels": {"k8s-app": "kube-dns"}}])),
        policy("unattached", json!([])),
    ];
    let served = policy::select_all(&policies, "default", None, "cluster.local").expect("compiles");
    let names: Vec<&str> = served
        .attached
        .iter()
        .map(|a| a.served.bundle.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["a-dns", "z-kube-system"],
        "by name; untargeted ones unused"
    );
    let model = mesh_model("cluster.local", &kube_dns_objects());
    let coredns = &model.workloads[0];
    let runs = served.for_workload(coredns).expect("a policy");
    assert_eq!(
        runs.bundle.name, "a-dns",
        "the pod's labels select it, first by name"
    );
    assert_eq!(served.selecting(coredns), ["a-dns", "z-kube-system"]);
    let compiled = crate::policy_source::compile(
        crate::policy_source::files_of(&runs.bundle),
        vigil_authz::PolicyOptions::default(),
        0,
    )
    .expect("compiles");
    assert!(
        compiled
            .bundle
            .evaluate_value(vigil_authz::Value::new_object())
            .allowed(),
        "the bundle reads the mesh's trust domain"
    );

    // The mesh-wide VigilPolicy's candidate and input recording travel with it.
    let mut with_candidate = (*policies[1]).clone();
    with_candidate.spec.candidate = Some(policy::CandidateSpec {
        modules: [(
            "p.rego".to_string(),
            "package vigil.authz\nallow := false".to_string(),
        )]
        .into(),
        data: None,
    });
    with_candidate.spec.record_input = Some(policy::RecordInputSpec {
        redact_headers: None,
        max_bytes: Some(1024),
        bodies: false,
    });
    let served = policy::select_all(
        &[Arc::new(with_candidate)],
        "default",
        None,
        "cluster.local",
    )
    .expect("compiles");
    let mesh_wide = served.mesh_wide.expect("the mesh-wide policy");
    assert_eq!(mesh_wide.bundle.name, "default");
    assert_eq!(
        mesh_wide.candidate.map(|c| c.name),
        Some("default (candidate)".to_string())
    );
    let recording = mesh_wide.bundle.record_input.expect("records input");
    assert_eq!(recording.max_bytes, 1024);
    assert!(recording
        .redact_headers
        .contains(&"authorization".to_string()));

    let mut broken = (*policies[2]).clone();
    broken
        .spec
        .modules
        .insert("policy.rego".into(), "package x\nallow if {".into());
    let mut with_broken = policies.clone();
    with_broken[2] = Arc::new(broken);
    let err = policy::select_all(&with_broken, "default", None, "cluster.local")
        .err()
        .unwrap_or_default();
    assert!(err.starts_with("VigilPolicy a-dns:"), "{err}");
}

#[test]
fn the_webhook_ca_bundle_patch_targets_every_webhook_once() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let manifest = repo_file("manifests/base/webhook.yaml");
    let config: MutatingWebhookConfiguration =
        serde_yaml::from_str(&manifest).expect("webhook manifest");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let patch = super::ca_bundle_patch(&config, pem).expect("a patch");
    let mut value = serde_json::to_value(&config).expect("json");
    json_patch::patch(&mut value, &patch).expect("applies");
    let patched: MutatingWebhookConfiguration = parse(value);
    for webhook in patched.webhooks.as_deref().unwrap_or_default() {
        assert_eq!(
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice()),
            Some(pem.as_bytes())
        );
    }
    assert!(
        super::ca_bundle_patch(&patched, pem).is_none(),
        "nothing to do the second time"
    );
}

#[tokio::test]
async fn the_kube_client_builds_its_tls_on_ring_alone() {
    // rustls picks its provider from crate features when none is installed: this fails
    // if a second provider (aws-lc) sneaks into the dependency tree.
    let url = "https://127.0.0.1:6443".parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("kube's TLS with ring");
}

/// Cluster mode's dashboard, started as `run` starts it: the manifest's Prometheus
/// annotation (15080, `/metrics`) finds the control plane's metrics, and the page's
/// graph shows the workloads of the Kubernetes watch.
#[tokio::test]
async fn cluster_mode_serves_the_dashboard_and_its_own_metrics() {
    use crate::admin_client::get;
    use crate::discovery_service::{ConnectedProxies, MeshState};

    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let opts = super::ClusterOptions {
        trust_domain: "cluster.local".into(),
        namespace: "mesh-ops".into(),
        ca_secret: "vigil-ca".into(),
        policy: "default".into(),
        policy_config_map: "vigil-policy".into(),
        identity: "127.0.0.1:15012".parse().expect("addr"),
        discovery: "127.0.0.1:15010".parse().expect("addr"),
        webhook: "127.0.0.1:15017".parse().expect("addr"),
        certificate_lifetime: std::time::Duration::from_secs(3600),
        inject: crate::inject::InjectConfig::for_namespace("mesh-ops"),
        webhook_configuration: None,
        dashboard: addr,
        dashboard_options: crate::dashboard::DashboardOptions::default(),
    };
    let (_state_tx, state) = tokio::sync::watch::channel(Arc::new(MeshState {
        model: mesh_model("cluster.local", &kube_dns_objects()),
        trust_bundle_der: vec![],
        policies: Default::default(),
        jwt_bundle: String::new(),
    }));
    let identity = IdentityService::new(
        Arc::new(CertificateAuthority::generate("cluster.local").expect("ca")),
        Arc::new(TokenReviews {
            client: fake_api::client(|_| (500, status(500, "InternalError", "unused"))).0,
            trust_domain: "cluster.local".into(),
        }),
        Arc::new(|| std::time::Duration::from_secs(3600)),
    );
    let mut metrics = prometheus_client::registry::Registry::with_prefix("vigil");
    identity.refusals().register(&mut metrics);
    tokio::spawn(super::dashboard(
        &opts,
        state,
        Arc::new(ConnectedProxies::default()),
        metrics,
        crate::ca_rotation::CaStatus::default(),
    ));

    let mut answer = get(addr, "/metrics").await;
    for _ in 0..100 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        answer = get(addr, "/metrics").await;
    }
    let (code, body) = answer.expect("the dashboard answers on its port");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("vigil_identity_refusals_total"),
        "the control plane's own metrics:\n{body}"
    );
    let (code, graph) = get(addr, "/api/graph").await.expect("graph");
    assert_eq!(code, 200, "{graph}");
    assert!(
        graph.contains("coredns"),
        "the graph shows the workloads the watch found:\n{graph}"
    );
}

/// The installed mesh as `vigil check --kubernetes` reads it: the shipped manifests'
/// Deployment and webhook (as `kubectl apply -k` stores them, with the caBundle the
/// control plane sets), its CA Secret, and a meshed namespace with the recorded coredns
/// pod, injected or not, its proxy ready or not.
struct InstalledMesh {
    ready_replicas: i64,
    ca_bundle: String,
    pod_injected: bool,
    proxy_ready: bool,
}

fn manifest_object(file: &str, kind: &str) -> Value {
    let text = repo_file(file);
    let found = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).ok()?;
            serde_json::to_value(v).ok()
        })
        .find(|v| v["kind"] == kind);
    found.unwrap_or_else(|| panic!("no {kind} in {file}"))
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBroot\n-----END CERTIFICATE-----\n";

fn installed(mesh: InstalledMesh) -> kube::Client {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut deployment = manifest_object("manifests/base/control-plane.yaml", "Deployment");
    deployment["status"] = json!({"replicas": 2, "readyReplicas": mesh.ready_replicas});
    let mut webhook = manifest_object(
        "manifests/base/webhook.yaml",
        "MutatingWebhookConfiguration",
    );
    for w in webhook["webhooks"].as_array_mut().expect("webhooks") {
        w["clientConfig"]["caBundle"] = json!(b64(&mesh.ca_bundle));
    }
    let mut pod = serde_json::to_value(injected_coredns()).expect("pod");
    pod["metadata"]["namespace"] = json!("shop");
    if !mesh.pod_injected {
        pod["metadata"]["labels"]
            .as_object_mut()
            .map(|l| l.remove(INJECTED_LABEL));
    }
    pod["status"]["phase"] = json!("Running");
    pod["status"]["containerStatuses"] = json!([
        {"name": "coredns", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "started": true},
        {"name": "vigil-proxy", "ready": mesh.proxy_ready, "restartCount": 0, "image": "x", "imageID": "", "started": true},
    ]);
    let list = |kind: &str, items: Vec<Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
    let (client, _) = fake_api::client(move |r| {
        let path = r.path.split('?').next().unwrap_or_default();
        match path {
            "/version" => (200, json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
                "compiler": "gc", "platform": "linux/amd64"})),
            "/apis/apps/v1/namespaces/vigil-system/deployments/vigil-control-plane" => {
                (200, deployment.clone())
            }
            "/api/v1/namespaces/vigil-system/secrets/vigil-ca" => (200, json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "vigil-ca", "namespace": "vigil-system"},
                "data": {"ca.crt": b64(CA_PEM), "tls.crt": b64(CA_PEM), "tls.key": b64("key")},
            })),
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/vigil-sidecar-injector" => {
                (200, webhook.clone())
            }
            "/apis/vigil.io/v1alpha1/namespaces/vigil-system/vigilpolicies" => {
                (200, list("VigilPolicyList", vec![]))
            }
            "/api/v1/namespaces" => (200, list("NamespaceList", vec![json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop", "labels": {"vigil.io/inject": "enabled"}}})])),
            "/api/v1/namespaces/shop/pods" => (200, list("PodList", vec![pod.clone()])),
            "/api/v1/pods" if mesh.pod_injected => (200, list("PodList", vec![pod.clone()])),
            "/api/v1/pods" | "/api/v1/services" | "/apis/discovery.k8s.io/v1/endpointslices"
            | "/api/v1/serviceaccounts" => (200, list("List", vec![])),
            _ => (404, status(404, "NotFound", "not served")),
        }
    });
    client
}

fn check_options() -> super::check::ClusterCheck {
    super::check::ClusterCheck {
        namespace: "vigil-system".into(),
        trust_domain: "cluster.local".into(),
        deployment: "vigil-control-plane".into(),
        ca_secret: "vigil-ca".into(),
        webhook_configuration: "vigil-sidecar-injector".into(),
    }
}

fn outcome_of(report: &crate::check::Report, check: &str) -> (crate::check::Outcome, String) {
    let f = report
        .findings
        .iter()
        .find(|f| f.check == check && f.outcome != crate::check::Outcome::Pass)
        .or_else(|| report.findings.iter().find(|f| f.check == check))
        .unwrap_or_else(|| panic!("no {check} finding: {report:?}"));
    (f.outcome, f.detail.clone())
}

#[tokio::test]
async fn check_kubernetes_passes_on_a_healthy_install() {
    let client = installed(InstalledMesh {
        ready_replicas: 2,
        ca_bundle: CA_PEM.into(),
        pod_injected: true,
        proxy_ready: true,
    });
    let report = super::check::check(&client, &check_options()).await;
    let text = crate::check::render(&report);
    assert!(report.ok, "{text}");
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.outcome != crate::check::Outcome::Pass),
        "{text}"
    );
    for expected in [
        "✓ kubernetes API: Kubernetes v1.33.1 answers",
        "✓ control plane: Deployment vigil-system/vigil-control-plane: 2/2 replicas ready",
        "✓ injection webhook: vigil-sidecar-injector: 2 webhook(s) call the control plane in vigil-system and trust the mesh's CA",
        "✓ meshed namespaces: shop",
        "✓ meshed pods: 1 injected pod(s), none left out",
        "✓ gateway API routes: the cluster does not serve",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
}

#[tokio::test]
async fn check_kubernetes_names_what_is_wrong_and_how_to_fix_it() {
    use crate::check::Outcome;
    let client = installed(InstalledMesh {
        ready_replicas: 0,
        ca_bundle: "-----BEGIN CERTIFICATE-----\nMIIBold\n-----END CERTIFICATE-----\n".into(),
        pod_injected: false,
        proxy_ready: false,
    });
    let report = super::check::check(&client, &check_options()).await;
    let text = crate::check::render(&report);
    assert!(!report.ok, "{text}");
    assert_eq!(
        outcome_of(&report, "control plane").0,
        Outcome::Fail,
        "{text}"
    );
    let (outcome, detail) = outcome_of(&report, "injection webhook");
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(detail.contains("is not the mesh's CA"), "{detail}");
    let (outcome, detail) = outcome_of(&report, "meshed pods");
    assert_eq!(outcome, Outcome::Warn, "{text}");
    assert!(detail.contains("shop/coredns"), "{detail}");
    assert!(text.contains("rollout restart"), "{text}");

    // Injected, but its proxy is not ready.
    let client = installed(InstalledMesh {
        ready_replicas: 2,
        ca_bundle: CA_PEM.into(),
        pod_injected: true,
        proxy_ready: false,
    });
    let report = super::check::check(&client, &check_options()).await;
    let (outcome, detail) = outcome_of(&report, "proxies");
    assert_eq!(outcome, Outcome::Fail);
    assert!(detail.contains("shop/coredns"), "{detail}");
}
