//! Recent policy denials, the last N. Where a proxy's decision log is in the control
//! plane's data directory (`<data-dir>/<workload>-decisions.log`, as `vigil up` and `vigil
//! demo` arrange) it is the source: it has the reason the policy gave (the rule that said
//! no) and the bundle version. For other proxies the dashboard follows their
//! `/tap?policy=deny` stream instead — only while someone looks at the dashboard, since a
//! tap makes the proxy build a record for every request — and the reason stays unknown.

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
    time: String,
    #[serde(default)]
    bundle_version: String,
    #[serde(default)]
    source_principal: Option<String>,
    #[serde(default)]
    destination_principal: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    result: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    http_status: Option<u16>,
}

/// The last N denials.
pub struct Denials {
    keep: usize,
    recent: VecDeque<Denial>,
    /// Read position in each decision log.
    offsets: BTreeMap<PathBuf, u64>,
}

impl Denials {
    pub fn new(keep: usize) -> Self {
        Denials {
            keep,
            recent: VecDeque::new(),
            offsets: BTreeMap::new(),
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Denial> {
        self.recent.iter().rev().cloned().collect()
    }

    fn push(&mut self, denial: Denial) {
        self.recent.push_back(denial);
        while self.recent.len() > self.keep {
            self.recent.pop_front();
        }
    }

    /// Takes one tap line from `workload`'s proxy; anything but a denial is ignored.
    pub fn tap_line(&mut self, workload: &str, line: &str) {
        let Ok(r) = serde_json::from_str::<TapRecord>(line) else {
            return;
        };
        if r.policy != "deny" {
            return;
        }
        self.push(Denial {
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
        });
    }

    /// Reads what each workload's decision log gained since the last call. Returns the
    /// workloads that have a decision log here; the others need a tap.
    pub fn read_decision_logs(&mut self, data_dir: &Path, workloads: &[String]) -> Vec<String> {
        let mut logged = Vec::new();
        for workload in workloads {
            let path = data_dir.join(format!("{workload}-decisions.log"));
            if !path.is_file() {
                continue;
            }
            logged.push(workload.clone());
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
                let path = d.path.unwrap_or_default();
                self.push(Denial {
                    time: parse_time(&d.time).unwrap_or_else(now_secs),
                    workload: workload.clone(),
                    source: d.source_principal.unwrap_or_default(),
                    destination: d.destination_principal.unwrap_or_default(),
                    service: String::new(),
                    method: d.method.unwrap_or_default(),
                    path: path.split('?').next().unwrap_or(&path).to_string(),
                    status: d.http_status.unwrap_or(403),
                    rule: Some(d.reason),
                    bundle_version: Some(d.bundle_version),
                    request_id: d.decision_id,
                });
            }
        }
        logged
    }

    /// Denials per rule among the recent ones, most frequent first.
    pub fn by_rule(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in &self.recent {
            *counts
                .entry(
                    d.rule
                        .clone()
                        .unwrap_or_else(|| "(no decision log to read)".into()),
                )
                .or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// An RFC 3339 time as seconds since the Unix epoch.
fn parse_time(s: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_millis() as f64 / 1000.0)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
    const LOG: &str = r#"{"decision_id":"abc","time":"2023-11-14T22:13:20.500Z","bundle_version":"sha256:1234","source_principal":"spiffe://vigil.local/ns/shop/sa/web","destination_principal":"spiffe://vigil.local/ns/shop/sa/payments","source_address":"127.0.0.1:5000","method":"GET","path":"/quick-pay?x=1","result":"deny","reason":"allowed_callers: web may not call payments","dry_run":false,"http_status":403}"#;

    #[test]
    fn decision_logs_give_denials_with_their_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("payments-decisions.log");
        let workloads = vec!["payments".to_string(), "web".to_string()];
        let mut d = Denials::new(10);
        assert!(
            d.read_decision_logs(dir.path(), &workloads).is_empty(),
            "no logs yet"
        );

        let allow = LOG.replace("\"deny\"", "\"allow\"");
        std::fs::write(&log, format!("{LOG}\n{allow}\n")).expect("write");
        assert_eq!(d.read_decision_logs(dir.path(), &workloads), ["payments"]);
        let got = d.list();
        assert_eq!(got.len(), 1, "allows are not denials");
        assert_eq!(
            got[0].rule.as_deref(),
            Some("allowed_callers: web may not call payments")
        );
        assert_eq!(got[0].bundle_version.as_deref(), Some("sha256:1234"));
        assert_eq!(got[0].source, "spiffe://vigil.local/ns/shop/sa/web");
        assert_eq!(got[0].path, "/quick-pay", "the query is left out");
        assert_eq!(got[0].time, 1_700_000_000.5);

        // Only new lines are read on the next poll.
        d.read_decision_logs(dir.path(), &workloads);
        assert_eq!(d.list().len(), 1);
    }

    #[test]
    fn tap_records_are_denials_without_a_rule() {
        let mut d = Denials::new(10);
        d.tap_line("payments", TAP);
        d.tap_line("payments", &TAP.replace("\"deny\"", "\"allow\""));
        let got = d.list();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rule, None);
        assert_eq!(got[0].service, "payments.shop");
        assert_eq!(d.by_rule()[0], ("(no decision log to read)".to_string(), 1));
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
