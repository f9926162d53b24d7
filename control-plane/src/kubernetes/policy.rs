//! Policies in cluster mode: a `VigilPolicy` custom resource, or a ConfigMap, in the
//! control plane's namespace.
//!
//! One object is one bundle, so an edit is applied whole or not at all (a bundle spread
//! over several objects would be seen half-updated). The mesh-wide bundle is the VigilPolicy
//! named by `--policy` (default `default`) when it exists, else the ConfigMap named by
//! `--policy-configmap` (default `vigil-policy`), else the shipped default policy. Every
//! other VigilPolicy of the namespace with `spec.targets` is attached to the workloads its
//! targets select; a workload runs the first such policy by name, else the mesh-wide one.
//! A bundle that does not compile is refused with its error and the last good set stays in
//! force. Every bundle gets the mesh's facts as data (`data.vigil.mesh`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_authz::{PolicyFile, PolicyOptions};

use crate::mesh::PolicyTarget;
use crate::policy_source::{self, AttachedPolicy, LoadedPolicy, ServedPolicies};
use crate::served_policy::ServedPolicy;

/// A Rego policy bundle for the mesh: modules, data and how they are evaluated.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vigil.io",
    version = "v1alpha1",
    kind = "VigilPolicy",
    plural = "vigilpolicies",
    shortname = "vpol",
    namespaced,
    doc = "A Rego policy bundle that every Vigil proxy enforces on inbound requests.",
    printcolumn = r#"{"name":"Rule","type":"string","jsonPath":".spec.rule"}"#,
    printcolumn = r#"{"name":"Dry-run","type":"boolean","jsonPath":".spec.dryRun"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VigilPolicySpec {
    /// Rego modules by file name (each ending in .rego).
    pub modules: BTreeMap<String, String>,
    /// Data document the modules read under `data` (JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub data: Option<serde_json::Value>,
    /// The rule whose value is the decision (default `data.vigil.authz.allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Log denials but let every request through.
    #[serde(default)]
    pub dry_run: bool,
    /// Also log allowed requests in the decision log.
    #[serde(default)]
    pub log_allows: bool,
    /// Buffer up to this many request body bytes for `input.parsed_body` (0: none).
    #[serde(default)]
    pub request_body_bytes: u32,
    /// The workloads this bundle is attached to (any target selecting one will do). Left
    /// empty on the mesh-wide VigilPolicy; another VigilPolicy without targets is unused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<PolicyTarget>,
    /// Keep each logged decision's input, for `vigil policy replay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_input: Option<RecordInputSpec>,
    /// A candidate bundle evaluated beside this one on live traffic and never enforced
    /// (same rule); its disagreements are counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateSpec>,
}

/// What decision records keep of the input (an empty object takes the defaults).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordInputSpec {
    /// Headers whose values are written as REDACTED (default: authorization,
    /// proxy-authorization, cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_headers: Option<Vec<String>>,
    /// Inputs longer than this many bytes of JSON are left out (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u32>,
    /// Keep request bodies.
    #[serde(default)]
    pub bodies: bool,
}

/// A candidate bundle: modules and data, as in the spec.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CandidateSpec {
    /// Rego modules by file name (each ending in .rego).
    pub modules: BTreeMap<String, String>,
    /// Data document the modules read under `data` (JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub data: Option<serde_json::Value>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Compiles a VigilPolicy for a mesh of `trust_domain`, with its candidate when it has one.
pub fn from_vigil_policy(policy: &VigilPolicy, trust_domain: &str) -> Result<LoadedPolicy, String> {
    served_from(policy, trust_domain).map(|(loaded, _)| loaded)
}

/// A VigilPolicy's bundle, named as the mesh's policy it is, with its candidate.
fn served_policy(
    policy: &VigilPolicy,
    name: &str,
    trust_domain: &str,
) -> Result<ServedPolicy, String> {
    let (loaded, candidate) = served_from(policy, trust_domain)?;
    let mut bundle = loaded.wire;
    bundle.name = name.to_string();
    let candidate = candidate.map(|mut c| {
        c.name = format!("{name} (candidate)");
        c
    });
    Ok(ServedPolicy::new(bundle, candidate))
}

fn served_from(
    policy: &VigilPolicy,
    trust_domain: &str,
) -> Result<(LoadedPolicy, Option<vigil_api::PolicyBundle>), String> {
    let spec = &policy.spec;
    let options = PolicyOptions {
        rule: spec
            .rule
            .clone()
            .unwrap_or_else(|| PolicyOptions::default().rule),
        dry_run: spec.dry_run,
        log_allows: spec.log_allows,
    };
    let compile = |modules: &BTreeMap<String, String>, data: Option<&serde_json::Value>| {
        let mut files = bundle_files(modules, data)?;
        policy_source::add_mesh_data(&mut files, trust_domain, "");
        policy_source::compile(files, options.clone(), spec.request_body_bytes)
    };
    let mut loaded = compile(&spec.modules, spec.data.as_ref())?;
    loaded.wire.record_input = spec.record_input.as_ref().map(|r| {
        let defaults = crate::mesh::InputRecordingSettings::default();
        crate::mesh::InputRecordingSettings {
            redact_headers: r.redact_headers.clone().unwrap_or(defaults.redact_headers),
            max_bytes: r.max_bytes.unwrap_or(defaults.max_bytes),
            bodies: r.bodies,
        }
        .wire()
    });
    let candidate = match &spec.candidate {
        Some(c) => Some(
            compile(&c.modules, c.data.as_ref())
                .map_err(|e| format!("candidate: {e}"))?
                .wire,
        ),
        None => None,
    };
    Ok((loaded, candidate))
}

/// A bundle's files from a spec's modules and data.
fn bundle_files(
    modules: &BTreeMap<String, String>,
    data: Option<&serde_json::Value>,
) -> Result<Vec<PolicyFile>, String> {
    let mut files = Vec::new();
    for (name, contents) in modules {
        if !name.ends_with(".rego") || name.contains('/') {
            return Err(format!(
                "VigilPolicy module {name:?}: module names are plain file names ending in .rego"
            ));
        }
        files.push(PolicyFile {
            path: name.clone(),
            contents: contents.clone(),
        });
    }
    if let Some(data) = data {
        if !data.is_object() {
            return Err("VigilPolicy data must be a JSON object".into());
        }
        files.push(PolicyFile {
            path: "data.json".into(),
            contents: data.to_string(),
        });
    }
    Ok(files)
}

/// Compiles a ConfigMap: keys ending in `.rego` are modules, `.json`/`.yaml` data; the
/// optional keys `rule`, `dryRun`, `logAllows` and `requestBodyBytes` set the options.
pub fn from_config_map(config_map: &ConfigMap, trust_domain: &str) -> Result<LoadedPolicy, String> {
    let data = config_map.data.clone().unwrap_or_default();
    let mut files = Vec::new();
    for (key, contents) in &data {
        let is_file = [".rego", ".json", ".yaml", ".yml"]
            .iter()
            .any(|ext| key.ends_with(ext));
        if is_file && !key.ends_with("_test.rego") {
            files.push(PolicyFile {
                path: key.clone(),
                contents: contents.clone(),
            });
        }
    }
    if files.is_empty() {
        return Err("the policy ConfigMap has no .rego keys".into());
    }
    let flag = |key: &str| -> Result<bool, String> {
        match data.get(key).map(|v| v.trim()) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(format!(
                "policy ConfigMap key {key} is {other:?}; use true or false"
            )),
        }
    };
    let request_body_bytes = match data.get("requestBodyBytes") {
        None => 0,
        Some(v) => v.trim().parse().map_err(|_| {
            format!("policy ConfigMap key requestBodyBytes is {v:?}; use a number of bytes")
        })?,
    };
    let options = PolicyOptions {
        rule: data
            .get("rule")
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|| PolicyOptions::default().rule),
        dry_run: flag("dryRun")?,
        log_allows: flag("logAllows")?,
    };
    policy_source::add_mesh_data(&mut files, trust_domain, "");
    policy_source::compile(files, options, request_body_bytes)
}

/// The bundle in force: the VigilPolicy if there is one, else the ConfigMap, else the
/// shipped default for `trust_domain`.
pub fn select(
    policy: Option<&VigilPolicy>,
    config_map: Option<&ConfigMap>,
    trust_domain: &str,
) -> Result<LoadedPolicy, String> {
    match (policy, config_map) {
        (Some(p), _) => from_vigil_policy(p, trust_domain).map_err(|e| {
            format!(
                "VigilPolicy {}: {e}",
                p.metadata.name.as_deref().unwrap_or("?")
            )
        }),
        (None, Some(cm)) => from_config_map(cm, trust_domain).map_err(|e| {
            format!(
                "policy ConfigMap {}: {e}",
                cm.metadata.name.as_deref().unwrap_or("?")
            )
        }),
        (None, None) => policy_source::load(None, trust_domain),
    }
}

/// Every bundle of the namespace: the mesh-wide one (see [`select`]) and every other
/// VigilPolicy with targets, attached in the order of their names.
pub fn select_all(
    policies: &[std::sync::Arc<VigilPolicy>],
    mesh_wide: &str,
    config_map: Option<&ConfigMap>,
    trust_domain: &str,
) -> Result<ServedPolicies, String> {
    use kube::ResourceExt;
    let named = policies.iter().find(|p| p.name_any() == mesh_wide);
    let mut served = match named {
        Some(p) => ServedPolicies {
            mesh_wide: Some(
                served_policy(p, policy_source::DEFAULT_POLICY_NAME, trust_domain)
                    .map_err(|e| format!("VigilPolicy {mesh_wide}: {e}"))?,
            ),
            attached: Vec::new(),
        },
        None => ServedPolicies::mesh_wide(select(None, config_map, trust_domain)?.wire),
    };
    let mut attached: Vec<&VigilPolicy> = policies
        .iter()
        .map(|p| &**p)
        .filter(|p| p.name_any() != mesh_wide && !p.spec.targets.is_empty())
        .collect();
    attached.sort_by_key(|p| p.name_any());
    for policy in attached {
        let name = policy.name_any();
        if name == policy_source::DEFAULT_POLICY_NAME {
            return Err(format!(
                "VigilPolicy {name}: an attached policy cannot be named {name:?}, which names the mesh-wide one (rename it)"
            ));
        }
        served.attached.push(AttachedPolicy {
            targets: policy.spec.targets.clone(),
            served: served_policy(policy, &name, trust_domain)
                .map_err(|e| format!("VigilPolicy {name}: {e}"))?,
        });
    }
    Ok(served)
}
