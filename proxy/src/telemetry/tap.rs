//! Tap: live request metadata streamed from the admin endpoint as JSON lines, with
//! filters, for `vigil tap` and the dashboard.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::http::body::{Body, BodyError};
use crate::telemetry::observe::RequestRecord;

/// Which requests a tap wants; every field is optional and all must match.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct TapFilter {
    pub direction: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
    /// Path prefix.
    pub path: Option<String>,
    /// Exact status (`503`) or class (`5xx`).
    pub status: Option<String>,
    /// Policy outcome: `allow`, `deny`, `error`.
    pub policy: Option<String>,
    /// Substring of the source or destination SPIFFE ID.
    pub identity: Option<String>,
    /// Stop after this many records.
    pub limit: Option<usize>,
}

impl TapFilter {
    /// Parses a query string (`service=orders&status=5xx`).
    pub fn from_query(query: &str) -> Result<TapFilter, String> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let value = serde_json::Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v.parse::<usize>()) {
                        ("limit", Ok(n)) => serde_json::Value::from(n),
                        _ => serde_json::Value::from(v),
                    };
                    (k, v)
                })
                .collect(),
        );
        serde_json::from_value(value).map_err(|e| format!("bad tap filter: {e}"))
    }

    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &RequestRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        eq(&self.direction, r.direction)
            && self
                .service
                .as_deref()
                .is_none_or(|s| r.service == s || r.service.split('.').next() == Some(s))
            && eq(&self.method, &r.method)
            && self.path.as_deref().is_none_or(|p| r.path.starts_with(p))
            && self.status.as_deref().is_none_or(|s| {
                let code = r.status.to_string();
                code == s || (s.len() == 3 && s.ends_with("xx") && code.starts_with(&s[..1]))
            })
            && eq(&self.policy, r.policy)
            && self
                .identity
                .as_deref()
                .is_none_or(|i| r.source.contains(i) || r.destination.contains(i))
    }
}

/// A streaming body of JSON lines for the records that pass `filter`.
pub fn stream(
    receiver: tokio::sync::broadcast::Receiver<Arc<RequestRecord>>,
    filter: TapFilter,
) -> Body {
    let limit = filter.limit.unwrap_or(usize::MAX);
    let lines = BroadcastStream::new(receiver)
        .filter_map(move |item| {
            let line = match item {
                Ok(record) if filter.matches(&record) => serde_json::to_string(&*record).ok(),
                Ok(_) => None,
                // A slow reader missed records: say so rather than pretend.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(format!("{{\"lagged\":{n}}}"))
                }
            };
            std::future::ready(line)
        })
        .take(limit)
        .map(|mut line| {
            line.push('\n');
            Ok::<_, BodyError>(Frame::data(Bytes::from(line)))
        });
    BodyExt::boxed(StreamBody::new(lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16, policy: &'static str) -> RequestRecord {
        RequestRecord {
            time: 0.0,
            direction: "inbound",
            source: "spiffe://vigil.local/ns/shop/sa/web".into(),
            destination: "spiffe://vigil.local/ns/shop/sa/orders".into(),
            service: "orders.shop".into(),
            method: "GET".into(),
            path: "/orders/7".into(),
            status,
            latency_ms: 1.0,
            policy,
            error: None,
            protocol: "HTTP/2",
            request_id: "r1".into(),
            dynamic_metadata: None,
        }
    }

    #[test]
    fn filters_combine() {
        let f = TapFilter::from_query("service=orders&status=4xx&policy=deny&path=/orders")
            .expect("filter");
        assert!(f.matches(&record(403, "deny")));
        assert!(!f.matches(&record(200, "allow")));
        assert!(!f.matches(&record(503, "deny")));
        let f = TapFilter::from_query("identity=sa/web&limit=2").expect("filter");
        assert_eq!(f.limit, Some(2));
        assert!(f.matches(&record(200, "allow")));
        assert!(
            TapFilter::from_query("colour=red").is_ok(),
            "unknown keys are ignored"
        );
    }
}
