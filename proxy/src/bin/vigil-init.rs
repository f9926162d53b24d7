//! `vigil-init`: writes the iptables rules that send a pod's TCP through its Vigil proxy
//! (inbound → 15006, outbound → 15001, the proxy's own UID excepted). Runs once, as an init
//! container with NET_ADMIN and NET_RAW, in the pod's network namespace; `--dry-run`
//! prints the commands instead, `--cleanup` removes the rules. See
//! `vigil_proxy::interception` for the rules themselves.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;
use vigil_proxy::interception::{install, uninstall, Cidr, InterceptionConfig, Step};

#[derive(Parser)]
#[command(
    name = "vigil-init",
    version,
    about = "Redirect a pod's TCP traffic through its Vigil proxy with iptables"
)]
struct Args {
    /// UID the proxy runs as; its own connections are not intercepted.
    #[arg(long, env = "VIGIL_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// GID the proxy runs as, also exempted when given.
    #[arg(long, env = "VIGIL_PROXY_GID")]
    proxy_gid: Option<u32>,
    /// The proxy's inbound (mTLS) port.
    #[arg(long, env = "VIGIL_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's outbound port.
    #[arg(long, env = "VIGIL_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// Proxy ports reachable as they are (admin, metrics).
    #[arg(
        long,
        env = "VIGIL_PROXY_PORTS",
        value_delimiter = ',',
        default_value = "15000,15090"
    )]
    proxy_ports: Vec<u16>,
    /// Inbound ports that bypass the proxy (comma-separated).
    #[arg(long, env = "VIGIL_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Inbound source CIDRs that bypass the proxy.
    #[arg(long, env = "VIGIL_EXCLUDE_INBOUND_CIDRS", value_delimiter = ',')]
    exclude_inbound_cidrs: Vec<Cidr>,
    /// Outbound destination ports that bypass the proxy.
    #[arg(long, env = "VIGIL_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs that bypass the proxy.
    #[arg(long, env = "VIGIL_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<Cidr>,
    /// The iptables program (iptables-legacy on hosts that still use it).
    #[arg(long, env = "VIGIL_IPTABLES", default_value = "iptables")]
    iptables: PathBuf,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Remove Vigil's rules instead of writing them.
    #[arg(long)]
    cleanup: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = InterceptionConfig {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        proxy_ports: args.proxy_ports,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_inbound_cidrs: args.exclude_inbound_cidrs,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
    };
    let steps = if args.cleanup {
        uninstall()
    } else {
        install(&config)
    };
    if args.dry_run {
        for step in &steps {
            println!("{step}");
        }
        return ExitCode::SUCCESS;
    }
    for step in &steps {
        if let Err(e) = run(&args.iptables, step) {
            eprintln!("vigil-init: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "vigil-init: {} ({} iptables commands)",
        if args.cleanup {
            "interception removed"
        } else {
            "interception installed"
        },
        steps.len()
    );
    ExitCode::SUCCESS
}

/// Runs one step; a failure that the step expects (an existing chain) is not an error.
fn run(iptables: &PathBuf, step: &Step) -> Result<(), String> {
    if let Some(check) = step.check_args() {
        if iptables_ok(iptables, &check)?.is_ok() {
            return Ok(());
        }
    }
    match iptables_ok(iptables, &step.args())? {
        Ok(()) => Ok(()),
        Err(_) if step.may_fail() => Ok(()),
        Err(stderr) => Err(format!(
            "`{} {}` failed: {} (vigil-init needs NET_ADMIN and NET_RAW)",
            iptables.display(),
            step.args().join(" "),
            stderr.trim()
        )),
    }
}

/// `Ok(Ok(()))` when iptables succeeded, `Ok(Err(stderr))` when it ran and failed, and
/// `Err` when it could not run at all.
fn iptables_ok(iptables: &PathBuf, args: &[String]) -> Result<Result<(), String>, String> {
    match Command::new(iptables).args(args).output() {
        Ok(out) if out.status.success() => Ok(Ok(())),
        Ok(out) => Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} not found: install iptables (apt-get install iptables) or put it in the init image",
            iptables.display()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", iptables.display())),
    }
}
