//! `vigil control-plane`: the CA, the identity and discovery services, and the watch on
//! the mesh file and policy directory that keeps every proxy's snapshot current.
//!
//! Each poll hashes the mesh file's bytes and the policy sources first: only when that
//! fingerprint moves is the file parsed, the model rebuilt and the Rego bundle compiled,
//! so an idle mesh costs a read and a hash per interval whatever its size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vigil_identity::{CertificateAuthority, SvidStore, TlsOptions, TrustStore};

use crate::discovery_service::{ConnectedProxies, DiscoveryService, MeshState};
use crate::identity_service::IdentityService;
use crate::inject::{webhook, InjectConfig};
use crate::mesh::{MeshFile, PolicySettings};
use crate::own_identity::{control_plane_id, issue_own, renew_own};
use crate::{policy_source, tls_listener};

/// How the control plane is started.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub mesh_file: PathBuf,
    pub data_dir: PathBuf,
    /// Operator-supplied signing CA (certificate, key, chain up to the root).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub ca_chain: Option<PathBuf>,
    /// How often the mesh file and policy directory are checked for changes.
    pub reload_interval: Duration,
    /// Where the dashboard reads its numbers from and how much it keeps.
    pub dashboard: crate::dashboard::DashboardOptions,
    /// The namespace the control plane's identity names (`--namespace`): proxies are told
    /// it and check it, so a mesh installed elsewhere than `vigil-system` still connects.
    pub namespace: String,
    /// Which of the mesh file's control-plane replicas this process is (0: the addresses
    /// of `control_plane:` itself, N: the Nth of `control_plane.replicas`).
    pub replica: usize,
}

/// Where proxies find the trust bundle in local mode.
pub fn trust_bundle_path(data_dir: &Path) -> PathBuf {
    data_dir.join("trust-bundle.pem")
}

/// Runs until the process is stopped.
pub async fn run(opts: ControlPlaneOptions) -> anyhow::Result<()> {
    let mesh = MeshFile::load(&opts.mesh_file)?;
    let trust_domain = mesh.trust_domain.clone();
    // Not private: proxies running as other users read the trust bundle here. The CA
    // key inside is a file of mode 0600 in its own directory.
    std::fs::create_dir_all(&opts.data_dir).with_context(|| {
        format!(
            "creating data directory {} (pass a writable --data-dir)",
            opts.data_dir.display()
        )
    })?;

    let (ca, ca_dir, ca_status) = load_ca(&opts, &trust_domain)?;
    let ca = Arc::new(ca);
    let bundle_path = trust_bundle_path(&opts.data_dir);
    vigil_identity::write_atomic(&bundle_path, ca.trust_bundle().to_pem().as_bytes(), 0o644)
        .context("writing the trust bundle")?;
    tracing::info!(path = %bundle_path.display(), "trust bundle written; give it to proxies with --trust-bundle");

    let own_id = control_plane_id(&trust_domain, &opts.namespace)?;
    let own_svid = SvidStore::new();
    own_svid.set(issue_own(&ca, &own_id)?);
    let trust = TrustStore::new(&trust_domain, ca.trust_bundle())?;

    // The JWT-SVID key: private to this process like the CA key; its JWKS goes to every
    // proxy with discovery and to policy authors as <data-dir>/jwt-bundle.json.
    let jwt_signer = Arc::new(
        vigil_identity::JwtSvidSigner::load_or_generate(&opts.data_dir.join("jwt-svid-key.pem"))
            .context("loading or creating the JWT-SVID key under the data directory")?,
    );
    vigil_identity::write_atomic(
        &opts.data_dir.join("jwt-bundle.json"),
        jwt_signer.jwks().as_bytes(),
        0o644,
    )
    .context("writing the JWT bundle")?;
    let policies =
        policy_source::load_all(&mesh, &jwt_signer.jwks()).map_err(anyhow::Error::msg)?;
    for served in policies.all() {
        tracing::info!(policy = %served.bundle.name, version = %served.bundle.version, candidate = ?served.candidate.as_ref().map(|c| &c.version), "policy bundle loaded");
    }
    let state = MeshState {
        model: mesh.model()?,
        trust_bundle_der: ca
            .trust_bundle()
            .roots()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        policies,
        jwt_bundle: jwt_signer.jwks(),
    };
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let mesh = Arc::new(ArcSwap::from_pointee(mesh));
    let proxies = Arc::new(ConnectedProxies::default());

    let addresses = mesh.load().control_plane.replica(opts.replica)?;
    let identity_listener = bind(addresses.identity, "identity").await?;
    let discovery_listener = bind(addresses.discovery, "discovery").await?;
    // Only Kubernetes calls the webhook, so in local mode a busy port is not fatal, and a
    // replica given no webhook address (port 0) serves none.
    let webhook = match TcpListener::bind(addresses.webhook).await {
        Ok(_) if addresses.webhook.port() == 0 => None,
        Ok(listener) => {
            let config = InjectConfig {
                trust_domain: trust_domain.clone(),
                control_plane_namespace: opts.namespace.clone(),
                identity_address: addresses.identity.to_string(),
                discovery_address: addresses.discovery.to_string(),
                trust_bundle_pem: Some(ca.trust_bundle().to_pem()),
                ..InjectConfig::default()
            };
            Some((listener, Arc::new(ArcSwap::from_pointee(config))))
        }
        Err(e) => {
            tracing::warn!(address = %addresses.webhook, error = %e, "injection webhook not served (set control_plane.webhook to a free address to serve it)");
            None
        }
    };
    tracing::info!(replica = opts.replica, identity = %addresses.identity, discovery = %addresses.discovery, trust_domain = %trust_domain, "control plane serving");

    let identity = IdentityService::local(ca.clone(), mesh.clone()).with_jwt_signer(jwt_signer);
    let live_ca = identity.ca_handle();
    let ca_status = Arc::new(ArcSwap::from_pointee(ca_status));
    let rotation = match ca_dir {
        Some(dir) => futures::future::Either::Left(crate::ca_rotation::watch(
            dir,
            crate::ca_rotation::LiveCa {
                ca: live_ca.clone(),
                status: ca_status.clone(),
                trust: trust.clone(),
                own_id: own_id.clone(),
                own_svid: own_svid.clone(),
                state: state_tx.clone(),
                bundle_path: bundle_path.clone(),
            },
            opts.reload_interval,
        )),
        None => futures::future::Either::Right(std::future::pending::<()>()),
    };
    let mut metrics = prometheus_client::registry::Registry::with_prefix("vigil");
    identity.refusals().register(&mut metrics);
    proxies.register(&mut metrics);
    let dashboard = crate::dashboard::run(
        addresses.dashboard,
        crate::dashboard::Sources {
            mesh: mesh.clone(),
            state: state_rx.clone(),
            proxies: proxies.clone(),
            data_dir: opts.data_dir.clone(),
            metrics: Arc::new(metrics),
            ca: ca_status,
            proxies_from_model: false,
        },
        opts.dashboard.clone(),
    );
    let servers = serve(Serving {
        identity,
        state: state_rx,
        proxies,
        own_svid: own_svid.clone(),
        trust,
        identity_listener,
        discovery_listener,
        webhook,
    });
    let reload = watch_sources(opts.clone(), mesh.clone(), state_tx);
    let renew = renew_own(live_ca, own_id, own_svid);
    tokio::select! {
        r = servers => r?,
        _ = reload => {},
        _ = renew => {},
        _ = dashboard => {},
        _ = rotation => {},
    }
    Ok(())
}

/// What the control plane serves in either mode: identity (15012), discovery (15010) and,
/// when a listener is given, the injection webhook (15017).
pub(crate) struct Serving {
    pub identity: IdentityService,
    pub state: watch::Receiver<Arc<MeshState>>,
    pub proxies: Arc<ConnectedProxies>,
    pub own_svid: Arc<SvidStore>,
    pub trust: Arc<TrustStore>,
    pub identity_listener: TcpListener,
    pub discovery_listener: TcpListener,
    pub webhook: Option<(TcpListener, Arc<ArcSwap<InjectConfig>>)>,
}

/// Runs the listeners until one of them stops.
pub(crate) async fn serve(s: Serving) -> anyhow::Result<()> {
    let tls = TlsOptions {
        alpn: vec![b"h2".to_vec()],
        ..TlsOptions::default()
    };
    let identity = tonic::transport::Server::builder()
        .add_service(vigil_api::identity::IdentityServer::new(s.identity))
        .serve_with_incoming(tls_listener::incoming(
            s.identity_listener,
            vigil_identity::server_config(s.own_svid.clone(), &tls),
            "identity",
        ));
    let discovery = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .add_service(vigil_api::wire::DiscoveryServer::new(
            DiscoveryService::new(s.state, s.proxies),
        ))
        .serve_with_incoming(tls_listener::incoming(
            s.discovery_listener,
            vigil_identity::mtls_server_config(s.own_svid.clone(), s.trust, &tls),
            "discovery",
        ));
    let own_svid = s.own_svid;
    let webhook = async move {
        match s.webhook {
            Some((listener, config)) => {
                let tls = vigil_identity::server_config(
                    own_svid,
                    &TlsOptions {
                        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                        ..TlsOptions::default()
                    },
                );
                webhook::serve(listener, tls, config).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = identity => r.context("identity service stopped")?,
        r = discovery => r.context("discovery service stopped")?,
        _ = webhook => {},
    }
    Ok(())
}

/// The CA, the directory it rotates through (none for operator files) and its status.
fn load_ca(
    opts: &ControlPlaneOptions,
    trust_domain: &str,
) -> anyhow::Result<(
    CertificateAuthority,
    Option<vigil_identity::CaDirectory>,
    crate::ca_rotation::CaStatus,
)> {
    match (&opts.ca_cert, &opts.ca_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let chain = opts.ca_chain.as_ref().map(read).transpose()?;
            let ca = CertificateAuthority::from_pem(&read(cert)?, &read(key)?, chain.as_deref())
                .context("loading the operator-supplied CA (--ca-cert/--ca-key/--ca-chain)")?;
            if ca.trust_domain() != trust_domain {
                tracing::info!(ca = %ca.trust_domain(), mesh = %trust_domain, "operator CA carries no trust domain of its own; issuing for the mesh's");
            }
            let status = crate::ca_rotation::CaStatus::fixed(&ca, "operator files (--ca-cert)");
            Ok((ca, None, status))
        }
        (None, None) => {
            let dir = vigil_identity::CaDirectory::new(&opts.data_dir.join("ca"), trust_domain);
            let loaded = dir
                .load()
                .context("loading or creating the CA under the data directory")?;
            if loaded.phase != vigil_identity::RotationPhase::Steady {
                tracing::info!(phase = loaded.phase.as_str(), roots = ?loaded.roots, "a CA rotation is under way; `vigil ca rotate` goes on with it");
            }
            let status = crate::ca_rotation::CaStatus::of(&dir, &loaded);
            Ok((loaded.ca, Some(dir), status))
        }
        _ => anyhow::bail!("--ca-cert and --ca-key go together; pass both or neither"),
    }
}

/// Polls the mesh file and the policy directory. A change that does not parse or
/// compile is reported and ignored: the last good state stays in force.
async fn watch_sources(
    opts: ControlPlaneOptions,
    mesh: Arc<ArcSwap<MeshFile>>,
    state: watch::Sender<Arc<MeshState>>,
) {
    let mut last_error = String::new();
    // Unknown at start, so the first poll rebuilds once whatever happened since loading.
    let mut last_fingerprint = None;
    loop {
        tokio::time::sleep(opts.reload_interval).await;
        let fingerprint = match sources_fingerprint(&opts.mesh_file, &mesh.load()) {
            Ok(f) => f,
            Err(e) => {
                report(&mut last_error, e);
                continue;
            }
        };
        if last_fingerprint == Some(fingerprint) {
            continue;
        }
        last_fingerprint = Some(fingerprint);
        let new_mesh = match MeshFile::load(&opts.mesh_file) {
            Ok(m) => m,
            Err(e) => {
                report(&mut last_error, e.to_string());
                continue;
            }
        };
        let model = match new_mesh.model() {
            Ok(m) => m,
            Err(e) => {
                report(&mut last_error, e.to_string());
                continue;
            }
        };
        let current = state.borrow().clone();
        let policies = match policy_source::load_all(&new_mesh, &current.jwt_bundle) {
            Ok(p) => p,
            Err(e) => {
                report(&mut last_error, e);
                current.policies.clone()
            }
        };
        // The fingerprint covered the old policy directories: when the file names others,
        // the next poll rebuilds once more and fingerprints the new ones.
        if policy_dirs(&new_mesh) != policy_dirs(&mesh.load()) {
            last_fingerprint = None;
        }
        if model != current.model || policies != current.policies {
            if policies != current.policies {
                for served in policies.all() {
                    tracing::info!(policy = %served.bundle.name, version = %served.bundle.version, "policy bundles changed; pushing to proxies");
                }
            }
            if model != current.model {
                tracing::info!("mesh changed; pushing to proxies");
            }
            // The trust bundle is the CA watcher's: keep whatever is current at the swap.
            state.send_modify(|current| {
                *current = Arc::new(MeshState {
                    model,
                    trust_bundle_der: current.trust_bundle_der.clone(),
                    policies,
                    jwt_bundle: current.jwt_bundle.clone(),
                });
            });
            last_error.clear();
        }
        mesh.store(Arc::new(new_mesh));
    }
}

/// Every policy directory the mesh file names: bundles and candidates.
fn policy_dirs(mesh: &MeshFile) -> Vec<PathBuf> {
    mesh.policy
        .iter()
        .chain(mesh.policies.iter().map(|p| &p.bundle))
        .flat_map(|p: &PolicySettings| std::iter::once(p.dir.clone()).chain(p.candidate.clone()))
        .collect()
}

/// A hash of the mesh file's bytes and of the policy files it names (the shipped default
/// policy depends on the file alone): equal fingerprints mean nothing to rebuild.
fn sources_fingerprint(mesh_file: &Path, mesh: &MeshFile) -> Result<[u8; 32], String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(mesh_file).map_err(|e| {
        format!(
            "cannot read mesh file {}: {e} (restore it; the last good mesh stays in force)",
            mesh_file.display()
        )
    })?;
    let mut hash = Sha256::new();
    hash.update((bytes.len() as u64).to_le_bytes());
    hash.update(&bytes);
    for dir in policy_dirs(mesh) {
        match vigil_authz::PolicyBundle::read_dir(&dir) {
            Ok(files) => {
                for file in files {
                    for part in [file.path.as_bytes(), file.contents.as_bytes()] {
                        hash.update((part.len() as u64).to_le_bytes());
                        hash.update(part);
                    }
                }
            }
            // Compiling reports the problem; an unreadable directory that stays so is
            // reported once rather than on every poll.
            Err(e) => hash.update(format!("unreadable: {e}").as_bytes()),
        }
    }
    Ok(hash.finalize().into())
}

/// Logs a reload problem once, not on every poll.
fn report(last: &mut String, message: String) {
    if *last != message {
        tracing::error!("{message}");
        *last = message;
    }
}

pub(crate) async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the {what} listener on {addr}: is another control plane running? change control_plane.{what} in the mesh file")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_identity::SpiffeId;

    use crate::own_identity::DEFAULT_NAMESPACE;
    use tokio_stream::StreamExt;
    use vigil_api::wire::Discovery;

    use crate::discovery_service::DiscoveryService;
    use crate::tls_listener::PeerInfo;

    const INTERVAL: Duration = Duration::from_millis(100);
    const WEB: &str = "workloads:\n  - { name: web, namespace: shop, join_token: \"580e03ca12da94db77610eb82123ebf4\", app_port: 8080 }\n";
    const API: &str = "  - { name: api, namespace: shop, join_token: \"16221b9e1a926f6fdc29f532ef0f830f\", app_port: 8081 }\n";

    fn state_of(mesh: &MeshFile) -> MeshState {
        MeshState {
            model: mesh.model().expect("model"),
            trust_bundle_der: vec![],
            policies: policy_source::load_all(mesh, "").expect("policy"),
            jwt_bundle: String::new(),
        }
    }

    /// What a test watches: the mesh in force and a proxy's discovery stream after its
    /// first snapshot, with the control plane polling `mesh_file`.
    struct Watched {
        mesh: Arc<ArcSwap<MeshFile>>,
        stream: crate::discovery_service::WatchStream,
        first: vigil_api::Snapshot,
    }

    async fn watch_mesh_file(dir: &Path, mesh_file: &Path) -> Watched {
        let loaded = MeshFile::load(mesh_file).expect("mesh");
        let (state_tx, state_rx) = watch::channel(Arc::new(state_of(&loaded)));
        let mesh = Arc::new(ArcSwap::from_pointee(loaded));
        let opts = ControlPlaneOptions {
            mesh_file: mesh_file.to_path_buf(),
            data_dir: dir.to_path_buf(),
            ca_cert: None,
            ca_key: None,
            ca_chain: None,
            reload_interval: INTERVAL,
            dashboard: crate::dashboard::DashboardOptions::default(),
            namespace: DEFAULT_NAMESPACE.into(),
            replica: 0,
        };
        let discovery = DiscoveryService::new(state_rx, Arc::new(ConnectedProxies::default()));
        let mut request = tonic::Request::new(vigil_api::wire::WatchRequest::default());
        request.extensions_mut().insert(PeerInfo {
            address: "127.0.0.1:40000".parse().expect("addr"),
            spiffe_id: Some(SpiffeId::workload("vigil.local", "shop", "web").expect("id")),
        });
        let mut stream = discovery.watch(request).await.expect("watch").into_inner();
        let first = stream
            .next()
            .await
            .expect("a snapshot")
            .expect("ok")
            .decode_snapshot()
            .expect("decodes");
        tokio::spawn(watch_sources(opts, mesh.clone(), state_tx));
        // The first poll rebuilds once (nothing is known at start); later ones must not.
        tokio::time::sleep(INTERVAL * 2).await;
        Watched {
            mesh,
            stream,
            first,
        }
    }

    async fn next_within_polls(w: &mut Watched) -> vigil_api::Snapshot {
        tokio::time::timeout(INTERVAL * 5, w.stream.next())
            .await
            .expect("a change is pushed within a few polls")
            .expect("a snapshot")
            .expect("ok")
            .decode_snapshot()
            .expect("decodes")
    }

    /// A poll that finds the mesh file and policy unchanged does nothing: the watching
    /// proxy gets no second snapshot and the mesh in force (whose join-token index the
    /// identity service keeps) is the same one. A changed file still reaches the proxy.
    #[tokio::test(start_paused = true)]
    async fn an_unchanged_mesh_file_is_not_rebuilt_and_a_changed_one_is_pushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh_file = dir.path().join("mesh.yaml");
        let text = format!("trust_domain: vigil.local\n{WEB}");
        std::fs::write(&mesh_file, &text).expect("write mesh");
        let mut watched = watch_mesh_file(dir.path(), &mesh_file).await;

        let in_force = watched.mesh.load_full();
        let quiet = tokio::time::timeout(INTERVAL * 5, watched.stream.next()).await;
        assert!(
            quiet.is_err(),
            "an unchanged mesh file pushed again: {quiet:?}"
        );
        assert!(
            Arc::ptr_eq(&in_force, &watched.mesh.load_full()),
            "an unchanged mesh file was parsed and replaced again"
        );

        // Web's own port changes, so its snapshot does.
        let changed = format!("{}{API}", text.replace("8080", "8090"));
        std::fs::write(&mesh_file, changed).expect("rewrite mesh");
        let second = next_within_polls(&mut watched).await;
        assert_ne!(second.version, watched.first.version);
        assert_eq!(second.workload.map(|w| w.app_port), Some(8090));
        assert!(watched
            .mesh
            .load()
            .workloads
            .iter()
            .any(|w| w.name == "api"));
    }

    /// The fingerprint covers the policy directory: editing a policy file alone, with the
    /// mesh file untouched, still reaches the proxy.
    #[tokio::test(start_paused = true)]
    async fn a_changed_policy_file_is_pushed_with_the_mesh_file_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir).expect("policy dir");
        let rego = include_str!("../../policies/default/policy.rego");
        std::fs::write(policy_dir.join("policy.rego"), rego).expect("write policy");
        let mesh_file = dir.path().join("mesh.yaml");
        let text = format!("trust_domain: vigil.local\npolicy: {{ dir: policy }}\n{WEB}");
        std::fs::write(&mesh_file, &text).expect("write mesh");
        let mut watched = watch_mesh_file(dir.path(), &mesh_file).await;
        let quiet = tokio::time::timeout(INTERVAL * 5, watched.stream.next()).await;
        assert!(
            quiet.is_err(),
            "an unchanged policy pushed again: {quiet:?}"
        );

        std::fs::write(
            policy_dir.join("policy.rego"),
            format!("{rego}\n# reviewed\n"),
        )
        .expect("rewrite policy");
        let second = next_within_polls(&mut watched).await;
        let version = |s: &vigil_api::Snapshot| s.policy.as_ref().map(|p| p.version.clone());
        assert_ne!(version(&second), version(&watched.first));
    }
}
