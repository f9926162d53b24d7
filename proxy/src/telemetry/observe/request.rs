//! One request's telemetry, recorded once, from a guard dropped at its end (ztunnel's
//! `ConnectionResult` is the model): metrics, the tap, the access log and the hop span all
//! come from the same [`RequestObservation`], whatever ended the request. A request whose
//! caller went away before an answer (its future dropped) is recorded too, as status 499
//! with reason `cancelled`, instead of vanishing from every view.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use crate::http::error::{LocalReason, ERROR_HEADER};
use crate::telemetry::metrics::Call;
use crate::telemetry::metrics::{Direction, Peer};
use crate::telemetry::observe::{now_secs, RequestRecord};
use crate::telemetry::trace::HopSpan;
use crate::Proxy;

/// The request head as a full record shows it, read before the request moves on; only
/// when something (the tap, the access log) wants full records.
struct Head {
    method: String,
    path: String,
    request_id: String,
    protocol: &'static str,
}

/// What answered the request.
struct Outcome {
    status: StatusCode,
    error: Option<&'static str>,
    policy: &'static str,
    /// Refused by policy: this proxy's (inbound) or the destination proxy's (outbound).
    denied: bool,
    metadata: Option<Arc<vigil_authz::DynamicMetadata>>,
}

/// The `dynamic_metadata` of the policy decision on a request.
#[derive(Clone)]
pub struct PolicyMetadata(pub Arc<vigil_authz::DynamicMetadata>);

/// Labels of a request not (yet) matched to a service, route or peer, shared rather than
/// allocated per request.
static NO_SERVICE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
static DEFAULT_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("default"));

/// The route label of requests no traffic route matches.
pub fn default_route() -> Arc<str> {
    DEFAULT_ROUTE.clone()
}

/// The status recorded for a request whose caller left before it was answered.
const CANCELLED: u16 = 499;

/// One request in flight, recorded when dropped. Fill in `service`, `route` and `peer`
/// as they become known, and hand it the response with [`answered`](Self::answered).
pub struct RequestObservation<'p> {
    proxy: &'p Proxy,
    direction: Direction,
    started: Instant,
    head: Option<Head>,
    span: Option<HopSpan>,
    /// `name.namespace` of the service, the metric label.
    pub service: Arc<str>,
    /// The traffic route's label.
    pub route: Arc<str>,
    /// The peer (inbound: the caller; outbound: the endpoint that answered).
    pub peer: Peer,
    /// This proxy's policy decision on the request, if it made one ([`Self::policy`]).
    policy: &'static str,
    metadata: Option<PolicyMetadata>,
    outcome: Option<Outcome>,
}

impl<'p> RequestObservation<'p> {
    /// Starts observing `req`; with tracing on, starts its hop span and rewrites its
    /// trace headers for the next hop.
    pub fn start<B>(
        proxy: &'p Proxy,
        direction: Direction,
        req: &mut Request<B>,
    ) -> RequestObservation<'p> {
        let protocol = crate::http::protocol_name(req.version());
        let head = proxy.observer.wants_records().then(|| Head {
            method: req.method().to_string(),
            // With its query: the observer cuts it for the tap and the access log unless
            // told to keep it.
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            request_id: req
                .headers()
                .get(crate::http::headers::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            protocol,
        });
        let span = proxy.traces.enabled().then(|| {
            let (name, kind) = match direction {
                Direction::inbound => ("inbound", SpanKind::Server),
                Direction::outbound => ("outbound", SpanKind::Client),
            };
            // The stable OpenTelemetry HTTP conventions, then Vigil's own.
            let mut attributes = vec![
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_string()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("network.protocol.name", "http"),
                KeyValue::new(
                    "network.protocol.version",
                    match req.version() {
                        http::Version::HTTP_2 => "2",
                        http::Version::HTTP_10 => "1.0",
                        _ => "1.1",
                    },
                ),
                KeyValue::new("vigil.direction", name),
            ];
            if let Some(host) = crate::http::headers::authority(req) {
                let (address, port) = split_host_port(host);
                attributes.push(KeyValue::new("server.address", address.to_string()));
                if let Some(port) = port {
                    attributes.push(KeyValue::new("server.port", i64::from(port)));
                }
            }
            proxy
                .traces
                .start(name.into(), kind, req.headers_mut(), attributes)
        });
        RequestObservation {
            proxy,
            direction,
            started: Instant::now(),
            head,
            span,
            service: NO_SERVICE.clone(),
            route: default_route(),
            peer: Peer::none(),
            policy: "",
            metadata: None,
            outcome: None,
        }
    }

    /// What this proxy's policy said of the request (`allow`, `deny`, `error`), with the
    /// decision's metadata, for the metrics, the tap and the access log.
    pub fn policy(&mut self, outcome: &'static str, metadata: Option<PolicyMetadata>) {
        (self.policy, self.metadata) = (outcome, metadata);
    }

    /// Records what answered: the status, and the reason a response the proxy made
    /// itself carries. Outbound, a response the destination's proxy
    /// marked `x-vigil-error: policy-denied` is a denial too (its inbound side strips that
    /// header from whatever the app answers, so only the proxy can set it).
    pub fn answered<B>(&mut self, response: &Response<B>) {
        let extensions = response.extensions();
        let policy = self.policy;
        let error = extensions.get::<LocalReason>().map(|r| r.0);
        let denied = policy == "deny"
            || (self.direction == Direction::outbound
                && error.is_none()
                && !self.peer.identity.is_empty()
                && response
                    .headers()
                    .get(ERROR_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"policy-denied"));
        self.outcome = Some(Outcome {
            status: response.status(),
            error,
            policy,
            denied,
            metadata: self.metadata.take().map(|m| m.0),
        });
    }
}

impl Drop for RequestObservation<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let outcome = self.outcome.take().unwrap_or(Outcome {
            status: StatusCode::from_u16(CANCELLED).unwrap_or(StatusCode::BAD_REQUEST),
            error: Some("cancelled"),
            policy: "",
            denied: false,
            metadata: None,
        });
        let direction_name = match self.direction {
            Direction::inbound => "inbound",
            Direction::outbound => "outbound",
        };
        if let Some(span) = self.span.take() {
            span.rename(format!("{direction_name} {}", self.service));
            span.finish(
                outcome.status.as_u16(),
                vec![
                    KeyValue::new("vigil.peer.identity", self.peer.identity.to_string()),
                    KeyValue::new("vigil.peer.workload", self.peer.workload.to_string()),
                    KeyValue::new("vigil.service", self.service.to_string()),
                    KeyValue::new("vigil.policy.decision", outcome.policy),
                    KeyValue::new("vigil.error", outcome.error.unwrap_or("")),
                    KeyValue::new("vigil.route", self.route.to_string()),
                    KeyValue::new(
                        "vigil.outcome",
                        crate::telemetry::metrics::outcome(outcome.status, outcome.denied),
                    ),
                ],
            );
        }
        let observer = &self.proxy.observer;
        observer.finished(
            Call {
                direction: self.direction,
                peer: &self.peer,
                service: &self.service,
                route: &self.route,
            },
            outcome.status,
            outcome.denied,
            elapsed,
            outcome.error,
        );
        let Some(head) = self.head.take() else {
            return;
        };
        let own = self.proxy.identity.spiffe_id();
        let peer = self.peer.identity.to_string();
        let (source, destination) = match self.direction {
            Direction::inbound => (peer, own),
            Direction::outbound => (own, peer),
        };
        observer.publish(RequestRecord {
            time: now_secs(),
            direction: direction_name,
            source,
            destination,
            service: self.service.to_string(),
            method: head.method,
            path: head.path,
            status: outcome.status.as_u16(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            policy: outcome.policy,
            error: outcome.error,
            protocol: head.protocol,
            request_id: head.request_id,
            dynamic_metadata: outcome.metadata,
        });
    }
}

/// `host[:port]` (or `[v6]:port`) as `server.address` and `server.port`.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            match port.parse() {
                Ok(port) => (
                    host.trim_start_matches('[').trim_end_matches(']'),
                    Some(port),
                ),
                Err(_) => (authority, None),
            }
        }
        _ => (
            authority.trim_start_matches('[').trim_end_matches(']'),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn authorities_split_into_address_and_port() {
        assert_eq!(
            split_host_port("orders.shop:8080"),
            ("orders.shop", Some(8080))
        );
        assert_eq!(split_host_port("orders.shop"), ("orders.shop", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }
}
