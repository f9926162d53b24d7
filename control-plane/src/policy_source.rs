//! Loads the policy bundle the control plane distributes: compiled here first, so a bundle
//! that does not compile never reaches a proxy, and the last good one stays in force.

use std::path::Path;

use vigil_authz::{PolicyBundle, PolicyFile, PolicyOptions};

use crate::mesh::{MeshFile, PolicySettings, PolicyTarget};
use crate::model::Workload;
use crate::served_policy::ServedPolicy;

/// The shipped default policy, used when the mesh names none: identities of this mesh's
/// trust domain (from `data.vigil.mesh`) allowed, health checks and metrics scraping
/// allowed, everything else denied.
pub fn default_policy_files() -> Vec<PolicyFile> {
    vec![PolicyFile {
        path: "policy.rego".into(),
        contents: include_str!("../../policies/default/policy.rego").into(),
    }]
}

/// Where the mesh's facts appear to policies: `data.vigil.mesh.trust_domain`.
pub const MESH_DATA_PATH: &str = "vigil/mesh/data.json";

/// A compiled bundle and its wire form.
pub struct LoadedPolicy {
    pub bundle: PolicyBundle,
    pub wire: vigil_api::PolicyBundle,
}

/// Reads and compiles the configured bundle (or the default one).
pub fn load(settings: Option<&PolicySettings>, trust_domain: &str) -> Result<LoadedPolicy, String> {
    load_with(settings, trust_domain, "")
}

/// Where the mesh's JWT bundle appears to policies: `data.vigil.jwt_svid.jwks`, a JWKS
/// string that `io.jwt.decode_verify(token, {"cert": data.vigil.jwt_svid.jwks, ...})`
/// takes as it is.
pub const JWT_SVID_DATA_PATH: &str = "vigil/jwt_svid/data.json";

/// Like [`load`], with the mesh's facts added to the bundle's data: the trust domain at
/// [`MESH_DATA_PATH`] and the JWT bundle (when not empty) at [`JWT_SVID_DATA_PATH`], so
/// policies need not pin either.
pub fn load_with(
    settings: Option<&PolicySettings>,
    trust_domain: &str,
    jwt_bundle: &str,
) -> Result<LoadedPolicy, String> {
    let request_body_bytes = settings.map(|s| s.request_body_bytes).unwrap_or(0);
    let (mut files, options) = match settings {
        Some(s) => (
            read(&s.dir)?,
            PolicyOptions {
                rule: s.rule.clone(),
                dry_run: s.dry_run,
                log_allows: s.log_allows,
            },
        ),
        None => (default_policy_files(), PolicyOptions::default()),
    };
    add_mesh_data(&mut files, trust_domain, jwt_bundle);
    let mut loaded = compile(files, options, request_body_bytes)?;
    loaded.wire.record_input = settings
        .and_then(|s| s.record_input.as_ref())
        .map(|r| r.wire());
    Ok(loaded)
}

/// The name of the mesh-wide policy, for workloads no attached policy selects.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// A bundle attached to the workloads its targets select.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedPolicy {
    pub targets: Vec<PolicyTarget>,
    pub served: ServedPolicy,
}

/// Every bundle the control plane serves: the mesh-wide one and those attached to
/// workloads. A workload runs the first attached policy whose targets select it, else the
/// mesh-wide one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServedPolicies {
    pub mesh_wide: Option<ServedPolicy>,
    pub attached: Vec<AttachedPolicy>,
}

impl ServedPolicies {
    /// Only a mesh-wide bundle.
    pub fn mesh_wide(bundle: vigil_api::PolicyBundle) -> Self {
        ServedPolicies {
            mesh_wide: Some(ServedPolicy::new(bundle, None)),
            attached: Vec::new(),
        }
    }

    /// The policy `workload` runs.
    pub fn for_workload(&self, workload: &Workload) -> Option<&ServedPolicy> {
        self.attached
            .iter()
            .find(|a| a.targets.iter().any(|t| t.selects(workload)))
            .map(|a| &a.served)
            .or(self.mesh_wide.as_ref())
    }

    /// The names of every attached policy that selects `workload`, in order: the first
    /// runs, the others are shadowed by it (which `vigil check` reports).
    pub fn selecting(&self, workload: &Workload) -> Vec<&str> {
        self.attached
            .iter()
            .filter(|a| a.targets.iter().any(|t| t.selects(workload)))
            .map(|a| a.served.bundle.name.as_str())
            .collect()
    }

    /// Every bundle served, candidates included, for listing.
    pub fn all(&self) -> impl Iterator<Item = &ServedPolicy> {
        self.mesh_wide
            .iter()
            .chain(self.attached.iter().map(|a| &a.served))
    }
}

/// Compiles every bundle the mesh file names, each with the mesh's facts as data. Any
/// bundle (or candidate) that does not compile refuses the whole set, so that the last
/// good set stays in force.
pub fn load_all(mesh: &MeshFile, jwt_bundle: &str) -> Result<ServedPolicies, String> {
    let served = |name: &str, settings: Option<&PolicySettings>| -> Result<ServedPolicy, String> {
        // Errors of an attached policy name it; the mesh-wide one is "the policy".
        let named = |e: String| match name {
            DEFAULT_POLICY_NAME => e,
            _ => format!("policy {name:?}: {e}"),
        };
        let mut bundle = load_with(settings, &mesh.trust_domain, jwt_bundle)
            .map_err(named)?
            .wire;
        bundle.name = name.to_string();
        let candidate = match settings.and_then(|s| s.candidate.as_ref().map(|c| (s, c))) {
            Some((settings, dir)) => {
                let candidate_settings = PolicySettings {
                    dir: dir.clone(),
                    candidate: None,
                    record_input: None,
                    ..settings.clone()
                };
                let mut wire = load_with(Some(&candidate_settings), &mesh.trust_domain, jwt_bundle)
                    .map_err(|e| named(format!("candidate {}: {e}", dir.display())))?
                    .wire;
                wire.name = format!("{name} (candidate)");
                Some(wire)
            }
            None => None,
        };
        Ok(ServedPolicy::new(bundle, candidate))
    };
    let mut attached = Vec::new();
    for policy in &mesh.policies {
        if policy.name == DEFAULT_POLICY_NAME {
            return Err(format!(
                "an attached policy cannot be named {DEFAULT_POLICY_NAME:?}: that is the mesh-wide one (rename it)"
            ));
        }
        attached.push(AttachedPolicy {
            targets: policy.targets.clone(),
            served: served(&policy.name, Some(&policy.bundle))?,
        });
    }
    Ok(ServedPolicies {
        mesh_wide: Some(served(DEFAULT_POLICY_NAME, mesh.policy.as_ref())?),
        attached,
    })
}

/// Adds the mesh's facts to a bundle's files, whatever its source: the trust domain at
/// [`MESH_DATA_PATH`] and the JWT bundle (when not empty) at [`JWT_SVID_DATA_PATH`], each
/// unless the bundle has a file of its own there.
pub fn add_mesh_data(files: &mut Vec<PolicyFile>, trust_domain: &str, jwt_bundle: &str) {
    if !files.iter().any(|f| f.path == MESH_DATA_PATH) {
        files.push(PolicyFile {
            path: MESH_DATA_PATH.into(),
            contents: serde_json::json!({ "trust_domain": trust_domain }).to_string(),
        });
    }
    if !jwt_bundle.is_empty() && !files.iter().any(|f| f.path == JWT_SVID_DATA_PATH) {
        files.push(PolicyFile {
            path: JWT_SVID_DATA_PATH.into(),
            contents: serde_json::json!({ "jwks": jwt_bundle }).to_string(),
        });
    }
}

/// A bundle's files as a proxy receives them.
pub fn files_of(wire: &vigil_api::PolicyBundle) -> Vec<PolicyFile> {
    wire.files
        .iter()
        .map(|f| PolicyFile {
            path: f.path.clone(),
            contents: f.contents.clone(),
        })
        .collect()
}

/// Compiles policy files from any source (mesh file directory, ConfigMap, VigilPolicy).
pub fn compile(
    files: Vec<PolicyFile>,
    options: PolicyOptions,
    request_body_bytes: u32,
) -> Result<LoadedPolicy, String> {
    let bundle = PolicyBundle::compile(files.clone(), options.clone()).map_err(|e| {
        format!("policy bundle refused: {e} (fix the file; while running, the control plane keeps the last good bundle in force)")
    })?;
    let wire = vigil_api::PolicyBundle {
        version: bundle.version().to_string(),
        files: files
            .into_iter()
            .map(|f| vigil_api::PolicyFile {
                path: f.path,
                contents: f.contents,
            })
            .collect(),
        rule: options.rule,
        dry_run: options.dry_run,
        log_allows: options.log_allows,
        request_body_bytes,
        record_input: None,
        name: DEFAULT_POLICY_NAME.to_string(),
    };
    Ok(LoadedPolicy { bundle, wire })
}

/// `vigil policy replay`: evaluates the decisions recorded in `logs` against the candidate
/// bundle in `dir`, compiled as the control plane would compile it for a mesh of
/// `trust_domain` (inferred from the first recorded destination when not given).
pub fn replay(
    logs: &[std::path::PathBuf],
    dir: &Path,
    rule: Option<&str>,
    trust_domain: Option<&str>,
    format: vigil_authz::TestFormat,
    out: &mut dyn std::io::Write,
) -> Result<vigil_authz::ReplaySummary, String> {
    let open = |path: &std::path::PathBuf| {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| format!("cannot open decision log {}: {e}", path.display()))
    };
    let trust_domain = match trust_domain {
        Some(td) => td.to_string(),
        None => recorded_trust_domain(logs, open).ok_or_else(|| {
            "no recorded decision names its destination; give the mesh's --trust-domain".to_string()
        })?,
    };
    let settings = PolicySettings {
        dir: dir.to_path_buf(),
        rule: rule.map_or_else(|| PolicyOptions::default().rule, str::to_string),
        dry_run: false,
        log_allows: false,
        request_body_bytes: 0,
        record_input: None,
        candidate: None,
    };
    let candidate = load_with(Some(&settings), &trust_domain, "")?.bundle;
    let mut readers = Vec::new();
    for path in logs {
        readers.push(vigil_authz::RecordedLog {
            name: path.display().to_string(),
            reader: Box::new(open(path)?),
        });
    }
    vigil_authz::replay(&candidate, readers, format, out).map_err(|e| e.to_string())
}

/// The trust domain of the first recorded destination principal.
fn recorded_trust_domain<R: std::io::BufRead>(
    logs: &[std::path::PathBuf],
    open: impl Fn(&std::path::PathBuf) -> Result<R, String>,
) -> Option<String> {
    logs.iter()
        .filter_map(|path| open(path).ok())
        .flat_map(|reader| reader.lines().map_while(Result::ok))
        .find_map(|line| {
            let record: serde_json::Value = serde_json::from_str(&line).ok()?;
            let id = record.get("destination_principal")?.as_str()?;
            let id: vigil_identity::SpiffeId = id.parse().ok()?;
            Some(id.trust_domain().to_string())
        })
}

fn read(dir: &Path) -> Result<Vec<PolicyFile>, String> {
    PolicyBundle::read_dir(dir).map_err(|e| {
        format!(
            "cannot read policy directory {}: {e} (check policy.dir in the mesh file)",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use vigil_authz::{AuthzInput, InputKind};

    fn allows(loaded: &LoadedPolicy, principal: &str) -> bool {
        let addr: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        loaded
            .bundle
            .evaluate(&AuthzInput {
                kind: InputKind::Tcp,
                source_address: addr,
                destination_address: addr,
                source_principal: Some(principal),
                destination_principal: None,
            })
            .allowed()
    }

    #[test]
    fn the_default_policy_follows_the_meshs_trust_domain_whatever_it_is() {
        let shipped = PolicySettings {
            dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default"),
            rule: "data.vigil.authz.allow".into(),
            dry_run: false,
            log_allows: false,
            request_body_bytes: 0,
            record_input: None,
            candidate: None,
        };
        for settings in [None, Some(&shipped)] {
            let loaded = load_with(settings, "cluster.local", "").expect("compiles");
            assert!(allows(&loaded, "spiffe://cluster.local/ns/a/sa/b"));
            assert!(!allows(&loaded, "spiffe://vigil.local/ns/a/sa/b"));
            let loaded = load_with(settings, "vigil.local", "").expect("compiles");
            assert!(allows(&loaded, "spiffe://vigil.local/ns/a/sa/b"));
            assert!(!allows(&loaded, "spiffe://cluster.local/ns/a/sa/b"));
        }
    }

    #[test]
    fn the_jwt_bundle_is_data_for_policies_when_there_is_one() {
        let loaded = load_with(None, "vigil.local", r#"{"keys":[]}"#).expect("compiles");
        let data = loaded
            .wire
            .files
            .iter()
            .find(|f| f.path == JWT_SVID_DATA_PATH)
            .expect("the JWT bundle file");
        assert_eq!(data.contents, r#"{"jwks":"{\"keys\":[]}"}"#);
        let without = load_with(None, "vigil.local", "").expect("compiles");
        assert!(!without
            .wire
            .files
            .iter()
            .any(|f| f.path == JWT_SVID_DATA_PATH));
    }

    /// A workload runs the first attached policy whose targets select it (by name,
    /// namespace or labels), the mesh-wide one otherwise; every bundle knows its name.
    #[test]
    fn each_workload_runs_the_first_policy_that_selects_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, rego) in [
            ("a", "package vigil.authz\n\nallow := true\n"),
            ("b", "package vigil.authz\n\nallow := false\n"),
        ] {
            std::fs::create_dir(dir.path().join(name)).expect("dir");
            std::fs::write(dir.path().join(name).join("p.rego"), rego).expect("write");
        }
        let text = format!(
            r#"trust_domain: vigil.local
policies:
  - name: backend
    targets: [{{ labels: {{ tier: backend }} }}]
    bundle: {{ dir: "{a}" }}
  - name: shop-wide
    targets: [{{ namespace: shop }}, {{ workloads: [lonely] }}]
    bundle: {{ dir: "{b}", candidate: "{a}" }}
workloads:
  - {{ name: api, namespace: shop, join_token: "580e03ca12da94db77610eb82123ebf4", app_port: 1, labels: {{ tier: backend }} }}
  - {{ name: web, namespace: shop, join_token: "16221b9e1a926f6fdc29f532ef0f830f", app_port: 2 }}
  - {{ name: lonely, namespace: other, join_token: "a3c0f1e3b2d94c0f9e8d7c6b5a493827", app_port: 3 }}
  - {{ name: ops, namespace: other, join_token: "0f9e8d7c6b5a4938a3c0f1e3b2d94c27", app_port: 4 }}
"#,
            a = dir.path().join("a").display(),
            b = dir.path().join("b").display(),
        );
        let mesh = MeshFile::parse(&text).expect("mesh");
        let model = mesh.model().expect("model");
        let policies = load_all(&mesh, "").expect("compiles");
        let runs = |name: &str| {
            let w = model
                .workloads
                .iter()
                .find(|w| w.name == name)
                .expect("workload");
            let served = policies.for_workload(w).expect("a policy");
            (
                served.bundle.name.clone(),
                served.candidate.as_ref().map(|c| c.name.clone()),
                policies.selecting(w),
            )
        };
        assert_eq!(
            runs("api"),
            ("backend".into(), None, vec!["backend", "shop-wide"]),
            "by label, and first: shop-wide is shadowed"
        );
        assert_eq!(
            runs("web"),
            (
                "shop-wide".into(),
                Some("shop-wide (candidate)".into()),
                vec!["shop-wide"]
            )
        );
        assert_eq!(runs("lonely").0, "shop-wide", "by name, any namespace");
        assert_eq!(runs("ops").0, DEFAULT_POLICY_NAME);

        let misnamed =
            MeshFile::parse(&text.replace("name: backend", "name: default")).expect("mesh");
        assert!(load_all(&misnamed, "").is_err_and(|e| e.contains("default")));
        let broken = text.replace(&dir.path().join("a").display().to_string(), "/nonexistent");
        let broken = MeshFile::parse(&broken).expect("mesh");
        assert!(
            load_all(&broken, "").is_err_and(|e| e.contains("backend")),
            "a bundle that does not load refuses the set, naming the policy"
        );
    }
}
