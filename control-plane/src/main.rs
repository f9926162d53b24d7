//! `vigil`: the control plane server and the operator's CLI.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Vigil zero-trust service mesh: control plane and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (CA, identity, discovery) from a local mesh file.
    ControlPlane {
        /// Mesh YAML: trust domain, workloads, services, policy.
        #[arg(long, env = "VIGIL_MESH")]
        mesh: PathBuf,
        /// Where the CA and the trust bundle are kept.
        #[arg(long, env = "VIGIL_DATA_DIR", default_value = "/var/lib/vigil")]
        data_dir: PathBuf,
        /// Operator-supplied signing CA certificate (PEM), instead of a generated root.
        #[arg(long, env = "VIGIL_CA_CERT", requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Key of --ca-cert (PEM).
        #[arg(long, env = "VIGIL_CA_KEY", requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Chain from --ca-cert up to and including the root (PEM).
        #[arg(long, env = "VIGIL_CA_CHAIN")]
        ca_chain: Option<PathBuf>,
        /// How often the mesh file and policy directory are checked for changes.
        #[arg(long, env = "VIGIL_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
        reload_interval: Duration,
    },
    /// Write, test and debug Rego policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run a whole local mesh from a mesh file: control plane, a proxy per workload and
    /// each workload's command.
    Up {
        /// Mesh YAML whose workloads carry a `command`.
        #[arg(long, env = "VIGIL_MESH")]
        mesh: PathBuf,
        /// Where the CA and logs are kept (a fresh temporary directory by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Stop after this long (for scripts); runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule under DIR, like `opa test`; fails if any test fails.
    Test {
        dir: PathBuf,
        /// Also print `print()` output of passing tests.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Evaluate a policy directory against an input document (JSON).
    Eval {
        #[arg(long)]
        policy: PathBuf,
        /// The input document, as the proxy builds it (OPA-Envoy ext_authz shape).
        #[arg(long)]
        input: PathBuf,
        /// Rule to evaluate (default data.vigil.authz.allow).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Show the decision for a request and the rules that produced it.
    Explain {
        #[arg(long)]
        policy: PathBuf,
        /// Caller's SPIFFE ID (omit for a caller without a mesh identity).
        #[arg(long)]
        source: Option<String>,
        /// Callee's SPIFFE ID.
        #[arg(long)]
        destination: Option<String>,
        /// HTTP method; empty for a TCP connection.
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "")]
        host: String,
        /// Request header as NAME:VALUE (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        #[arg(long)]
        rule: Option<String>,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Runs a policy subcommand; `Ok(false)` means it ran and the answer is a failure.
fn policy(cmd: PolicyCommand) -> anyhow::Result<bool> {
    use anyhow::Context;
    let mut out = std::io::stdout();
    match cmd {
        PolicyCommand::Test { dir, verbose } => {
            let summary = vigil_authz::run_tests(&dir, &mut out, verbose)?;
            Ok(summary.success())
        }
        PolicyCommand::Eval {
            policy,
            input,
            rule,
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading --input {}", input.display()))?;
            vigil_authz::eval_command(&policy, &text, rule.as_deref(), &mut out)?;
            Ok(true)
        }
        PolicyCommand::Explain {
            policy,
            source,
            destination,
            method,
            path,
            host,
            headers,
            rule,
        } => {
            let request = vigil_authz::ExplainRequest {
                source,
                destination,
                method,
                path,
                headers,
                host,
            };
            vigil_authz::explain(&policy, request, rule.as_deref(), &mut out)?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Policy(cmd) => {
            return match policy(cmd) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        command => Cli { command },
    };
    // `vigil up` shows its own progress; the control plane inside it speaks up only
    // for warnings unless VIGIL_LOG says otherwise.
    init_logging(if matches!(cli.command, Command::Up { .. }) {
        "warn"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::ControlPlane {
                mesh,
                data_dir,
                ca_cert,
                ca_key,
                ca_chain,
                reload_interval,
            } => {
                vigil::control_plane::run(vigil::control_plane::ControlPlaneOptions {
                    mesh_file: mesh,
                    data_dir,
                    ca_cert,
                    ca_key,
                    ca_chain,
                    reload_interval,
                })
                .await
            }
            Command::Policy(_) => Ok(()),
            Command::Up {
                mesh,
                data_dir,
                duration,
            } => {
                let temp;
                let data_dir = match data_dir {
                    Some(d) => d,
                    None => {
                        temp = tempfile::tempdir()?;
                        temp.path().to_path_buf()
                    }
                };
                vigil::launcher::up(vigil::launcher::LaunchOptions {
                    mesh_file: mesh,
                    data_dir,
                    duration,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
