//! The SPIFFE Workload API, served to the application on a Unix socket
//! (`--workload-api-socket`), as the SPIFFE standard defines it: the app's X.509-SVID and
//! the X.509 bundles as streams, JWT-SVIDs on request, the JWT bundles as a stream, and
//! JWT-SVID validation.
//!
//! The X.509-SVID handed out is the application's own: a key made for it here and
//! certified by the control plane for this workload's identity with the proxy's
//! credential. The proxy's transport key never leaves the proxy. Every request must carry
//! the `workload.spiffe.io: true` header the standard requires, which a browser or a
//! server-side request forgery cannot set.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};
use vigil_api::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use vigil_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};

use crate::Proxy;

/// The application's X.509-SVID as the Workload API hands it out.
struct AppSvid {
    spiffe_id: String,
    /// Leaf first, DER, concatenated.
    chain: Vec<u8>,
    /// PKCS#8 DER.
    key: Vec<u8>,
    /// The roots, DER, concatenated.
    bundle: Vec<u8>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the Workload API on `path` (replacing a stale socket file, mode 0600) until the
/// process stops.
pub async fn serve(path: &Path, proxy: Arc<Proxy>) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("removing the stale Workload API socket {}", path.display())
            })
        }
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| {
        format!(
            "binding the Workload API socket {}: does its directory exist and is it writable?",
            path.display()
        )
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    let (tx, rx) = watch::channel(None);
    tokio::spawn(keep_app_svid(proxy.clone(), tx));
    tracing::info!(socket = %path.display(), "serving the SPIFFE Workload API");
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(WorkloadApi { proxy, app: rx }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .context("the Workload API server stopped")
}

/// Keeps a fresh X.509-SVID for the application: a new key and certificate at half of
/// each lifetime, and at once when the proxy's own certificate or trust bundle changes
/// (a CA rotation step), so the app follows a rotation as the proxy does.
async fn keep_app_svid(proxy: Arc<Proxy>, tx: watch::Sender<Option<Arc<AppSvid>>>) {
    let mut changes = proxy.identity.changes();
    let mut retry = Duration::from_millis(500);
    loop {
        let wait = match issue_app_svid(&proxy).await {
            Ok((svid, left)) => {
                tx.send_replace(Some(Arc::new(svid)));
                retry = Duration::from_millis(500);
                left / 2
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?retry, "cannot get the application's X.509-SVID yet");
                retry = (retry * 2).min(Duration::from_secs(30));
                retry
            }
        };
        changes.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
        }
    }
}

async fn issue_app_svid(proxy: &Proxy) -> anyhow::Result<(AppSvid, Duration)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let signed = proxy.identity.sign_for_app(csr.der().to_vec()).await?;
    let left = u64::try_from(signed.expires_unix)
        .ok()
        .and_then(|t| {
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(t))?
                .duration_since(SystemTime::now())
                .ok()
        })
        .unwrap_or(Duration::from_secs(1));
    Ok((
        AppSvid {
            spiffe_id: signed.spiffe_id,
            chain: signed.cert_chain_der.concat(),
            key: key.serialize_der(),
            bundle: signed.trust_bundle_der.concat(),
        },
        left.max(Duration::from_secs(1)),
    ))
}

#[derive(Clone)]
struct WorkloadApi {
    proxy: Arc<Proxy>,
    app: watch::Receiver<Option<Arc<AppSvid>>>,
}

/// The standard's guard against requests a browser or an SSRF could send.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: send `workload.spiffe.io: true`",
        )),
    }
}

impl WorkloadApi {
    fn trust_domain(&self) -> String {
        self.proxy.config.trust_domain.clone()
    }

    fn x509_bundles(&self) -> X509BundlesResponse {
        let roots = self.proxy.identity.trust.bundle();
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                self.trust_domain(),
                roots.roots().iter().flat_map(|r| r.to_vec()).collect(),
            )]),
        }
    }

    fn jwt_bundles(&self) -> Option<JwtBundlesResponse> {
        let jwks = self.proxy.discovery.jwt_bundle.load_full()?;
        Some(JwtBundlesResponse {
            bundles: HashMap::from([(self.trust_domain(), jwks.as_bytes().to_vec())]),
        })
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;
    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let stream = WatchStream::new(self.app.clone()).filter_map(|svid| async move {
            let svid = svid?;
            Some(Ok(X509svidResponse {
                svids: vec![X509svid {
                    spiffe_id: svid.spiffe_id.clone(),
                    x509_svid: svid.chain.clone(),
                    x509_svid_key: svid.key.clone(),
                    bundle: svid.bundle.clone(),
                    hint: String::new(),
                }],
                crl: Vec::new(),
                federated_bundles: HashMap::new(),
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let api = self.clone();
        let stream =
            WatchStream::new(self.proxy.identity.changes()).map(move |_| Ok(api.x509_bundles()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let own = self.proxy.identity.spiffe_id();
        if !req.spiffe_id.is_empty() && req.spiffe_id != own {
            return Err(Status::permission_denied(format!(
                "this workload is {own}, not {}",
                req.spiffe_id
            )));
        }
        let signed = self.proxy.identity.sign_jwt(req.audience).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: signed.spiffe_id,
                svid: signed.svid,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        let api = self.clone();
        if api.jwt_bundles().is_none() {
            return Err(Status::unavailable(
                "no JWT bundle from the control plane yet",
            ));
        }
        // Sent again whenever it changes; checked when the identity changes and every 5 s.
        let stream = futures::stream::unfold(
            (
                api,
                self.proxy.identity.changes(),
                None::<JwtBundlesResponse>,
            ),
            |(api, mut changes, last)| async move {
                loop {
                    if let Some(now) = api.jwt_bundles() {
                        if last.as_ref() != Some(&now) {
                            return Some((Ok(now.clone()), (api, changes, Some(now))));
                        }
                    }
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() || req.svid.is_empty() {
            return Err(Status::invalid_argument(
                "both audience and svid must be specified",
            ));
        }
        let jwks = self
            .proxy
            .discovery
            .jwt_bundle
            .load_full()
            .ok_or_else(|| Status::unavailable("no JWT bundle from the control plane yet"))?;
        let (id, claims) = vigil_identity::validate_jwt_svid(
            &req.svid,
            &jwks,
            &req.audience,
            &self.proxy.config.trust_domain,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: id.to_string(),
            claims: Some(to_struct(claims)),
        }))
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
