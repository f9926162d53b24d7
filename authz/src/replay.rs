//! `vigil policy replay`: what a candidate bundle would have decided on recorded traffic.
//!
//! Decision logs written with input recording on carry each decision's input document.
//! Replay evaluates every recorded input against the candidate and sorts the decisions
//! whose outcome changes (allow → deny, deny → allow, anything ↔ error) by the rule that
//! explains the change: for a new denial the rule the candidate's reason names, for a
//! denial that goes away the rule the recorded reason named (the same names as the
//! `denied_by` label of `vigil_policy_decisions_total`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::Serialize;

use crate::bundle::PolicyBundle;
use crate::cli::w;
use crate::decision::{rule_named_by, Decision};
use crate::files::BundleError;
use crate::testing::TestFormat;

/// How many example decisions a change group shows.
const EXAMPLES_PER_GROUP: usize = 3;

/// One decision log to replay, with a name for messages.
pub struct RecordedLog<'a> {
    /// Shown in messages (the file's path).
    pub name: String,
    /// The log's lines.
    pub reader: Box<dyn BufRead + 'a>,
}

/// One decision whose outcome the candidate changes.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayExample {
    pub decision_id: String,
    pub time: String,
    pub source_principal: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// Why the recorded decision was what it was (empty for an allow).
    pub recorded_reason: String,
    /// Why the candidate decides otherwise (empty for an allow).
    pub candidate_reason: String,
}

/// Decisions that changed the same way for the same rule.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeGroup {
    /// The recorded outcome: `allow`, `deny` or `error`.
    pub from: &'static str,
    /// The candidate's outcome.
    pub to: &'static str,
    /// The rule that explains the change.
    pub rule: String,
    pub count: u64,
    /// The first few decisions of the group, in log order.
    pub examples: Vec<ReplayExample>,
}

/// What a replay found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySummary {
    /// The candidate bundle's version.
    pub candidate_version: String,
    /// Decisions evaluated again.
    pub replayed: u64,
    /// Decisions the candidate decides the same way.
    pub unchanged: u64,
    /// Records without an input (recorded before input recording was on, or too large).
    pub without_input: u64,
    /// Lines that are not decision records.
    pub unreadable: u64,
    /// Changed decisions whose recorded input had redacted parts: the candidate may have
    /// decided on a placeholder where the real request had a value.
    pub changed_with_redactions: u64,
    /// Changed decisions, grouped.
    pub changes: Vec<ChangeGroup>,
}

impl ReplaySummary {
    /// How many decisions change.
    pub fn changed(&self) -> u64 {
        self.changes.iter().map(|g| g.count).sum()
    }
}

/// The fields of a decision record that replay reads.
#[derive(serde::Deserialize)]
struct Recorded {
    #[serde(default)]
    decision_id: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    source_principal: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    result: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    input_redacted: Vec<String>,
}

fn outcome_name(result: &str) -> Option<&'static str> {
    match result {
        "allow" => Some("allow"),
        "deny" => Some("deny"),
        "error" => Some("error"),
        _ => None,
    }
}

/// Replays every log against `candidate`, reporting on `out` in `format`. Unreadable
/// lines are counted, not fatal: a log cut short by a crash still replays.
pub fn replay(
    candidate: &PolicyBundle,
    logs: Vec<RecordedLog<'_>>,
    format: TestFormat,
    out: &mut dyn Write,
) -> Result<ReplaySummary, BundleError> {
    let rule = candidate.options().rule.clone();
    let mut summary = ReplaySummary {
        candidate_version: candidate.version().to_string(),
        ..ReplaySummary::default()
    };
    let mut groups: BTreeMap<(&'static str, &'static str, String), ChangeGroup> = BTreeMap::new();
    let log_count = logs.len();
    for log in logs {
        for (number, line) in log.reader.lines().enumerate() {
            let line = line.map_err(|e| {
                BundleError::Input(format!(
                    "cannot read {} at line {}: {e}",
                    log.name,
                    number + 1
                ))
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(record) = serde_json::from_str::<Recorded>(&line) else {
                summary.unreadable += 1;
                continue;
            };
            let Some(from) = outcome_name(&record.result) else {
                summary.unreadable += 1;
                continue;
            };
            let Some(input) = record.input.as_ref() else {
                summary.without_input += 1;
                continue;
            };
            let decision = match regorus::Value::from_json_str(&input.to_string()) {
                Ok(input) => candidate.evaluate_value(input),
                Err(e) => Decision::Error {
                    reason: format!("recorded input does not load: {e}"),
                },
            };
            summary.replayed += 1;
            let to = decision.outcome();
            if to == from {
                summary.unchanged += 1;
                continue;
            }
            if !record.input_redacted.is_empty() {
                summary.changed_with_redactions += 1;
            }
            let why = match (&decision, from) {
                (Decision::Deny { .. }, _) => decision.denied_by(&rule).unwrap_or(&rule),
                (_, "deny") => rule_named_by(&record.reason, &rule),
                (Decision::Error { reason }, _) => reason.as_str(),
                _ => record.reason.as_str(),
            };
            let group = groups
                .entry((from, to, why.to_string()))
                .or_insert_with(|| ChangeGroup {
                    from,
                    to,
                    rule: why.to_string(),
                    count: 0,
                    examples: Vec::new(),
                });
            group.count += 1;
            if group.examples.len() < EXAMPLES_PER_GROUP {
                group.examples.push(ReplayExample {
                    decision_id: record.decision_id,
                    time: record.time,
                    source_principal: record.source_principal,
                    method: record.method,
                    path: record.path,
                    recorded_reason: record.reason,
                    candidate_reason: decision.reason().to_string(),
                });
            }
        }
    }
    let mut changes: Vec<ChangeGroup> = groups.into_values().collect();
    changes.sort_by(|a, b| {
        (a.from, a.to)
            .cmp(&(b.from, b.to))
            .then(b.count.cmp(&a.count))
    });
    summary.changes = changes;
    match format {
        TestFormat::Json => {
            let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
            w(out, format_args!("{text}\n"))?;
        }
        TestFormat::Pretty => print_pretty(&summary, log_count, out)?,
    }
    Ok(summary)
}

fn print_pretty(
    summary: &ReplaySummary,
    log_count: usize,
    out: &mut dyn Write,
) -> Result<(), BundleError> {
    let logs = if log_count == 1 { "log" } else { "logs" };
    w(
        out,
        format_args!(
            "replayed {} decisions from {log_count} {logs} against candidate {}\n",
            summary.replayed, summary.candidate_version
        ),
    )?;
    if summary.without_input > 0 {
        w(
            out,
            format_args!(
                "  {} records without a recorded input were skipped (turn on record_input for the policy to record them)\n",
                summary.without_input
            ),
        )?;
    }
    if summary.unreadable > 0 {
        w(
            out,
            format_args!(
                "  {} lines are not decision records and were skipped\n",
                summary.unreadable
            ),
        )?;
    }
    w(out, format_args!("  {} unchanged\n", summary.unchanged))?;
    let mut last = ("", "");
    for group in &summary.changes {
        if (group.from, group.to) != last {
            last = (group.from, group.to);
            let total: u64 = summary
                .changes
                .iter()
                .filter(|g| (g.from, g.to) == last)
                .map(|g| g.count)
                .sum();
            w(
                out,
                format_args!("  {total} {} -> {}\n", group.from, group.to),
            )?;
        }
        w(
            out,
            format_args!("    {:>6}  {}\n", group.count, group.rule),
        )?;
        for example in &group.examples {
            let request = match (&example.method, &example.path) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => "connection".to_string(),
            };
            let from = example.source_principal.as_deref().unwrap_or("no identity");
            w(
                out,
                format_args!(
                    "            e.g. {request} from {from} at {} (decision {})\n",
                    example.time, example.decision_id
                ),
            )?;
            let reason = if example.candidate_reason.is_empty() {
                &example.recorded_reason
            } else {
                &example.candidate_reason
            };
            if !reason.is_empty() {
                w(out, format_args!("                 {reason}\n"))?;
            }
        }
    }
    if summary.changed_with_redactions > 0 {
        w(
            out,
            format_args!(
                "  note: {} changed decisions had redacted input (headers, query or body); check whether the candidate reads those parts\n",
                summary.changed_with_redactions
            ),
        )?;
    }
    let changed = summary.changed();
    if changed == 0 {
        w(out, format_args!("no decision changes\n"))?;
    } else {
        w(
            out,
            format_args!("{changed} of {} decisions change\n", summary.replayed),
        )?;
    }
    Ok(())
}
