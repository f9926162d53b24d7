//! `vigil-proxy`: the sidecar binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vigil_proxy::config::ProxyConfig;

#[derive(Parser)]
#[command(
    name = "vigil-proxy",
    version,
    about = "Vigil sidecar proxy: mTLS, policy and resilience for one workload"
)]
struct Args {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "VIGIL_TRUST_DOMAIN", default_value = "vigil.local")]
    trust_domain: String,
    /// Bootstrap credential: the workload's join token (local mode).
    #[arg(
        long,
        env = "VIGIL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the bootstrap credential (e.g. a projected ServiceAccount token).
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// What kind of credential the token is.
    #[arg(long, env = "VIGIL_TOKEN_KIND", value_enum, default_value = "join")]
    token_kind: TokenKindArg,
    /// PEM roots that vouch for the control plane (its data dir's trust-bundle.pem).
    #[arg(long, env = "VIGIL_TRUST_BUNDLE")]
    trust_bundle: PathBuf,
    /// Control plane identity service (CSR signing).
    #[arg(long, env = "VIGIL_IDENTITY_ADDR", default_value = "127.0.0.1:15012")]
    identity_addr: SocketAddr,
    /// Control plane discovery service.
    #[arg(long, env = "VIGIL_DISCOVERY_ADDR", default_value = "127.0.0.1:15010")]
    discovery_addr: SocketAddr,
    /// Inbound mTLS listener.
    #[arg(long, env = "VIGIL_INBOUND", default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// Outbound listener for the application's plain traffic.
    #[arg(long, env = "VIGIL_OUTBOUND", default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// Admin listener; must be a loopback address.
    #[arg(long, env = "VIGIL_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Prometheus metrics listener (/metrics).
    #[arg(long, env = "VIGIL_METRICS", default_value = "0.0.0.0:15090")]
    metrics: SocketAddr,
    /// Extra outbound listener bound to one service, as ADDRESS=SERVICE (repeatable).
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<(SocketAddr, String)>,
    /// Timeout for connecting to peers and the application.
    #[arg(long, env = "VIGIL_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Decision log destination: a file path, or "-" for standard output.
    #[arg(long, env = "VIGIL_DECISION_LOG", default_value = "-")]
    decision_log: String,
    /// JSON access log, one line per request: a file path or "-" for standard output.
    /// Off unless given.
    #[arg(long, env = "VIGIL_ACCESS_LOG")]
    access_log: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenKindArg {
    Join,
    Kubernetes,
}

fn parse_upstream(s: &str) -> Result<(SocketAddr, String), String> {
    let (addr, service) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ADDRESS=SERVICE, got {s:?}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((addr, service.to_string()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    if !args.admin.ip().is_loopback() {
        anyhow::bail!(
            "--admin {} is not a loopback address; the admin port must stay local (use 127.0.0.1)",
            args.admin
        );
    }
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("no bootstrap credential: pass --token or --token-file"),
    };
    let pem = std::fs::read_to_string(&args.trust_bundle).with_context(|| {
        format!(
            "reading --trust-bundle {} (the control plane writes it to its data dir as trust-bundle.pem)",
            args.trust_bundle.display()
        )
    })?;
    let bootstrap_trust = vigil_identity::TrustBundle::from_pem(&pem)
        .with_context(|| format!("parsing --trust-bundle {}", args.trust_bundle.display()))?;
    let config = ProxyConfig {
        trust_domain: args.trust_domain,
        token,
        token_kind: match args.token_kind {
            TokenKindArg::Join => vigil_api::TokenKind::Join,
            TokenKindArg::Kubernetes => vigil_api::TokenKind::KubernetesServiceAccount,
        },
        bootstrap_trust,
        identity_address: args.identity_addr,
        discovery_address: args.discovery_addr,
        inbound: args.inbound,
        outbound: args.outbound,
        admin: args.admin,
        metrics: args.metrics,
        upstreams: args.upstreams,
        connect_timeout: args.connect_timeout,
        detect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(10),
    };
    let log = open_log(&args.decision_log, "--decision-log")?;
    let access_log = args
        .access_log
        .as_deref()
        .map(|path| open_log(path, "--access-log"))
        .transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(vigil_proxy::run(config, log, access_log))
}

/// A log destination: "-" for standard output, otherwise a file appended to.
fn open_log(path: &str, flag: &str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    use anyhow::Context;
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!("opening {flag} {path}: check the directory exists and is writable")
        })?;
    Ok(Box::new(file))
}
