//! `vigil policy test`: runs the `test_*` rules of a policy directory, like `opa test`.
//!
//! Tests run on the tree interpreter, because they rely on `with input as ...` and
//! `with data.x as ...`, which the RVM compiler does not support. As with `opa test`,
//! `todo_test_*` rules are reported as skipped, `--run` selects tests by a regular expression
//! over their full name, `--format json` prints OPA's JSON result array, and a failing test
//! names the first expression of its body that did not hold (found as `vigil policy explain`
//! finds it, by evaluating prefixes of the body). `--coverage` reports the lines of the
//! policies and tests the selected tests evaluated, as `opa test --coverage` does
//! (`testing/coverage.rs`); being measured on the interpreter, it is the interpreter's
//! evaluation even for a bundle the proxy runs on the RVM.

mod coverage;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use regorus::Value;
use serde_json::json;

use crate::bundle::{PolicyBundle, PolicyOptions};
use crate::calls;
use crate::cli::w;
use crate::explain::first_failing;
use crate::files::{BundleError, PolicyFile};
use crate::opa_alignment;
use crate::rules::{self, DefinitionKind, ModuleOutline, RuleOutline};
use crate::source::{self, condense_error, FileKind, TestFiles};

use coverage::CoverageReport;

/// Decision rules the runner reports the engine for, in order: Vigil's default, then
/// OPA-Envoy's default and its documented `result` form. (The proxy's rule comes from the
/// mesh file, which the runner does not read.)
const DECISION_RULES: &[&str] = &[
    "data.vigil.authz.allow",
    "data.envoy.authz.allow",
    "data.envoy.authz.result",
];

/// Counts of test outcomes, and the coverage when it was asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TestSummary {
    /// Tests whose rule was true (defined and not false).
    pub passed: usize,
    /// Tests whose rule was false or undefined.
    pub failed: usize,
    /// Tests whose evaluation raised an error.
    pub errored: usize,
    /// `todo_test_*` rules, reported but not run.
    pub skipped: usize,
    /// With `--coverage`: the percentage of counted lines the tests evaluated.
    pub coverage: Option<f64>,
    /// With `--threshold`: whether `coverage` fell below it.
    pub below_threshold: bool,
}

impl TestSummary {
    /// Number of tests reported (skipped ones included, as `opa test` counts them).
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.errored + self.skipped
    }

    /// Whether at least one test ran, none failed or errored, and coverage, if it was
    /// measured against a threshold, reached it.
    pub fn success(&self) -> bool {
        self.passed > 0 && self.failed == 0 && self.errored == 0 && !self.below_threshold
    }
}

/// How `vigil policy test` reports its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestFormat {
    /// One line per test and a summary, as `opa test` prints them.
    #[default]
    Pretty,
    /// The JSON array of results `opa test --format json` prints.
    Json,
}

/// The regular expression `--run` selects tests with (Rust's `regex` syntax, close to Go's
/// RE2 that `opa test` uses).
pub type TestFilter = regex::Regex;

/// What `vigil policy test` runs and how it reports.
#[derive(Clone, Debug, Default)]
pub struct TestOptions {
    /// Also print the output of `print()` for passing tests.
    pub verbose: bool,
    /// Run only the tests whose full name (`data.pkg.test_x`) matches.
    pub run: Option<TestFilter>,
    pub format: TestFormat,
    /// Measure which lines the tests evaluated (`opa test --coverage`). With
    /// [`TestFormat::Json`], OPA's coverage report replaces the result array.
    pub coverage: bool,
    /// With `coverage`: the total percentage below which the run fails (`opa test
    /// --threshold`).
    pub threshold: Option<f64>,
}

/// The prefix of tests `opa test` reports as skipped.
const SKIP_PREFIX: &str = "todo_test_";

/// One test, as `--format json` reports it (OPA's `tester.Result`).
struct TestRecord {
    package: String,
    name: String,
    file: String,
    line: u32,
    outcome: Outcome,
    duration: Duration,
    prints: Vec<String>,
}

enum Outcome {
    Pass,
    Fail { failed_at: Option<(u32, String)> },
    Error(String),
    Skip,
}

impl TestRecord {
    fn to_json(&self) -> serde_json::Value {
        let mut record = json!({
            "location": {"file": self.file, "row": self.line, "col": 1},
            "package": self.package,
            "name": self.name,
            "duration": u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX),
        });
        match &self.outcome {
            Outcome::Pass => {}
            Outcome::Fail { failed_at } => {
                record["fail"] = json!(true);
                if let Some((line, text)) = failed_at {
                    record["failed_at"] = json!({
                        "location": {"file": self.file, "row": line},
                        "text": text,
                    });
                }
            }
            Outcome::Error(message) => record["error"] = json!({"message": message}),
            Outcome::Skip => record["skip"] = json!(true),
        }
        if !self.prints.is_empty() {
            // OPA's `output` is bytes, which Go's JSON writes as base64.
            let text: String = self.prints.iter().map(|p| format!("{p}\n")).collect();
            record["output"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
        record
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
    let options = TestOptions {
        verbose,
        ..TestOptions::default()
    };
    run_tests_with(dir, out, &options)
}

/// [`run_tests`] with `opa test`'s options: `--run`, `--format`, `--coverage` and
/// `--threshold`.
///
/// Coverage is accumulated over every test that ran in every bundle, and reported per file
/// with paths relative to `dir`. In JSON it is OPA's `cover.Report`; in the pretty format a
/// table follows the summary, one line per file with the lines not covered. As with
/// `opa test --coverage`, a JSON run with a failing test prints the failures instead of the
/// report.
pub fn run_tests_with(
    dir: &Path,
    out: &mut dyn Write,
    options: &TestOptions,
) -> Result<TestSummary, BundleError> {
    let pretty = options.format == TestFormat::Pretty;
    let roots = bundle_roots(dir)?;
    let mut summary = TestSummary::default();
    let mut records = Vec::new();
    let mut report = options.coverage.then(CoverageReport::default);
    for root in &roots {
        if pretty && (roots.len() > 1 || root != dir) {
            w(out, format_args!("{}:\n", root.display()))?;
        }
        let lines = run_bundle(root, out, options, &mut summary, &mut records)?;
        if let (Some(report), Some(lines)) = (report.as_mut(), lines) {
            let prefix = root.strip_prefix(dir).unwrap_or(root);
            report.add_bundle(&prefix.to_string_lossy().replace('\\', "/"), lines);
        }
    }
    if let Some(report) = &report {
        let percent = report.percent();
        summary.coverage = Some(percent);
        summary.below_threshold = options.threshold.is_some_and(|t| percent < t);
    }
    if let (Some(report), false) = (&report, pretty) {
        if summary.failed + summary.errored > 0 {
            return write_failures(&records, &summary, out).map(|()| summary);
        }
        w(out, format_args!("{}\n", report.to_json()))?;
        return Ok(summary);
    }
    if !pretty {
        let results: Vec<serde_json::Value> = records.iter().map(TestRecord::to_json).collect();
        let text = serde_json::to_string_pretty(&results).unwrap_or_else(|_| "[]".into());
        w(out, format_args!("{text}\n"))?;
        return Ok(summary);
    }
    if summary.total() == 0 {
        w(out, format_args!("no tests found\n"))?;
        return Ok(summary);
    }
    let total = summary.total();
    w(out, format_args!("{}\n", "-".repeat(80)))?;
    for (label, count) in [
        ("PASS", summary.passed),
        ("FAIL", summary.failed),
        ("SKIPPED", summary.skipped),
        ("ERROR", summary.errored),
    ] {
        if count > 0 {
            w(out, format_args!("{label}: {count}/{total}\n"))?;
        }
    }
    if let Some(report) = &report {
        w(out, format_args!("{}\n", "-".repeat(80)))?;
        report.write_table(out)?;
        if let (true, Some(threshold)) = (summary.below_threshold, options.threshold) {
            w(
                out,
                format_args!(
                    "FAIL: coverage {:.2}% is below the threshold of {threshold:.2}%\n",
                    report.percent()
                ),
            )?;
        }
    }
    Ok(summary)
}

/// The failing and erroring tests and the counts, in the pretty format: what a JSON coverage
/// run prints instead of its report when a test did not pass (as `opa test --coverage` does).
fn write_failures(
    records: &[TestRecord],
    summary: &TestSummary,
    out: &mut dyn Write,
) -> Result<(), BundleError> {
    for record in records {
        let test = format!("{}.{}", record.package, record.name);
        match &record.outcome {
            Outcome::Fail { failed_at } => {
                w(out, format_args!("FAIL {test}\n"))?;
                if let Some((line, text)) = failed_at {
                    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    w(
                        out,
                        format_args!("  failed at {}:{line}: {text}\n", record.file),
                    )?;
                }
            }
            Outcome::Error(message) => w(out, format_args!("ERROR {test}\n  {message}\n"))?,
            Outcome::Pass | Outcome::Skip => {}
        }
    }
    let total = summary.total();
    w(out, format_args!("{}\n", "-".repeat(80)))?;
    for (label, count) in [("FAIL", summary.failed), ("ERROR", summary.errored)] {
        if count > 0 {
            w(out, format_args!("{label}: {count}/{total}\n"))?;
        }
    }
    Ok(())
}

/// Runs one bundle's tests; with `options.coverage`, returns the coverage of its files.
fn run_bundle(
    root: &Path,
    out: &mut dyn Write,
    options: &TestOptions,
    summary: &mut TestSummary,
    records: &mut Vec<TestRecord>,
) -> Result<Option<BTreeMap<String, coverage::FileLines>>, BundleError> {
    let pretty = options.format == TestFormat::Pretty;
    let files = source::read_dir(root, TestFiles::Include)?;
    let mut parsed = source::load_engine(&files)?;
    let refused = calls::check(parsed.get_modules());
    if !refused.is_empty() {
        return Err(BundleError::from_problems(refused));
    }
    if pretty {
        report_engine(&files, out)?;
    }
    // Tests run on the interpreter as the proxy would run the bundle there (see
    // `opa_alignment.rs`).
    let aligned = opa_alignment::align(parsed.get_modules(), &files);
    let mut engine = source::load_engine(&aligned.interpreter)?;
    if options.coverage {
        let files = coverage::explicit_head_values(engine.get_modules(), &aligned.interpreter);
        engine = source::load_engine(&files)?;
    }
    engine.set_gather_prints(true);
    // Analyze once up front, so compile errors are reported as such and the first test's time
    // does not include the analysis.
    engine.eval_query("true".to_string(), false).map_err(|e| {
        BundleError::from_problems(vec![source::problem_from_error(&format!("{e:#}"), "")])
    })?;
    let _ = engine.take_prints();

    let mut seen = BTreeSet::new();
    let outline = rules::outline(&mut engine);
    let mut tests: Vec<(&ModuleOutline, &RuleOutline)> = Vec::new();
    for module in &outline {
        for rule in &module.rules {
            let is_test = (rule.name.starts_with("test_") || rule.name.starts_with(SKIP_PREFIX))
                && matches!(
                    rule.kind,
                    DefinitionKind::Complete | DefinitionKind::Default
                );
            let path = format!("data.{}.{}", module.package, rule.name);
            let selected = options.run.as_ref().is_none_or(|r| r.is_match(&path));
            if is_test && selected && seen.insert(path) {
                tests.push((module, rule));
            }
        }
    }

    // Enabled only now, so that the analysis above counts for nothing; from here on, every test
    // adds the lines it evaluates.
    engine.set_enable_coverage(options.coverage);
    for (module, rule) in tests {
        let test = format!("data.{}.{}", module.package, rule.name);
        let mut record = TestRecord {
            package: format!("data.{}", module.package),
            name: rule.name.clone(),
            file: module.file.clone(),
            line: rule.line,
            outcome: Outcome::Skip,
            duration: Duration::ZERO,
            prints: Vec::new(),
        };
        if rule.name.starts_with(SKIP_PREFIX) {
            summary.skipped += 1;
            if pretty {
                w(out, format_args!("SKIPPED {test}\n"))?;
            }
            records.push(record);
            continue;
        }
        let start = Instant::now();
        let result = engine.eval_rule(test.clone());
        record.duration = start.elapsed();
        let took = format_duration(record.duration);
        record.prints = engine.take_prints().unwrap_or_default();
        let show_prints = match result {
            // OPA semantics: a test passes when its rule is defined and not false.
            Ok(Value::Bool(false)) | Ok(Value::Undefined) => {
                summary.failed += 1;
                let failed_at = failing_expression(&engine, module, rule);
                if pretty {
                    w(out, format_args!("FAIL {test} ({took})\n"))?;
                    if let Some((line, text)) = &failed_at {
                        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                        w(
                            out,
                            format_args!("  failed at {}:{line}: {text}\n", module.file),
                        )?;
                    }
                }
                record.outcome = Outcome::Fail { failed_at };
                true
            }
            Ok(_) => {
                summary.passed += 1;
                if pretty {
                    w(out, format_args!("PASS {test} ({took})\n"))?;
                }
                record.outcome = Outcome::Pass;
                options.verbose
            }
            Err(e) => {
                summary.errored += 1;
                let message = condense_error(&format!("{e:#}"));
                if pretty {
                    w(out, format_args!("ERROR {test} ({took})\n  {message}\n"))?;
                }
                record.outcome = Outcome::Error(message);
                true
            }
        };
        if pretty && show_prints {
            for line in &record.prints {
                w(out, format_args!("  {line}\n"))?;
            }
        }
        records.push(record);
    }
    if !options.coverage {
        return Ok(None);
    }
    coverage::bundle_coverage(parsed.get_modules(), &mut engine).map(Some)
}

/// The first expression of a failing test's body that does not hold, with its line (for a
/// test with one body; `else` and multiple bodies are not narrowed down).
fn failing_expression(
    engine: &regorus::Engine,
    module: &ModuleOutline,
    rule: &RuleOutline,
) -> Option<(u32, String)> {
    let [body] = rule.bodies.as_slice() else {
        return None;
    };
    let stmt = first_failing(engine, module, &module.package, &body.stmts)?;
    Some((stmt.line, stmt.text.clone()))
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
