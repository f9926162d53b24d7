//! `vigil-cni`: the chained CNI plugin that writes a meshed pod's interception rules
//! (see `vigil_proxy::cni`). Installed on each node in the CNI binary directory and
//! listed after the network plugin in the node's CNI configuration; the container runtime
//! runs it, never a person.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use vigil_proxy::cni::{handle, Invocation};

fn main() -> ExitCode {
    let invocation = Invocation::from_env();
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        eprintln!("vigil-cni: cannot read the network configuration on standard input: {e}");
        return ExitCode::FAILURE;
    }
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
