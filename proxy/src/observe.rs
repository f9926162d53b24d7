//! One place every finished request is reported: metrics, the live tap and the access
//! log all read the same [`RequestRecord`].

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::{Direction, ErrorLabels, Metrics};

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
}

/// Receives request records.
pub struct Observer {
    metrics: std::sync::Arc<Metrics>,
    tap: broadcast::Sender<std::sync::Arc<RequestRecord>>,
    access_log: Option<Mutex<Box<dyn Write + Send>>>,
}

/// Which call a finished request was, as its metrics are labelled.
pub struct Call<'a> {
    pub direction: Direction,
    /// The peer's identity.
    pub peer: &'a str,
    pub service: &'a str,
    /// The traffic route it matched ([`crate::traffic::Route::label`]).
    pub route: &'a str,
}

impl Observer {
    pub fn new(
        metrics: std::sync::Arc<Metrics>,
        access_log: Option<Box<dyn Write + Send>>,
    ) -> Self {
        let (tap, _) = broadcast::channel(1024);
        Observer {
            metrics,
            tap,
            access_log: access_log.map(Mutex::new),
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
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let direction = call.direction;
        self.metrics.request(
            direction,
            call.peer,
            call.service,
            call.route,
            status,
            elapsed,
        );
        if let Some(reason) = error {
            self.metrics
                .proxy_errors
                .get_or_create(&ErrorLabels { direction, reason })
                .inc();
        }
    }

    /// Publishes a full record to the tap and the access log.
    pub fn publish(&self, record: RequestRecord) {
        if let Some(log) = &self.access_log {
            if let Ok(mut line) = serde_json::to_vec(&record) {
                line.push(b'\n');
                if let Ok(mut w) = log.lock() {
                    let _ = w.write_all(&line);
                    let _ = w.flush();
                }
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
