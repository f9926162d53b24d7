//! `vigil policy eval`: evaluate a policy directory against a JSON input document.

use std::io::Write;
use std::path::Path;

use regorus::Value;

use crate::bundle::{PolicyBundle, PolicyOptions};
use crate::decision::Decision;
use crate::files::BundleError;

/// Compiles the policies under `dir` with the given decision rule (or the default one).
pub(crate) fn load_bundle(dir: &Path, rule: Option<&str>) -> Result<PolicyBundle, BundleError> {
    let mut options = PolicyOptions::default();
    if let Some(rule) = rule {
        options.rule = rule.to_string();
    }
    PolicyBundle::compile(PolicyBundle::read_dir(dir)?, options)
}

/// Reads an input document given whole on the command line, as OPA-Envoy would build it.
pub(crate) fn parse_input(input_json: &str) -> Result<Value, BundleError> {
    Value::from_json_str(input_json).map_err(|e| BundleError::Input(format!("{e:#}")))
}

/// Evaluates the policies under `policy_dir` against `input_json` (a full input document, as
/// OPA-Envoy would build it) and prints the raw value and the interpreted decision as pretty
/// JSON. Returns the decision.
pub fn eval_command(
    policy_dir: &Path,
    input_json: &str,
    rule: Option<&str>,
    out: &mut dyn Write,
) -> Result<Decision, BundleError> {
    let bundle = load_bundle(policy_dir, rule)?;
    let input = parse_input(input_json)?;
    let (value, decision) = match bundle.eval_raw(input) {
        Ok(value) => {
            let decision = Decision::from_value(&value, &bundle.options().rule);
            (value, decision)
        }
        Err(e) => (
            Value::Undefined,
            Decision::Error {
                reason: e.to_string(),
            },
        ),
    };
    let report = serde_json::json!({
        "rule": bundle.options().rule,
        "bundle_version": bundle.version(),
        "backend": bundle.backend().name(),
        "backend_reason": bundle.backend().reason(),
        // Undefined has no JSON form; null keeps the field present.
        "value": if value == Value::Undefined { serde_json::Value::Null } else { serde_json::to_value(&value).unwrap_or_default() },
        "defined": value != Value::Undefined,
        "decision": decision,
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    w(out, format_args!("{text}\n"))?;
    Ok(decision)
}

/// Writes CLI output, as a [`BundleError`] when the output cannot take it.
pub(crate) fn w(out: &mut dyn Write, args: std::fmt::Arguments<'_>) -> Result<(), BundleError> {
    out.write_fmt(args).map_err(BundleError::output)
}
