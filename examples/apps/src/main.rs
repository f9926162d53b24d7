//! `vigil-demo-app`: the applications of Vigil's quickstart and demo. They know nothing
//! of the mesh: the server answers plain HTTP on 127.0.0.1 and reports the caller
//! identity its sidecar vouched for; the client calls a service by name through its
//! sidecar's outbound port.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "vigil-demo-app",
    about = "Demo applications for the Vigil mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An HTTP service that answers with who called it (and optionally a TCP echo).
    Server {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Name reported in responses.
        #[arg(long, default_value = "server")]
        name: String,
        /// Also echo raw TCP on this address.
        #[arg(long)]
        tcp_echo: Option<SocketAddr>,
    },
    /// Calls a service through the local sidecar and prints each answer.
    Client {
        /// The sidecar's outbound address.
        #[arg(long, default_value = "127.0.0.1:15001")]
        via: SocketAddr,
        /// Service name to call (sent as the Host header).
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/hello")]
        path: String,
        /// Time between calls.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many calls (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Server {
            listen,
            name,
            tcp_echo,
        } => {
            if let Some(addr) = tcp_echo {
                let listener = TcpListener::bind(addr).await?;
                tokio::spawn(echo(listener));
            }
            serve(TcpListener::bind(listen).await?, name).await
        }
        Command::Client {
            via,
            host,
            path,
            interval,
            count,
        } => client(via, host, path, interval, count).await,
    }
}

async fn serve(listener: TcpListener, name: String) -> anyhow::Result<()> {
    println!("{name}: listening on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    let caller = req
                        .headers()
                        .get("x-vigil-peer-identity")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(none: not called through the mesh)")
                        .to_string();
                    let body = serde_json::json!({
                        "service": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "caller": caller,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn echo(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn client(
    via: SocketAddr,
    host: String,
    path: String,
    interval: Duration,
    count: u64,
) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut n = 0u64;
    loop {
        n += 1;
        let started = Instant::now();
        let req = Request::builder()
            .uri(format!("http://{via}{path}"))
            .header(http::header::HOST, &host)
            .body(Full::new(Bytes::new()))?;
        match client.request(req).await {
            Ok(res) => {
                let status = res.status();
                let reason = res
                    .headers()
                    .get("x-vigil-error")
                    .and_then(|v| v.to_str().ok())
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default();
                let body = res.into_body().collect().await?.to_bytes();
                println!(
                    "call {n} to {host}{path}: {status}{reason} in {:.1} ms: {}",
                    started.elapsed().as_secs_f64() * 1000.0,
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Err(e) => {
                println!("call {n} to {host}{path} failed: {e} (is the sidecar on {via} running?)")
            }
        }
        if count != 0 && n >= count {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}
