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
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use super::model::{mesh_model, ClusterObjects};
use super::policy::{self, VigilPolicy};
use crate::discovery_service::MeshState;
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
        }
    }
}

/// Starts the watches; returns their stores and a signal raised on every change.
pub fn start(client: &kube::Client, opts: &WatchOptions) -> (ClusterStores, Arc<Notify>) {
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
    let mut last_error = String::new();
    loop {
        let model = mesh_model(&opts.trust_domain, &stores.objects());
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
