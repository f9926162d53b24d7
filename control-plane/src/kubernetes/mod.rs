//! Cluster mode (`vigil control-plane --kubernetes`): the Kubernetes API is the source of
//! truth instead of a mesh file, and feeds the same [`MeshModel`](crate::model::MeshModel).
//!
//! - [`model`]: Pods, Services, EndpointSlices and ServiceAccounts → the mesh model;
//! - [`watch`]: reflector watches that rebuild it on every change;
//! - [`token_review`]: proxies prove who they are with a projected ServiceAccount token;
//! - [`ca_secret`]: the CA lives in a Secret, shared by every replica;
//! - [`policy`]: the `VigilPolicy` custom resource or a ConfigMap carries the Rego bundle;
//! - [`check`]: `vigil check --kubernetes`, the installed mesh's health read from the API.
//!
//! Each replica also serves the dashboard and its own `/metrics` on 15080 ([`dashboard`]).
//!
//! Replicas need no leader: each reads the same API objects and serves the same snapshots,
//! the CA Secret is created once (whoever loses the create race reads the winner's), and
//! proxies reconnect to any replica behind the Service.

pub mod ca_secret;
pub mod check;
pub mod model;
pub mod policy;
pub mod token_review;
pub mod watch;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::Api;
use vigil_identity::{SvidStore, TrustStore};

use crate::control_plane::{bind, serve, Serving};
use crate::discovery_service::{ConnectedProxies, MeshState};
use crate::identity_service::IdentityService;
use crate::inject::InjectConfig;
use crate::model::MeshModel;
use crate::own_identity::{control_plane_id, issue_own, renew_own};
use crate::policy_source;

/// How cluster mode is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub trust_domain: String,
    /// The control plane's own namespace (its Secret, policy objects and Service).
    pub namespace: String,
    pub ca_secret: String,
    /// Name of the VigilPolicy in force.
    pub policy: String,
    /// Name of the policy ConfigMap used when there is no such VigilPolicy.
    pub policy_config_map: String,
    pub identity: SocketAddr,
    pub discovery: SocketAddr,
    pub webhook: SocketAddr,
    pub certificate_lifetime: Duration,
    /// What injected pods get (image, control plane addresses); the trust bundle is added.
    pub inject: InjectConfig,
    /// MutatingWebhookConfiguration whose caBundle is kept equal to the trust bundle.
    pub webhook_configuration: Option<String>,
    /// The dashboard and the control plane's `/metrics` (15080, which the manifest
    /// annotates for Prometheus to scrape).
    pub dashboard: SocketAddr,
    /// Where the dashboard reads request metrics (`--prometheus`) and who may read it.
    pub dashboard_options: crate::dashboard::DashboardOptions,
}

/// Runs cluster mode until the process stops.
pub async fn run(opts: ClusterOptions) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(
        "connecting to the Kubernetes API (in a pod: its ServiceAccount; elsewhere: KUBECONFIG)",
    )?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let ca =
        Arc::new(ca_secret::load_or_create(&secrets, &opts.ca_secret, &opts.trust_domain).await?);
    let bundle_pem = ca.trust_bundle().to_pem();

    let own_id = control_plane_id(&opts.trust_domain, &opts.namespace)?;
    let own_svid = SvidStore::new();
    own_svid.set(issue_own(&ca, &own_id)?);
    let trust = TrustStore::new(&opts.trust_domain, ca.trust_bundle())?;

    if let Some(name) = &opts.webhook_configuration {
        if let Err(e) = set_webhook_ca_bundle(&client, name, &bundle_pem).await {
            tracing::error!(webhook = %name, error = %e, "cannot set the webhook's caBundle; the API server will not trust the injector until it is set");
        }
    }
    let inject = InjectConfig {
        trust_domain: opts.trust_domain.clone(),
        control_plane_namespace: opts.namespace.clone(),
        trust_bundle_pem: Some(bundle_pem),
        ..opts.inject.clone()
    };

    let default_policy =
        policy_source::load(None, &opts.trust_domain).map_err(anyhow::Error::msg)?;
    let (state_tx, state_rx) = tokio::sync::watch::channel(Arc::new(MeshState {
        model: MeshModel {
            trust_domain: opts.trust_domain.clone(),
            workloads: vec![],
            services: vec![],
        },
        trust_bundle_der: ca
            .trust_bundle()
            .roots()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        policies: policy_source::ServedPolicies::mesh_wide(default_policy.wire),
        jwt_bundle: String::new(),
    }));
    let watch_opts = watch::WatchOptions {
        trust_domain: opts.trust_domain.clone(),
        namespace: opts.namespace.clone(),
        policy: opts.policy.clone(),
        policy_config_map: opts.policy_config_map.clone(),
    };
    let (stores, changed) = watch::start(&client, &watch_opts).await;
    let publish = watch::publish(stores, changed, watch_opts, state_tx);

    let lifetime = opts.certificate_lifetime;
    let identity = IdentityService::new(
        ca.clone(),
        Arc::new(token_review::TokenReviews {
            client: client.clone(),
            trust_domain: opts.trust_domain.clone(),
        }),
        Arc::new(move || lifetime),
    );
    let live_ca = identity.ca_handle();
    let proxies = Arc::new(ConnectedProxies::default());
    let mut metrics = prometheus_client::registry::Registry::with_prefix("vigil");
    identity.refusals().register(&mut metrics);
    proxies.register(&mut metrics);
    let ca_status = crate::ca_rotation::CaStatus::fixed(&ca, &format!("Secret {}", opts.ca_secret));
    let dashboard = dashboard(&opts, state_rx.clone(), proxies.clone(), metrics, ca_status);
    let servers = serve(Serving {
        identity,
        state: state_rx,
        proxies,
        own_svid: own_svid.clone(),
        trust,
        identity_listener: bind(opts.identity, "identity").await?,
        discovery_listener: bind(opts.discovery, "discovery").await?,
        webhook: Some((
            bind(opts.webhook, "webhook").await?,
            Arc::new(ArcSwap::from_pointee(inject)),
        )),
    });
    tracing::info!(identity = %opts.identity, discovery = %opts.discovery, webhook = %opts.webhook, dashboard = %opts.dashboard, trust_domain = %opts.trust_domain, "control plane serving from the Kubernetes API");
    tokio::select! {
        r = servers => r?,
        _ = dashboard => {},
        _ = publish => {},
        _ = renew_own(live_ca, own_id, own_svid) => {},
    }
    Ok(())
}

/// The dashboard of cluster mode, on `opts.dashboard`: the service graph and policy from
/// the Kubernetes watch (`state`), the proxies connected to this replica, and the control
/// plane's own `/metrics`. The proxies it reads are the watched meshed pods, on their
/// metrics port (or the Prometheus it is given).
pub(crate) fn dashboard(
    opts: &ClusterOptions,
    state: tokio::sync::watch::Receiver<Arc<MeshState>>,
    proxies: Arc<ConnectedProxies>,
    metrics: prometheus_client::registry::Registry,
    ca_status: crate::ca_rotation::CaStatus,
) -> impl std::future::Future<Output = ()> {
    let mesh = crate::mesh::MeshFile {
        trust_domain: opts.trust_domain.clone(),
        certificate_lifetime: opts.certificate_lifetime,
        control_plane: crate::mesh::ControlPlaneAddresses {
            identity: opts.identity,
            discovery: opts.discovery,
            dashboard: opts.dashboard,
            webhook: opts.webhook,
            dashboard_hosts: Vec::new(),
            replicas: Vec::new(),
        },
        policy: None,
        policies: Vec::new(),
        workloads: Vec::new(),
        services: Vec::new(),
        routes: Vec::new(),
    };
    crate::dashboard::run(
        opts.dashboard,
        crate::dashboard::Sources {
            mesh: Arc::new(ArcSwap::from_pointee(mesh)),
            state,
            proxies,
            // Decision logs are the proxies' own in a cluster; the root filesystem is
            // read-only and /tmp an emptyDir (manifests/base/control-plane.yaml).
            data_dir: std::env::temp_dir(),
            metrics: Arc::new(metrics),
            ca: Arc::new(ArcSwap::from_pointee(ca_status)),
            proxies_from_model: true,
        },
        opts.dashboard_options.clone(),
    )
}

/// The JSONPatch that sets every webhook's `clientConfig.caBundle` to `pem`, or `None`
/// when they all carry it already.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    pem: &str,
) -> Option<json_patch::Patch> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    let current = |i: usize| {
        webhooks[i]
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
    };
    if (0..webhooks.len()).all(|i| current(i) == Some(pem.as_bytes())) {
        return None;
    }
    let ops = (0..webhooks.len())
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": encoded,
            }))
        })
        .collect::<Result<Vec<json_patch::PatchOperation>, _>>()
        .ok()?;
    Some(json_patch::Patch(ops))
}

async fn set_webhook_ca_bundle(client: &kube::Client, name: &str, pem: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api
        .get(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
    if let Some(patch) = ca_bundle_patch(&config, pem) {
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .with_context(|| format!("patching MutatingWebhookConfiguration {name}"))?;
        tracing::info!(webhook = %name, "webhook caBundle set to the mesh's trust bundle");
    }
    Ok(())
}
