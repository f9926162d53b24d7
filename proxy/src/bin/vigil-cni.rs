//! `vigil-cni`: the chained CNI plugin that writes a meshed pod's interception rules
//! (see `vigil_proxy::cni`).
//!
//! Run by the container runtime (no arguments, `CNI_COMMAND` set), it is the plugin.
//! Run as `vigil-cni install` by the `vigil-cni` DaemonSet (manifests/cni/), it installs
//! itself on the node: copies its binary into the CNI binary directory, writes the
//! DaemonSet's ServiceAccount token and CA where the plugin reads them, chains itself last
//! into the node's network configuration list, keeps the token fresh, and takes itself out
//! of the list when the DaemonSet stops.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vigil_identity::write_atomic;
use vigil_proxy::cni::{
    chain_into, handle, plugin_entry, primary_conflist, unchain_from, Invocation,
};

/// Installs the plugin on the node it runs on.
#[derive(Parser)]
#[command(name = "vigil-cni", version)]
enum Cli {
    /// Install on this node and keep the installation current until stopped.
    Install(InstallArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The node's CNI binary directory, as mounted in this container.
    #[arg(long, env = "VIGIL_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory, as mounted in this container.
    #[arg(
        long,
        env = "VIGIL_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    cni_conf_dir: PathBuf,
    /// The same directory as the node sees it (the plugin runs on the node, not here).
    #[arg(
        long,
        env = "VIGIL_HOST_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    host_cni_conf_dir: PathBuf,
    /// Where this pod's ServiceAccount token and CA are mounted.
    #[arg(
        long,
        env = "VIGIL_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    service_account_dir: PathBuf,
    /// The API server (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "VIGIL_API_SERVER")]
    api_server: Option<String>,
    /// How often the token is copied again and the chain checked.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Install once and exit (leaving the installation in place).
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-cni: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        let Cli::Install(args) = Cli::parse();
        return match runtime.block_on(install(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vigil-cni install: {e}");
                ExitCode::FAILURE
            }
        };
    }
    plugin(&runtime)
}

/// The plugin, as the runtime calls it.
fn plugin(runtime: &tokio::runtime::Runtime) -> ExitCode {
    let invocation = Invocation::from_env();
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        eprintln!("vigil-cni: cannot read the network configuration on standard input: {e}");
        return ExitCode::FAILURE;
    }
    match runtime.block_on(handle(&invocation, &stdin)) {
        Ok(serde_json::Value::Null) => ExitCode::SUCCESS,
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err((error, version)) => {
            println!("{}", error.to_json(&version));
            eprintln!(
                "vigil-cni: {} {}: {} ({})",
                invocation.command, invocation.container_id, error.msg, error.details
            );
            ExitCode::FAILURE
        }
    }
}

async fn install(args: InstallArgs) -> Result<(), String> {
    let server =
        match &args.api_server {
            Some(s) => s.clone(),
            None => match (
                std::env::var("KUBERNETES_SERVICE_HOST"),
                std::env::var("KUBERNETES_SERVICE_PORT"),
            ) {
                (Ok(host), Ok(port)) if host.contains(':') => format!("https://[{host}]:{port}"),
                (Ok(host), Ok(port)) => format!("https://{host}:{port}"),
                _ => return Err(
                    "no API server: pass --api-server (in a pod, KUBERNETES_SERVICE_HOST is set)"
                        .into(),
                ),
            },
        };
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let binary = std::fs::read(&exe).map_err(|e| format!("reading {}: {e}", exe.display()))?;
    write_atomic(&args.cni_bin_dir.join("vigil-cni"), &binary, 0o755).map_err(|e| {
        format!(
            "copying the plugin into {}: {e} (mount the node's CNI binary directory there)",
            args.cni_bin_dir.display()
        )
    })?;
    let own = args.cni_conf_dir.join("vigil-cni");
    std::fs::create_dir_all(&own).map_err(|e| format!("creating {}: {e}", own.display()))?;
    let host_own = args.host_cni_conf_dir.join("vigil-cni");
    let entry = plugin_entry(
        &server,
        &host_own.join("token").display().to_string(),
        &host_own.join("ca.crt").display().to_string(),
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("listening for SIGTERM: {e}"))?;
    loop {
        refresh(&args, &own, &entry)?;
        if args.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Stopping: out of the chain, so the runtime no longer calls a plugin whose token
    // nobody refreshes. The binary stays: a runtime may be running it right now.
    let list = primary_conflist(&args.cni_conf_dir)?;
    let mut conf = read_json(&list)?;
    if unchain_from(&mut conf) {
        write_json(&list, &conf)?;
        eprintln!("vigil-cni: removed from {}", list.display());
    }
    Ok(())
}

/// Copies the credential and puts the plugin in the chain if it is not there.
fn refresh(args: &InstallArgs, own: &Path, entry: &serde_json::Value) -> Result<(), String> {
    for file in ["token", "ca.crt"] {
        let from = args.service_account_dir.join(file);
        let contents =
            std::fs::read(&from).map_err(|e| format!("reading {}: {e}", from.display()))?;
        write_atomic(&own.join(file), &contents, 0o600)
            .map_err(|e| format!("writing {}: {e}", own.join(file).display()))?;
    }
    let list = primary_conflist(&args.cni_conf_dir)?;
    let mut conf = read_json(&list)?;
    if chain_into(&mut conf, entry).map_err(|e| format!("{}: {e}", list.display()))? {
        write_json(&list, &conf)?;
        eprintln!("vigil-cni: chained into {}", list.display());
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
