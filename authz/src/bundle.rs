//! Policy bundles: the files, their compiled form and the options they run with.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use crate::calls;
use crate::decision::Decision;
use crate::engine::{self, EvalError};
use crate::files::{BundleError, PolicyFile};
use crate::fold;
use crate::input::AuthzInput;
use crate::opa_alignment;
use crate::opa_builtins;
use crate::rules;
use crate::rvm_gaps;
use crate::source::{self, TestFiles};
use crate::usage::{self, InputNeeds};

thread_local! {
    /// The thread's buffer for input keys (`AuthzInput::key_for`).
    static KEY: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with an empty buffer, the thread's when it has one, so a key costs no
/// allocation.
fn with_key_buffer<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    let mut key = KEY.try_with(std::cell::Cell::take).unwrap_or_default();
    key.clear();
    let result = f(&mut key);
    let _ = KEY.try_with(|k| k.set(key));
    result
}

/// How a bundle is evaluated and logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOptions {
    /// The rule whose value is the decision, e.g. `data.vigil.authz.allow`.
    pub rule: String,
    /// Log denials but let every request through (see [`PolicyBundle::enforce`]).
    pub dry_run: bool,
    /// Also write decision records for allowed requests.
    pub log_allows: bool,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            rule: "data.vigil.authz.allow".to_string(),
            dry_run: false,
            log_allows: false,
        }
    }
}

impl PolicyOptions {
    /// Whether a decision should be written to the decision log: denials and errors always,
    /// allows only with `log_allows`.
    pub fn should_log(&self, decision: &Decision) -> bool {
        !decision.allowed() || self.log_allows
    }
}

/// Which evaluator a bundle uses on the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// regorus's register VM running bytecode compiled once per bundle (the fast path).
    Rvm,
    /// regorus's tree interpreter: the RVM compiler does not support the policy (e.g. `with`
    /// outside tests), or the policy uses a construct the RVM evaluates differently from OPA
    /// (see the crate docs); `reason` says which, with `file:line:col`.
    Interpreter {
        /// Why the bundle does not run on the RVM.
        reason: String,
    },
}

impl Backend {
    /// `"rvm"` or `"interpreter"`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Rvm => "rvm",
            Backend::Interpreter { .. } => "interpreter",
        }
    }

    /// Why the bundle runs on the interpreter (`None` on the RVM).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Backend::Rvm => None,
            Backend::Interpreter { reason } => Some(reason),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self.reason() {
            Some(reason) => write!(f, " ({reason})"),
            None => Ok(()),
        }
    }
}

/// Which evaluator [`PolicyBundle::compile_with`] should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendPreference {
    /// The RVM, unless its compiler refuses the policy or the policy uses a construct the RVM
    /// evaluates differently from OPA: then the interpreter.
    #[default]
    Rvm,
    /// Always the tree interpreter.
    Interpreter,
}

static NEXT_BUNDLE_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled policy bundle: immutable, `Send + Sync`, cheap to share in an `Arc`.
///
/// Evaluation keeps one VM (or interpreter) per thread per bundle, so concurrent requests never
/// contend on a lock.
pub struct PolicyBundle {
    version: String,
    files: Vec<PolicyFile>,
    options: PolicyOptions,
    pub(crate) backend: Backend,
    /// Rules evaluated once at compile time (see `fold.rs`).
    folded: Vec<String>,
    /// Optional parts of the input the policy can observe (see `usage.rs`).
    needs: InputNeeds,
    /// What the engine evaluates: the program or interpreter, the data, the entry rule.
    pub(crate) compiled: engine::Compiled,
}

impl fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("version", &self.version)
            .field("rule", &self.options.rule)
            .field("backend", &self.backend.name())
            .field("files", &self.files.len())
            .finish()
    }
}

impl PolicyBundle {
    /// Reads *.rego (skipping *_test.rego), *.json and *.yaml/*.yml data files under `dir`
    /// (recursive, sorted paths). Data files merge into `data` at the path of their directory.
    pub fn read_dir(dir: &Path) -> Result<Vec<PolicyFile>, BundleError> {
        source::read_dir(dir, TestFiles::Skip)
    }

    /// Compiles a bundle. Parse and compile problems are reported as `file:line:col: message`;
    /// a decision rule that no module defines is refused with [`BundleError::MissingRule`].
    pub fn compile(
        files: Vec<PolicyFile>,
        options: PolicyOptions,
    ) -> Result<PolicyBundle, BundleError> {
        Self::compile_with(files, options, BackendPreference::Rvm)
    }

    /// Like [`compile`](Self::compile), choosing the evaluator. The RVM is ~3x faster; the
    /// interpreter is regorus's reference implementation, for policies that hit an RVM
    /// difference (see the crate docs).
    pub fn compile_with(
        mut files: Vec<PolicyFile>,
        options: PolicyOptions,
        preference: BackendPreference,
    ) -> Result<PolicyBundle, BundleError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let version = bundle_version(&files, &options);
        let mut parsed = source::load_engine(&files)?;
        let refused = calls::check(parsed.get_modules());
        if !refused.is_empty() {
            return Err(BundleError::from_problems(refused));
        }
        let repeatable = calls::repeatable(parsed.get_modules());
        let decision_module = decision_document(&mut parsed, &options.rule)?;
        let entry_rule = match &decision_module {
            Some(_) => DECISION_DOCUMENT_RULE.to_string(),
            None => options.rule.clone(),
        };
        let mut aligned = opa_alignment::align(parsed.get_modules(), &files);
        if let Some(module) = decision_module {
            aligned.interpreter.push(module.clone());
            aligned.vm.push(module);
        }
        let mut interpreter = source::load_engine(&aligned.interpreter)?;

        // Analysis (unsafe variables, unknown functions, ...) happens here.
        let rule: regorus::Rc<str> = entry_rule.as_str().into();
        interpreter
            .compile_with_entrypoint(&rule)
            .map_err(|e| compile_error(&e.to_string(), &options.rule))?;
        let data = interpreter.get_data();
        let rvm = match preference {
            BackendPreference::Interpreter => Err("the interpreter was requested".to_string()),
            BackendPreference::Rvm => rvm_program(&aligned.vm, &entry_rule),
        };
        let (backend, program, folded) = match rvm {
            Ok((program, folded)) => {
                // Validates rule/data conflicts once, here, rather than on a request thread.
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                vm.set_data(data.clone()).map_err(|e| BundleError::Data {
                    file: "<data>".into(),
                    message: e.to_string(),
                })?;
                (Backend::Rvm, Some(program), folded)
            }
            Err(reason) => {
                if preference == BackendPreference::Rvm {
                    tracing::warn!(
                        rule = %options.rule,
                        %reason,
                        "policy bundle runs on the slower tree interpreter"
                    );
                }
                (Backend::Interpreter { reason }, None, Vec::new())
            }
        };

        let needs = usage::input_needs(&files);
        Ok(PolicyBundle {
            version,
            files,
            options,
            backend,
            folded,
            needs,
            compiled: engine::Compiled {
                id: NEXT_BUNDLE_ID.fetch_add(1, Ordering::Relaxed),
                entry_rule,
                program,
                data,
                repeatable,
                interpreter,
            },
        })
    }

    /// `sha256:<first 16 hex digits>` over the sorted (path, contents) pairs and the options.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The bundle's files, sorted by path.
    pub fn files(&self) -> &[PolicyFile] {
        &self.files
    }

    /// The options the bundle was compiled with.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    /// Whether each thread remembers recent decisions of this bundle: its decisions depend
    /// on the input document alone (it calls no clock and does not `print`).
    pub fn remembers_decisions(&self) -> bool {
        self.compiled.repeatable
    }

    /// The evaluator used on the request path.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Rules that do not depend on the request and were evaluated once, when the bundle was
    /// compiled (e.g. `vigil.authz.route_index`); the VM runs them as constants.
    pub fn folded_rules(&self) -> &[String] {
        &self.folded
    }

    /// Evaluates the decision rule for one request or connection. Never panics: a request
    /// that cannot be parsed as OPA-Envoy would ([`InputError`](crate::InputError)),
    /// evaluation errors and undefined or malformed decisions become [`Decision::Error`].
    pub fn evaluate(&self, input: &AuthzInput<'_>) -> Decision {
        let build = || {
            input
                .document_for(self.needs)
                .map_err(|e| EvalError(e.to_string()))
        };
        let value = if self.compiled.repeatable {
            // The document is built only when no decision is remembered for its key.
            with_key_buffer(|key| {
                input.key_for(self.needs, key);
                engine::eval_keyed(&self.compiled, key, build)
            })
        } else {
            build().and_then(|document| engine::eval(&self.compiled, document))
        };
        match value {
            Ok(value) => Decision::from_value(&value, &self.options.rule),
            Err(e) => Decision::Error {
                reason: e.to_string(),
            },
        }
    }

    /// Like [`evaluate`](Self::evaluate) for an input document that is already built.
    pub fn evaluate_value(&self, input: Value) -> Decision {
        match self.eval_raw(input) {
            Ok(value) => Decision::from_value(&value, &self.options.rule),
            Err(e) => Decision::Error {
                reason: e.to_string(),
            },
        }
    }

    /// The raw value of the decision rule (`Value::Undefined` when undefined).
    pub fn eval_raw(&self, input: Value) -> Result<Value, EvalError> {
        engine::eval(&self.compiled, input)
    }

    /// The raw value computed by the tree interpreter, regardless of the backend; used to
    /// cross-check the VM and by `explain`.
    pub fn eval_raw_interpreted(&self, input: Value) -> Result<Value, EvalError> {
        engine::eval_interpreted(&self.compiled, input)
    }

    /// Applies dry-run: when `dry_run` is set, a deny or error becomes an allow (the caller
    /// logs the original decision). Otherwise the decision is returned unchanged.
    pub fn enforce(&self, decision: Decision) -> Decision {
        if self.options.dry_run && !decision.allowed() {
            Decision::allow()
        } else {
            decision
        }
    }

    /// Whether a decision should be written to the decision log, per the options.
    pub fn should_log(&self, decision: &Decision) -> bool {
        self.options.should_log(decision)
    }
}

/// The bundle as RVM bytecode, with the rules that could be folded into constants (see
/// `fold.rs`); or why it must run on the interpreter (the RVM compiler refuses it, or it uses a
/// construct the RVM gets wrong: see `rvm_gaps.rs`).
fn rvm_program(files: &[PolicyFile], rule: &str) -> Result<(Arc<Program>, Vec<String>), String> {
    let mut engine = source::load_engine(files).map_err(|e| e.to_string())?;
    if let Some(folding) = fold::fold(files, &mut engine, rule) {
        if let Ok(program) = rvm_compile(&folding.files, rule) {
            return Ok((program, folding.rules));
        }
    }
    rvm_compile(files, rule).map(|program| (program, Vec::new()))
}

fn rvm_compile(files: &[PolicyFile], rule: &str) -> Result<Arc<Program>, String> {
    let mut engine = source::load_engine(files).map_err(|e| e.to_string())?;
    let files = rvm_gaps::prepare(engine.get_modules(), files)?;
    let mut engine = source::load_engine(&files).map_err(|e| e.to_string())?;
    if !source::rule_is_declared(&engine, rule) {
        return Err(format!("{rule} is not declared"));
    }
    let compiled = engine
        .compile_with_entrypoint(&rule.into())
        .map_err(|e| source::condense_error(&e.to_string()))?;
    // Vigil's own builtins (`opa_builtins.rs`) are compiled as calls the VM hands back to
    // Vigil (see `engine.rs`), under the builtin's own name.
    let host: Vec<(&str, usize)> = opa_builtins::vigil_builtins()
        .map(|(name, nargs)| (name, usize::from(nargs)))
        .collect();
    Compiler::compile_from_policy_with_host_await(&compiled, &[rule], &host)
        .map_err(|e| source::condense_error(&e.to_string()))
}

fn compile_error(text: &str, rule: &str) -> BundleError {
    let mut problem = source::problem_from_error(text, "<bundle>");
    if problem.line == 0 {
        problem.message = format!("decision rule {rule}: {}", problem.message);
    }
    BundleError::from_problems(vec![problem])
}

/// Where the synthesized decision module puts the decision document.
const DECISION_DOCUMENT_RULE: &str = "data.vigil_decision_document.decision";

/// `None` when the decision rule is a rule; when it is instead the document made of rules
/// under its path (OPA-Envoy's `result["allowed"] := allow`, `result["headers"] := ...`), a
/// module with one rule whose value is that document, for the engines to evaluate (they
/// evaluate rules, not documents). A path with neither is refused.
fn decision_document(parsed: &mut Engine, rule: &str) -> Result<Option<PolicyFile>, BundleError> {
    let missing = || BundleError::MissingRule(rule.to_string());
    let components = source::rule_components(rule).ok_or_else(missing)?;
    let mut under = false;
    for module in rules::outline(parsed) {
        let package: Vec<&str> = module.package.split('.').collect();
        if components.len() <= package.len() || components[..package.len()] != package[..] {
            continue;
        }
        let name = components[package.len()..].join(".");
        for r in &module.rules {
            if r.name == name {
                return Ok(None);
            }
            under |= r.name.starts_with(&format!("{name}."));
        }
    }
    if !under {
        return Err(missing());
    }
    Ok(Some(PolicyFile {
        path: "<vigil decision document>.rego".to_string(),
        contents: format!("package vigil_decision_document\n\ndecision := {rule}\n"),
    }))
}

/// Where the control plane puts the facts of the workload a bundle was sent to
/// (`data.vigil.mesh.workload`). The bundle's version leaves this file out, so every proxy
/// running a policy reports the policy's version, not that of its own copy.
pub const WORKLOAD_DATA_PATH: &str = "vigil/mesh/workload/data.json";

/// Where each proxy puts the services discovery gave it (`data.vigil.mesh.services`), which
/// the bundle's version leaves out for the same reason.
pub const SERVICES_DATA_PATH: &str = "vigil/mesh/services/data.json";

fn bundle_version(files: &[PolicyFile], options: &PolicyOptions) -> String {
    let mut hasher = Sha256::new();
    for file in files
        .iter()
        .filter(|f| f.path != WORKLOAD_DATA_PATH && f.path != SERVICES_DATA_PATH)
    {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        hasher.update((file.path.len() as u64).to_le_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update((file.contents.len() as u64).to_le_bytes());
        hasher.update(file.contents.as_bytes());
    }
    hasher.update((options.rule.len() as u64).to_le_bytes());
    hasher.update(options.rule.as_bytes());
    hasher.update([u8::from(options.dry_run), u8::from(options.log_allows)]);
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

// The proxy holds bundles in an ArcSwap shared by all worker threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyBundle>();
};
