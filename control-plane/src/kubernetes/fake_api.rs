//! A stand-in for the API server's HTTP side, so the real `kube::Client` code (request
//! building, status handling, decoding) runs in tests. Each test answers with recorded or
//! constructed API objects and can read back exactly what the client sent.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// One request as the API server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// Requests seen so far.
pub type Log = Arc<Mutex<Vec<Received>>>;

/// A client whose every request is answered by `answer` with `(status, JSON body)`.
pub fn client<F>(answer: F) -> (kube::Client, Log)
where
    F: Fn(&Received) -> (u16, Value) + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let answer = Arc::new(answer);
    let seen = log.clone();
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let answer = answer.clone();
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let received = Received {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, reply) = answer(&received);
            if let Ok(mut log) = seen.lock() {
                log.push(received);
            }
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(reply.to_string())))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
            Ok::<_, Infallible>(response)
        }
    });
    (kube::Client::new(service, "default"), log)
}

/// The `Status` body the API server sends with an error.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// What the client sent, in order.
pub fn requests(log: &Log) -> Vec<Received> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}
