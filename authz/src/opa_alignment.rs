//! Source rewrites that make regorus evaluate a bundle the way OPA does.
//!
//! The OPA differential suite (`authz/tests/opa_oracle.rs`) found places where regorus's engines
//! disagree with OPA and the difference can be closed in the source. Two by adding a statement
//! in front of the one that is evaluated differently:
//!
//! - **Negation.** OPA evaluates the operands of a call inside `not` before the negation: in
//!   `not startswith(input.x, "a")`, `not input.m in {"GET"}`, `not lower(input.x) == "a"` or
//!   `not input.a[input.b]`, an undefined operand makes the statement fail, where regorus
//!   negates the undefined result and succeeds. (A plain reference, `not input.x`, and the
//!   operands of `==` themselves, `not input.x == 1`, are not evaluated early in either.) Each
//!   such operand gets a `_ = <operand>` statement in front of the `not`, which fails exactly
//!   when OPA's early evaluation does. Both engines need it.
//! - **`some x in <not a collection>`.** OPA iterates nothing; regorus's tree interpreter fails
//!   the whole evaluation with an error. A `type_name(<collection>) in {"array", "object",
//!   "set"}` statement in front makes the body fail instead, as in OPA. Only the interpreter
//!   needs it (the RVM already agrees with OPA).
//!
//! And one by rewriting an expression: the pattern of a `regex.*` call gets Go's meaning
//! (`opa_builtins::go_pattern`: Go's `\d \w \s \b` are ASCII-only where regorus reads Unicode
//! classes, so `\d` would match `٣`; Go reads a `{` that starts no repetition as itself, where
//! regorus refuses the pattern). A pattern written in the policy is rewritten in place; one
//! computed during evaluation is passed through `data.vigil_go_regex.pattern`, which handles the
//! Perl classes (not the braces: a brace in a computed pattern still makes regorus fail). Both
//! engines need it.
//!
//! The statements are inserted on the line of the statement they guard, so line numbers in
//! messages stay right (columns after the insertion shift). A rule written `head if <literal>`
//! gets braces around its body.

use std::collections::BTreeSet;

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead, Span,
};

use crate::files::PolicyFile;
use crate::opa_builtins;
use crate::rules::ref_name;
use crate::syntax::{call_name, each_expr, rule_parts, rule_queries, Part};

/// The bundle's files as each engine should read them.
pub(crate) struct AlignedFiles {
    /// For the tree interpreter (negation and `some ... in` statements added).
    pub interpreter: Vec<PolicyFile>,
    /// For the RVM (negation statements added).
    pub vm: Vec<PolicyFile>,
}

/// One insertion into a file: `text` at byte `offset`.
struct Insertion {
    file: String,
    offset: usize,
    text: String,
    interpreter_only: bool,
    /// Bytes after `offset` the text replaces (0 for a plain insertion).
    replaced: usize,
}

/// Rewrites `files` (whose parsed `modules` are given) for each engine.
pub(crate) fn align(modules: &[Ref<Module>], files: &[PolicyFile]) -> AlignedFiles {
    let mut insertions = Vec::new();
    for module in modules {
        let names = rule_names(modules, module);
        for rule in &module.policy {
            for (query, top_level) in rule_queries(rule.as_ref()) {
                for stmt in &query.stmts {
                    guard_statement(stmt, query, top_level, &names, &mut insertions);
                }
            }
        }
    }
    let wrapped = go_regex_patterns(modules, &mut insertions);
    let mut aligned = AlignedFiles {
        interpreter: apply(files, &insertions, true),
        vm: apply(files, &insertions, false),
    };
    if wrapped {
        let module = go_regex_module();
        aligned.interpreter.push(module.clone());
        aligned.vm.push(module);
    }
    aligned
}

/// The package of the function that gives a regular expression Go's meaning.
const GO_REGEX_PACKAGE: &str = "vigil_go_regex";

/// Which argument of each regorus regex builtin is the pattern.
const PATTERN_ARGUMENT: &[(&str, usize)] = &[
    ("regex.match", 0),
    ("regex.is_valid", 0),
    ("regex.find_n", 0),
    ("regex.find_all_string_submatch_n", 0),
    ("regex.replace", 1),
];

/// Gives the pattern of each regorus regex builtin call Go's meaning: a pattern written in the
/// policy is replaced by its translation (`opa_builtins::go_pattern`) when that differs; any
/// other is wrapped in `data.vigil_go_regex.pattern(...)`, which rewrites Go's ASCII-only
/// `\d \w \s \b` (and their negations) into classes the regex crate reads the same way.
/// Returns whether a pattern was wrapped.
fn go_regex_patterns(modules: &[Ref<Module>], out: &mut Vec<Insertion>) -> bool {
    let mut wrapped = false;
    for module in modules {
        // A module importing something as `regex` may define its own `regex.*` functions.
        let shadowed = module.imports.iter().any(|i| {
            i.r#as.as_ref().map_or_else(
                || i.refr.span().text().ends_with(".regex"),
                |a| a.text() == "regex",
            )
        });
        if shadowed {
            continue;
        }
        for rule in &module.policy {
            each_expr(rule_parts(rule.as_ref()), &mut |expr| {
                let Expr::Call { fcn, params, .. } = expr else {
                    return;
                };
                let Some((name, _)) = call_name(fcn) else {
                    return;
                };
                let Some((_, index)) = PATTERN_ARGUMENT.iter().find(|(n, _)| *n == name) else {
                    return;
                };
                let Some(pattern) = params.get(*index) else {
                    return;
                };
                let Some((start, end)) = extent(pattern) else {
                    return;
                };
                let file = pattern.span().source.file().clone();
                if let Expr::String { value, .. } | Expr::RawString { value, .. } = pattern.as_ref()
                {
                    // A pattern written in the policy is translated here, once.
                    let Ok(written) = value.as_string() else {
                        return;
                    };
                    let translated = opa_builtins::go_pattern(written);
                    if translated != written.as_ref() {
                        let text = if translated.contains('`') {
                            serde_json::to_string(&translated).unwrap_or_default()
                        } else {
                            format!("`{translated}`")
                        };
                        out.push(Insertion {
                            file,
                            offset: start,
                            text,
                            interpreter_only: false,
                            replaced: end - start,
                        });
                    }
                    return;
                }
                out.push(Insertion {
                    file: file.clone(),
                    offset: start,
                    text: format!("data.{GO_REGEX_PACKAGE}.pattern("),
                    interpreter_only: false,
                    replaced: 0,
                });
                out.push(Insertion {
                    file,
                    offset: end,
                    text: ")".to_string(),
                    interpreter_only: false,
                    replaced: 0,
                });
                wrapped = true;
            });
        }
    }
    wrapped
}

/// The byte range of an expression's text: from its leftmost to its rightmost token (regorus's
/// own span of a reference or call starts at its last `.`, `[` or `(`).
fn extent(expr: &Ref<Expr>) -> Option<(usize, usize)> {
    let mut range: Option<(usize, usize)> = None;
    each_expr(vec![Part::Expr(expr)], &mut |e| {
        let span = e.span();
        let mut start = span.start as usize;
        let end = start + full_text(span).len();
        // A string token's span also leaves out its opening quote.
        let quoted = matches!(e, Expr::String { .. } | Expr::RawString { .. })
            && start > 0
            && matches!(
                span.source.contents().as_bytes().get(start - 1),
                Some(b'"' | b'`')
            );
        if quoted {
            start -= 1;
        }
        range = Some(match range {
            Some((s, t)) => (s.min(start), t.max(end)),
            None => (start, end),
        });
    });
    range
}

/// `opa_builtins::ESCAPED_BACKSLASH` as a Rego string escape.
const PLACEHOLDER: &str = "\\uE000";

/// The module defining `data.vigil_go_regex.pattern`, the Rego form of
/// `opa_builtins::go_pattern`.
fn go_regex_module() -> PolicyFile {
    let mut body = format!(
        "package {GO_REGEX_PACKAGE}\n\npattern(p) := r if {{\n\ts0 := replace(p, `\\\\`, \"{PLACEHOLDER}\")\n"
    );
    let mut last = 0;
    for (i, (from, to)) in opa_builtins::GO_PERL_CLASSES.iter().enumerate() {
        body.push_str(&format!(
            "\ts{} := replace(s{i}, `{from}`, `{to}`)\n",
            i + 1
        ));
        last = i + 1;
    }
    body.push_str(&format!(
        "\tr := replace(s{last}, \"{PLACEHOLDER}\", `\\\\`)\n}}\n"
    ));
    PolicyFile {
        path: format!("<vigil {GO_REGEX_PACKAGE}>.rego"),
        contents: body,
    }
}

fn apply(files: &[PolicyFile], insertions: &[Insertion], interpreter: bool) -> Vec<PolicyFile> {
    let mut out = files.to_vec();
    for file in &mut out {
        let mut mine: Vec<&Insertion> = insertions
            .iter()
            .filter(|i| i.file == file.path && (interpreter || !i.interpreter_only))
            .collect();
        // From the end, so earlier offsets stay valid; a stable sort keeps the order of
        // insertions at one offset.
        mine.sort_by_key(|i| std::cmp::Reverse(i.offset));
        for insertion in mine {
            let end = insertion.offset + insertion.replaced;
            if file.contents.is_char_boundary(insertion.offset)
                && file.contents.is_char_boundary(end)
            {
                file.contents
                    .replace_range(insertion.offset..end, &insertion.text);
            }
        }
    }
    out
}

/// Names that refer to rules (or imports) when used bare: these may be undefined, unlike
/// local variables, which are bound before use.
fn rule_names(modules: &[Ref<Module>], module: &Module) -> BTreeSet<String> {
    let package = module.package.refr.span().text().to_string();
    let mut names = BTreeSet::new();
    for other in modules {
        if other.package.refr.span().text() != package {
            continue;
        }
        for rule in &other.policy {
            let name = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. } => ref_name(refr),
                },
                Rule::Default { refr, .. } => ref_name(refr),
            };
            names.insert(name.split('.').next().unwrap_or(&name).to_string());
        }
    }
    for import in &module.imports {
        let text = import.refr.span().text();
        let name = import
            .r#as
            .as_ref()
            .map_or_else(|| text.rsplit('.').next().unwrap_or(text), |a| a.text());
        names.insert(name.to_string());
    }
    names
}

/// The text of a span, with the closing quote a final string token's span leaves out.
fn full_text(span: &Span) -> &str {
    let contents = span.source.contents();
    let (start, mut end) = (span.start as usize, span.end as usize);
    if matches!(contents.as_bytes().get(end), Some(b'"' | b'`')) && end > start {
        end += 1;
    }
    contents.get(start..end).unwrap_or_else(|| span.text())
}

fn guard_statement(
    stmt: &LiteralStmt,
    query: &Query,
    top_level: bool,
    names: &BTreeSet<String>,
    out: &mut Vec<Insertion>,
) {
    let (guards, interpreter_only): (Vec<String>, bool) = match &stmt.literal {
        Literal::NotExpr { expr, .. } => {
            let mut operands = Vec::new();
            early_operands(expr, true, names, &mut operands);
            let guards = operands
                .iter()
                .map(|e| format!("_ = {}", full_text(e.span())))
                .collect();
            (guards, false)
        }
        Literal::SomeIn { collection, .. } => (
            vec![format!(
                "type_name({}) in {{\"array\", \"object\", \"set\"}}",
                full_text(collection.span())
            )],
            true,
        ),
        _ => return,
    };
    if guards.is_empty() {
        return;
    }
    let modifiers: String = stmt
        .with_mods
        .iter()
        .map(|m| format!(" {}", full_text(&m.span)))
        .collect();
    let prefix: String = guards.iter().map(|g| format!("{g}{modifiers}; ")).collect();
    let file = stmt.span.source.file().clone();
    let contents = stmt.span.source.contents();
    let start = stmt.span.start as usize;
    // `head if <literal>` has no braces to hold a second statement: add them.
    let braceless = top_level && query.stmts.len() == 1 && {
        let before = contents.get(..start).unwrap_or("").trim_end();
        before.ends_with("if")
            && !before[..before.len() - 2]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    if braceless {
        let end = start + full_text(&stmt.span).len();
        out.push(Insertion {
            file: file.clone(),
            offset: start,
            text: format!("{{ {prefix}"),
            interpreter_only,
            replaced: 0,
        });
        out.push(Insertion {
            file,
            offset: end,
            text: " }".to_string(),
            interpreter_only,
            replaced: 0,
        });
    } else {
        out.push(Insertion {
            file,
            offset: start,
            text: prefix,
            interpreter_only,
            replaced: 0,
        });
    }
}

/// The operands of a negated expression that OPA evaluates before the negation and that may
/// be undefined. `whole` is true for the negated expression itself.
fn early_operands<'a>(
    expr: &'a Ref<Expr>,
    whole: bool,
    names: &BTreeSet<String>,
    out: &mut Vec<&'a Ref<Expr>>,
) {
    match expr.as_ref() {
        // `a == b` and `a = b`: the operands are not evaluated early, but what they contain is.
        Expr::BoolExpr {
            op: BoolOp::Eq,
            lhs,
            rhs,
            ..
        }
        | Expr::AssignExpr {
            op: AssignOp::Eq,
            lhs,
            rhs,
            ..
        } if whole => {
            for side in [lhs, rhs] {
                inside_operand(side, names, out);
            }
        }
        // Calls and operators: every argument is evaluated early.
        Expr::Call { params, .. } if whole => {
            for p in params {
                operand(p, names, out);
            }
        }
        Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::BinExpr { lhs, rhs, .. }
            if whole =>
        {
            operand(lhs, names, out);
            operand(rhs, names, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } if whole => {
            for p in key.iter().chain([value, collection]) {
                operand(p, names, out);
            }
        }
        Expr::UnaryExpr { expr: inner, .. } if whole => operand(inner, names, out),
        // A plain reference is negated as it is; its computed indexes are evaluated early.
        _ => inside_operand(expr, names, out),
    }
}

/// What OPA evaluates early inside an operand that is not itself evaluated early: nested calls
/// and collections, and computed indexes of a reference.
fn inside_operand<'a>(expr: &'a Ref<Expr>, names: &BTreeSet<String>, out: &mut Vec<&'a Ref<Expr>>) {
    match expr.as_ref() {
        Expr::RefDot { refr, .. } => inside_operand(refr, names, out),
        Expr::RefBrack { refr, index, .. } => {
            inside_operand(refr, names, out);
            operand(index, names, out);
        }
        Expr::Var { .. }
        | Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::ArrayCompr { .. }
        | Expr::SetCompr { .. }
        | Expr::ObjectCompr { .. } => {}
        _ => operand(expr, names, out),
    }
}

/// An operand evaluated early: kept when it may be undefined.
fn operand<'a>(expr: &'a Ref<Expr>, names: &BTreeSet<String>, out: &mut Vec<&'a Ref<Expr>>) {
    if may_be_undefined(expr, names) {
        out.push(expr);
    }
}

fn may_be_undefined(expr: &Ref<Expr>, names: &BTreeSet<String>) -> bool {
    match expr.as_ref() {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::ArrayCompr { .. }
        | Expr::SetCompr { .. }
        | Expr::ObjectCompr { .. } => false,
        // Local variables are bound before use; a bare rule name may be undefined.
        Expr::Var { span, .. } => names.contains(span.text()),
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().any(|i| may_be_undefined(i, names))
        }
        Expr::Object { fields, .. } => fields
            .iter()
            .any(|(_, k, v)| may_be_undefined(k, names) || may_be_undefined(v, names)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(rego: &str) -> AlignedFiles {
        let files = vec![PolicyFile {
            path: "p.rego".into(),
            contents: rego.into(),
        }];
        let mut engine = crate::source::load_engine(&files).expect("parses");
        align(engine.get_modules(), &files)
    }

    #[test]
    fn operands_negated_calls_read_are_required_first() {
        let out = aligned("package p\nallow if not startswith(input.x, \"a\")\n");
        assert_eq!(
            out.vm[0].contents,
            "package p\nallow if { _ = input.x; not startswith(input.x, \"a\") }\n"
        );
        let out = aligned(
            "package p\nr := 1\nallow if {\n  input.y\n  not lower(input.x) == \"a\"\n  not input.z\n  not input.m == 1\n  not r in {1}\n}\n",
        );
        assert_eq!(
            out.vm[0].contents,
            "package p\nr := 1\nallow if {\n  input.y\n  _ = lower(input.x); not lower(input.x) == \"a\"\n  not input.z\n  not input.m == 1\n  _ = r; not r in {1}\n}\n"
        );
    }

    #[test]
    fn regex_patterns_get_go_meaning_unless_written_without_perl_classes() {
        let out = aligned(
            "package p\na if regex.match(`^\\d+$`, input.x)\nb if regex.match(\"^a+$\", input.x)\n\
             c if regex.replace(input.x, input.pattern[0], \"\")\n",
        );
        assert_eq!(
            out.vm[0].contents,
            "package p\na if regex.match(`^[0-9]+$`, input.x)\n\
             b if regex.match(\"^a+$\", input.x)\n\
             c if regex.replace(input.x, data.vigil_go_regex.pattern(input.pattern[0]), \"\")\n"
        );
        assert_eq!(out.vm[1], go_regex_module());
        assert_eq!(
            out.vm[1].contents.lines().nth(3),
            Some("\ts0 := replace(p, `\\\\`, \"\\uE000\")")
        );
    }

    #[test]
    fn with_modifiers_apply_to_the_added_statements() {
        let out = aligned(
            "package p\nallow if { not startswith(input.x, \"a\") with input.x as \"b\" }\n",
        );
        assert_eq!(
            out.vm[0].contents,
            "package p\nallow if { _ = input.x with input.x as \"b\"; not startswith(input.x, \"a\") with input.x as \"b\" }\n"
        );
    }

    #[test]
    fn iteration_over_a_non_collection_fails_the_body_on_the_interpreter_only() {
        let rego = "package p\nxs := [x | some x in input.items]\n";
        let out = aligned(rego);
        assert_eq!(
            out.interpreter[0].contents,
            "package p\nxs := [x | type_name(input.items) in {\"array\", \"object\", \"set\"}; some x in input.items]\n"
        );
        assert_eq!(out.vm[0].contents, rego);
    }
}
