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
use crate::policy_source::{self, AttachedPolicy, LoadedPolicy, ServedPolicies, ServedPolicy};

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
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Compiles a VigilPolicy for a mesh of `trust_domain`.
pub fn from_vigil_policy(policy: &VigilPolicy, trust_domain: &str) -> Result<LoadedPolicy, String> {
    let spec = &policy.spec;
    let mut files = Vec::new();
    for (name, contents) in &spec.modules {
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
    if let Some(data) = &spec.data {
        if !data.is_object() {
            return Err("VigilPolicy spec.data must be a JSON object".into());
        }
        files.push(PolicyFile {
            path: "data.json".into(),
            contents: data.to_string(),
        });
    }
    let options = PolicyOptions {
        rule: spec
            .rule
            .clone()
            .unwrap_or_else(|| PolicyOptions::default().rule),
        dry_run: spec.dry_run,
        log_allows: spec.log_allows,
    };
    policy_source::add_mesh_data(&mut files, trust_domain, "");
    policy_source::compile(files, options, spec.request_body_bytes)
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
    let mesh_wide_bundle = select(named.map(|p| &**p), config_map, trust_domain)?.wire;
    let mut attached: Vec<&VigilPolicy> = policies
        .iter()
        .map(|p| &**p)
        .filter(|p| p.name_any() != mesh_wide && !p.spec.targets.is_empty())
        .collect();
    attached.sort_by_key(|p| p.name_any());
    let mut served = ServedPolicies::mesh_wide(mesh_wide_bundle);
    for policy in attached {
        let name = policy.name_any();
        if name == policy_source::DEFAULT_POLICY_NAME {
            return Err(format!(
                "VigilPolicy {name}: an attached policy cannot be named {name:?}, which names the mesh-wide one (rename it)"
            ));
        }
        let mut bundle = from_vigil_policy(policy, trust_domain)
            .map_err(|e| format!("VigilPolicy {name}: {e}"))?
            .wire;
        bundle.name = name;
        served.attached.push(AttachedPolicy {
            targets: policy.spec.targets.clone(),
            served: ServedPolicy {
                bundle,
                candidate: None,
            },
        });
    }
    Ok(served)
}
