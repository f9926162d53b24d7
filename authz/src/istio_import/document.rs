//! Istio `AuthorizationPolicy` documents as written, read with serde.
//!
//! No `deny_unknown_fields`: a field Vigil does not know is kept in `other` and reported as
//! not translated by the lowering (`model.rs`), instead of failing the whole import.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// One YAML document, before checking that it is an `AuthorizationPolicy`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Document {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Metadata,
    pub spec: Option<Spec>,
    pub items: Option<Vec<serde_yaml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub annotations: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Spec {
    pub selector: Option<Selector>,
    pub target_ref: Option<serde_yaml::Value>,
    pub target_refs: Option<Vec<serde_yaml::Value>>,
    pub action: Option<String>,
    pub provider: Option<serde_yaml::Value>,
    pub rules: Vec<RuleSpec>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Selector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RuleSpec {
    pub from: Vec<FromSpec>,
    pub to: Vec<ToSpec>,
    pub when: Vec<ConditionSpec>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct FromSpec {
    pub source: Option<SourceSpec>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ToSpec {
    pub operation: Option<OperationSpec>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct SourceSpec {
    #[serde(deserialize_with = "scalars")]
    pub principals: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_principals: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub request_principals: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_request_principals: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub namespaces: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_namespaces: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub ip_blocks: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct OperationSpec {
    #[serde(deserialize_with = "scalars")]
    pub hosts: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_hosts: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub ports: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_ports: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub methods: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_methods: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_paths: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct ConditionSpec {
    pub key: String,
    #[serde(deserialize_with = "scalars")]
    pub values: Vec<String>,
    #[serde(deserialize_with = "scalars")]
    pub not_values: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// A list of strings, also accepting numbers and booleans (`ports: [8080]` is common, though
/// Istio's schema says strings) and null for an empty list.
fn scalars<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values: Option<Vec<serde_yaml::Value>> = Option::deserialize(d)?;
    values
        .unwrap_or_default()
        .into_iter()
        .map(|v| match v {
            serde_yaml::Value::String(s) => Ok(s),
            serde_yaml::Value::Number(n) => Ok(n.to_string()),
            serde_yaml::Value::Bool(b) => Ok(b.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "expected a string, found {other:?}"
            ))),
        })
        .collect()
}
