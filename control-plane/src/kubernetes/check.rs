//! `vigil check --kubernetes`: is the mesh installed in this cluster healthy? Read from the
//! Kubernetes API only (the kubeconfig's cluster, or the pod's own ServiceAccount), in the
//! same ✓ / ! / ✗ report as a local mesh's check:
//!
//! - the API answers;
//! - the control plane's Deployment has ready replicas;
//! - its CA Secret holds a CA, and the injection webhook trusts that CA and points at the
//!   control plane's Service in its namespace;
//! - the VigilPolicy CRD is served (and which policy is in force);
//! - whether the Gateway API's routes are served (optional);
//! - namespaces are labelled for injection, their pods were injected (a pod created before
//!   the label was set needs a restart) and every injected pod's proxy is ready;
//! - the mesh model builds from the cluster's objects without problems: routes that cannot
//!   apply, traffic annotations proxies would refuse.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, ObjectList};

/// A list's items, shared as the model takes them.
fn arcs<K: Clone>(list: ObjectList<K>) -> Vec<std::sync::Arc<K>> {
    list.items.into_iter().map(std::sync::Arc::new).collect()
}
use kube::core::DynamicObject;
use kube::{Api, ResourceExt};

use super::model::{mesh_model_and_problems, ClusterObjects};
use super::policy::VigilPolicy;
use crate::check::{pass, problem, Finding, Outcome, Report};
use crate::gateway::RouteObject;
use crate::inject::{INJECTED_LABEL, PROXY_CONTAINER};

/// The namespace label that turns injection on (the webhook's namespaceSelector).
pub const INJECT_NAMESPACE_LABEL: &str = "vigil.io/inject";

/// What to look for.
#[derive(Debug, Clone)]
pub struct ClusterCheck {
    /// The control plane's namespace.
    pub namespace: String,
    pub trust_domain: String,
    pub deployment: String,
    pub ca_secret: String,
    pub webhook_configuration: String,
}

/// Runs every check; the report fails when any check does.
pub async fn check(client: &kube::Client, opts: &ClusterCheck) -> Report {
    let mut findings = Vec::new();
    match client.apiserver_version().await {
        Ok(v) => findings.push(pass(
            "kubernetes API",
            format!("Kubernetes {} answers", v.git_version),
        )),
        Err(e) => {
            findings.push(problem(
                Outcome::Fail,
                "kubernetes API",
                format!("no answer: {e}"),
                "check KUBECONFIG and `kubectl config current-context` (in a pod: its ServiceAccount)",
            ));
            return Report {
                ok: false,
                findings,
            };
        }
    }
    let ns = opts.namespace.as_str();
    findings.push(deployment(client, opts).await);
    let ca = ca_secret(client, opts).await;
    findings.push(ca.0);
    findings.push(webhook(client, opts, ca.1.as_deref()).await);
    findings.push(policies(client, ns).await);
    let routes = gateway_routes(client).await;
    findings.push(gateway_api(routes.as_deref()));
    findings.extend(meshed_pods(client).await);
    let routes = routes.into_iter().flatten().flat_map(|(_, r)| r).collect();
    findings.extend(model(client, opts, routes).await);
    let ok = !findings.iter().any(|f| f.outcome == Outcome::Fail);
    Report { ok, findings }
}

async fn deployment(client: &kube::Client, opts: &ClusterCheck) -> Finding {
    let ns = &opts.namespace;
    let name = &opts.deployment;
    let check = "control plane";
    match Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(d)) => {
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready > 0 {
                pass(check, format!("Deployment {ns}/{name}: {ready}/{wanted} replicas ready"))
            } else {
                problem(
                    Outcome::Fail,
                    check,
                    format!("Deployment {ns}/{name}: no replica ready (of {wanted})"),
                    format!("kubectl -n {ns} describe deployment {name}; kubectl -n {ns} logs deployment/{name}"),
                )
            }
        }
        Ok(None) => problem(
            Outcome::Fail,
            check,
            format!("no Deployment {ns}/{name}"),
            "install the mesh: kubectl apply -k manifests/ (docs/kubernetes.md), or pass --namespace where it is installed",
        ),
        Err(e) => problem(
            Outcome::Fail,
            check,
            format!("cannot read Deployment {ns}/{name}: {e}"),
            "check that your credentials may get deployments there",
        ),
    }
}

/// The finding, and the CA certificates (PEM) when the Secret holds them.
async fn ca_secret(client: &kube::Client, opts: &ClusterCheck) -> (Finding, Option<String>) {
    let ns = &opts.namespace;
    let name = &opts.ca_secret;
    let check = "CA";
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(s)) => {
            let data = s.data.unwrap_or_default();
            let missing: Vec<&str> = ["ca.crt", "tls.crt", "tls.key"]
                .into_iter()
                .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
                .collect();
            if !missing.is_empty() {
                return (
                    problem(
                        Outcome::Fail,
                        check,
                        format!("Secret {ns}/{name} lacks {}", missing.join(", ")),
                        "delete the Secret and restart the control plane to generate a CA, or fill it as cert-manager does (tls.crt, tls.key, ca.crt)",
                    ),
                    None,
                );
            }
            let pem = data
                .get("ca.crt")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned());
            let roots = pem
                .as_deref()
                .map(|p| p.matches("BEGIN CERTIFICATE").count())
                .unwrap_or(0);
            (
                pass(
                    check,
                    format!("Secret {ns}/{name} holds the mesh's CA ({roots} certificate(s) in ca.crt)"),
                ),
                pem,
            )
        }
        Ok(None) => (
            problem(
                Outcome::Fail,
                check,
                format!("no Secret {ns}/{name}"),
                "the control plane creates it when it starts: check that it runs and that its Role may create secrets (manifests/base/rbac.yaml)",
            ),
            None,
        ),
        Err(e) => (
            problem(
                Outcome::Fail,
                check,
                format!("cannot read Secret {ns}/{name}: {e}"),
                "check that your credentials may get secrets there",
            ),
            None,
        ),
    }
}

async fn webhook(client: &kube::Client, opts: &ClusterCheck, ca: Option<&str>) -> Finding {
    let name = &opts.webhook_configuration;
    let check = "injection webhook";
    let config = match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => {
            return problem(
                Outcome::Fail,
                check,
                format!("no MutatingWebhookConfiguration {name}: pods are not injected"),
                "kubectl apply -k manifests/ (docs/kubernetes.md)",
            )
        }
        Err(e) => {
            return problem(
                Outcome::Fail,
                check,
                format!("cannot read MutatingWebhookConfiguration {name}: {e}"),
                "check that your credentials may get mutatingwebhookconfigurations",
            )
        }
    };
    let webhooks = config.webhooks.unwrap_or_default();
    for w in &webhooks {
        let service = w.client_config.service.as_ref();
        let service_ns = service.map(|s| s.namespace.as_str()).unwrap_or("");
        if service_ns != opts.namespace {
            return problem(
                Outcome::Fail,
                check,
                format!(
                    "webhook {} calls a Service in namespace {service_ns:?}, not the control plane's {:?}",
                    w.name, opts.namespace
                ),
                "install with an overlay that sets `namespace:` (docs/kubernetes.md), so kustomize moves the webhook's Service reference too",
            );
        }
        let bundle = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        match (bundle.as_deref(), ca) {
            (None, _) | (Some(""), _) => {
                return problem(
                    Outcome::Fail,
                    check,
                    format!("webhook {} has no caBundle: the API server cannot call it", w.name),
                    format!(
                        "the control plane sets it when it starts (its ClusterRole needs patch on {name}); or set it by hand: kubectl -n {} get secret {} -o jsonpath='{{.data.ca\\.crt}}'",
                        opts.namespace, opts.ca_secret
                    ),
                )
            }
            (Some(b), Some(ca)) if b.trim() != ca.trim() => {
                return problem(
                    Outcome::Fail,
                    check,
                    format!("webhook {}'s caBundle is not the mesh's CA (Secret {})", w.name, opts.ca_secret),
                    "restart the control plane: it sets caBundle to the Secret's ca.crt when it starts",
                )
            }
            _ => {}
        }
    }
    pass(
        check,
        format!(
            "{name}: {} webhook(s) call the control plane in {} and trust the mesh's CA",
            webhooks.len(),
            opts.namespace
        ),
    )
}

async fn policies(client: &kube::Client, ns: &str) -> Finding {
    let check = "policy";
    match Api::<VigilPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
            pass(
                check,
                if names.is_empty() {
                    format!("no VigilPolicy in {ns}: the ConfigMap vigil-policy, else the built-in default, is in force")
                } else {
                    format!("VigilPolicies in {ns}: {}", names.join(", "))
                },
            )
        }
        Err(e) => problem(
            Outcome::Fail,
            check,
            format!("VigilPolicies cannot be listed: {e}"),
            "install the CRD: kubectl apply -f manifests/base/crds/vigilpolicies.yaml",
        ),
    }
}

/// The Gateway API routes the cluster serves, by kind; `None` when it serves none.
async fn gateway_routes(client: &kube::Client) -> Option<Vec<(String, Vec<RouteObject>)>> {
    let kinds = super::watch::served_route_kinds(client).await;
    if kinds.is_empty() {
        return None;
    }
    let mut routes = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        let api = Api::<DynamicObject>::all_with(client.clone(), kind);
        let objects = match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|o| super::watch::route_object(&kind.kind, o))
                .collect(),
            Err(_) => Vec::new(),
        };
        routes.push((kind.kind.clone(), objects));
    }
    Some(routes)
}

fn gateway_api(routes: Option<&[(String, Vec<RouteObject>)]>) -> Finding {
    let check = "gateway API routes";
    let Some(routes) = routes else {
        return pass(
            check,
            "the cluster does not serve gateway.networking.k8s.io/v1: HTTPRoutes and GRPCRoutes are not used (optional)",
        );
    };
    let counts: Vec<String> = routes
        .iter()
        .map(|(kind, objects)| format!("{} {kind}(s)", objects.len()))
        .collect();
    pass(check, format!("served: {}", counts.join(", ")))
}

/// Namespaces labelled for injection, and their pods.
async fn meshed_pods(client: &kube::Client) -> Vec<Finding> {
    let label = format!("{INJECT_NAMESPACE_LABEL}=enabled");
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&label))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return vec![problem(
                Outcome::Fail,
                "meshed namespaces",
                format!("cannot list namespaces: {e}"),
                "check that your credentials may list namespaces",
            )]
        }
    };
    if namespaces.is_empty() {
        return vec![problem(
            Outcome::Warn,
            "meshed namespaces",
            "no namespace is labelled for injection",
            format!("kubectl label namespace <name> {label}, then restart its workloads"),
        )];
    }
    let names: Vec<String> = namespaces.iter().map(|n| n.name_any()).collect();
    let mut findings = vec![pass("meshed namespaces", names.join(", "))];
    let mut not_injected = Vec::new();
    let mut not_ready = Vec::new();
    let mut injected = 0;
    for ns in &names {
        let pods = match Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                findings.push(problem(
                    Outcome::Fail,
                    "meshed pods",
                    format!("cannot list pods in {ns}: {e}"),
                    "check that your credentials may list pods",
                ));
                continue;
            }
        };
        for pod in pods {
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
            let opted_out = pod
                .annotations()
                .get(crate::inject::ANNOTATION_INJECT)
                .is_some_and(|v| v == "disabled" || v == "false");
            if finished || host_network || opted_out {
                continue;
            }
            let name = format!("{ns}/{}", pod.name_any());
            if pod.labels().get(INJECTED_LABEL).map(String::as_str) != Some("true") {
                not_injected.push(name);
                continue;
            }
            injected += 1;
            let status = pod.status.as_ref();
            let proxy_ready = status
                .into_iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .find(|c| c.name == PROXY_CONTAINER)
                .is_some_and(|c| c.ready);
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && !proxy_ready {
                not_ready.push(name);
            }
        }
    }
    findings.push(if not_injected.is_empty() {
        pass("meshed pods", format!("{injected} injected pod(s), none left out"))
    } else {
        problem(
            Outcome::Warn,
            "meshed pods",
            format!(
                "{} pod(s) in meshed namespaces run without the proxy: {}",
                not_injected.len(),
                list(&not_injected)
            ),
            "they were created before the namespace was labelled: kubectl -n <namespace> rollout restart deployment",
        )
    });
    if !not_ready.is_empty() {
        findings.push(problem(
            Outcome::Fail,
            "proxies",
            format!("{} proxy(ies) not ready: {}", not_ready.len(), list(&not_ready)),
            "kubectl -n <namespace> logs <pod> -c vigil-proxy (no certificate: check the control plane; no snapshot: its discovery port)",
        ));
    }
    findings
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out += &format!(" and {} more", names.len() - SHOWN);
    }
    out
}

/// The mesh model as the control plane builds it from these objects, and its problems.
async fn model(
    client: &kube::Client,
    opts: &ClusterCheck,
    routes: Vec<RouteObject>,
) -> Vec<Finding> {
    let check = "mesh model";
    let injected = ListParams::default().labels(&format!("{INJECTED_LABEL}=true"));
    let all = ListParams::default();
    let pods = Api::<Pod>::all(client.clone()).list(&injected).await;
    let services = Api::<Service>::all(client.clone()).list(&all).await;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&all).await;
    let accounts = Api::<ServiceAccount>::all(client.clone())
        .list_metadata(&all)
        .await;
    let (Ok(pods), Ok(services), Ok(slices), Ok(accounts)) = (pods, services, slices, accounts)
    else {
        return vec![problem(
            Outcome::Fail,
            check,
            "cannot list pods, services, endpointslices or serviceaccounts across namespaces",
            "check your credentials: the control plane's ClusterRole (manifests/base/rbac.yaml) shows what it reads",
        )];
    };
    let objects = ClusterObjects {
        pods: arcs(pods),
        services: arcs(services),
        slices: arcs(slices),
        service_accounts: accounts
            .items
            .iter()
            .filter_map(|a| Some((a.metadata.namespace.clone()?, a.metadata.name.clone()?)))
            .collect::<BTreeSet<_>>(),
        routes,
    };
    let route_count = objects.routes.len();
    let (model, problems) = mesh_model_and_problems(&opts.trust_domain, &objects);
    let mut findings = vec![pass(
        check,
        format!(
            "{} workload(s), {} service(s), {route_count} route(s)",
            model.workloads.len(),
            model.services.len()
        ),
    )];
    for p in problems {
        findings.push(problem(
            Outcome::Warn,
            check,
            p,
            "the rest of the mesh is served; fix the object named (docs/traffic.md)",
        ));
    }
    findings
}
