//! The mutating admission webhook (port 15017, HTTPS): an AdmissionReview v1 in, the same
//! review with a response out, carrying a JSONPatch that adds the sidecar.
//!
//! The namespace's `vigil.io/inject=enabled` label is matched by the
//! MutatingWebhookConfiguration's `namespaceSelector` (an AdmissionReview carries no
//! namespace labels), so every pod that reaches this handler is a candidate; the pod's own
//! `vigil.io/inject` annotation is honoured here.
//!
//! A body that is not an AdmissionReview v1 gets HTTP 400 with the reason. A review whose pod
//! cannot be injected is allowed unchanged with a warning, which `kubectl` shows: the
//! webhook never fails a pod creation because of its own limits, and never panics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{complete_trust_bundle, inject_pod, InjectConfig, Interception, Outcome};

/// The path the MutatingWebhookConfiguration points at.
pub const INJECT_PATH: &str = "/inject";
/// The path for namespaces that enforce the `baseline` or `restricted` Pod Security level,
/// which refuse `vigil-init`'s capabilities: pods there get `vigil.io/interception: none`
/// unless they say otherwise.
pub const INJECT_WITHOUT_INTERCEPTION_PATH: &str = "/inject-without-interception";
/// Largest review accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request that is not a usable AdmissionReview: answered with HTTP 400 and this text.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct BadReview(String);

/// Answers one AdmissionReview body with the review to send back (as JSON, the patch
/// base64-encoded as the API server documents it).
pub fn review(body: &[u8], cfg: &InjectConfig) -> Result<Value, BadReview> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the request body is not JSON: {e}")))?;
    let api_version = raw.get("apiVersion").and_then(Value::as_str);
    let kind = raw.get("kind").and_then(Value::as_str);
    if api_version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return Err(BadReview(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {} kind {} \
             (set admissionReviewVersions: [v1] in the MutatingWebhookConfiguration)",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        )));
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(raw)
        .map_err(|e| BadReview(format!("the AdmissionReview is malformed: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| BadReview("the AdmissionReview has no request".into()))?;
    encode(respond(&request, cfg).into_review())
}

/// kube-core serializes the patch bytes as a JSON array of numbers; the API server's
/// documented form is a base64 string, so that is what goes on the wire.
fn encode(review: AdmissionReview<DynamicObject>) -> Result<Value, BadReview> {
    use base64::Engine;
    let patch = review.response.as_ref().and_then(|r| r.patch.clone());
    let mut json = serde_json::to_value(&review)
        .map_err(|e| BadReview(format!("encoding the response: {e}")))?;
    if let (Some(patch), Some(slot)) = (patch, json.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    Ok(json)
}

fn respond(request: &AdmissionRequest<DynamicObject>, cfg: &InjectConfig) -> AdmissionResponse {
    let allow = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none();
    if !is_pod || request.operation != Operation::Create {
        return allow;
    }
    let namespace = request.namespace.as_deref().unwrap_or("default");
    let name = pod_name(request);
    let Some(object) = &request.object else {
        return with_warning(allow, "vigil: the review carries no pod; not injected");
    };
    let original = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => {
            return with_warning(
                allow,
                &format!("vigil: cannot read the pod ({e}); not injected"),
            )
        }
    };
    let mut pod = original.clone();
    let warnings = match inject_pod(&mut pod, cfg) {
        Ok(Outcome::Injected { mode, warnings }) => {
            tracing::info!(%namespace, pod = %name, ?mode, "injecting the sidecar");
            warnings
        }
        Ok(Outcome::Skipped { reason }) => {
            tracing::debug!(%namespace, pod = %name, %reason, "not injecting");
            // Injected offline by `vigil inject` without a trust bundle: add it now.
            if !complete_trust_bundle(&mut pod, cfg) {
                return allow;
            }
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(%namespace, pod = %name, error = %e, "cannot inject");
            return with_warning(allow, &format!("vigil: not injected: {e}"));
        }
    };
    let patch = json_patch::diff(&original, &pod);
    let mut response = match allow.clone().with_patch(patch) {
        Ok(r) => r,
        Err(e) => {
            return with_warning(
                allow,
                &format!("vigil: cannot encode the patch ({e}); not injected"),
            )
        }
    };
    if !warnings.is_empty() {
        response.warnings = Some(
            warnings
                .into_iter()
                .map(|w| format!("vigil: {w}"))
                .collect(),
        );
    }
    response
}

fn pod_name(request: &AdmissionRequest<DynamicObject>) -> String {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    meta.and_then(|m| m.name.clone())
        .or_else(|| meta.and_then(|m| m.generate_name.as_ref().map(|g| format!("{g}*"))))
        .unwrap_or_else(|| request.name.clone())
}

fn with_warning(mut response: AdmissionResponse, warning: &str) -> AdmissionResponse {
    response
        .warnings
        .get_or_insert_with(Vec::new)
        .push(warning.to_string());
    response
}

/// Serves the webhook over TLS until the process stops. `config` is read per request, so
/// a new trust bundle (CA rotation) reaches newly created pods at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<ArcSwap<InjectConfig>>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "webhook TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let config = config.clone();
                async move { Ok::<_, Infallible>(handle(req, &config.load()).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, cfg: &InjectConfig) -> Response<Full<Bytes>> {
    let without_interception;
    let cfg = match req.uri().path() {
        INJECT_WITHOUT_INTERCEPTION_PATH => {
            // With the CNI plugin installed, pods of restricted namespaces are still
            // intercepted, by the plugin rather than an init container.
            without_interception = InjectConfig {
                interception: match cfg.interception {
                    Interception::Cni => Interception::Cni,
                    _ => Interception::None,
                },
                ..cfg.clone()
            };
            &without_interception
        }
        _ => cfg,
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, INJECT_PATH | INJECT_WITHOUT_INTERCEPTION_PATH) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}\n"),
                    )
                }
            };
            match review(&body, cfg).map(|r| r.to_string()) {
                Ok(json) => Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook request refused");
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!(
                "the injection webhook is POST {INJECT_PATH} (or {INJECT_WITHOUT_INTERCEPTION_PATH})\n"
            ),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
