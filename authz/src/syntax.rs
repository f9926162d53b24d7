//! A walk over the modules regorus parsed: rules, queries, statements and expressions.
//!
//! Two analyses read the whole syntax tree of a bundle: which functions it calls (`calls.rs`)
//! and which constructs regorus's RVM gets wrong (`rvm_gaps.rs`). regorus exposes its AST
//! (through `regorus::unstable`, pinned by the workspace's 0.14 requirement) but no visitor, so
//! the traversal lives here, once. It uses an explicit stack rather than recursion: a bundle
//! comes from the control plane and a deeply nested expression must not overflow the stack.

use regorus::unstable::{Expr, Literal, LiteralStmt, Parser, Query, Ref, Rule, RuleHead, Span};

/// Something directly under an expression or statement.
pub(crate) enum Part<'a> {
    Expr(&'a Ref<Expr>),
    Query(&'a Ref<Query>),
}

/// The expressions and queries directly under `expr`.
pub(crate) fn expr_parts(expr: &Expr) -> Vec<Part<'_>> {
    let e = Part::Expr;
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => Vec::new(),
        Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().map(e).collect(),
        Expr::Object { fields, .. } => fields.iter().flat_map(|(_, k, v)| [e(k), e(v)]).collect(),
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            vec![e(term), Part::Query(query)]
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => vec![e(key), e(value), Part::Query(query)],
        Expr::Call { fcn, params, .. } => std::iter::once(e(fcn))
            .chain(params.iter().map(e))
            .collect(),
        Expr::UnaryExpr { expr, .. } => vec![e(expr)],
        Expr::RefDot { refr, .. } => vec![e(refr)],
        Expr::RefBrack { refr, index, .. } => vec![e(refr), e(index)],
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => vec![e(lhs), e(rhs)],
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => key.iter().map(e).chain([e(value), e(collection)]).collect(),
    }
}

/// The expressions and nested query directly in a statement (its `with` modifiers included).
pub(crate) fn stmt_parts(stmt: &LiteralStmt) -> Vec<Part<'_>> {
    let e = Part::Expr;
    let mut parts = match &stmt.literal {
        Literal::SomeVars { .. } => Vec::new(),
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => key.iter().map(e).chain([e(value), e(collection)]).collect(),
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => vec![e(expr)],
        Literal::Every { domain, query, .. } => vec![e(domain), Part::Query(query)],
    };
    for modifier in &stmt.with_mods {
        parts.push(e(&modifier.refr));
        parts.push(e(&modifier.r#as));
    }
    parts
}

/// The head expressions and body queries of a rule.
pub(crate) fn rule_parts(rule: &Rule) -> Vec<Part<'_>> {
    let e = Part::Expr;
    match rule {
        Rule::Spec { head, bodies, .. } => {
            let mut parts = match head {
                RuleHead::Compr { refr, assign, .. } => std::iter::once(e(refr))
                    .chain(assign.iter().map(|a| e(&a.value)))
                    .collect(),
                RuleHead::Set { refr, key, .. } => {
                    std::iter::once(e(refr)).chain(key.iter().map(e)).collect()
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => std::iter::once(e(refr))
                    .chain(args.iter().map(e))
                    .chain(assign.iter().map(|a| e(&a.value)))
                    .collect::<Vec<_>>(),
            };
            for body in bodies {
                if let Some(assign) = &body.assign {
                    parts.push(e(&assign.value));
                }
                parts.push(Part::Query(&body.query));
            }
            parts
        }
        Rule::Default {
            refr, args, value, ..
        } => std::iter::once(e(refr))
            .chain(args.iter().map(e))
            .chain([e(value)])
            .collect(),
    }
}

/// Calls `f` on every expression in `parts` and below them, nested queries included, in
/// pre-order.
pub(crate) fn each_expr<'a>(parts: Vec<Part<'a>>, f: &mut dyn FnMut(&'a Expr)) {
    let mut stack = parts;
    stack.reverse();
    while let Some(part) = stack.pop() {
        let children = match part {
            Part::Expr(expr) => {
                f(expr.as_ref());
                expr_parts(expr.as_ref())
            }
            Part::Query(query) => query.stmts.iter().flat_map(stmt_parts).collect(),
        };
        stack.extend(children.into_iter().rev());
    }
}

/// The dotted name of a called function (`io.jwt.decode`, `data.lib.f`, `lib.f`) and where the
/// name starts, or `None` for a call through something that is not a plain path.
pub(crate) fn call_name(fcn: &Ref<Expr>) -> Option<(String, Span)> {
    let parts = Parser::get_path_ref_components(fcn).ok()?;
    let first = parts.first()?.clone();
    let name = parts.iter().map(|s| s.text()).collect::<Vec<_>>().join(".");
    Some((name, first))
}

/// The names of the variables directly in `parts`: not those inside comprehensions or
/// nested queries, which have their own scope.
pub(crate) fn direct_vars<'a>(parts: Vec<Part<'a>>, out: &mut Vec<&'a str>) {
    let mut stack = parts;
    while let Some(part) = stack.pop() {
        let Part::Expr(expr) = part else { continue };
        match expr.as_ref() {
            Expr::Var { span, .. } => out.push(span.text()),
            Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => {}
            other => stack.extend(expr_parts(other)),
        }
    }
}

/// The queries directly nested in `parts` (comprehension and `every` bodies; not those nested
/// deeper, which are reached through them).
pub(crate) fn collect_nested_queries<'a>(parts: Vec<Part<'a>>, out: &mut Vec<&'a Query>) {
    let mut stack = parts;
    while let Some(part) = stack.pop() {
        match part {
            Part::Query(q) => out.push(q.as_ref()),
            Part::Expr(e) => stack.extend(expr_parts(e.as_ref())),
        }
    }
}

/// Every query of a rule: its bodies (flagged `true`) and the queries nested in them or in its
/// head (comprehensions, `every` bodies).
pub(crate) fn rule_queries(rule: &Rule) -> Vec<(&Query, bool)> {
    let mut out = Vec::new();
    let mut pending: Vec<&Query> = Vec::new();
    for part in rule_parts(rule) {
        match part {
            Part::Query(body) => {
                out.push((body.as_ref(), true));
                for stmt in &body.stmts {
                    collect_nested_queries(stmt_parts(stmt), &mut pending);
                }
            }
            expr => collect_nested_queries(vec![expr], &mut pending),
        }
    }
    while let Some(query) = pending.pop() {
        out.push((query, false));
        for stmt in &query.stmts {
            collect_nested_queries(stmt_parts(stmt), &mut pending);
        }
    }
    out
}

/// Where a reference starts: regorus's span of `a.b[c]` starts at its last `.` or `[`.
pub(crate) fn ref_start(expr: &Expr) -> &Span {
    let mut node = expr;
    loop {
        match node {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => node = refr.as_ref(),
            other => return other.span(),
        }
    }
}
