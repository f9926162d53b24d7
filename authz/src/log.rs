//! Decision log records: one JSON line per logged decision.
//!
//! Query strings carry tokens, e-mail addresses and other personal data, so by default the
//! record keeps the path and the parameter names and replaces every value with `REDACTED`
//! ([`QueryLogging`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::bundle::PolicyBundle;
use crate::decision::{Decision, DynamicMetadata};
use crate::input::{AuthzInput, InputKind};

/// What the decision log records about one decision. The caller writes it as one JSON line
/// (see [`DecisionRecord::to_json_line`]) when [`PolicyBundle::should_log`] says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    /// The request id when there is one, otherwise a process-unique id.
    pub decision_id: String,
    /// When the decision was made, RFC 3339 in UTC.
    pub time: String,
    /// The bundle that decided.
    pub bundle_version: String,
    /// The verified peer SPIFFE ID.
    pub source_principal: Option<String>,
    /// This workload's SPIFFE ID.
    pub destination_principal: Option<String>,
    /// The peer's `ip:port`.
    pub source_address: String,
    /// HTTP method (absent for TCP).
    pub method: Option<String>,
    /// HTTP path with query (absent for TCP); query values redacted unless the record was
    /// made with [`QueryLogging::Kept`].
    pub path: Option<String>,
    /// `allow`, `deny` or `error` — what the policy decided, before dry-run.
    pub result: &'static str,
    /// Why it was denied or failed (empty for an allow).
    pub reason: String,
    /// Whether the bundle runs in dry-run mode (the decision was logged, not enforced).
    pub dry_run: bool,
    /// The denial's status; absent for allows and errors (the caller picks the error status).
    pub http_status: Option<u16>,
    /// The policy's `dynamic_metadata` (OPA-Envoy's decision field), when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata: Option<DynamicMetadata>,
    /// The input document, when the bundle records inputs ([`InputRecording`]): what
    /// `vigil policy replay` evaluates a candidate bundle against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// What the recorded input left out: redacted header names, `body`, `query`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub input_redacted: Vec<String>,
    /// Why the input was not recorded although the bundle records inputs (too large).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_omitted: Option<String>,
    /// What the candidate bundle beside this one decided, where it decided otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateDecision>,
}

/// A candidate bundle's decision, recorded where it differs from the one in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateDecision {
    pub bundle_version: String,
    /// `allow`, `deny` or `error`.
    pub result: &'static str,
    pub reason: String,
}

/// What a decision record keeps of the input document, so that recorded decisions can be
/// evaluated again against another bundle before it is put in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRecording {
    /// Header names (matched without regard to case) whose values become `REDACTED`.
    pub redact_headers: Vec<String>,
    /// A document longer than this (as JSON) is left out of the record, which says so.
    pub max_bytes: usize,
    /// Whether the request body and its parsed form are kept (they are dropped otherwise).
    pub bodies: bool,
}

impl InputRecording {
    /// Headers redacted unless the operator lists others: credentials and session cookies.
    pub const DEFAULT_REDACTED_HEADERS: [&'static str; 3] =
        ["authorization", "proxy-authorization", "cookie"];
    /// The default size bound of one recorded input.
    pub const DEFAULT_MAX_BYTES: usize = 16 * 1024;

    /// The input as this recording keeps it, the parts it left out, and why the whole
    /// document was left out when it was.
    fn record(
        &self,
        input: &AuthzInput<'_>,
        query: QueryLogging,
    ) -> (Option<serde_json::Value>, Vec<String>, Option<String>) {
        let mut document = input.to_json();
        let mut redacted = Vec::new();
        if let Some(http) = document.pointer_mut("/attributes/request/http") {
            if let Some(headers) = http.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for (name, value) in headers.iter_mut() {
                    if self
                        .redact_headers
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(name))
                    {
                        *value = serde_json::Value::from(REDACTED);
                        redacted.push(name.clone());
                    }
                }
            }
            if !self.bodies
                && http
                    .as_object_mut()
                    .and_then(|h| h.remove("body"))
                    .is_some()
            {
                redacted.push("body".into());
            }
            if query == QueryLogging::Redacted {
                // The path is in the `:path` pseudo-header too.
                let mut any = false;
                if let Some(path) = http.get_mut("headers").and_then(|h| h.get_mut(":path")) {
                    any |= redact_query_in(path);
                }
                if let Some(path) = http.get_mut("path") {
                    any |= redact_query_in(path);
                }
                if any {
                    redacted.push("query".into());
                }
            }
        }
        if redacted.iter().any(|r| r == "body") {
            if let Some(parsed) = document.get_mut("parsed_body") {
                *parsed = serde_json::Value::Null;
            }
        }
        if redacted.iter().any(|r| r == "query") {
            if let Some(params) = document
                .get_mut("parsed_query")
                .and_then(|q| q.as_object_mut())
            {
                for values in params.values_mut() {
                    if let Some(values) = values.as_array_mut() {
                        values.fill(serde_json::Value::from(REDACTED));
                    }
                }
            }
        }
        let size = serde_json::to_vec(&document).map_or(0, |b| b.len());
        if size > self.max_bytes {
            let why = format!(
                "the input is {size} bytes, over the {}-byte limit of recorded inputs",
                self.max_bytes
            );
            return (None, redacted, Some(why));
        }
        (Some(document), redacted, None)
    }
}

/// Redacts the query of a path held in a JSON string; whether there was one.
fn redact_query_in(path: &mut serde_json::Value) -> bool {
    match path.as_str().filter(|p| p.contains('?')) {
        Some(text) => {
            *path = serde_json::Value::from(redact_query(text));
            true
        }
        None => false,
    }
}

impl Default for InputRecording {
    fn default() -> Self {
        InputRecording {
            redact_headers: Self::DEFAULT_REDACTED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            bodies: false,
        }
    }
}

/// How a decision record writes the request's query string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryLogging {
    /// Parameter names kept, values replaced by `REDACTED` (a parameter without `=` is
    /// replaced whole, since its name may be the secret).
    #[default]
    Redacted,
    /// As received.
    Kept,
}

/// Marks what the decision log left out.
const REDACTED: &str = "REDACTED";

/// `path?a=1&b` becomes `path?a=REDACTED&REDACTED`.
fn redact_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let query = query.split('#').next().unwrap_or("");
    let redacted: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((name, _)) => format!("{name}={REDACTED}"),
            None => REDACTED.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl DecisionRecord {
    /// Builds the record for `decision` (the policy's decision, before [`PolicyBundle::enforce`]),
    /// with the query string's values redacted.
    pub fn new(bundle: &PolicyBundle, input: &AuthzInput<'_>, decision: &Decision) -> Self {
        Self::with_query_logging(bundle, input, decision, QueryLogging::Redacted)
    }

    /// Like [`new`](Self::new), choosing how the query string is written.
    pub fn with_query_logging(
        bundle: &PolicyBundle,
        input: &AuthzInput<'_>,
        decision: &Decision,
        query: QueryLogging,
    ) -> Self {
        let (method, path, id) = match &input.kind {
            InputKind::Http(http) => (
                Some(http.method.to_string()),
                Some(match query {
                    QueryLogging::Redacted => redact_query(http.path),
                    QueryLogging::Kept => http.path.to_string(),
                }),
                http.id,
            ),
            InputKind::Tcp => (None, None, ""),
        };
        let now = SystemTime::now();
        let decision_id = if id.is_empty() {
            let nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            format!("{nanos:x}-{:x}", SEQUENCE.fetch_add(1, Ordering::Relaxed))
        } else {
            id.to_string()
        };
        DecisionRecord {
            decision_id,
            time: rfc3339(now),
            bundle_version: bundle.version().to_string(),
            source_principal: input.source_principal.map(str::to_string),
            destination_principal: input.destination_principal.map(str::to_string),
            source_address: input.source_address.to_string(),
            method,
            path,
            result: decision.outcome(),
            reason: decision.reason().to_string(),
            dry_run: bundle.options().dry_run,
            http_status: decision.http_status(),
            dynamic_metadata: decision.dynamic_metadata().cloned(),
            input: None,
            input_redacted: Vec::new(),
            input_omitted: None,
            candidate: None,
        }
    }

    /// Adds the input document as `recording` keeps it (the query string redacted or kept
    /// as for [`with_query_logging`](Self::with_query_logging)).
    pub fn with_input(
        mut self,
        input: &AuthzInput<'_>,
        recording: &InputRecording,
        query: QueryLogging,
    ) -> Self {
        let (document, redacted, omitted) = recording.record(input, query);
        self.input = document;
        self.input_redacted = redacted;
        self.input_omitted = omitted;
        self
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, numbers and options cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Formats a time as RFC 3339 UTC with millisecond precision, e.g. `2024-05-01T12:00:00.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm, to avoid a date
/// crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn redacts_query_values() {
        assert_eq!(
            redact_query("/orders?token=s3cr3t&page=2&flag&=x"),
            "/orders?token=REDACTED&page=REDACTED&REDACTED&=REDACTED"
        );
        assert_eq!(redact_query("/orders"), "/orders");
        assert_eq!(redact_query("/orders?"), "/orders?");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }
}
