//! The app's kubelet probes, performed by the proxy on the health port.
//!
//! Every inbound port of an injected pod lands on the proxy's mutual-TLS listener, so the
//! kubelet's plaintext probes cannot reach the app directly, and excluding their ports from
//! interception would open them (often the serving port) to anyone. Instead the injector
//! rewrites each `httpGet`, `tcpSocket` and `grpc` probe to `GET
//! /app-health/<container>/<livez|readyz|startupz>` on the metrics port (as Istio does) and
//! hands the originals to the proxy in `VIGIL_APP_PROBES`. Here the proxy performs the
//! original check against the app on loopback (its own connections are not intercepted),
//! within the probe's timeout, and answers the kubelet: `200` when the check passes, the
//! app's status when an HTTP check gets one of 400 or more, `503` otherwise, `404` for a
//! probe it was not given.
//!
//! HTTP checks follow the kubelet's rules: 200–399 is success, headers from the probe
//! replace the defaults, HTTPS does not verify the app's certificate. Unlike the kubelet,
//! a redirect is not followed: any 3xx counts as success. gRPC checks are the standard
//! `grpc.health.v1.Health/Check`, with `tonic-health`'s client (the workspace's tonic).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::http::body::{self, Body};

/// Paths the proxy answers with an app probe start with this.
pub const PATH_PREFIX: &str = "/app-health/";

/// The kubelet's default when a probe sets no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The app's probes by their rewritten path, parsed once at start.
#[derive(Debug, Clone, Default)]
pub struct AppProbes {
    by_path: Arc<HashMap<String, AppProbe>>,
    /// Present when some probe uses HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One original probe: what to check, and how long the check may take.
#[derive(Debug, Clone)]
pub struct AppProbe {
    pub check: Check,
    pub timeout: Duration,
}

/// A check against the app on loopback.
#[derive(Debug, Clone)]
pub enum Check {
    Http {
        port: u16,
        https: bool,
        path: PathAndQuery,
        headers: HeaderMap,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

/// `VIGIL_APP_PROBES` that the proxy cannot use. The injector writes it, so re-injecting
/// the pod (or fixing the probe in the pod spec) is the way out.
#[derive(Debug, thiserror::Error)]
pub enum AppProbesError {
    #[error("VIGIL_APP_PROBES is not probe definitions as the injector writes them (at {at}: {message}); re-inject the pod with `vigil inject` or the webhook")]
    Json { at: String, message: String },
    #[error("VIGIL_APP_PROBES: {path:?} does not start with {PATH_PREFIX}; re-inject the pod")]
    Path { path: String },
    #[error(
        "VIGIL_APP_PROBES: probe {probe}: port 0 is no port; fix the probe's port in the pod spec"
    )]
    Port { probe: String },
    #[error("VIGIL_APP_PROBES: probe {probe}: {what} {value:?} is not valid in an HTTP request; fix the probe in the pod spec")]
    Http {
        probe: String,
        what: &'static str,
        value: String,
    },
    #[error("VIGIL_APP_PROBES: probe {probe}: scheme {scheme:?} is neither HTTP nor HTTPS")]
    Scheme { probe: String, scheme: String },
    #[error(
        "the TLS client for HTTPS app probes cannot be built ({0}); report this as a Vigil bug"
    )]
    Tls(rustls::Error),
}

/// The JSON the injector writes, probe by probe (field names as in a Kubernetes probe).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    #[serde(flatten)]
    handler: RawHandler,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum RawHandler {
    HttpGet(RawHttpGet),
    TcpSocket(RawPort),
    Grpc(RawGrpc),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    port: u16,
    #[serde(default)]
    path: String,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct RawPort {
    port: u16,
}

#[derive(Deserialize)]
struct RawGrpc {
    port: u16,
    #[serde(default)]
    service: String,
}

impl AppProbes {
    /// Parses `VIGIL_APP_PROBES`: `{"/app-health/<container>/<probe>": {"httpGet": {...}} |
    /// {"tcpSocket": {...}} | {"grpc": {...}}, with an optional "timeoutSeconds"}`.
    pub fn from_json(text: &str) -> Result<AppProbes, AppProbesError> {
        let raw: HashMap<String, RawProbe> =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| AppProbesError::Json {
                    at: e.path().to_string(),
                    message: e.inner().to_string(),
                })?;
        let mut by_path = HashMap::with_capacity(raw.len());
        let mut any_https = false;
        for (path, probe) in raw {
            if !path.starts_with(PATH_PREFIX) {
                return Err(AppProbesError::Path { path });
            }
            let check = check_of(&path, probe.handler)?;
            any_https |= matches!(check, Check::Http { https: true, .. });
            let timeout = probe
                .timeout_seconds
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TIMEOUT);
            by_path.insert(path, AppProbe { check, timeout });
        }
        Ok(AppProbes {
            by_path: Arc::new(by_path),
            tls: any_https
                .then(unverified_tls)
                .transpose()
                .map_err(AppProbesError::Tls)?,
        })
    }

    /// Whether no probe was given.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The probe answered at `path`.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.by_path.get(path)
    }

    /// Answers the kubelet's `GET /app-health/...`: performs the probe against the app and
    /// reports the outcome. `incoming` is the kubelet's request headers (its User-Agent is
    /// passed on, as the kubelet's own probe would carry it).
    pub async fn answer(&self, path: &str, incoming: &HeaderMap) -> Response<Body> {
        let Some(probe) = self.get(path) else {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "no app probe at {path}; the pod's VIGIL_APP_PROBES names the ones there are\n"
                ),
            );
        };
        match tokio::time::timeout(probe.timeout, self.run(&probe.check, incoming)).await {
            Ok(Ok(status)) if status.as_u16() < 400 => {
                text(StatusCode::OK, format!("ok: {}\n", probe.check.describe()))
            }
            Ok(Ok(status)) => text(
                status,
                format!("the app answered {status} to {}\n", probe.check.describe()),
            ),
            Ok(Err(failure)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} failed: {failure}\n", probe.check.describe()),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} failed: no answer within the probe's timeout ({}s)\n",
                    probe.check.describe(),
                    probe.timeout.as_secs()
                ),
            ),
        }
    }

    /// Performs one check; the status stands for its outcome (an HTTP check's is the app's).
    async fn run(&self, check: &Check, incoming: &HeaderMap) -> Result<StatusCode, ProbeFailure> {
        match check {
            Check::Tcp { port } => {
                TcpStream::connect(loopback(*port))
                    .await
                    .map_err(ProbeFailure::Connect)?;
                Ok(StatusCode::OK)
            }
            Check::Http {
                port,
                https,
                path,
                headers,
            } => {
                let request = http_request(*port, path, headers, incoming)?;
                let tcp = TcpStream::connect(loopback(*port))
                    .await
                    .map_err(ProbeFailure::Connect)?;
                let _ = tcp.set_nodelay(true);
                match (&self.tls, https) {
                    (Some(tls), true) => {
                        let name = rustls_pki_types::ServerName::IpAddress(
                            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                        );
                        let stream = tokio_rustls::TlsConnector::from(tls.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(ProbeFailure::Tls)?;
                        exchange(TokioIo::new(stream), request).await
                    }
                    _ => exchange(TokioIo::new(tcp), request).await,
                }
            }
            Check::Grpc { port, service } => grpc_check(*port, service).await,
        }
    }
}

impl Check {
    /// How the check reads in a probe answer: `GET http://127.0.0.1:8080/healthz`.
    pub fn describe(&self) -> String {
        match self {
            Check::Http {
                port, https, path, ..
            } => {
                let scheme = if *https { "https" } else { "http" };
                format!("GET {scheme}://127.0.0.1:{port}{path}")
            }
            Check::Tcp { port } => format!("TCP connect to 127.0.0.1:{port}"),
            Check::Grpc { port, service } => {
                format!("gRPC health check of {service:?} on 127.0.0.1:{port}")
            }
        }
    }
}

/// Why a check did not get an answer from the app.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("cannot connect ({0})")]
    Connect(std::io::Error),
    #[error("TLS handshake failed ({0})")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed ({0})")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("cannot open a gRPC channel ({0})")]
    GrpcChannel(#[from] tonic::transport::Error),
    #[error("the Check call failed ({0})")]
    GrpcCall(#[from] tonic::Status),
    #[error("the app reports {0}")]
    NotServing(&'static str),
}

fn check_of(probe: &str, handler: RawHandler) -> Result<Check, AppProbesError> {
    let port_ok = |port: u16| {
        if port == 0 {
            Err(AppProbesError::Port {
                probe: probe.to_string(),
            })
        } else {
            Ok(port)
        }
    };
    Ok(match handler {
        RawHandler::TcpSocket(t) => Check::Tcp {
            port: port_ok(t.port)?,
        },
        RawHandler::Grpc(g) => Check::Grpc {
            port: port_ok(g.port)?,
            service: g.service,
        },
        RawHandler::HttpGet(get) => {
            let bad = |what, value: &str| AppProbesError::Http {
                probe: probe.to_string(),
                what,
                value: value.to_string(),
            };
            let https = match get
                .scheme
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                None | Some("HTTP") => false,
                Some("HTTPS") => true,
                Some(_) => {
                    return Err(AppProbesError::Scheme {
                        probe: probe.to_string(),
                        scheme: get.scheme.unwrap_or_default(),
                    })
                }
            };
            let path = if get.path.is_empty() {
                PathAndQuery::from_static("/")
            } else if get.path.starts_with('/') {
                PathAndQuery::try_from(get.path.as_str()).map_err(|_| bad("path", &get.path))?
            } else {
                PathAndQuery::try_from(format!("/{}", get.path).as_str())
                    .map_err(|_| bad("path", &get.path))?
            };
            let mut headers = HeaderMap::new();
            for h in &get.http_headers {
                let name =
                    HeaderName::try_from(h.name.as_str()).map_err(|_| bad("header", &h.name))?;
                let value = HeaderValue::try_from(h.value.as_str())
                    .map_err(|_| bad("header value", &h.value))?;
                headers.append(name, value);
            }
            Check::Http {
                port: port_ok(get.port)?,
                https,
                path,
                headers,
            }
        }
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The kubelet's request: `Host` the app's address, its `User-Agent`, `Accept: */*`, and
/// the probe's own headers in place of any of these.
fn http_request(
    port: u16,
    path: &PathAndQuery,
    probe_headers: &HeaderMap,
    incoming: &HeaderMap,
) -> Result<Request<Empty<bytes::Bytes>>, http::Error> {
    let mut request = Request::get(path.as_str()).body(Empty::new())?;
    let headers = request.headers_mut();
    let host = HeaderValue::try_from(format!("127.0.0.1:{port}"))?;
    let user_agent = incoming
        .get(USER_AGENT)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("kube-probe"));
    for (name, value) in [
        (HOST, host),
        (USER_AGENT, user_agent),
        (ACCEPT, HeaderValue::from_static("*/*")),
    ] {
        if !probe_headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    for (name, value) in probe_headers {
        headers.append(name, value.clone());
    }
    Ok(request)
}

/// One HTTP/1.1 request on `io`; the response's status. The connection is driven here,
/// not on a task of its own, so a timeout drops all of it.
async fn exchange<IO>(
    io: TokioIo<IO>,
    request: Request<Empty<bytes::Bytes>>,
) -> Result<StatusCode, ProbeFailure>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let response = sender.send_request(request);
    tokio::pin!(connection);
    tokio::select! {
        response = response => Ok(response?.status()),
        closed = &mut connection => match closed {
            Err(e) => Err(ProbeFailure::Http(e)),
            // The connection cannot end before the request does; treat it as a failure.
            Ok(()) => Err(ProbeFailure::NotServing("a closed connection")),
        },
    }
}

async fn grpc_check(port: u16, service: &str) -> Result<StatusCode, ProbeFailure> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .user_agent("kube-probe")?
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(StatusCode::OK),
        other => Err(ProbeFailure::NotServing(other.as_str_name())),
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(body::full(message));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A TLS client for HTTPS probes that, like the kubelet, does not verify the app's
/// certificate (it is the pod's own, on loopback) but still checks the handshake's
/// signatures, so the exchange is real TLS 1.3.
fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = vigil_identity::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// An app on loopback: `/healthz` answers 204 when the probe's `x-probe` header and the
    /// kubelet's User-Agent arrived, `/broken` 500, anything else 302.
    async fn http_app() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let status = match req.uri().path() {
                        "/healthz"
                            if req.headers().get("x-probe").is_some_and(|v| v == "yes")
                                && req
                                    .headers()
                                    .get(USER_AGENT)
                                    .is_some_and(|v| v == "kube-probe/1.31") =>
                        {
                            StatusCode::NO_CONTENT
                        }
                        "/healthz" => StatusCode::BAD_REQUEST,
                        "/broken" => StatusCode::INTERNAL_SERVER_ERROR,
                        _ => StatusCode::FOUND,
                    };
                    async move {
                        let mut r = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        port
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr").port()
    }

    async fn status(probes: &AppProbes, path: &str) -> (u16, String) {
        let mut incoming = HeaderMap::new();
        incoming.insert(USER_AGENT, HeaderValue::from_static("kube-probe/1.31"));
        let response = probes.answer(path, &incoming).await;
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn each_probe_is_performed_against_the_app_and_reported_as_the_kubelet_expects() {
        let app = http_app().await;
        let closed = closed_port().await;
        let probes = AppProbes::from_json(
            &serde_json::json!({
                "/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": app, "scheme": "HTTP",
                    "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}, "timeoutSeconds": 2},
                "/app-health/web/livez": {"httpGet": {"path": "/broken", "port": app}},
                "/app-health/web/startupz": {"httpGet": {"path": "/moved", "port": app}},
                "/app-health/db/readyz": {"tcpSocket": {"port": app}},
                "/app-health/db/livez": {"tcpSocket": {"port": closed}},
                "/app-health/gone/readyz": {"httpGet": {"path": "/", "port": closed}},
            })
            .to_string(),
        )
        .expect("valid probes");

        let (code, body) = status(&probes, "/app-health/web/readyz").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("GET http://127.0.0.1:{app}/healthz")),
            "{body}"
        );
        let (code, body) = status(&probes, "/app-health/web/livez").await;
        assert_eq!(code, 500, "the app's failing status passes through: {body}");
        assert_eq!(
            status(&probes, "/app-health/web/startupz").await.0,
            200,
            "3xx is success"
        );
        assert_eq!(status(&probes, "/app-health/db/readyz").await.0, 200);
        let (code, body) = status(&probes, "/app-health/db/livez").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("cannot connect"), "{body}");
        assert_eq!(status(&probes, "/app-health/gone/readyz").await.0, 503);
        let (code, body) = status(&probes, "/app-health/nobody/readyz").await;
        assert_eq!(code, 404, "{body}");
    }

    #[tokio::test]
    async fn an_app_that_never_answers_fails_the_probe_within_its_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts, then reads nothing and answers nothing.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let probes = AppProbes::from_json(
            &serde_json::json!({"/app-health/a/livez": {"httpGet": {"port": port}, "timeoutSeconds": 1}})
                .to_string(),
        )
        .expect("valid");
        let (code, body) = status(&probes, "/app-health/a/livez").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("timeout (1s)"), "{body}");
        silent.abort();
    }

    #[test]
    fn bad_definitions_are_refused_at_start_with_what_to_do() {
        for (json, expected) in [
            ("[1]", "not probe definitions"),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": "http"}}}"#,
                "/app-health/a/livez",
            ),
            (
                r#"{"/app-health/a/livez": {"exec": {}}}"#,
                "re-inject the pod",
            ),
            (
                r#"{"/healthz": {"tcpSocket": {"port": 80}}}"#,
                "does not start with /app-health/",
            ),
            (
                r#"{"/app-health/a/livez": {"tcpSocket": {"port": 0}}}"#,
                "port 0",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 80, "httpHeaders": [{"name": "bad name", "value": "x"}]}}}"#,
                "header \"bad name\"",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 80, "path": "/a b"}}}"#,
                "path \"/a b\"",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 80, "scheme": "FTP"}}}"#,
                "neither HTTP nor HTTPS",
            ),
        ] {
            let err = AppProbes::from_json(json).expect_err(json);
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
        let probes = AppProbes::from_json(
            r#"{"/app-health/a/livez": {"grpc": {"port": 9000}},
                "/app-health/a/readyz": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "healthz?full=1"}}}"#,
        )
        .expect("valid");
        assert!(matches!(
            &probes.get("/app-health/a/livez").expect("grpc").check,
            Check::Grpc { port: 9000, service } if service.is_empty()
        ));
        let https = probes.get("/app-health/a/readyz").expect("https");
        assert_eq!(https.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            https.check.describe(),
            "GET https://127.0.0.1:8443/healthz?full=1"
        );
        assert!(probes.tls.is_some());
        assert!(AppProbes::from_json("{}").expect("empty").is_empty());
    }
}
