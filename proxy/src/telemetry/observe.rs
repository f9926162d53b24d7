//! One place every finished request is reported: metrics, the live tap and the access
//! log all read the same [`RequestRecord`].
//!
//! A record's path loses its query string here, once, before anyone reads it: queries
//! carry API keys, session ids and e-mail addresses as often as search terms, and the
//! access log is kept on disk. The access log line says `"query": "redacted"` where one
//! was cut; `--log-query-strings` ([`AccessLog::new`]) keeps them.

use std::io::Write;

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Serialize;
use tokio::sync::broadcast;

mod request;

pub use request::{default_route, PolicyMetadata, RequestObservation};

use crate::telemetry::log_writer::LineWriter;
use crate::telemetry::metrics::{Call, ErrorLabels, Metrics};

/// What happened to one request, as the tap and the access log show it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Seconds since the Unix epoch, with milliseconds.
    pub time: f64,
    pub direction: &'static str,
    /// Caller's SPIFFE ID (inbound: verified peer; outbound: this workload).
    pub source: String,
    /// Callee's SPIFFE ID (outbound: the endpoint's verified identity).
    pub destination: String,
    pub service: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
    /// `allow`, `deny`, `error`, or empty where no policy applies (outbound).
    pub policy: &'static str,
    /// The proxy's reason when it answered itself (`x-vigil-error`).
    pub error: Option<&'static str>,
    pub protocol: &'static str,
    pub request_id: String,
    /// The policy's `dynamic_metadata` (OPA-Envoy), when it gave any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata: Option<std::sync::Arc<vigil_authz::DynamicMetadata>>,
}

/// Where access-log lines go, and whether query strings are kept in them.
pub struct AccessLog {
    writer: Box<dyn Write + Send>,
    keep_query_strings: bool,
}

impl AccessLog {
    /// Lines go to `writer` (from a thread of their own, see [`crate::telemetry::log_writer`]); query
    /// strings are cut unless `keep_query_strings`.
    pub fn new(writer: Box<dyn Write + Send>, keep_query_strings: bool) -> AccessLog {
        AccessLog {
            writer,
            keep_query_strings,
        }
    }
}

/// One access-log line: the record, and whether its query string was cut.
#[derive(Serialize)]
struct AccessLogLine<'a> {
    #[serde(flatten)]
    record: &'a RequestRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'static str>,
}

/// Receives request records.
pub struct Observer {
    metrics: std::sync::Arc<Metrics>,
    tap: broadcast::Sender<std::sync::Arc<RequestRecord>>,
    access_log: Option<LineWriter>,
    keep_query_strings: bool,
}

impl Observer {
    pub fn new(metrics: std::sync::Arc<Metrics>, access_log: Option<AccessLog>) -> Self {
        let (tap, _) = broadcast::channel(1024);
        let keep_query_strings = access_log.as_ref().is_some_and(|l| l.keep_query_strings);
        let access_log = access_log.and_then(|log| {
            LineWriter::start("access", log.writer, metrics.log_lines_dropped("access"))
                .map_err(|e| tracing::error!(error = %e, "cannot start the access log writer; access log off"))
                .ok()
        });
        Observer {
            metrics,
            tap,
            keep_query_strings,
            access_log,
        }
    }

    /// Subscribes to the live stream of records (the tap).
    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<RequestRecord>> {
        self.tap.subscribe()
    }

    /// Whether anything wants full records; when not, only metrics are updated.
    pub fn wants_records(&self) -> bool {
        self.tap.receiver_count() > 0 || self.access_log.is_some()
    }

    /// Reports a finished request.
    pub fn finished(
        &self,
        call: Call<'_>,
        status: StatusCode,
        denied: bool,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let direction = call.direction;
        self.metrics.request(&call, status, denied, elapsed);
        if let Some(reason) = error {
            self.metrics
                .proxy_errors
                .get_or_create(&ErrorLabels { direction, reason })
                .inc();
        }
    }

    /// Publishes a full record to the tap and the access log.
    pub fn publish(&self, mut record: RequestRecord) {
        let mut query = None;
        if !self.keep_query_strings {
            if let Some(cut) = record.path.find('?') {
                record.path.truncate(cut);
                query = Some("redacted");
            }
        }
        if let Some(log) = &self.access_log {
            let line = AccessLogLine {
                record: &record,
                query,
            };
            if let Ok(line) = serde_json::to_vec(&line) {
                log.write_line(line);
            }
        }
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(std::sync::Arc::new(record));
        }
    }
}

/// Now, as the records' `time`.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// An access-log destination the test can read back.
    #[derive(Clone, Default)]
    struct Lines(Arc<StdMutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        /// The lines written so far, once `count` have arrived (the writer is a thread).
        fn records(&self, count: usize) -> Vec<serde_json::Value> {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = String::from_utf8_lossy(&self.0.lock().expect("lines")).into_owned();
                if text.lines().count() >= count || std::time::Instant::now() > deadline {
                    return text
                        .lines()
                        .map(|l| serde_json::from_str(l).expect("a JSON line"))
                        .collect();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn record(path: &str) -> RequestRecord {
        RequestRecord {
            time: 0.0,
            direction: "inbound",
            source: "spiffe://vigil.local/ns/shop/sa/web".into(),
            destination: "spiffe://vigil.local/ns/shop/sa/orders".into(),
            service: "orders.shop".into(),
            method: "GET".into(),
            path: path.into(),
            status: 200,
            latency_ms: 1.0,
            policy: "allow",
            error: None,
            protocol: "HTTP/1.1",
            request_id: "r1".into(),
            dynamic_metadata: None,
        }
    }

    fn observer(keep: bool) -> (Observer, Lines) {
        let lines = Lines::default();
        let log = AccessLog::new(Box::new(lines.clone()), keep);
        (Observer::new(Metrics::new(), Some(log)), lines)
    }

    #[test]
    fn query_strings_are_cut_from_the_access_log_and_the_tap_by_default() {
        let (observer, lines) = observer(false);
        let mut tap = observer.subscribe();
        observer.publish(record("/orders/7?api_key=s3cr3t&email=a%40b.example"));
        observer.publish(record("/orders/8"));
        let logged = lines.records(2);
        assert_eq!(logged[0]["path"], "/orders/7");
        assert_eq!(logged[0]["query"], "redacted");
        assert_eq!(logged[0]["service"], "orders.shop");
        assert_eq!(logged[1]["path"], "/orders/8");
        assert!(logged[1].get("query").is_none(), "{}", logged[1]);
        let text = String::from_utf8_lossy(&lines.0.lock().expect("lines")).into_owned();
        assert!(
            !text.contains("s3cr3t") && !text.contains("a%40b"),
            "{text}"
        );
        assert_eq!(tap.try_recv().expect("tapped").path, "/orders/7");
    }

    #[test]
    fn the_flag_keeps_query_strings() {
        let (observer, lines) = observer(true);
        observer.publish(record("/search?q=shoes"));
        let logged = lines.records(1);
        assert_eq!(logged[0]["path"], "/search?q=shoes");
        assert!(logged[0].get("query").is_none(), "{}", logged[0]);
    }
}
