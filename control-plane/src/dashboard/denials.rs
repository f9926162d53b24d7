//! Recent policy denials: each proxy's `/tap?policy=deny` stream, kept as the last N. When
//! the proxies write their decision logs into the control plane's data directory (as
//! `vigil up` and `vigil demo` arrange: `<data-dir>/<workload>-decisions.log`), each
//! denial also gets the reason the policy gave (the rule that said no) and the bundle
//! version that decided, matched by request id.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One denied request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Denial {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The workload whose proxy denied it.
    pub workload: String,
    pub source: String,
    pub destination: String,
    pub service: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// What the policy said: its reason, or which rule was false.
    pub rule: Option<String>,
    pub bundle_version: Option<String>,
    pub request_id: String,
}

/// The fields of a tap record a denial needs.
#[derive(Debug, Deserialize)]
struct TapRecord {
    #[serde(default)]
    time: f64,
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    request_id: String,
}

/// The fields of a decision-log line the dashboard uses.
#[derive(Debug, Clone, Deserialize)]
struct DecisionLine {
    #[serde(default)]
    decision_id: String,
    #[serde(default)]
    bundle_version: String,
    #[serde(default)]
    source_principal: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    result: String,
    #[serde(default)]
    reason: String,
}

/// Why a request was denied, from a decision log.
#[derive(Debug, Clone)]
struct Reason {
    workload: String,
    line: DecisionLine,
    used: bool,
}

/// The last N denials and the decision-log reasons waiting to be matched.
pub struct Denials {
    keep: usize,
    recent: VecDeque<Denial>,
    reasons: VecDeque<Reason>,
    /// Read position in each decision log.
    offsets: BTreeMap<PathBuf, u64>,
}

/// How many unmatched decision-log lines are kept.
const REASONS_KEPT: usize = 2000;

impl Denials {
    pub fn new(keep: usize) -> Self {
        Denials {
            keep,
            recent: VecDeque::new(),
            reasons: VecDeque::new(),
            offsets: BTreeMap::new(),
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Denial> {
        self.recent.iter().rev().cloned().collect()
    }

    /// Takes one tap line from `workload`'s proxy; anything but a denial is ignored.
    pub fn tap_line(&mut self, workload: &str, line: &str) {
        let Ok(r) = serde_json::from_str::<TapRecord>(line) else {
            return;
        };
        if r.policy != "deny" {
            return;
        }
        let mut denial = Denial {
            time: r.time,
            workload: workload.to_string(),
            source: r.source,
            destination: r.destination,
            service: r.service,
            method: r.method,
            path: r.path,
            status: r.status,
            rule: None,
            bundle_version: None,
            request_id: r.request_id,
        };
        if let Some(reason) = self
            .reasons
            .iter_mut()
            .rev()
            .find(|x| !x.used && matches(x, &denial))
        {
            reason.used = true;
            denial.rule = Some(reason.line.reason.clone());
            denial.bundle_version = Some(reason.line.bundle_version.clone());
        }
        self.recent.push_back(denial);
        while self.recent.len() > self.keep {
            self.recent.pop_front();
        }
    }

    /// Reads what the decision logs gained since the last call and fills in the reasons
    /// of denials that lack one.
    pub fn read_decision_logs(&mut self, data_dir: &Path, workloads: &[String]) {
        for workload in workloads {
            let path = data_dir.join(format!("{workload}-decisions.log"));
            let offset = self.offsets.get(&path).cloned().unwrap_or(0);
            let Some((text, next)) = read_from(&path, offset) else {
                continue;
            };
            self.offsets.insert(path, next);
            for line in text.lines() {
                let Ok(d) = serde_json::from_str::<DecisionLine>(line) else {
                    continue;
                };
                if d.result != "deny" {
                    continue;
                }
                let mut reason = Reason {
                    workload: workload.clone(),
                    line: d,
                    used: false,
                };
                if let Some(denial) = self
                    .recent
                    .iter_mut()
                    .rev()
                    .find(|x| x.rule.is_none() && matches(&reason, x))
                {
                    denial.rule = Some(reason.line.reason.clone());
                    denial.bundle_version = Some(reason.line.bundle_version.clone());
                    reason.used = true;
                }
                self.reasons.push_back(reason);
                while self.reasons.len() > REASONS_KEPT {
                    self.reasons.pop_front();
                }
            }
        }
    }

    /// Denials per rule among the recent ones, most frequent first.
    pub fn by_rule(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in &self.recent {
            *counts
                .entry(
                    d.rule
                        .clone()
                        .unwrap_or_else(|| "(reason not read yet)".into()),
                )
                .or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Same request: the request id when both have one, else same caller, method and path.
fn matches(reason: &Reason, denial: &Denial) -> bool {
    if reason.workload != denial.workload {
        return false;
    }
    let line = &reason.line;
    if !line.decision_id.is_empty() && line.decision_id == denial.request_id {
        return true;
    }
    let path = line.path.as_deref().unwrap_or("");
    let path_only = path.split('?').next().unwrap_or(path);
    line.method.as_deref() == Some(denial.method.as_str())
        && path_only == denial.path
        && line.source_principal.as_deref().unwrap_or("") == denial.source
}

/// The bytes of `path` from `offset` (from the start again if the file shrank), and the
/// new offset; only whole lines are returned.
fn read_from(path: &Path, offset: u64) -> Option<(String, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = if len < offset { 0 } else { offset };
    if len == start {
        return None;
    }
    // A first look at a long log reads only its tail.
    let start = if offset == 0 && len > 1 << 20 {
        len - (1 << 20)
    } else {
        start
    };
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    file.take(4 << 20).read_to_end(&mut buf).ok()?;
    let end = buf.iter().rposition(|b| *b == b'\n')? + 1;
    buf.truncate(end);
    Some((
        String::from_utf8_lossy(&buf).into_owned(),
        start + end as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAP: &str = r#"{"time":1700000000.5,"direction":"inbound","source":"spiffe://vigil.local/ns/shop/sa/web","destination":"spiffe://vigil.local/ns/shop/sa/payments","service":"payments.shop","method":"GET","path":"/quick-pay","status":403,"latency_ms":0.4,"policy":"deny","error":"policy-denied","protocol":"HTTP/2","request_id":"abc"}"#;
    const LOG: &str = r#"{"decision_id":"abc","time":"2023-11-14T22:13:20.500Z","bundle_version":"sha256:1234","source_principal":"spiffe://vigil.local/ns/shop/sa/web","destination_principal":"spiffe://vigil.local/ns/shop/sa/payments","source_address":"127.0.0.1:5000","method":"GET","path":"/quick-pay","result":"deny","reason":"allowed_callers: web may not call payments","dry_run":false,"http_status":403}"#;

    #[test]
    fn a_denial_gets_its_reason_whichever_arrives_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("payments-decisions.log");
        let workloads = vec!["payments".to_string()];

        let mut d = Denials::new(10);
        d.tap_line("payments", TAP);
        d.tap_line("payments", &TAP.replace("\"deny\"", "\"allow\""));
        assert_eq!(d.list().len(), 1, "allows are not denials");
        assert_eq!(d.list()[0].rule, None);
        std::fs::write(&log, format!("{LOG}\n")).expect("write");
        d.read_decision_logs(dir.path(), &workloads);
        let got = d.list();
        assert_eq!(
            got[0].rule.as_deref(),
            Some("allowed_callers: web may not call payments")
        );
        assert_eq!(got[0].bundle_version.as_deref(), Some("sha256:1234"));

        // The log line first, then the tap record (no request id: matched by request).
        let mut d = Denials::new(10);
        let second = LOG.replace("\"abc\"", "\"\"");
        std::fs::write(&log, format!("{LOG}\n{second}\n")).expect("write");
        d.read_decision_logs(dir.path(), &workloads);
        d.tap_line("payments", &TAP.replace("\"abc\"", "\"zzz\""));
        assert!(d.list()[0].rule.is_some());
        assert_eq!(d.by_rule()[0].1, 1);
    }

    #[test]
    fn keeps_only_the_last_n() {
        let mut d = Denials::new(3);
        for i in 0..5 {
            d.tap_line("payments", &TAP.replace("/quick-pay", &format!("/p{i}")));
        }
        let paths: Vec<_> = d.list().into_iter().map(|x| x.path).collect();
        assert_eq!(paths, ["/p4", "/p3", "/p2"]);
    }

    #[test]
    fn reads_only_whole_new_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "one\ntw").expect("write");
        let (text, next) = read_from(&path, 0).expect("some");
        assert_eq!((text.as_str(), next), ("one\n", 4));
        std::fs::write(&path, "one\ntwo\n").expect("write");
        assert_eq!(
            read_from(&path, next).map(|(t, _)| t).as_deref(),
            Some("two\n")
        );
        assert!(read_from(&path, 8).is_none());
    }
}
