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
//!
//! # Evaluation
//!
//! [`PolicyBundle::compile`] parses and analyzes the modules and compiles the decision rule to
//! regorus's register VM (RVM) bytecode, once per bundle. Rules that cannot depend on the
//! request (an index built from `data`, a set of public paths) are evaluated at that point too
//! and run as constants ([`PolicyBundle::folded_rules`]). Each thread keeps its own VM per
//! bundle (created on first use), so evaluation takes no lock. The input document is built
//! directly as a regorus [`Value`], without the parts no module of the bundle can read (request
//! headers, socket addresses, `parsed_query`: a policy that never names them or takes one of
//! their parents as a whole gets them empty). Policies the RVM compiler refuses (e.g. `with` outside
//! tests) run on regorus's tree interpreter instead ([`Backend::Interpreter`]), which is also
//! what the test runner and `explain` use.
//!
//! regorus 0.14's RVM differs from OPA in two corner cases: an `else` is not taken when a body
//! fails on an assignment from an undefined value (only when a condition fails), and an array
//! literal holding an undefined value is defined. The shipped policies avoid both and the tests
//! cross-check the VM against the interpreter; [`BackendPreference::Interpreter`] forces the
//! interpreter for a policy that trips on them.
#![forbid(unsafe_code)]

mod bundle;
mod calls;
mod cli;
mod decision;
mod engine;
mod explain;
mod fold;
mod input;
mod log;
mod opa_alignment;
mod rules;
mod rvm_gaps;
mod source;
mod syntax;
mod testing;
mod upstream;
mod usage;

pub use bundle::{
    Backend, BackendPreference, BundleError, CompileProblem, PolicyBundle, PolicyFile,
    PolicyOptions,
};
pub use calls::SUPPORTED_BUILTINS;
pub use cli::eval_command;
pub use decision::{Decision, DynamicMetadata};
pub use engine::EvalError;
pub use explain::{explain, ExplainRequest};
pub use input::{AuthzInput, BodyInput, HttpAttributes, InputError, InputKind};
pub use log::{DecisionRecord, QueryLogging};
pub use testing::{run_tests, TestSummary};
pub use upstream::upstream_path_and_query;

/// The Rego value type used for inputs and raw decisions (re-exported from regorus).
pub use regorus::Value;
