//! A small client for the proxies' admin endpoints, used by `vigil up` and the CLI.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// GETs `path` from a proxy's admin address: status and body.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("admin endpoint {admin} did not answer within 5 s"))?
}

/// Only the status of `path`.
pub async fn get_status(admin: SocketAddr, path: &str) -> anyhow::Result<u16> {
    get(admin, path).await.map(|(s, _)| s)
}
