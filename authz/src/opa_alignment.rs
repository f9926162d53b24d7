//! Source rewrites that make regorus evaluate a bundle the way OPA does.
//!
//! The OPA differential suite (`authz/tests/opa_oracle.rs`) found two places where regorus's
//! engines disagree with OPA and the difference can be closed by adding a statement in front of
//! the one that is evaluated differently:
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
//! The statements are inserted on the line of the statement they guard, so line numbers in
//! messages stay right (columns after the insertion shift). A rule written `head if <literal>`
//! gets braces around its body.

use std::collections::BTreeSet;

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead, Span,
};

use crate::bundle::PolicyFile;
use crate::rules::ref_name;
use crate::syntax::rule_queries;

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
    AlignedFiles {
        interpreter: apply(files, &insertions, true),
        vm: apply(files, &insertions, false),
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
            if file.contents.is_char_boundary(insertion.offset) {
                file.contents.insert_str(insertion.offset, &insertion.text);
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
        });
        out.push(Insertion {
            file,
            offset: end,
            text: " }".to_string(),
            interpreter_only,
        });
    } else {
        out.push(Insertion {
            file,
            offset: start,
            text: prefix,
            interpreter_only,
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
