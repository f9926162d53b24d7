//! In-process Rego authorization for Vigil.
//!
//! Security teams write Rego; Vigil evaluates it on every inbound request and TCP connection
//! inside the sidecar, with no extra network hop. The input document is the one the OPA-Envoy
//! plugin builds for Envoy's `ext_authz` v3 API, so policies written for OPA-Envoy run unchanged.
//!
//! A [`PolicyBundle`] is compiled once (to RVM bytecode when the policy allows it) and then shared
//! across threads in an `Arc`; [`PolicyBundle::evaluate`] turns an [`AuthzInput`] into a
//! [`Decision`].
//!
//! ```
//! use std::net::SocketAddr;
//! use vigil_authz::{AuthzInput, InputKind, PolicyBundle, PolicyFile, PolicyOptions};
//!
//! let policy = PolicyFile {
//!     path: "policy.rego".into(),
//!     contents: r#"
//!         package vigil.authz
//!         default allow := false
//!         allow if startswith(input.attributes.source.principal, "spiffe://vigil.local/")
//!     "#
//!     .into(),
//! };
//! let bundle = PolicyBundle::compile(vec![policy], PolicyOptions::default()).unwrap();
//!
//! let input = AuthzInput {
//!     kind: InputKind::Tcp,
//!     source_address: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
//!     destination_address: "10.0.0.2:5432".parse::<SocketAddr>().unwrap(),
//!     source_principal: Some("spiffe://vigil.local/ns/shop/sa/web"),
//!     destination_principal: None,
//! };
//! assert!(bundle.evaluate(&input).allowed());
//! ```
#![forbid(unsafe_code)]

mod bundle;
mod cli;
mod decision;
mod engine;
mod explain;
mod input;
mod log;
mod rules;
mod source;
mod testing;

pub use bundle::{
    Backend, BackendPreference, BundleError, CompileProblem, PolicyBundle, PolicyFile,
    PolicyOptions,
};
pub use cli::eval_command;
pub use decision::Decision;
pub use engine::EvalError;
pub use explain::{explain, ExplainRequest};
pub use input::{AuthzInput, BodyInput, HttpAttributes, InputKind};
pub use log::DecisionRecord;
pub use testing::{run_tests, TestSummary};

/// The Rego value type used for inputs and raw decisions (re-exported from regorus).
pub use regorus::Value;
