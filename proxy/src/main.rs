//! `vigil-proxy`: the sidecar binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use vigil_proxy::config::ProxyConfig;

mod log_file;

/// The proxy's settings ([`ProxyConfig`], which declares their flags) and where its logs go.
#[derive(Parser)]
#[command(
    name = "vigil-proxy",
    version,
    about = "Vigil sidecar proxy: mTLS, policy and resilience for one workload"
)]
struct Args {
    #[command(flatten)]
    config: ProxyConfig,
    /// Decision log destination: a file path, or "-" for standard output. A file is
    /// created mode 600 (its directory 700) and an existing one is made 600.
    #[arg(long, env = "VIGIL_DECISION_LOG", default_value = "-")]
    decision_log: String,
    /// JSON access log, one line per request: a file path or "-" for standard output.
    /// Off unless given. Files are kept private like the decision log's.
    #[arg(long, env = "VIGIL_ACCESS_LOG")]
    access_log: Option<String>,
    /// Keep query strings in the access log (and the tap). Without it a record keeps the
    /// path and the access log says `"query": "redacted"`: queries often carry tokens and
    /// personal data.
    #[arg(long, env = "VIGIL_LOG_QUERY_STRINGS", requires = "access_log")]
    log_query_strings: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_proxy::telemetry::logging::init();
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
    let mut config = args.config;
    // A token file must be readable at start; what it holds then is the fallback for a
    // later renewal that cannot read it.
    if let (None, Some(path)) = (&config.token, &config.token_file) {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?;
        config.token = Some(token.trim().to_string());
    }
    let log = open_log(&args.decision_log, "--decision-log")?;
    let access_log = args
        .access_log
        .as_deref()
        .map(|path| open_log(path, "--access-log"))
        .transpose()?
        .map(|writer| {
            vigil_proxy::telemetry::observe::AccessLog::new(writer, args.log_query_strings)
        });
    // This thread is traffic worker 0 and also runs the listeners, discovery and the
    // admin port; `run` starts the other workers (see `transport::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(vigil_proxy::run(config, log, access_log))
}

/// A log destination: "-" for standard output, otherwise a file appended to, readable
/// by this user only.
fn open_log(path: &str, flag: &'static str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = log_file::open_private(std::path::Path::new(path), flag)?;
    Ok(Box::new(file))
}
