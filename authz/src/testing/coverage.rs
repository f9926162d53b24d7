//! Line coverage for `vigil policy test --coverage`, counted and reported as OPA's `cover`
//! package does.
//!
//! regorus's tree interpreter records the line of every expression it evaluates
//! (`Engine::set_enable_coverage`) and keeps those lines across evaluations until told to
//! clear them, so one engine running each selected test of a bundle gathers the coverage of
//! them all. Its own report is not OPA's, though: it counts every line an expression sits on
//! (each line of a multi-line object literal), never counts the head of a rule written without
//! a value (`allow if {`), and leaves out a file nothing was evaluated in. OPA counts, for every
//! module loaded (tests included), the line of each rule head and of each statement, a head
//! being covered once its rule produced a value. So the lines to count are taken here from the
//! syntax tree, OPA's way, and regorus only says which of them were evaluated. To make it say
//! so for heads, each head without a value gets an explicit `= true` on its own line, an
//! expression regorus evaluates exactly when the rule produces its value, and each one-line
//! `else := value` without a body gets `if { true }`, evaluated exactly when the `else` is.
//!
//! Known differences from OPA (docs/policy.md, "Coverage"): OPA's rule index skips bodies
//! whose indexed equality cannot match, which regorus evaluates; a `default` rule's line counts
//! as covered as soon as its rule is evaluated (OPA: only when the default value is the one
//! used); and a line regorus cannot tell was evaluated is left out of the counts rather than
//! reported as not covered, where OPA may count it: the line of an `else` without a body whose
//! value spans lines or without a value, of a head whose value is a comprehension (its
//! statements are counted), and lines inside multi-line values.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};
use serde::Serialize;
use serde_json::json;

use crate::files::{BundleError, PolicyFile};
use crate::source;
use crate::syntax::{expr_parts, rule_queries, Part};

use super::w;

/// Covered and not covered lines of one policy file.
#[derive(Debug, Default)]
pub(crate) struct FileLines {
    covered: BTreeSet<u32>,
    not_covered: BTreeSet<u32>,
}

impl FileLines {
    fn percent(&self) -> f64 {
        percent(self.covered.len(), self.not_covered.len())
    }
}

/// The coverage of every policy file of the bundles tested, keyed by path.
#[derive(Debug, Default)]
pub(crate) struct CoverageReport {
    files: BTreeMap<String, FileLines>,
}

impl CoverageReport {
    /// Adds a bundle's files, their paths prefixed with `prefix` (the bundle's directory under
    /// the one tested, empty when it is that directory) so they stay unique.
    pub(crate) fn add_bundle(&mut self, prefix: &str, files: BTreeMap<String, FileLines>) {
        for (path, lines) in files {
            let path = if prefix.is_empty() {
                path
            } else {
                format!("{prefix}/{path}")
            };
            self.files.insert(path, lines);
        }
    }

    fn covered_lines(&self) -> usize {
        self.files.values().map(|f| f.covered.len()).sum()
    }

    fn not_covered_lines(&self) -> usize {
        self.files.values().map(|f| f.not_covered.len()).sum()
    }

    /// Covered lines in percent of the lines counted (0 when none is).
    pub(crate) fn percent(&self) -> f64 {
        percent(self.covered_lines(), self.not_covered_lines())
    }

    /// OPA's `cover.Report` as `opa test --coverage` prints it: its fields in Go's order, those
    /// Go's `omitempty` drops left out when empty or zero.
    pub(crate) fn to_json(&self) -> String {
        let files = self
            .files
            .iter()
            .map(|(path, lines)| {
                let file = OpaFileReport {
                    covered: ranges_json(&lines.covered),
                    not_covered: ranges_json(&lines.not_covered),
                    covered_lines: lines.covered.len(),
                    not_covered_lines: lines.not_covered.len(),
                    coverage: GoFloat(lines.percent()),
                };
                (path.as_str(), file)
            })
            .collect();
        let report = OpaReport {
            files,
            covered_lines: self.covered_lines(),
            not_covered_lines: self.not_covered_lines(),
            coverage: GoFloat(self.percent()),
        };
        serde_json::to_string_pretty(&report).unwrap_or_default()
    }

    /// A table of the files (percentage, covered of counted lines, path, the lines not
    /// covered), after a total line.
    pub(crate) fn write_table(&self, out: &mut dyn Write) -> Result<(), BundleError> {
        let covered = self.covered_lines();
        let total = covered + self.not_covered_lines();
        w(
            out,
            format_args!(
                "COVERAGE: {:.2}% ({covered}/{total} lines)\n",
                self.percent()
            ),
        )?;
        let width = self.files.keys().map(|p| p.len()).max().unwrap_or(0);
        for (path, lines) in &self.files {
            let counted = format!(
                "{}/{}",
                lines.covered.len(),
                lines.covered.len() + lines.not_covered.len()
            );
            let missing = if lines.not_covered.is_empty() {
                String::new()
            } else {
                let ranges: Vec<String> = ranges(&lines.not_covered)
                    .into_iter()
                    .map(|(start, end)| {
                        if start == end {
                            start.to_string()
                        } else {
                            format!("{start}-{end}")
                        }
                    })
                    .collect();
                format!("  not covered: {}", ranges.join(", "))
            };
            let line = format!(
                "{:>7.2}%  {counted:>9}  {path:<width$}{missing}",
                lines.percent()
            );
            w(out, format_args!("{}\n", line.trim_end()))?;
        }
        Ok(())
    }
}

fn percent(covered: usize, not_covered: usize) -> f64 {
    let total = covered + not_covered;
    if total == 0 {
        return 0.0;
    }
    100.0 * covered as f64 / total as f64
}

/// OPA's `cover.Report`.
#[derive(Serialize)]
struct OpaReport<'a> {
    files: BTreeMap<&'a str, OpaFileReport>,
    covered_lines: usize,
    not_covered_lines: usize,
    coverage: GoFloat,
}

/// OPA's `cover.FileReport`.
#[derive(Serialize)]
struct OpaFileReport {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    covered: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_covered: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "is_zero")]
    covered_lines: usize,
    #[serde(skip_serializing_if = "is_zero")]
    not_covered_lines: usize,
    #[serde(skip_serializing_if = "GoFloat::is_zero")]
    coverage: GoFloat,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A float64 as Go's `encoding/json` writes it: `100`, not `100.0`.
struct GoFloat(f64);

impl GoFloat {
    fn is_zero(&self) -> bool {
        self.0 == 0.0
    }
}

impl Serialize for GoFloat {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.fract() == 0.0 && x.abs() < 1e15 {
            serializer.serialize_i64(x as i64)
        } else {
            serializer.serialize_f64(x)
        }
    }
}

/// Consecutive lines joined into `(first, last)` ranges.
fn ranges(lines: &BTreeSet<u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &line in lines {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == line => *end = line,
            _ => out.push((line, line)),
        }
    }
    out
}

fn ranges_json(lines: &BTreeSet<u32>) -> Vec<serde_json::Value> {
    ranges(lines)
        .into_iter()
        .map(|(start, end)| json!({"start": {"row": start}, "end": {"row": end}}))
        .collect()
}

/// `files` (parsed as `modules`) with `= true` after each rule head that has no value, and
/// `if { true }` after each one-line `else := value` without a body, so that their lines are
/// evaluated when, and only when, the rule or `else` produces its value.
pub(crate) fn explicit_head_values(
    modules: &[Ref<Module>],
    files: &[PolicyFile],
) -> Vec<PolicyFile> {
    let mut insertions: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for module in modules {
        for rule in &module.policy {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let mut spans = Vec::new();
            match head {
                RuleHead::Compr { span, assign, .. } | RuleHead::Func { span, assign, .. }
                    if assign.is_none() =>
                {
                    spans.push((span, " = true"));
                }
                _ => {}
            }
            for body in bodies
                .iter()
                .filter(|b| b.is_else && b.query.stmts.is_empty())
            {
                let Some(assign) = &body.assign else { continue };
                let value = assign.value.span();
                if value.line == body.span.line && !value.text().contains('\n') {
                    spans.push((value, " if { true }"));
                }
            }
            for (span, text) in spans {
                if let Ok(end) = usize::try_from(span.end) {
                    insertions
                        .entry(span.source.file().as_str())
                        .or_default()
                        .push((end, text));
                }
            }
        }
    }
    files
        .iter()
        .map(|file| {
            let mut contents = file.contents.clone();
            let mut mine = insertions
                .get(file.path.as_str())
                .cloned()
                .unwrap_or_default();
            mine.sort_unstable();
            // From the end, so earlier offsets stay valid.
            for &(end, text) in mine.iter().rev() {
                if contents.is_char_boundary(end) {
                    contents.insert_str(end, text);
                }
            }
            PolicyFile {
                path: file.path.clone(),
                contents,
            }
        })
        .collect()
}

/// The lines OPA counts in each of `modules` (the bundle's files as written): each rule head
/// and each statement (not `some x` declarations), nested bodies included.
fn counted_lines(modules: &[Ref<Module>]) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out = BTreeMap::new();
    for module in modules {
        let lines: &mut BTreeSet<u32> = out
            .entry(module.package.span.source.file().clone())
            .or_default();
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Spec { span, bodies, .. } => {
                    lines.insert(span.line);
                    for body in bodies.iter().filter(|b| b.is_else) {
                        if let Some(assign) = &body.assign {
                            lines.insert(assign.value.span().line);
                        }
                    }
                }
                Rule::Default { span, .. } => {
                    lines.insert(span.line);
                }
            }
            for (query, _) in rule_queries(rule.as_ref()) {
                for stmt in &query.stmts {
                    if !matches!(stmt.literal, Literal::SomeVars { .. }) {
                        lines.insert(stmt.span.line);
                    }
                }
            }
        }
    }
    out
}

/// The lines of `modules` (as evaluated) on which regorus can report an evaluation: those of
/// the expressions its coverage report walks (head values, `contains` keys, `default` values,
/// statements; not a comprehension's own line, only its statements).
fn observable_lines(modules: &[Ref<Module>]) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out = BTreeMap::new();
    for module in modules {
        let mut parts: Vec<Part<'_>> = Vec::new();
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    match head {
                        RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                            parts.extend(assign.iter().map(|a| Part::Expr(&a.value)));
                        }
                        RuleHead::Set { key, .. } => parts.extend(key.iter().map(Part::Expr)),
                    }
                    parts.extend(bodies.iter().map(|b| Part::Query(&b.query)));
                }
                Rule::Default { value, .. } => parts.push(Part::Expr(value)),
            }
        }
        let lines: &mut BTreeSet<u32> = out
            .entry(module.package.span.source.file().clone())
            .or_default();
        while let Some(part) = parts.pop() {
            match part {
                Part::Query(query) => parts.extend(query_exprs(query)),
                Part::Expr(expr) => match expr.as_ref() {
                    Expr::ArrayCompr { query, .. }
                    | Expr::SetCompr { query, .. }
                    | Expr::ObjectCompr { query, .. } => parts.push(Part::Query(query)),
                    other => {
                        lines.insert(other.span().line);
                        parts.extend(expr_parts(other));
                    }
                },
            }
        }
    }
    out
}

/// What regorus's coverage report walks in a query's statements.
fn query_exprs(query: &Query) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                value, collection, ..
            } => parts.extend([Part::Expr(value), Part::Expr(collection)]),
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                parts.push(Part::Expr(expr))
            }
            Literal::Every { domain, query, .. } => {
                parts.extend([Part::Expr(domain), Part::Query(query)])
            }
        }
    }
    parts
}

/// The coverage of a bundle after its tests ran on `engine` with coverage enabled, for the
/// files parsed as `written` (the bundle as written, before any rewrite, which keeps lines).
pub(crate) fn bundle_coverage(
    written: &[Ref<Module>],
    engine: &mut regorus::Engine,
) -> Result<BTreeMap<String, FileLines>, BundleError> {
    let observable = observable_lines(engine.get_modules());
    let report = engine.get_coverage_report().map_err(|e| {
        BundleError::from_problems(vec![source::problem_from_error(&format!("{e:#}"), "")])
    })?;
    let evaluated: BTreeMap<&str, &BTreeSet<u32>> = report
        .files
        .iter()
        .map(|f| (f.path.as_str(), &f.covered))
        .collect();
    let empty = BTreeSet::new();
    Ok(counted_lines(written)
        .into_iter()
        .map(|(path, lines)| {
            let hit = evaluated.get(path.as_str()).copied().unwrap_or(&empty);
            let seen = observable.get(&path).unwrap_or(&empty);
            let (covered, not_covered) = lines
                .into_iter()
                .filter(|l| seen.contains(l))
                .partition(|l| hit.contains(l));
            (
                path,
                FileLines {
                    covered,
                    not_covered,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_lines_form_one_range() {
        let lines: BTreeSet<u32> = [3, 4, 5, 8, 10, 11].into_iter().collect();
        assert_eq!(ranges(&lines), vec![(3, 5), (8, 8), (10, 11)]);
    }

    #[test]
    fn whole_percentages_print_as_go_does() {
        let text = |x| serde_json::to_string(&GoFloat(x)).unwrap_or_default();
        assert_eq!(text(100.0), "100");
        assert_eq!(text(62.5), "62.5");
    }
}
