//! `vigil inject`: the webhook's mutation applied to YAML files, for GitOps pipelines and
//! clusters without the webhook. Pods and the pod templates of Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs and CronJobs (also inside a `List`) are injected; other
//! documents and already-injected objects pass through unchanged.

use serde::Deserialize;
use serde_json::Value;

use super::{inject_pod, InjectConfig, InjectError, Outcome};

/// What happened to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Kind/name`.
    pub object: String,
    pub outcome: Outcome,
}

/// Input that is not YAML Kubernetes objects.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index} is not valid YAML: {message}")]
    Yaml { index: usize, message: String },
    #[error("{object}: {source}")]
    Inject { object: String, source: InjectError },
    #[error("writing YAML: {0}")]
    Write(String),
}

/// Injects every pod template in a multi-document YAML text; returns the new text and a
/// report per object that has a pod template.
pub fn inject_yaml(text: &str, cfg: &InjectConfig) -> Result<(String, Vec<Report>), OfflineError> {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut value = Value::deserialize(document).map_err(|e| OfflineError::Yaml {
            index: index + 1,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        inject_object(&mut value, cfg, &mut reports)?;
        out.push(serde_yaml::to_string(&value).map_err(|e| OfflineError::Write(e.to_string()))?);
    }
    Ok((out.join("---\n"), reports))
}

/// Injects one object (recursing into `List` items).
pub fn inject_object(
    object: &mut Value,
    cfg: &InjectConfig,
    reports: &mut Vec<Report>,
) -> Result<(), OfflineError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    let label = format!("{kind}/{name}");
    let template = match kind.as_str() {
        "List" => {
            if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    inject_object(item, cfg, reports)?;
                }
            }
            return Ok(());
        }
        "Pod" => Some(&mut *object),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => object.pointer_mut("/spec/template"),
        "CronJob" => object.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => return Ok(()),
    };
    let Some(template) = template else {
        return Err(OfflineError::Inject {
            object: label,
            source: InjectError::NotAnObject("the pod template"),
        });
    };
    let mut outcome = inject_pod(template, cfg).map_err(|source| OfflineError::Inject {
        object: label.clone(),
        source,
    })?;
    if let Outcome::Injected { mode, warnings } = &mut outcome {
        if matches!(kind.as_str(), "Job" | "CronJob") && *mode == super::SidecarMode::Classic {
            warnings.push(
                "a classic sidecar never exits, so this Job never completes; use the native mode"
                    .into(),
            );
        }
    }
    reports.push(Report {
        object: label,
        outcome,
    });
    Ok(())
}
