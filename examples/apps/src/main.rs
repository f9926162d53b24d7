//! `vigil-demo-app`: the applications of Vigil's quickstart and demo. They know nothing
//! of the mesh: the server answers plain HTTP on 127.0.0.1 and reports the caller
//! identity its sidecar vouched for; the client and the load generator call a service by
//! name through their sidecar's outbound port.
//!
//! The demo's shop is built from one server with options: `--call` fans each request out
//! to downstream services through the sidecar (`web → orders → payments, inventory`),
//! `--fail-rate` makes a flaky service, `--latency` a slow one, and `load` is the traffic
//! generator in front of it all.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
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
    /// An HTTP service that answers with who called it, optionally after calling other
    /// services through its sidecar (and optionally a TCP echo).
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
        /// The sidecar's outbound address, through which `--call`s go.
        #[arg(long, default_value = "127.0.0.1:15001")]
        via: SocketAddr,
        /// Call this service on every request (HOST), or only on requests whose path starts
        /// with a prefix (HOST@/PREFIX); the request's path is passed on. Repeatable.
        #[arg(long = "call", value_name = "HOST[@/PREFIX]")]
        calls: Vec<Downstream>,
        /// Share of requests answered 503 without doing anything (0.2: one in five).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Added time per request; each request waits between half and one and a half times it.
        #[arg(long, value_parser = humantime::parse_duration)]
        latency: Option<Duration>,
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
    /// Traffic generator: a steady rate of requests to one service with a mix of paths,
    /// and a summary of the answers every 10 s.
    Load {
        /// The sidecar's outbound address.
        #[arg(long, default_value = "127.0.0.1:15001")]
        via: SocketAddr,
        /// Service name to call (sent as the Host header).
        #[arg(long)]
        host: String,
        /// Requests per second.
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// A path and its weight in the mix (PATH=WEIGHT, repeatable); by default
        /// `/=4 /checkout=3 /quick-pay=1 /admin=1`.
        #[arg(long = "path", value_name = "PATH=WEIGHT")]
        paths: Vec<WeightedPath>,
        /// Stop after this many requests (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

/// A downstream service a server calls, on all requests or under one path prefix.
#[derive(Debug, Clone)]
struct Downstream {
    host: String,
    prefix: Option<String>,
}

impl FromStr for Downstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, prefix) = match s.split_once('@') {
            Some((h, p)) if p.starts_with('/') => (h, Some(p.to_string())),
            Some(_) => return Err(format!("expected HOST or HOST@/PREFIX, got {s:?}")),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!(
                "no service name in {s:?}; expected HOST or HOST@/PREFIX"
            ));
        }
        Ok(Downstream {
            host: host.to_string(),
            prefix,
        })
    }
}

/// One path of the load mix.
#[derive(Debug, Clone)]
struct WeightedPath {
    path: String,
    weight: u32,
}

impl FromStr for WeightedPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, weight) = s.rsplit_once('=').unwrap_or((s, "1"));
        let weight = weight
            .parse()
            .map_err(|_| format!("bad weight in {s:?}; expected PATH=WEIGHT, e.g. /checkout=3"))?;
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with /"));
        }
        Ok(WeightedPath {
            path: path.to_string(),
            weight,
        })
    }
}

/// How a server behaves.
struct ServerSettings {
    name: String,
    via: SocketAddr,
    calls: Vec<Downstream>,
    fail_rate: f64,
    latency: Option<Duration>,
    client: HttpClient,
}

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Server {
            listen,
            name,
            tcp_echo,
            via,
            calls,
            fail_rate,
            latency,
        } => {
            if !(0.0..=1.0).contains(&fail_rate) {
                anyhow::bail!("--fail-rate {fail_rate} is not between 0 and 1 (0.2 fails one request in five)");
            }
            if let Some(addr) = tcp_echo {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr} for the TCP echo: {e}; pick a free --tcp-echo address")
                })?;
                tokio::spawn(echo(listener));
            }
            let listener = TcpListener::bind(listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {listen}: {e}; pick a free --listen address")
            })?;
            let settings = ServerSettings {
                name,
                via,
                calls,
                fail_rate,
                latency,
                client: http_client(),
            };
            serve(listener, Arc::new(settings)).await
        }
        Command::Client {
            via,
            host,
            path,
            interval,
            count,
        } => client(via, host, path, interval, count).await,
        Command::Load {
            via,
            host,
            rate,
            paths,
            count,
        } => load(via, host, rate, paths, count).await,
    }
}

async fn serve(listener: TcpListener, settings: Arc<ServerSettings>) -> anyhow::Result<()> {
    println!(
        "{}: listening on http://{}",
        settings.name,
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        let settings = settings.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let settings = settings.clone();
                async move { Ok::<_, Infallible>(answer(&settings, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn answer(
    settings: &ServerSettings,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let caller = req
        .headers()
        .get("x-vigil-peer-identity")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none: not called through the mesh)")
        .to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let (delay, fail) = {
        let mut rng = rand::rng();
        let delay = settings
            .latency
            .map(|l| l.mul_f64(rng.random_range(0.5..1.5)));
        (delay, rng.random_bool(settings.fail_rate))
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if fail {
        let body = serde_json::json!({
            "service": settings.name,
            "error": "injected failure (--fail-rate)",
        });
        return json(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let wanted = settings
        .calls
        .iter()
        .filter(|c| c.prefix.as_deref().is_none_or(|p| path.starts_with(p)));
    let calls = futures::future::join_all(
        wanted.map(|c| call_downstream(settings, &c.host, &path, request_id.as_deref())),
    )
    .await;
    let failed = calls
        .iter()
        .any(|c| c["status"].as_u64().is_none_or(|s| s >= 500));
    let body = serde_json::json!({
        "service": settings.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "caller": caller,
        "calls": calls,
    });
    let status = if failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    json(status, &body)
}

/// One downstream call through the sidecar; what happened, as JSON.
async fn call_downstream(
    settings: &ServerSettings,
    host: &str,
    path: &str,
    request_id: Option<&str>,
) -> serde_json::Value {
    let started = Instant::now();
    let mut req = Request::builder()
        .uri(format!("http://{}{path}", settings.via))
        .header(http::header::HOST, host);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let Ok(req) = req.body(Full::new(Bytes::new())) else {
        return serde_json::json!({"service": host, "error": format!("cannot build a request for path {path:?}")});
    };
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let res = settings.client.request(req).await?;
        let status = res.status().as_u16();
        let reason = res
            .headers()
            .get("x-vigil-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        res.into_body().collect().await?;
        Ok::<_, anyhow::Error>((status, reason))
    })
    .await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(Ok((status, reason))) => {
            serde_json::json!({"service": host, "status": status, "vigil_error": reason, "ms": ms})
        }
        Ok(Err(e)) => serde_json::json!({
            "service": host,
            "error": format!("{e} (is the sidecar on {} running?)", settings.via),
            "ms": ms,
        }),
        Err(_) => serde_json::json!({"service": host, "error": "no answer within 10 s", "ms": ms}),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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
    let client = http_client();
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

fn default_mix() -> Vec<WeightedPath> {
    [("/", 4), ("/checkout", 3), ("/quick-pay", 1), ("/admin", 1)]
        .into_iter()
        .map(|(path, weight)| WeightedPath {
            path: path.to_string(),
            weight,
        })
        .collect()
}

fn pick(mix: &[WeightedPath], total: u32) -> &str {
    let mut n = rand::rng().random_range(0..total);
    for p in mix {
        if n < p.weight {
            return &p.path;
        }
        n -= p.weight;
    }
    "/"
}

async fn load(
    via: SocketAddr,
    host: String,
    rate: f64,
    paths: Vec<WeightedPath>,
    count: u64,
) -> anyhow::Result<()> {
    if !(rate > 0.0 && rate <= 1000.0) {
        anyhow::bail!("--rate {rate} must be between 0 and 1000 requests per second");
    }
    let mix = if paths.is_empty() {
        default_mix()
    } else {
        paths
    };
    let total: u32 = mix.iter().map(|p| p.weight).sum();
    if total == 0 {
        anyhow::bail!("every --path has weight 0; give at least one a positive weight");
    }
    println!(
        "load: {rate} requests/s to {host} through {via}, paths {}",
        mix.iter()
            .map(|p| format!("{}={}", p.path, p.weight))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let client = http_client();
    let tally: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let counts = match tally.lock() {
                    Ok(mut t) => std::mem::take(&mut *t),
                    Err(_) => continue,
                };
                let n: u64 = counts.values().sum();
                let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}×{v}")).collect();
                println!("load: {n} answers in the last 10 s: {}", summary.join(", "));
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
        let path = pick(&mix, total).to_string();
        let request_id = format!("{:032x}", rand::rng().random::<u128>());
        let req = Request::builder()
            .uri(format!("http://{via}{path}"))
            .header(http::header::HOST, &host)
            .header("x-request-id", request_id)
            .body(Full::new(Bytes::new()))?;
        let client = client.clone();
        let tally = tally.clone();
        let one = async move {
            let outcome =
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(res)) => {
                        let status = res.status().as_u16().to_string();
                        let _ = res.into_body().collect().await;
                        status
                    }
                    Ok(Err(_)) => "connect-error".to_string(),
                    Err(_) => "timeout".to_string(),
                };
            if let Ok(mut t) = tally.lock() {
                *t.entry(outcome).or_default() += 1;
            }
        };
        if count != 0 && n >= count {
            one.await;
            return Ok(());
        }
        tokio::spawn(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_downstreams_and_weights() {
        let d: Downstream = "payments@/quick-pay".parse().expect("valid");
        assert_eq!(d.host, "payments");
        assert_eq!(d.prefix.as_deref(), Some("/quick-pay"));
        assert!("orders"
            .parse::<Downstream>()
            .expect("valid")
            .prefix
            .is_none());
        assert!("orders@quick".parse::<Downstream>().is_err());
        let w: WeightedPath = "/checkout=3".parse().expect("valid");
        assert_eq!((w.path.as_str(), w.weight), ("/checkout", 3));
        assert!("checkout=3".parse::<WeightedPath>().is_err());
        let mix = default_mix();
        let total = mix.iter().map(|p| p.weight).sum();
        for _ in 0..100 {
            let chosen = pick(&mix, total);
            assert!(mix.iter().any(|p| p.path == chosen), "{chosen}");
        }
    }
}
