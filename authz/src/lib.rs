//! In-process Rego authorization for Vigil.
//!
//! Security teams write Rego; Vigil evaluates it on every inbound request and TCP connection
//! inside the sidecar, with no extra network hop. The input document is the one the OPA-Envoy
//! plugin builds for Envoy's `ext_authz` v3 API, so policies written for OPA-Envoy run unchanged.
//!
//! A [`PolicyBundle`] is compiled once and then shared across threads in an `Arc`;
//! [`PolicyBundle::evaluate`] turns an [`AuthzInput`] into a [`Decision`].
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
//! # Decisions equal OPA's, or the bundle is refused
//!
//! Vigil runs Rego on regorus, not on OPA, so every way regorus could decide differently is
//! closed, routed around, or refused when the bundle is compiled ([`PolicyBundle::compile`],
//! which the control plane, the proxy and `vigil policy test|eval|explain` all use). The
//! differential suite (`authz/tests/opa_oracle.rs`) checks this against OPA itself: every
//! shipped policy and a corpus of OPA-Envoy policies, on hand-written and generated requests,
//! on both engines, plus each accepted builtin on edge-case arguments.
//!
//! - **Functions.** A call must name a function the bundle defines or a builtin in
//!   [`SUPPORTED_BUILTINS`] (those the suite found to agree with OPA). Anything else is refused,
//!   naming the function and `file:line:col`: OPA builtins regorus lacks (`io.jwt.*`,
//!   `crypto.*`, `net.cidr_merge`, ...), regorus builtins that differ from OPA (`json.marshal`,
//!   `time.format`, `time.parse_ns`, `regex.split`, ... each with the difference found), and
//!   `http.send`, which the sidecar does not support.
//! - **Builtins Vigil evaluates itself** (`opa_builtins.rs`): `sprintf`, `upper`, `lower`,
//!   `to_number`, `net.cidr_contains`, `format_int`, `ceil`, `indexof`, `strings.count`,
//!   `urlquery.*`, `time.parse_rfc3339_ns`, `time.parse_duration_ns`, `time.add_date`,
//!   `semver.is_valid`, `regex.split`, `regex.template_match`, `numbers.range_step`,
//!   `glob.quote_meta`, `json.filter`, and `indexof_n`, `substring`, `array.slice`,
//!   `base64.decode`, `base64.is_valid`, `semver.compare`, `net.cidr_expand`, `floor` and
//!   `strings.replace_n` (found to differ on edge cases after they were accepted), where regorus's own differ from OPA's, are replaced by Vigil's versions of
//!   OPA's Go code (Go's `fmt`, Unicode tables, `strconv.ParseFloat`, `net`, `net/url`,
//!   `regexp` and `time` rules). `sprintf` is accepted with a format string written in the
//!   policy using only `%s`, `%v`, `%d`, `%q` and `%%`, and not in a bundle that also calls
//!   `to_number` or writes a number like `1e3` (OPA prints those numbers as written, Vigil as
//!   their value). Numbers of magnitude 2^53 and more may still print differently (the 64-bit
//!   float difference below). The tree interpreter calls them in place of regorus's; the RVM
//!   compiles them as calls it hands back to Vigil (regorus's host-await calls, run in its
//!   suspendable mode).
//! - **Source rewrites** (`opa_alignment.rs`) make both engines evaluate three constructs as
//!   OPA does: under `not`, the operands of a call are evaluated first (`not startswith(input.x,
//!   "a")` fails when `input.x` is undefined), `some x in <not a collection>` iterates nothing
//!   instead of failing the evaluation (interpreter), and the patterns of the `regex.*`
//!   builtins get Go's ASCII-only `\d`, `\w`, `\s` and `\b` (regorus reads them as Unicode
//!   classes, so `\d` would match `٣`) and, when written in the policy, Go's literal braces.
//! - **Engine choice.** [`PolicyBundle::compile`] compiles the decision rule to regorus's
//!   register VM (RVM) bytecode, the fast path, unless the RVM compiler refuses it (e.g. `with`
//!   outside tests) or the bundle uses a construct the RVM gets wrong (`rvm_gaps.rs`): an
//!   `every` body indexing a reference with a variable bound outside it, or a rule or function
//!   whose definitions could produce two different values for one request (OPA's conflict
//!   error, which the RVM turns into an undefined value). Those bundles run on regorus's tree
//!   interpreter ([`Backend::Interpreter`], with the reason and `file:line`, shown by
//!   `vigil policy test|eval` and the proxy's `/config`). The RVM's other known gap, a body
//!   going on after `x := <undefined>` (so an `else` is not taken), is closed for it by reading
//!   body `:=` as `=`.
//! - **Known differences in the language itself**, not refused: numbers are 64-bit floats
//!   (`0.1 + 0.2 == 0.3` is false, true in OPA), and a set orders before an object where OPA
//!   orders objects first (visible only in a collection mixing both).
//!
//! # The OPA-Envoy interface
//!
//! The input document is OPA-Envoy's, including `version`, and a request OPA-Envoy could not
//! parse (a bad %-escape, a `;` query separator, a JSON body that does not parse) is a
//! [`Decision::Error`], which the proxy turns into a fail-closed refusal ([`InputError`]). The
//! decision is a boolean or OPA-Envoy's object, also in its documented `result` form
//! (`result["allowed"] := allow` with the decision rule `data.envoy.authz.result`): `headers`
//! and `response_headers_to_add` (an object or an array of objects),
//! `request_headers_to_remove`, `query_parameters_to_remove`, `query_parameters_to_set` (an
//! object or an array of `{key, value}`), `dynamic_metadata`, and for denials `http_status`
//! and `body`. [`upstream_path_and_query`] applies the query changes to the request target.
//!
//! # Evaluation
//!
//! The bundle is compiled once. Rules that cannot depend on the request (an index built from
//! `data`, a set of public paths) are evaluated at that point too and run as constants
//! ([`PolicyBundle::folded_rules`]). Each thread keeps its own VM per bundle (created on first
//! use), so evaluation takes no lock. The input document is built directly as a regorus
//! [`Value`], without the parts no module of the bundle can read (request headers, socket
//! addresses, `parsed_query`: a policy that never names them or takes one of their parents as
//! a whole gets them empty). The test runner and `explain` use the interpreter.
//!
//! Decision log records ([`DecisionRecord`]) redact query values unless told to keep them
//! ([`QueryLogging`]) and carry the decision's `dynamic_metadata`.
#![forbid(unsafe_code)]

mod bundle;
mod calls;
mod cidr_merge;
mod cli;
mod decision;
mod digests;
mod engine;
mod explain;
mod files;
mod fold;
mod go_net;
mod go_unicode;
mod go_url;
mod input;
mod istio_import;
mod log;
mod opa_alignment;
mod opa_builtins;
mod outcome;
mod replay;
mod rules;
mod rvm_gaps;
mod source;
mod syntax;
mod testing;
mod token_keys;
mod tokens;
mod upstream;
mod usage;

pub use bundle::{
    Backend, BackendPreference, PolicyBundle, PolicyOptions, SERVICES_DATA_PATH, WORKLOAD_DATA_PATH,
};
pub use calls::SUPPORTED_BUILTINS;
pub use cli::eval_command;
pub use decision::{rule_named_by, Decision, DynamicMetadata};
pub use engine::EvalError;
pub use explain::{explain, explain_input, ExplainRequest};
pub use files::{BundleError, CompileProblem, PolicyFile};
pub use input::{AuthzInput, BodyInput, HttpAttributes, InputError, InputKind};
pub use istio_import::{
    import_istio, IstioImport, IstioImportError, IstioImportOptions, Untranslated,
};
pub use log::{CandidateDecision, DecisionRecord, InputRecording, QueryLogging};
pub use replay::{replay, ChangeGroup, RecordedLog, ReplayExample, ReplaySummary};
pub use testing::{run_tests, run_tests_with, TestFilter, TestFormat, TestOptions, TestSummary};
pub use upstream::upstream_path_and_query;

/// The Rego value type used for inputs and raw decisions (re-exported from regorus).
pub use regorus::Value;

/// Registers Vigil's versions of builtins on a bare regorus engine, failing where OPA's fail
/// when `strict` (as regorus's builtins do in strict mode). For the differential suite, which
/// checks that Vigil fails where OPA does; bundles get them through [`PolicyBundle::compile`].
#[doc(hidden)]
pub fn register_vigil_builtins(engine: &mut regorus::Engine, strict: bool) {
    opa_builtins::register(engine, strict);
}
