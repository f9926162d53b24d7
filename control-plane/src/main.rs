//! `vigil`: the control plane server and the operator's CLI.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vigil", version, about = "Vigil zero-trust service mesh: control plane and CLI")]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `vigil up` shows its own progress; the control plane inside it speaks up only
    // for warnings unless VIGIL_LOG says otherwise.
    init_logging(if matches!(cli.command, Command::Up { .. }) { "warn" } else { "info" });
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
