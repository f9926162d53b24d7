//! `vigil-loadgen`: the two halves of Vigil's side-by-side benchmark.
//!
//! * `vigil-loadgen upstream --listen 127.0.0.1:28082 --size 1024` answers every request with
//!   a fixed body of `--size` bytes (HTTP/1.1 and h2c), as cheaply as hyper allows.
//! * `vigil-loadgen load --target 127.0.0.1:25101 --host server --rate 1000 --duration 20s`
//!   drives HTTP/1.1 keep-alive traffic and prints a JSON summary on stdout.
//!
//! Load modes:
//! * `--rate N` (N > 0): open loop. A dedicated timer thread releases one request every
//!   1/N s into a shared queue, whichever of the `--connections` keep-alive connections is
//!   free sends it. Latency is measured from the *intended* send time, so a stall in the
//!   system under test shows up in the percentiles instead of silently lowering the offered
//!   load (no coordinated omission). The time from the actual send is reported separately
//!   as `service_time_us`.
//! * `--rate 0`: closed loop at maximum rate; each connection sends its next request as soon
//!   as the previous response body has been read. Latency is from the actual send.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "vigil-loadgen",
    version,
    about = "Upstream responder and load generator for Vigil's benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a fixed-size body to every request.
    Upstream(UpstreamArgs),
    /// Generate load against an HTTP/1.1 target and print a JSON summary.
    Load(LoadArgs),
}

#[derive(Parser)]
struct UpstreamArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:28082")]
    listen: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Parser, Clone)]
struct LoadArgs {
    /// Address to connect to (plain HTTP/1.1).
    #[arg(long)]
    target: SocketAddr,
    /// Host header to send.
    #[arg(long, default_value = "server")]
    host: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, open loop; 0 means closed loop at maximum rate.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send requests for.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Seconds between progress lines on stderr (0 = none).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    progress: Duration,
    /// Runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Free-form label copied into the output and the progress lines.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the JSON summary here instead of stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Upstream(a) => a.threads,
        Command::Load(a) => a.threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    match cli.command {
        Command::Upstream(a) => runtime.block_on(upstream(a)),
        Command::Load(a) => {
            let summary = runtime.block_on(load(a.clone()))?;
            let text = serde_json::to_string_pretty(&summary)?;
            match &a.out {
                Some(path) => std::fs::write(path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// upstream

async fn upstream(args: UpstreamArgs) -> Result<()> {
    let pattern = b"vigil-bench-0123456789abcdefghijklmnopqrstuvwxyz\n";
    let body: Bytes = pattern
        .iter()
        .copied()
        .cycle()
        .take(args.size)
        .collect::<Vec<u8>>()
        .into();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "vigil-loadgen upstream: {} bytes per response on {}",
        args.size, args.listen
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header(http::header::CONTENT_TYPE, "text/plain")
                                .body(Full::new(body))
                                .expect("static response"),
                        )
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// load

const HIST_MAX_NS: u64 = 120_000_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, HIST_MAX_NS, 3).expect("histogram bounds")
}

struct Recorder {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    /// Open loop only: how late the request left versus its intended send time (pacer
    /// wake-up + hand-off + waiting for a free connection).
    send_lag: Histogram<u64>,
    window: Histogram<u64>,
    window_errors: u64,
    bytes: u64,
}

struct Shared {
    rec: Mutex<Recorder>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn record_ok(&self, latency: Duration, service: Duration, bytes: usize, open_loop: bool) {
        let l = (latency.as_nanos() as u64).clamp(1_000, HIST_MAX_NS);
        let s = (service.as_nanos() as u64).clamp(1_000, HIST_MAX_NS);
        let mut r = self.rec.lock().unwrap();
        r.latency.saturating_record(l);
        r.service.saturating_record(s);
        if open_loop {
            r.send_lag.saturating_record(l.saturating_sub(s).max(1_000));
        }
        r.window.saturating_record(l);
        r.bytes += bytes as u64;
        drop(r);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn record_err(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.rec.lock().unwrap().window_errors += 1;
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one_request(sender: &mut Sender, args: &LoadArgs) -> Result<usize> {
    sender.ready().await.context("connection not ready")?;
    let req = hyper::Request::builder()
        .method(http::Method::GET)
        .uri(args.path.as_str())
        .header(http::header::HOST, args.host.as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("sending request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading body")?
        .to_bytes();
    if !status.is_success() {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        anyhow::bail!("HTTP {status}: {snippet}");
    }
    Ok(body.len())
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

async fn worker(args: Arc<LoadArgs>, shared: Arc<Shared>, queue: Option<Queue>, deadline: Instant) {
    let mut sender: Option<Sender> = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = match &queue {
            Some(q) => {
                let next = q.lock().await.recv().await;
                match next {
                    Some(t) => Some(t),
                    None => break,
                }
            }
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                None
            }
        };
        if sender.is_none() {
            match connect(args.target).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    shared.record_err(format!("{e:#}"));
                    // Back off a little so a dead target does not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected");
        let start = Instant::now();
        let result = tokio::time::timeout(args.timeout, one_request(s, &args)).await;
        let end = Instant::now();
        match result {
            Ok(Ok(bytes)) => shared.record_ok(
                end - intended.unwrap_or(start),
                end - start,
                bytes,
                intended.is_some(),
            ),
            Ok(Err(e)) => {
                shared.record_err(format!("{e:#}"));
                sender = None;
            }
            Err(_) => {
                shared.record_err(format!("timed out after {:?}", args.timeout));
                sender = None;
            }
        }
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p99_9": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
    })
}

async fn load(args: LoadArgs) -> Result<serde_json::Value> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    // Fail fast with a clear message when nothing listens.
    drop(connect(args.target).await?);

    let args = Arc::new(args);
    let shared = Arc::new(Shared {
        rec: Mutex::new(Recorder {
            latency: new_hist(),
            service: new_hist(),
            send_lag: new_hist(),
            window: new_hist(),
            window_errors: 0,
            bytes: 0,
        }),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let cpu_before = own_cpu_seconds();
    let started_wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + args.duration;
    let label = if args.label.is_empty() {
        String::new()
    } else {
        format!("[{}] ", args.label)
    };

    // Open loop: a plain OS thread paces the schedule (tokio's timer wheel has 1 ms
    // granularity, which would be visible in sub-millisecond latencies).
    let mut pacer_handle = None;
    let queue = if args.rate > 0 {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        let rate = args.rate;
        let duration = args.duration;
        pacer_handle = Some(std::thread::spawn(move || {
            // The default 50 µs timer slack would make every wake-up that much late.
            let _ = nix::sys::prctl::set_timerslack(1);
            let interval_ns = 1_000_000_000f64 / rate as f64;
            let total = (duration.as_secs_f64() * rate as f64).round() as u64;
            for i in 0..total {
                let t = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                let now = Instant::now();
                if t > now {
                    std::thread::sleep(t - now);
                }
                if tx.send(t).is_err() {
                    return i;
                }
            }
            total
        }));
        Some(Arc::new(tokio::sync::Mutex::new(rx)))
    } else {
        None
    };

    tokio::time::sleep_until(start.into()).await;
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        workers.push(tokio::spawn(worker(
            args.clone(),
            shared.clone(),
            queue.clone(),
            deadline,
        )));
    }

    // Progress lines.
    let progress = {
        let shared = shared.clone();
        let every = args.progress;
        let label = label.clone();
        tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval_at((start + every).into(), every);
            loop {
                tick.tick().await;
                let (n, p50, p99, errs) = {
                    let mut r = shared.rec.lock().unwrap();
                    let n = r.window.len();
                    let out = (
                        n,
                        r.window.value_at_quantile(0.5),
                        r.window.value_at_quantile(0.99),
                        r.window_errors,
                    );
                    r.window.reset();
                    r.window_errors = 0;
                    out
                };
                eprintln!(
                    "{label}t={:>5.1}s  {:>8.0} req/s  errors {:>5}  p50 {:>8.1} µs  p99 {:>8.1} µs  (last {}s)",
                    start.elapsed().as_secs_f64(),
                    n as f64 / every.as_secs_f64(),
                    errs,
                    us(p50),
                    us(p99),
                    every.as_secs()
                );
            }
        })
    };

    // Let queued work drain after the schedule ends, but never hang forever.
    let hard_stop = deadline + args.timeout + Duration::from_secs(2);
    let all = futures_join(workers);
    if tokio::time::timeout_at(hard_stop.into(), all)
        .await
        .is_err()
    {
        shared.stop.store(true, Ordering::Relaxed);
    }
    let end = Instant::now();
    progress.abort();
    let scheduled = pacer_handle.map(|h| h.join().unwrap_or(0));

    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let elapsed = (end - start).as_secs_f64();
    let r = shared.rec.lock().unwrap();
    let not_sent = scheduled.map(|s| s.saturating_sub(ok + errors));
    let out = json!({
        "label": args.label,
        "target": args.target.to_string(),
        "host": args.host,
        "mode": if args.rate > 0 { "rate" } else { "max" },
        "rate_target": args.rate,
        "connections": args.connections,
        "duration_s": args.duration.as_secs_f64(),
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "started_unix": started_wall,
        "requests": ok,
        "errors": errors,
        "not_sent": not_sent,
        "throughput_rps": ((ok as f64 / elapsed) * 10.0).round() / 10.0,
        "bytes_received": r.bytes,
        "latency_us": summary(&r.latency),
        "service_time_us": summary(&r.service),
        "send_lag_us": if args.rate > 0 { summary(&r.send_lag) } else { json!(null) },
        "latency_from": if args.rate > 0 { "intended send time" } else { "actual send time" },
        "first_error": *shared.first_error.lock().unwrap(),
        "loadgen_cpu_s": ((own_cpu_seconds() - cpu_before) * 1000.0).round() / 1000.0,
    });
    eprintln!(
        "{label}done: {ok} ok, {errors} errors, {:.0} req/s, p50 {} µs, p99 {} µs, p99.9 {} µs",
        ok as f64 / elapsed,
        out["latency_us"]["p50"],
        out["latency_us"]["p99"],
        out["latency_us"]["p99_9"]
    );
    Ok(out)
}

/// User + system CPU seconds of this process so far.
fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
