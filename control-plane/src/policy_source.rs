//! Loads the policy bundle the control plane distributes: compiled here first, so a bundle
//! that does not compile never reaches a proxy, and the last good one stays in force.

use std::path::Path;

use vigil_authz::{PolicyBundle, PolicyFile, PolicyOptions};

use crate::mesh::PolicySettings;

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
    let mut loaded = compile(files, options, request_body_bytes)?;
    loaded.wire.record_input = settings
        .and_then(|s| s.record_input.as_ref())
        .map(|r| r.wire());
    Ok(loaded)
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
}
