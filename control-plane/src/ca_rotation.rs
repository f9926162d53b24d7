//! Trust-anchor rotation without a restart (local mode, CA in `<data-dir>/ca`).
//!
//! The control plane polls the CA directory (see `vigil_identity::CaDirectory` for its
//! phases) and applies each change live: it trusts the new set of roots, serves a
//! certificate of its own from the CA that now signs, rewrites `trust-bundle.pem` and pushes
//! the bundle to every proxy. A proxy that sees its trust bundle change renews within
//! seconds, so certificates move to the new signer without waiting half a lifetime.
//!
//! `vigil ca rotate` drives a whole rotation and waits, at each step, until every proxy
//! has caught up: stage a new root, wait until every proxy trusts it; activate it, wait
//! until every proxy's certificate chains to it; retire the old root, wait until no proxy
//! trusts it any more.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use vigil_identity::{
    CaDirectory, CertificateAuthority, LoadedCa, RotationPhase, SpiffeId, SvidStore, TrustStore,
};

use crate::admin_client;
use crate::discovery_service::MeshState;
use crate::mesh::MeshFile;

/// The CA as the dashboard and `vigil check` show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaStatus {
    /// `steady`, `staged` or `issuing`.
    pub phase: String,
    /// Trusted roots by name, the one that signs first.
    pub roots: Vec<String>,
    /// Where the CA lives: a directory, operator files or a Kubernetes Secret.
    pub source: String,
}

impl CaStatus {
    /// The status of a loaded CA directory.
    pub fn of(dir: &CaDirectory, loaded: &LoadedCa) -> CaStatus {
        CaStatus {
            phase: loaded.phase.as_str().to_string(),
            roots: loaded.roots.clone(),
            source: dir.path().display().to_string(),
        }
    }

    /// A CA that does not rotate through this directory (operator files, a Secret).
    pub fn fixed(ca: &CertificateAuthority, source: &str) -> CaStatus {
        CaStatus {
            phase: RotationPhase::Steady.as_str().to_string(),
            roots: ca
                .trust_bundle()
                .roots()
                .iter()
                .map(vigil_identity::root_name)
                .collect(),
            source: source.to_string(),
        }
    }
}

/// What a CA change updates in the running control plane.
pub struct LiveCa {
    pub ca: Arc<ArcSwap<CertificateAuthority>>,
    pub status: Arc<ArcSwap<CaStatus>>,
    /// Verifies proxies on the discovery port.
    pub trust: Arc<TrustStore>,
    pub own_id: SpiffeId,
    pub own_svid: Arc<SvidStore>,
    pub state: watch::Sender<Arc<MeshState>>,
    pub bundle_path: PathBuf,
}

/// Polls `dir` every `interval` and applies each change. A directory that does not load
/// (a half-written file, a key that does not match) is reported and the CA in force stays.
pub async fn watch(dir: CaDirectory, live: LiveCa, interval: Duration) {
    let mut last = dir.fingerprint();
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(interval).await;
        let now = dir.fingerprint();
        if now == last {
            continue;
        }
        match dir.load().map_err(anyhow::Error::from).and_then(|loaded| {
            let status = CaStatus::of(&dir, &loaded);
            apply(&live, loaded.ca, status)
        }) {
            Ok(()) => {
                last = now;
                last_error.clear();
            }
            Err(e) => {
                let message = format!("{e:#}");
                if message != last_error {
                    tracing::error!(dir = %dir.path().display(), error = %message, "the CA directory changed but cannot be used; the CA in force stays");
                    last_error = message;
                }
            }
        }
    }
}

fn apply(live: &LiveCa, ca: CertificateAuthority, status: CaStatus) -> anyhow::Result<()> {
    let bundle = ca.trust_bundle();
    // Trust first: proxies holding a certificate of either root keep reaching discovery.
    live.trust.set(bundle.clone())?;
    live.own_svid
        .set(crate::own_identity::issue_own(&ca, &live.own_id)?);
    vigil_identity::write_atomic(&live.bundle_path, bundle.to_pem().as_bytes(), 0o644)
        .context("writing the trust bundle")?;
    let der: Vec<Vec<u8>> = bundle.roots().iter().map(|c| c.as_ref().to_vec()).collect();
    live.state.send_modify(|state| {
        let mut next = (**state).clone();
        next.trust_bundle_der = der;
        *state = Arc::new(next);
    });
    tracing::info!(phase = %status.phase, roots = ?status.roots, "CA changed; pushing the trust bundle to proxies");
    live.status.store(Arc::new(status));
    live.ca.store(Arc::new(ca));
    Ok(())
}

/// Which steps `vigil ca rotate` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Stage a new root (or `--cert`/`--key`) beside the current one.
    Stage,
    /// Make the staged CA the signer.
    Activate,
    /// Stop trusting the previous root.
    Retire,
    /// Drop a staged CA that was not activated.
    Abort,
    /// Stage, activate and retire, waiting for every proxy at each step.
    All,
}

/// What one proxy reports of its identity (`/certs`).
struct ProxyTrust {
    workload: String,
    /// What signed its certificate (an intermediate, else a root).
    signer: String,
    trusted: Vec<String>,
}

async fn proxies(mesh: &MeshFile) -> Vec<Result<ProxyTrust, String>> {
    let mut out = Vec::new();
    for w in &mesh.workloads {
        let read = async {
            let (status, body) = admin_client::get(w.proxy.admin, "/certs").await?;
            anyhow::ensure!(status == 200, "/certs answered {status}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let names = |k: &str| -> Vec<String> {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            Ok(ProxyTrust {
                workload: w.name.clone(),
                signer: v["signer"].as_str().unwrap_or_default().to_string(),
                trusted: names("trust_roots"),
            })
        };
        out.push(
            read.await
                .map_err(|e: anyhow::Error| format!("{}: {e:#}", w.name)),
        );
    }
    out
}

/// Waits until `done` holds for every proxy of the mesh, printing who is still behind.
async fn wait_for(
    mesh: &MeshFile,
    what: &str,
    timeout: Duration,
    done: impl Fn(&ProxyTrust) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let behind: Vec<String> = proxies(mesh)
            .await
            .into_iter()
            .filter_map(|p| match p {
                Ok(p) if done(&p) => None,
                Ok(p) => Some(p.workload),
                Err(e) => Some(format!("{e} (unreachable)")),
            })
            .collect();
        if behind.is_empty() {
            eprintln!("  ✓ every proxy {what}");
            return Ok(());
        }
        let line = format!(
            "  waiting: {} of {} proxies not yet {what}: {}",
            behind.len(),
            mesh.workloads.len(),
            behind.join(", ")
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "after {}, {} proxies still not {what}: {}; check that they are running and connected to the control plane (vigil check), then rerun the same step",
                humantime::format_duration(timeout),
                behind.len(),
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `vigil ca rotate`: takes `step` on the CA directory `dir` of the mesh in `mesh` (whose
/// control plane must be running to apply it), waiting for the proxies where the step
/// needs them.
pub async fn rotate(
    dir: &CaDirectory,
    mesh: &MeshFile,
    step: Step,
    operator: Option<(String, String)>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let current = dir.load()?;
    let phase = current.phase;
    eprintln!(
        "CA {}: {} (roots: {})",
        dir.path().display(),
        phase.as_str(),
        current.roots.join(", ")
    );
    let steps: Vec<Step> = match step {
        Step::All => match phase {
            RotationPhase::Steady => vec![Step::Stage, Step::Activate, Step::Retire],
            RotationPhase::Staged => vec![Step::Activate, Step::Retire],
            RotationPhase::Issuing => vec![Step::Retire],
        },
        one => vec![one],
    };
    for step in steps {
        match step {
            Step::Stage => {
                let operator = operator.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
                let roots = dir.stage(operator).context("staging the next CA")?;
                eprintln!(
                    "1/3 staged the next CA (root {}); proxies now trust both",
                    roots.join(", ")
                );
                wait_for(mesh, "trusting the new root", timeout, |p| {
                    roots.iter().all(|r| p.trusted.contains(r))
                })
                .await?;
            }
            Step::Activate => {
                dir.activate().context("activating the staged CA")?;
                let signer = dir.load()?.signer;
                eprintln!("2/3 the new CA ({signer}) signs; proxies renew from it within seconds");
                wait_for(
                    mesh,
                    "holding a certificate from the new CA",
                    timeout,
                    |p| p.signer == signer,
                )
                .await?;
            }
            Step::Retire => {
                let issuing = dir.load()?;
                // A proxy still on the old CA would be cut off: refuse rather than break it.
                for p in proxies(mesh).await.into_iter().flatten() {
                    if p.signer != issuing.signer {
                        anyhow::bail!(
                            "proxy {} still holds a certificate from {}, not the new CA {}; wait until it renews (vigil ca rotate --step activate waits for that) before retiring",
                            p.workload,
                            p.signer,
                            issuing.signer
                        );
                    }
                }
                dir.retire().context("retiring the previous CA")?;
                let done = dir.load()?;
                let old: Vec<&String> = issuing
                    .roots
                    .iter()
                    .filter(|r| !done.roots.contains(r))
                    .collect();
                eprintln!(
                    "3/3 retired the previous CA (roots no longer trusted: {})",
                    if old.is_empty() {
                        "none; the root stayed".to_string()
                    } else {
                        old.iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                wait_for(mesh, "trusting only the current roots", timeout, |p| {
                    p.trusted == done.roots
                })
                .await?;
            }
            Step::Abort => {
                dir.abort()?;
                eprintln!("dropped the staged CA; the current one stays the only root");
            }
            Step::All => {}
        }
    }
    Ok(())
}
