//! Integration tests for vigil-authz (one binary, to keep link times down).

mod cli;
mod decisions;
mod input;
mod parity;
mod policies;

use std::net::SocketAddr;
use std::path::PathBuf;

use vigil_authz::{PolicyBundle, PolicyFile, PolicyOptions};

/// The shipped policy library.
pub fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("policies")
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub fn file(path: &str, contents: &str) -> PolicyFile {
    PolicyFile {
        path: path.to_string(),
        contents: contents.to_string(),
    }
}

/// Compiles one module with the default options.
pub fn bundle(rego: &str) -> PolicyBundle {
    PolicyBundle::compile(vec![file("policy.rego", rego)], PolicyOptions::default())
        .expect("policy compiles")
}
