//! `vigil check`: is a running local mesh healthy? The control plane's identity and
//! discovery ports answer TLS with the control plane's certificate, every proxy is ready,
//! certificates are valid and not about to expire, every proxy runs the same policy
//! bundle, clocks agree, and no request path retries responses at more than one hop.
//! The first line says which mesh file (and data directory) was read, so a failure is
//! never blamed on the wrong mesh. Each finding is a ✓, ! (warning) or ✗ line, with a
//! hint for what to do; any ✗ makes the command fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Serialize;
use vigil_identity::{TlsOptions, TrustBundle, TrustStore};

use crate::admin_client::{self, CertStatus};
use crate::mesh::MeshFile;
use crate::mesh_location::MeshLocation;
use crate::own_identity::{control_plane_id, DEFAULT_NAMESPACE};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub findings: Vec<Finding>,
}

/// A certificate with less than this share of its lifetime left is a warning.
const NEAR_EXPIRY_SHARE: f64 = 0.10;
/// Clock skew beyond this is a warning.
const MAX_SKEW: Duration = Duration::from_secs(30);

pub(crate) fn pass(check: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        outcome: Outcome::Pass,
        detail: detail.into(),
        hint: None,
    }
}

pub(crate) fn problem(
    outcome: Outcome,
    check: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check: check.into(),
        outcome,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

/// What one proxy told us.
struct ProxyState {
    workload: String,
    admin: SocketAddr,
    ready: anyhow::Result<admin_client::AdminResponse>,
    cert: Option<anyhow::Result<CertStatus>>,
    config: Option<anyhow::Result<admin_client::ConfigStatus>>,
}

/// Checks the mesh at `at`. `trust_bundle` verifies the control plane; without it, the
/// run's `trust-bundle.pem` (in its data directory, else beside the mesh file) or a
/// proxy's bundle is used.
pub async fn check(at: &MeshLocation, trust_bundle: Option<&Path>) -> anyhow::Result<Report> {
    let mesh_file = at.mesh_file.as_path();
    let mesh = MeshFile::load(mesh_file)?;
    let mut findings = vec![pass("mesh file", at.describe())];

    let mut proxies = Vec::new();
    for w in &mesh.workloads {
        let admin = w.proxy.admin;
        let ready = admin_client::fetch(admin, "/ready").await;
        let (cert, config) = if ready.is_ok() {
            (
                Some(admin_client::certs(admin).await),
                Some(admin_client::config(admin).await),
            )
        } else {
            (None, None)
        };
        proxies.push(ProxyState {
            workload: w.name.clone(),
            admin,
            ready,
            cert,
            config,
        });
    }

    // The control plane, verified against the mesh's trust bundle.
    let bundle = find_trust_bundle(at, trust_bundle, &proxies).await?;
    findings.extend(check_control_plane(&mesh, bundle.as_ref()).await);

    let now = SystemTime::now();
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for p in &proxies {
        findings.push(readiness(p));
        if let Some(cert) = &p.cert {
            findings.push(certificate(&p.workload, cert, now_secs));
        }
        if let Ok(res) = &p.ready {
            if let Some(f) = clock(&p.workload, res, now) {
                findings.push(f);
            }
        }
    }
    findings.extend(policy_agreement(&mesh, &proxies));
    if let Some(bundle) = &bundle {
        let phase = at.data_dir.as_deref().and_then(|d| {
            vigil_identity::CaDirectory::new(&d.join("ca"), &mesh.trust_domain)
                .phase()
                .ok()
        });
        findings.push(trust_anchors(bundle, phase, &proxies));
    }
    findings.push(retries_per_hop(&mesh).await);

    let ok = !findings.iter().any(|f| f.outcome == Outcome::Fail);
    Ok(Report { ok, findings })
}

/// A trust bundle and where it was found, for the report.
struct FoundBundle {
    pem: String,
    source: String,
}

async fn find_trust_bundle(
    at: &MeshLocation,
    explicit: Option<&Path>,
    proxies: &[ProxyState],
) -> anyhow::Result<Option<FoundBundle>> {
    if let Some(path) = explicit {
        return std::fs::read_to_string(path)
            .map(|pem| {
                Some(FoundBundle {
                    pem,
                    source: format!("--trust-bundle {}", path.display()),
                })
            })
            .with_context(|| format!("reading --trust-bundle {}", path.display()));
    }
    let beside: PathBuf = at
        .mesh_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("trust-bundle.pem");
    let run = at
        .data_dir
        .as_deref()
        .map(crate::control_plane::trust_bundle_path);
    for path in run.into_iter().chain([beside]) {
        if let Ok(pem) = std::fs::read_to_string(&path) {
            let source = path.display().to_string();
            return Ok(Some(FoundBundle { pem, source }));
        }
    }
    // A running proxy serves the bundle it trusts.
    for p in proxies.iter().filter(|p| p.ready.is_ok()) {
        if let Ok((200, body)) = admin_client::get(p.admin, "/certs").await {
            if let Some(pem) = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["trust_bundle_pem"].as_str().map(str::to_string))
            {
                let source = format!("proxy {}'s /certs", p.workload);
                return Ok(Some(FoundBundle { pem, source }));
            }
        }
    }
    Ok(None)
}

async fn check_control_plane(mesh: &MeshFile, bundle: Option<&FoundBundle>) -> Vec<Finding> {
    let addresses = &mesh.control_plane;
    let source = bundle.map_or("", |b| b.source.as_str());
    let trust = match bundle.map(|b| {
        TrustBundle::from_pem(&b.pem)
            .map_err(anyhow::Error::from)
            .and_then(|b| TrustStore::new(&mesh.trust_domain, b).map_err(anyhow::Error::from))
    }) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            return vec![problem(
                Outcome::Fail,
                "control plane",
                format!("the trust bundle from {source} does not parse: {e:#}"),
                "pass the control plane's data-dir/trust-bundle.pem with --trust-bundle",
            )]
        }
        None => None,
    };
    let mut out = Vec::new();
    let replicas = addresses.replicas.len() + 1;
    let mut targets = Vec::new();
    for (what, all) in [
        ("identity", addresses.identity_addresses()),
        ("discovery", addresses.discovery_addresses()),
    ] {
        targets.extend(all.into_iter().enumerate().map(|(n, addr)| (what, n, addr)));
    }
    let mut answered = std::collections::BTreeSet::new();
    let mut results = Vec::new();
    for (what, n, addr) in targets {
        let check = if replicas > 1 {
            format!("control plane {what} {addr} (one of {replicas} replicas)")
        } else {
            format!("control plane {what} {addr}")
        };
        let result = match &trust {
            Some(trust) => handshake(addr, trust.clone(), &mesh.trust_domain).await,
            None => {
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
                    .and_then(|r| r.map_err(anyhow::Error::from))
                    .map(|_| ())
            }
        };
        if result.is_ok() {
            answered.insert(what);
        }
        results.push((what, n, check, result));
    }
    for (what, n, check, result) in results {
        // How to start this replica, and where its address is written.
        let (start, field) = match n {
            0 => (
                "start the control plane (`vigil control-plane --mesh ...`, `vigil up` or `vigil demo`)".to_string(),
                format!("control_plane.{what}"),
            ),
            n => (
                format!("start replica {n} (`vigil control-plane --mesh ... --data-dir ... --replica {n}`)"),
                format!("control_plane.replicas[{}].{what}", n - 1),
            ),
        };
        // With replicas, one that is down is a warning while another serves the same
        // service: proxies move to the ones that answer.
        let down = if answered.contains(what) {
            Outcome::Warn
        } else {
            Outcome::Fail
        };
        out.push(match (result, &trust) {
            (Ok(()), Some(_)) => pass(
                check,
                "accepts TLS 1.3 and presents the control plane's SPIFFE ID",
            ),
            (Ok(()), None) => problem(
                Outcome::Warn,
                check,
                "accepts connections; TLS not verified (no trust bundle found)",
                "pass --trust-bundle <data-dir>/trust-bundle.pem to verify the certificate too",
            ),
            (Err(e), Some(_)) => problem(
                down,
                check,
                format!("{e:#} (verified with the trust bundle from {source})"),
                format!(
                    "if a control plane answers there, that trust bundle may be from another run: pass the running mesh's --mesh, or --trust-bundle <its data-dir>/trust-bundle.pem; otherwise {start}, or fix {field} in the mesh file"
                ),
            ),
            (Err(e), None) => problem(
                down,
                check,
                format!("{e:#}"),
                format!(
                    "{start}, or fix {field} in the mesh file"
                ),
            ),
        });
    }
    out
}

async fn handshake(
    addr: SocketAddr,
    trust: Arc<TrustStore>,
    trust_domain: &str,
) -> anyhow::Result<()> {
    // The local mesh's control plane; one started with another --namespace presents that
    // namespace and fails here with a handshake error naming the trust domain.
    let expected = control_plane_id(trust_domain, DEFAULT_NAMESPACE)?;
    let config = vigil_identity::mtls_client_config(
        None,
        trust,
        expected.clone(),
        &TlsOptions {
            alpn: vec![b"h2".to_vec()],
            ..TlsOptions::default()
        },
    );
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("nothing accepts connections on {addr}"))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(vigil_identity::server_name_for(&expected), tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} failed (is it a Vigil control plane of trust domain {trust_domain}?)"))?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not complete a TLS handshake within 5 s"))?
}

fn readiness(p: &ProxyState) -> Finding {
    let check = format!("proxy {} ready", p.workload);
    match &p.ready {
        Ok(r) if r.status == 200 => pass(check, format!("admin {} answers ready", p.admin)),
        Ok(r) if r.body.contains("draining") => problem(
            Outcome::Fail,
            check,
            format!("/ready answered {}: {}", r.status, r.body.trim()),
            format!(
                "the proxy for {} is shutting down (SIGTERM or /shutdown); start it again once it has exited",
                p.workload
            ),
        ),
        Ok(r) => problem(
            Outcome::Fail,
            check,
            format!("/ready answered {}: {}", r.status, r.body.trim()),
            "the proxy is up but not serving: its log says why (often the control plane is unreachable or the join token is wrong)",
        ),
        Err(e) => problem(
            Outcome::Fail,
            check,
            format!("no answer from its admin port {}: {e:#}", p.admin),
            format!(
                "the proxy for {} is not running: restart `vigil demo`/`vigil up`, or start vigil-proxy for it with --admin {}",
                p.workload, p.admin
            ),
        ),
    }
}

fn certificate(workload: &str, cert: &anyhow::Result<CertStatus>, now: u64) -> Finding {
    let check = format!("certificate of {workload}");
    let c = match cert {
        Ok(c) => c,
        Err(e) => {
            return problem(
                Outcome::Fail,
                check,
                format!("{e:#}"),
                "the proxy has no certificate: check that it reaches the control plane's identity port and that its join token is in the mesh file",
            )
        }
    };
    let lifetime = c.not_after.saturating_sub(c.not_before).max(1);
    if c.not_after <= now {
        return problem(
            Outcome::Fail,
            check,
            format!("{} expired {} s ago", c.spiffe_id, now - c.not_after),
            format!(
                "renewal is failing{}: make sure the control plane is running and reachable, then restart the proxy",
                c.last_renewal_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        );
    }
    if c.not_before > now + MAX_SKEW.as_secs() {
        return problem(
            Outcome::Fail,
            check,
            format!(
                "{} is not valid for another {} s",
                c.spiffe_id,
                c.not_before - now
            ),
            "this machine's clock is behind the control plane's: sync clocks (NTP)",
        );
    }
    let left = c.not_after - now;
    if (left as f64) < lifetime as f64 * NEAR_EXPIRY_SHARE {
        return problem(
            Outcome::Warn,
            check,
            format!(
                "{} expires in {} s, under 10% of its lifetime ({} s)",
                c.spiffe_id, left, lifetime
            ),
            "renewal should have happened at half-life: check the proxy's log and its renewal_failures in /certs",
        );
    }
    pass(
        check,
        format!(
            "{} valid for {} more ({} renewal{})",
            c.spiffe_id,
            humantime::format_duration(Duration::from_secs(left)),
            c.renewals,
            if c.renewals == 1 { "" } else { "s" }
        ),
    )
}

/// Compares the proxy's `Date` header with local time.
fn clock(workload: &str, res: &admin_client::AdminResponse, now: SystemTime) -> Option<Finding> {
    let date = res.headers.get(http::header::DATE)?.to_str().ok()?;
    let theirs = httpdate_parse(date)?;
    let skew = match theirs.duration_since(now) {
        Ok(ahead) => ahead,
        Err(e) => e.duration(),
    };
    let check = format!("clock of {workload}");
    // The header has one-second resolution.
    Some(if skew > MAX_SKEW {
        problem(
            Outcome::Warn,
            check,
            format!("{} s apart from this machine's clock", skew.as_secs()),
            "certificates are checked against the clock: sync clocks with NTP",
        )
    } else {
        pass(
            check,
            format!("within {} s of local time", skew.as_secs().max(1)),
        )
    })
}

fn httpdate_parse(s: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whether every proxy trusts the control plane's roots and holds a certificate from the
/// CA that signs now; during a rotation, how far it has come.
fn trust_anchors(
    bundle: &FoundBundle,
    phase: Option<vigil_identity::RotationPhase>,
    proxies: &[ProxyState],
) -> Finding {
    use vigil_identity::RotationPhase;
    let check = "trust anchors";
    let roots: Vec<String> = match TrustBundle::from_pem(&bundle.pem) {
        Ok(b) => b.roots().iter().map(vigil_identity::root_name).collect(),
        Err(e) => {
            return problem(
                Outcome::Warn,
                check,
                format!("{} does not parse: {e}", bundle.source),
                "pass --trust-bundle <data-dir>/trust-bundle.pem",
            )
        }
    };
    let certs: Vec<(&str, &CertStatus)> = proxies
        .iter()
        .filter_map(|p| match &p.cert {
            Some(Ok(c)) => Some((p.workload.as_str(), c)),
            _ => None,
        })
        .collect();
    let signer_root = roots.first().cloned().unwrap_or_default();
    let not_trusting = |root: &str| -> Vec<&str> {
        certs
            .iter()
            .filter(|(_, c)| !c.trust_roots.iter().any(|r| r == root))
            .map(|(w, _)| *w)
            .collect()
    };
    match phase {
        Some(RotationPhase::Staged) => {
            let new = roots.get(1).cloned().unwrap_or_default();
            let behind = not_trusting(&new);
            problem(
                Outcome::Warn,
                check,
                format!(
                    "CA rotation staged: {} of {} proxies trust the new root {new} beside {signer_root}{}",
                    certs.len() - behind.len(),
                    certs.len(),
                    list_behind(&behind)
                ),
                "run `vigil ca rotate` to let the new root sign (it waits until every proxy trusts it)",
            )
        }
        Some(RotationPhase::Issuing) => {
            let old = roots.get(1..).unwrap_or(&[]);
            let on_old: Vec<&str> = certs
                .iter()
                .filter(|(_, c)| {
                    // Root-signed certificates name their root; intermediates are not roots.
                    old.contains(&c.signer)
                })
                .map(|(w, _)| *w)
                .collect();
            problem(
                Outcome::Warn,
                check,
                format!(
                    "CA rotation: the new root {signer_root} signs; {} of {} proxies hold a certificate from it, the old root {} is still trusted{}",
                    certs.len() - on_old.len(),
                    certs.len(),
                    old.join(", "),
                    list_behind(&on_old)
                ),
                "run `vigil ca rotate` to retire the old root once every proxy has renewed",
            )
        }
        _ => {
            let stale: Vec<&str> = certs
                .iter()
                .filter(|(_, c)| !c.trust_roots.is_empty() && c.trust_roots != roots)
                .map(|(w, _)| *w)
                .collect();
            if stale.is_empty() {
                pass(
                    check,
                    format!(
                        "{} trusted by the control plane and every proxy",
                        roots.join(", ")
                    ),
                )
            } else {
                problem(
                    Outcome::Warn,
                    check,
                    format!(
                        "the control plane trusts {} but {} trust another set",
                        roots.join(", "),
                        stale.join(", ")
                    ),
                    "the proxies get the bundle from discovery: check that they are connected to the control plane",
                )
            }
        }
    }
}

fn list_behind(behind: &[&str]) -> String {
    if behind.is_empty() {
        String::new()
    } else {
        format!(" (not yet: {})", behind.join(", "))
    }
}

/// Each proxy runs the policy its targets give it (the first attached policy that selects
/// its workload, else the mesh-wide one), and proxies running the same policy run the same
/// version of it.
fn policy_agreement(mesh: &MeshFile, proxies: &[ProxyState]) -> Vec<Finding> {
    let model = mesh.model().ok();
    let policy_names = |workload: &str| -> Vec<&str> {
        let Some(w) = model
            .as_ref()
            .and_then(|m| m.workloads.iter().find(|w| w.name == workload))
        else {
            return Vec::new();
        };
        mesh.policies
            .iter()
            .filter(|p| p.targets.iter().any(|t| t.selects(w)))
            .map(|p| p.name.as_str())
            .collect()
    };
    // policy name -> version -> workloads
    type Versions<'a> = BTreeMap<String, BTreeMap<String, Vec<&'a str>>>;
    let mut versions: Versions<'_> = BTreeMap::new();
    let mut out = Vec::new();
    for p in proxies {
        let selecting = policy_names(&p.workload);
        let expected = selecting
            .first()
            .copied()
            .unwrap_or(crate::policy_source::DEFAULT_POLICY_NAME);
        if let [runs, shadowed @ ..] = selecting.as_slice() {
            if !shadowed.is_empty() {
                out.push(problem(
                    Outcome::Warn,
                    format!("policy of {}", p.workload),
                    format!(
                        "selected by {} as well as {runs}; it runs {runs}, the first in the mesh file",
                        shadowed.join(", ")
                    ),
                    "narrow the targets so each workload is selected once, or reorder the policies",
                ));
            }
        }
        match &p.config {
            Some(Ok(c)) => {
                let v = c
                    .policy_version
                    .clone()
                    .unwrap_or_else(|| "(none)".to_string());
                let name = c
                    .policy_name
                    .clone()
                    .unwrap_or_else(|| expected.to_string());
                if c.policy_version.is_some() && name != expected {
                    out.push(problem(
                        Outcome::Fail,
                        format!("policy of {}", p.workload),
                        format!("the proxy runs policy {name:?}; its targets give it {expected:?}"),
                        "the proxy has not received the latest snapshot: check that it is connected to discovery",
                    ));
                }
                versions
                    .entry(name)
                    .or_default()
                    .entry(v)
                    .or_default()
                    .push(&p.workload);
                if let Some(candidate) = &c.policy_candidate {
                    out.push(pass(
                        format!("candidate policy of {}", p.workload),
                        format!(
                            "{} beside the bundle in force: {} decisions compared, {} allow->deny, {} deny->allow, {} to or from an error",
                            candidate.version,
                            candidate.compared,
                            candidate.allow_to_deny,
                            candidate.deny_to_allow,
                            candidate.error_changes
                        ),
                    ));
                }
                if let Some(refused) = &c.policy_last_refused {
                    out.push(problem(
                        Outcome::Warn,
                        format!("policy of {}", p.workload),
                        format!("the proxy refused the latest bundle: {refused}"),
                        "fix the policy files; the proxy keeps its last good bundle meanwhile",
                    ));
                }
                if !c.control_plane_connected {
                    out.push(problem(
                        Outcome::Warn,
                        format!("discovery of {}", p.workload),
                        "the proxy is not connected to the control plane's discovery stream"
                            .to_string(),
                        "it runs on its last snapshot; check that the control plane is up",
                    ));
                }
            }
            Some(Err(e)) => out.push(problem(
                Outcome::Fail,
                format!("policy of {}", p.workload),
                format!("{e:#}"),
                "the admin port did not serve /config: is it a vigil-proxy?",
            )),
            None => {}
        }
    }
    if versions.is_empty() {
        return out;
    }
    let none = |by_version: &BTreeMap<String, Vec<&str>>| {
        by_version.len() == 1 && by_version.contains_key("(none)")
    };
    if versions.values().all(none) {
        out.push(problem(
            Outcome::Fail,
            "policy bundle",
            "no proxy has a policy bundle; every request is refused",
            "check the control plane's log for a policy that does not compile",
        ));
        return out;
    }
    let mut agreed = Vec::new();
    for (name, by_version) in &versions {
        if by_version.len() == 1 {
            for (v, who) in by_version {
                let proxies = if who.len() == 1 { "proxy" } else { "proxies" };
                agreed.push(format!(
                    "{name} {v} on {} {proxies} ({})",
                    who.len(),
                    who.join(", ")
                ));
            }
            continue;
        }
        let detail = by_version
            .iter()
            .map(|(v, who)| format!("{v}: {}", who.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        out.push(problem(
            Outcome::Fail,
            "policy bundle",
            format!("proxies running policy {name:?} disagree: {detail}"),
            "proxies on an old bundle have lost the control plane or refused the new bundle: see their /config",
        ));
    }
    if !agreed.is_empty() {
        out.push(pass("policy bundle", agreed.join("; ")));
    }
    out
}

/// A warning when a request path retries responses at more than one hop (see
/// [`crate::retry_hops`]); who calls whom comes from the proxies' outbound metrics.
async fn retries_per_hop(mesh: &MeshFile) -> Finding {
    let mut calls = std::collections::BTreeSet::new();
    for w in &mesh.workloads {
        let Ok((200, body)) = admin_client::get(w.proxy.metrics, "/metrics").await else {
            continue;
        };
        let Ok(m) = crate::observe_cli::parse_exposition(&body) else {
            continue;
        };
        for key in m.requests.keys().filter(|k| k.direction == "outbound") {
            calls.insert((w.name.clone(), key.service.clone()));
        }
    }
    let stacked = crate::retry_hops::stacked(mesh, &calls);
    if stacked.is_empty() {
        return pass(
            "retries",
            "no request path retries responses at more than one hop",
        );
    }
    let paths = stacked
        .iter()
        .map(|s| {
            format!(
                "{} → {} → {} (via {}): up to {} tries reach {} per request",
                s.caller, s.first, s.second, s.via, s.worst_case, s.second
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    problem(
        Outcome::Warn,
        "retries",
        format!("responses are retried at more than one hop: {paths}"),
        "keep status retries (`retries.on` with statuses or gRPC codes) on one hop of each path, the one nearest the failing service; see docs/traffic.md",
    )
}

/// The report as people read it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let mark = match f.outcome {
            Outcome::Pass => "✓",
            Outcome::Warn => "!",
            Outcome::Fail => "✗",
        };
        out += &format!("{mark} {}: {}\n", f.check, f.detail);
        if let Some(h) = &f.hint {
            out += &format!("    hint: {h}\n");
        }
    }
    let failed = report
        .findings
        .iter()
        .filter(|f| f.outcome == Outcome::Fail)
        .count();
    let warned = report
        .findings
        .iter()
        .filter(|f| f.outcome == Outcome::Warn)
        .count();
    out += &if failed == 0 {
        format!(
            "mesh healthy: {} checks passed{}\n",
            report.findings.len() - warned,
            if warned > 0 {
                format!(", {warned} warning(s)")
            } else {
                String::new()
            }
        )
    } else {
        format!("{failed} check(s) failed; the hints above say what to do\n")
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: u64, not_after: u64) -> anyhow::Result<CertStatus> {
        Ok(CertStatus {
            spiffe_id: "spiffe://vigil.local/ns/shop/sa/web".into(),
            not_before,
            not_after,
            ..CertStatus::default()
        })
    }

    /// A replica that does not answer is a warning while another serves, and its hint
    /// says how to start that replica and where its address is written.
    #[tokio::test]
    async fn a_replica_that_is_down_is_named_with_how_to_start_it() {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = |l: &std::net::TcpListener| l.local_addr().expect("addr");
        let serving = [bind(), bind()];
        // Addresses nothing listens on: bound, read, released.
        let (down_identity, down_discovery) = (addr(&bind()), addr(&bind()));
        let mesh = MeshFile::parse(&format!(
            "trust_domain: vigil.local\ncontrol_plane:\n  identity: \"{}\"\n  discovery: \"{}\"\n  replicas:\n    - {{ identity: \"{down_identity}\", discovery: \"{down_discovery}\", dashboard: \"127.0.0.1:1\" }}\nworkloads: []\n",
            addr(&serving[0]),
            addr(&serving[1]),
        ))
        .expect("mesh");
        let findings = check_control_plane(&mesh, None).await;
        assert_eq!(findings.len(), 4, "{findings:?}");
        let down: Vec<&Finding> = findings
            .iter()
            .filter(|f| {
                f.check.contains(&down_identity.to_string())
                    || f.check.contains(&down_discovery.to_string())
            })
            .collect();
        assert_eq!(down.len(), 2);
        for f in down {
            assert_eq!(f.outcome, Outcome::Warn, "another replica serves: {f:?}");
            let hint = f.hint.as_deref().unwrap_or("");
            assert!(
                hint.contains("--replica 1") && hint.contains("control_plane.replicas[0]."),
                "{hint}"
            );
        }
    }

    #[test]
    fn judges_certificates_by_the_lifetime_left() {
        let now = 1_000_000;
        assert_eq!(
            certificate("web", &cert(now - 100, now + 900), now).outcome,
            Outcome::Pass
        );
        let near = certificate("web", &cert(now - 950, now + 50), now);
        assert_eq!(near.outcome, Outcome::Warn);
        assert!(near.detail.contains("under 10%"), "{}", near.detail);
        let expired = certificate("web", &cert(now - 1000, now - 1), now);
        assert_eq!(expired.outcome, Outcome::Fail);
        assert!(expired
            .hint
            .as_deref()
            .unwrap_or("")
            .contains("control plane"));
        assert_eq!(
            certificate("web", &cert(now + 3600, now + 7200), now).outcome,
            Outcome::Fail,
            "not valid yet: the clock is behind"
        );
    }

    #[test]
    fn reads_the_date_header_for_clock_skew() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut res = admin_client::AdminResponse {
            status: 200,
            headers: http::HeaderMap::new(),
            body: String::new(),
        };
        res.headers.insert(
            http::header::DATE,
            http::HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        assert_eq!(
            clock("web", &res, now).map(|f| f.outcome),
            Some(Outcome::Pass)
        );
        let later = now + Duration::from_secs(120);
        let f = clock("web", &res, later).expect("finding");
        assert_eq!(f.outcome, Outcome::Warn);
        assert!(f.detail.contains("120 s"), "{}", f.detail);
    }

    #[test]
    fn the_report_marks_failures_and_gives_hints() {
        let report = Report {
            ok: false,
            findings: vec![
                pass("proxy web ready", "admin answers ready"),
                problem(
                    Outcome::Fail,
                    "proxy payments ready",
                    "no answer",
                    "start it",
                ),
            ],
        };
        let text = render(&report);
        assert!(text.contains("✓ proxy web ready"), "{text}");
        assert!(
            text.contains("✗ proxy payments ready: no answer\n    hint: start it"),
            "{text}"
        );
        assert!(text.contains("1 check(s) failed"), "{text}");
    }
}
