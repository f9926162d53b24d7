//! Watches that keep cluster mode's [`MeshState`] current: reflector stores for Pods,
//! Services, EndpointSlices, ServiceAccounts (metadata only) and the policy objects, and a
//! loop that rebuilds the model when any of them changes.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use super::model::{mesh_model_and_problems, ClusterObjects};
use super::policy::{self, VigilPolicy};
use crate::discovery_service::MeshState;
use crate::gateway::RouteObject;
use crate::inject::INJECTED_LABEL;

/// How long a fresh replica waits for its first complete view before serving what it has.
const INITIAL_SYNC: Duration = Duration::from_secs(30);
/// Changes arriving together (a rollout) are folded into one new snapshot.
const SETTLE: Duration = Duration::from_millis(200);

/// Names the watches need.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub trust_domain: String,
    /// The control plane's namespace, where the policy objects live.
    pub namespace: String,
    pub policy: String,
    pub policy_config_map: String,
}

/// The stores behind the model.
pub struct ClusterStores {
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    accounts: Store<PartialObjectMeta<ServiceAccount>>,
    policies: Store<VigilPolicy>,
    config_maps: Store<ConfigMap>,
    /// HTTPRoutes and GRPCRoutes, when the cluster serves the Gateway API.
    routes: Vec<(&'static str, Store<DynamicObject>)>,
}

impl ClusterStores {
    /// The objects as currently known.
    pub fn objects(&self) -> ClusterObjects {
        ClusterObjects {
            pods: self.pods.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            service_accounts: self
                .accounts
                .state()
                .iter()
                .filter_map(|a| Some((a.namespace()?, a.metadata.name.clone()?)))
                .collect::<BTreeSet<_>>(),
            routes: self
                .routes
                .iter()
                .flat_map(|(kind, store)| {
                    store
                        .state()
                        .into_iter()
                        .filter_map(move |o| route_object(kind, &o))
                })
                .collect(),
        }
    }
}

/// A watched route as the converter reads it; one that does not parse is left out (the
/// API server validated it against its CRD, so this means a newer, unknown shape).
pub(crate) fn route_object(kind: &str, object: &DynamicObject) -> Option<RouteObject> {
    let mut value = serde_json::to_value(object).ok()?;
    value["kind"] = serde_json::Value::from(kind);
    match serde_json::from_value(value) {
        Ok(route) => Some(route),
        Err(e) => {
            tracing::warn!(kind, name = %object.name_any(), error = %e, "route left out: Vigil cannot read it");
            None
        }
    }
}

/// The Gateway API route kinds the cluster serves (HTTPRoute, GRPCRoute), or none.
pub(crate) async fn served_route_kinds(client: &kube::Client) -> Vec<ApiResource> {
    let group_version = format!("{}/v1", crate::gateway::GROUP);
    match client.list_api_group_resources(&group_version).await {
        Ok(list) => list
            .resources
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "HTTPRoute" | "GRPCRoute"))
            .map(|r| {
                ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk(crate::gateway::GROUP, "v1", &r.kind),
                    &r.name,
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The route kinds Vigil watches: checked once at start (install the CRDs, then restart
/// the control plane).
async fn route_kinds(client: &kube::Client) -> Vec<ApiResource> {
    let kinds = served_route_kinds(client).await;
    if kinds.is_empty() {
        tracing::info!("the cluster does not serve {}/v1: HTTPRoutes and GRPCRoutes are not read (install the Gateway API CRDs, then restart the control plane)", crate::gateway::GROUP);
    }
    kinds
}

/// Starts the watches; returns their stores and a signal raised on every change.
pub async fn start(client: &kube::Client, opts: &WatchOptions) -> (ClusterStores, Arc<Notify>) {
    let kinds = route_kinds(client).await;
    let changed = Arc::new(Notify::new());
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stores = ClusterStores {
        pods: reflect(
            "pods",
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true")),
            &changed,
        ),
        services: reflect(
            "services",
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        slices: reflect(
            "endpointslices",
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        // Metadata only: existence is all the model needs of a ServiceAccount.
        accounts: reflect(
            "serviceaccounts",
            Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        // All of them: the mesh-wide one by name, the others attached by their targets.
        policies: reflect(
            "vigilpolicies",
            Api::namespaced(client.clone(), &opts.namespace),
            watcher::Config::default(),
            &changed,
        ),
        config_maps: reflect(
            "configmaps",
            Api::namespaced(client.clone(), &opts.namespace),
            by_name(&opts.policy_config_map),
            &changed,
        ),
        routes: kinds
            .into_iter()
            .map(|kind| {
                let what: &'static str = if kind.kind == "GRPCRoute" {
                    "grpcroutes"
                } else {
                    "httproutes"
                };
                let name: &'static str = if kind.kind == "GRPCRoute" {
                    "GRPCRoute"
                } else {
                    "HTTPRoute"
                };
                let api = Api::<DynamicObject>::all_with(client.clone(), &kind);
                let writer = reflector::store::Writer::new(kind);
                let reader = writer.as_reader();
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                spawn_stream(what, reflector::reflector(writer, stream), changed.clone());
                (name, reader)
            })
            .collect(),
    };
    (stores, changed)
}

fn reflect<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear());
    spawn_stream(what, reflector::reflector(writer, stream), changed.clone());
    reader
}

fn spawn_stream<S, T>(what: &'static str, stream: S, changed: Arc<Notify>)
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        tracing::info!(resource = what, "watch recovered");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(resource = what, error = %e, "watch failing; retrying with backoff (check RBAC and CRDs)");
                        failing = true;
                    }
                }
            }
        }
    });
}

/// Waits for a store's first complete list, for at most [`INITIAL_SYNC`].
async fn wait_ready<K>(what: &str, store: &Store<K>)
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    if tokio::time::timeout(INITIAL_SYNC, store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::error!(
            resource = what,
            "no complete list after {INITIAL_SYNC:?}; serving what is known"
        );
    }
}

/// Rebuilds the model and the policy bundle on every change and publishes them when they
/// differ. Runs until the process stops.
pub async fn publish(
    stores: ClusterStores,
    changed: Arc<Notify>,
    opts: WatchOptions,
    state: watch::Sender<Arc<MeshState>>,
) {
    wait_ready("pods", &stores.pods).await;
    wait_ready("services", &stores.services).await;
    wait_ready("endpointslices", &stores.slices).await;
    wait_ready("serviceaccounts", &stores.accounts).await;
    wait_ready("vigilpolicies", &stores.policies).await;
    wait_ready("configmaps", &stores.config_maps).await;
    for (kind, store) in &stores.routes {
        wait_ready(kind, store).await;
    }
    let mut last_error = String::new();
    let mut last_problems = Vec::new();
    loop {
        let (model, problems) = mesh_model_and_problems(&opts.trust_domain, &stores.objects());
        if problems != last_problems {
            for p in problems.iter().filter(|p| !last_problems.contains(*p)) {
                tracing::warn!("{p}");
            }
            last_problems = problems;
        }
        let current = state.borrow().clone();
        let config_map = stores
            .config_maps
            .state()
            .into_iter()
            .find(|c| c.name_any() == opts.policy_config_map);
        let policies = match policy::select_all(
            &stores.policies.state(),
            &opts.policy,
            config_map.as_deref(),
            &opts.trust_domain,
        ) {
            Ok(p) => p,
            Err(e) => {
                if e != last_error {
                    tracing::error!("{e}");
                    last_error = e;
                }
                current.policies.clone()
            }
        };
        if model != current.model || policies != current.policies {
            tracing::info!(
                workloads = model.workloads.len(),
                services = model.services.len(),
                policy = policies
                    .mesh_wide
                    .as_ref()
                    .map(|p| p.bundle.version.as_str())
                    .unwrap_or("none"),
                "cluster changed; pushing to proxies"
            );
            state.send_replace(Arc::new(MeshState {
                model,
                trust_bundle_der: current.trust_bundle_der.clone(),
                policies,
                jwt_bundle: current.jwt_bundle.clone(),
            }));
        }
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
    }
}
