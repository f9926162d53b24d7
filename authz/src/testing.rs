//! `vigil policy test`: runs the `test_*` rules of a policy directory, like `opa test`.
//!
//! Tests run on the tree interpreter, because they rely on `with input as ...` and
//! `with data.x as ...`, which the RVM compiler does not support.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regorus::Value;

use crate::bundle::{BundleError, PolicyBundle, PolicyFile, PolicyOptions};
use crate::calls;
use crate::opa_alignment;
use crate::rules::{self, DefinitionKind};
use crate::source::{self, condense_error, FileKind, TestFiles};

/// Decision rules the runner reports the engine for, in order: Vigil's default, then
/// OPA-Envoy's default and its documented `result` form. (The proxy's rule comes from the
/// mesh file, which the runner does not read.)
const DECISION_RULES: &[&str] = &[
    "data.vigil.authz.allow",
    "data.envoy.authz.allow",
    "data.envoy.authz.result",
];

/// Counts of test outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSummary {
    /// Tests whose rule was true (defined and not false).
    pub passed: usize,
    /// Tests whose rule was false or undefined.
    pub failed: usize,
    /// Tests whose evaluation raised an error.
    pub errored: usize,
}

impl TestSummary {
    /// Number of tests run.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.errored
    }

    /// Whether at least one test ran and none failed or errored.
    pub fn success(&self) -> bool {
        self.total() > 0 && self.failed == 0 && self.errored == 0
    }
}

/// Runs every `test_*` rule under `dir` and prints one line per test, then `PASS: n/total`
/// (and `FAIL: k/total`, `ERROR: k/total` when some did not pass), like `opa test`.
///
/// All `.rego` files are loaded, including `*_test.rego`, plus data files. When `dir` has no
/// `.rego` file of its own, each subdirectory holding policies is run as its own bundle (so
/// `vigil policy test policies/` tests every shipped policy, each with its own data), with a
/// header line per bundle. `verbose` also prints the output of `print()` for passing tests.
/// A bundle that does not compile, or that the proxy would refuse (it calls a function Vigil
/// does not evaluate like OPA), is an error. For each bundle, a line says which engine the
/// proxy would run it on (`engine: rvm`, or `engine: interpreter` and why) for the first
/// declared decision rule among `data.vigil.authz.allow`, `data.envoy.authz.allow` and
/// `data.envoy.authz.result`.
pub fn run_tests(
    dir: &Path,
    out: &mut dyn Write,
    verbose: bool,
) -> Result<TestSummary, BundleError> {
    let roots = bundle_roots(dir)?;
    let mut summary = TestSummary::default();
    for root in &roots {
        if roots.len() > 1 || root != dir {
            w(out, format_args!("{}:\n", root.display()))?;
        }
        run_bundle(root, out, verbose, &mut summary)?;
    }
    if summary.total() == 0 {
        w(out, format_args!("no tests found\n"))?;
        return Ok(summary);
    }
    let total = summary.total();
    w(out, format_args!("{}\n", "-".repeat(80)))?;
    if summary.passed > 0 {
        w(out, format_args!("PASS: {}/{total}\n", summary.passed))?;
    }
    if summary.failed > 0 {
        w(out, format_args!("FAIL: {}/{total}\n", summary.failed))?;
    }
    if summary.errored > 0 {
        w(out, format_args!("ERROR: {}/{total}\n", summary.errored))?;
    }
    Ok(summary)
}

fn run_bundle(
    root: &Path,
    out: &mut dyn Write,
    verbose: bool,
    summary: &mut TestSummary,
) -> Result<(), BundleError> {
    let files = source::read_dir(root, TestFiles::Include)?;
    let mut parsed = source::load_engine(&files)?;
    let refused = calls::check(parsed.get_modules());
    if !refused.is_empty() {
        return Err(BundleError::from_problems(refused));
    }
    report_engine(&files, out)?;
    // Tests run on the interpreter as the proxy would run the bundle there (see
    // `opa_alignment.rs`).
    let aligned = opa_alignment::align(parsed.get_modules(), &files);
    let mut engine = source::load_engine(&aligned.interpreter)?;
    engine.set_gather_prints(true);
    // Analyze once up front, so compile errors are reported as such and the first test's time
    // does not include the analysis.
    engine.eval_query("true".to_string(), false).map_err(|e| {
        BundleError::from_problems(vec![source::problem_from_error(&format!("{e:#}"), "")])
    })?;
    let _ = engine.take_prints();

    let mut seen = BTreeSet::new();
    let mut tests = Vec::new();
    for module in rules::outline(&mut engine) {
        for rule in &module.rules {
            let is_test = rule.name.starts_with("test_")
                && matches!(
                    rule.kind,
                    DefinitionKind::Complete | DefinitionKind::Default
                );
            let path = format!("data.{}.{}", module.package, rule.name);
            if is_test && seen.insert(path.clone()) {
                tests.push(path);
            }
        }
    }

    for test in tests {
        let start = Instant::now();
        let result = engine.eval_rule(test.clone());
        let took = format_duration(start.elapsed());
        let prints = engine.take_prints().unwrap_or_default();
        let show_prints = match result {
            // OPA semantics: a test passes when its rule is defined and not false.
            Ok(Value::Bool(false)) | Ok(Value::Undefined) => {
                summary.failed += 1;
                w(out, format_args!("FAIL {test} ({took})\n"))?;
                true
            }
            Ok(_) => {
                summary.passed += 1;
                w(out, format_args!("PASS {test} ({took})\n"))?;
                verbose
            }
            Err(e) => {
                summary.errored += 1;
                let message = condense_error(&format!("{e:#}"));
                w(out, format_args!("ERROR {test} ({took})\n  {message}\n"))?;
                true
            }
        };
        if show_prints {
            for line in prints {
                w(out, format_args!("  {line}\n"))?;
            }
        }
    }
    Ok(())
}

/// Prints which engine the bundle (without its tests) would run on in the proxy.
fn report_engine(files: &[PolicyFile], out: &mut dyn Write) -> Result<(), BundleError> {
    let bundle_files: Vec<PolicyFile> = files
        .iter()
        .filter(|f| FileKind::of(&f.path) != FileKind::RegoTest)
        .cloned()
        .collect();
    for rule in DECISION_RULES {
        let options = PolicyOptions {
            rule: rule.to_string(),
            ..PolicyOptions::default()
        };
        match PolicyBundle::compile(bundle_files.clone(), options) {
            Ok(bundle) => {
                let backend = bundle.backend();
                let why = backend
                    .reason()
                    .map(|r| format!(", because {r}"))
                    .unwrap_or_default();
                return w(
                    out,
                    format_args!("engine: {} (decision rule {rule}){why}\n", backend.name()),
                );
            }
            Err(BundleError::MissingRule(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    w(
        out,
        format_args!(
            "engine: not reported (none of {} is declared; the proxy's decision rule is set \
             in the mesh file)\n",
            DECISION_RULES.join(", ")
        ),
    )
}

/// `dir` itself when it holds `.rego` files, else each subdirectory that holds some.
fn bundle_roots(dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let mut subdirs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| BundleError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| BundleError::io(dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            subdirs.push(path);
        } else if matches!(FileKind::of(&name), FileKind::Rego | FileKind::RegoTest) {
            return Ok(vec![dir.to_path_buf()]);
        }
    }
    subdirs.sort();
    let roots: Vec<PathBuf> = subdirs.into_iter().filter(|d| has_rego(d)).collect();
    if roots.is_empty() {
        return Ok(vec![dir.to_path_buf()]);
    }
    Ok(roots)
}

fn has_rego(dir: &Path) -> bool {
    source::read_dir(dir, TestFiles::Include)
        .map(|files| {
            files
                .iter()
                .any(|f| matches!(FileKind::of(&f.path), FileKind::Rego | FileKind::RegoTest))
        })
        .unwrap_or(false)
}

pub(crate) fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

pub(crate) fn w(out: &mut dyn Write, args: std::fmt::Arguments<'_>) -> Result<(), BundleError> {
    out.write_fmt(args).map_err(BundleError::output)
}
