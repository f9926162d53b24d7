//! A small client for the proxies' admin endpoints, used by `vigil up`, the CLI, the
//! dashboard and `vigil check`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// A whole admin response.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// GETs `path` from a proxy's admin (or metrics) address: status, headers and body.
pub async fn fetch(admin: SocketAddr, path: &str) -> anyhow::Result<AdminResponse> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(admin).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(AdminResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("admin endpoint {admin} did not answer within 5 s"))?
}

/// GETs `path` from a proxy's admin address: status and body.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    fetch(admin, path).await.map(|r| (r.status, r.body))
}

/// Only the status of `path`.
pub async fn get_status(admin: SocketAddr, path: &str) -> anyhow::Result<u16> {
    get(admin, path).await.map(|(s, _)| s)
}

/// A proxy's certificate as its `/certs` reports it (the PEM blocks left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertStatus {
    pub spiffe_id: String,
    pub serial: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    pub expires_in_seconds: u64,
    /// When the proxy plans its next renewal, seconds since the Unix epoch.
    pub renew_at: u64,
    pub renewals: u64,
    pub renewal_failures: u64,
    pub last_renewal_error: Option<String>,
    /// What signed the certificate (an intermediate, else a root), by name.
    #[serde(default)]
    pub signer: String,
    /// The roots the proxy trusts, by name.
    #[serde(default)]
    pub trust_roots: Vec<String>,
}

/// Reads `/certs`.
pub async fn certs(admin: SocketAddr) -> anyhow::Result<CertStatus> {
    let (status, body) = get(admin, "/certs").await?;
    if status != 200 {
        anyhow::bail!(
            "{admin}/certs answered {status}: {} (the proxy has no certificate yet: is the control plane's identity port reachable?)",
            body.trim()
        );
    }
    serde_json::from_str(&body).with_context(|| {
        format!(
            "{admin}/certs is not the JSON a vigil-proxy serves: is another program on that port?"
        )
    })
}

/// What `vigil check` and the dashboard read from a proxy's `/config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigStatus {
    pub control_plane_connected: bool,
    pub policy_version: Option<String>,
    /// Which of the mesh's policies the proxy runs: `default` or an attached policy.
    pub policy_name: Option<String>,
    pub policy_last_refused: Option<String>,
    /// The candidate bundle evaluated beside the one in force, and how it compares.
    pub policy_candidate: Option<CandidateStatus>,
}

/// How a proxy's candidate bundle compares with the one in force, since it arrived.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CandidateStatus {
    pub version: String,
    pub compared: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    pub error_changes: u64,
}

/// Reads `/config`.
pub async fn config(admin: SocketAddr) -> anyhow::Result<ConfigStatus> {
    let (status, body) = get(admin, "/config").await?;
    if status != 200 {
        anyhow::bail!("{admin}/config answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| {
        format!(
            "{admin}/config is not the JSON a vigil-proxy serves: is another program on that port?"
        )
    })
}
