//! The constructs regorus 0.14's RVM evaluates differently from OPA, found in a bundle's
//! syntax tree, and the rewrite that closes the one gap that can be closed from the source.
//!
//! The OPA differential suite (`authz/tests/opa_oracle.rs`) found three ways in which the RVM
//! (regorus's bytecode VM, Vigil's fast path) disagrees with OPA, while regorus's tree
//! interpreter agrees:
//!
//! 1. `x := <undefined>` inside a body does not fail the body: the body goes on with `x`
//!    undefined, so a later `not f(x)` holds, and an `else` is not taken when the body "ends"
//!    that way. (`x = <undefined>` does fail, as in OPA.) Closed here: the VM's copy of the
//!    source has every `:=` inside a body written `= ` (same length, so every position stays),
//!    which means the same in OPA whenever the name is a fresh local. Where it could mean
//!    something else (the name is also a rule, an import, a function argument or a variable of
//!    an enclosing body), the bundle goes to the interpreter instead.
//! 2. Inside `every k, v in xs { ... }`, a reference indexed by a variable (`input.p[k]`) is
//!    iterated instead of looked up, so the `every` can hold when OPA's does not.
//! 3. Conflicts: OPA fails the evaluation when a complete rule or a function produces two
//!    different values (or a partial object two values for one key); the RVM silently makes
//!    the rule undefined (or keeps one value), which `not rule` turns into a success.
//!
//! Bundles with (2) or with a rule that could conflict (3) run on the interpreter, with the
//! reason, `file:line`, shown by `vigil policy test|eval` and the proxy's `/config`. The
//! conflict analysis is conservative: several definitions are accepted only when they yield
//! the same constant, or when each pair is kept apart by a test of one reference against two
//! different constants (`method == "GET"` / `method == "POST"`).

use std::collections::BTreeSet;

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Parser, Query, Ref, Rule, RuleBody,
    RuleHead, Span,
};
use regorus::Value;

use crate::files::PolicyFile;
use crate::rules::ref_name;
use crate::syntax::{
    collect_nested_queries, direct_vars, each_expr, expr_parts, ref_start, rule_parts, stmt_parts,
    Part,
};

/// Why a bundle cannot run on the RVM: `file:line:col: what`.
pub(crate) type Gap = String;

fn at(span: &Span, what: impl std::fmt::Display) -> Gap {
    format!("{}:{}:{}: {what}", span.source.file(), span.line, span.col)
}

/// The files the RVM should compile (the bundle's, with the `:=` rewrite applied), or the
/// first construct it would get wrong.
pub(crate) fn prepare(
    modules: &[Ref<Module>],
    files: &[PolicyFile],
) -> Result<Vec<PolicyFile>, Gap> {
    let mut rewrites: Vec<(String, usize)> = Vec::new();
    for module in modules {
        let names = names_in_scope(modules, module);
        for rule in &module.policy {
            let rule = rule.as_ref();
            every_gaps(rule)?;
            assignment_rewrites(rule, &names, &mut rewrites)?;
        }
    }
    conflict_gaps(modules)?;

    let mut out = files.to_vec();
    for file in &mut out {
        let mut offsets: Vec<usize> = rewrites
            .iter()
            .filter(|(f, _)| *f == file.path)
            .map(|(_, o)| *o)
            .collect();
        if offsets.is_empty() {
            continue;
        }
        offsets.sort_unstable();
        let mut bytes = file.contents.clone().into_bytes();
        for offset in offsets {
            if bytes.get(offset..offset + 2) == Some(b":=") {
                bytes[offset] = b'=';
                bytes[offset + 1] = b' ';
            }
        }
        // Only ASCII bytes were replaced by ASCII bytes.
        file.contents = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Names a body-local `:=` must not take for the `=` rewrite to keep its meaning: the rules of
/// the module's package (by their first name) and the module's imports.
fn names_in_scope(modules: &[Ref<Module>], module: &Module) -> BTreeSet<String> {
    let package = path_text(&module.package.refr);
    let mut names: BTreeSet<String> = ["input", "data"].iter().map(|s| s.to_string()).collect();
    for other in modules {
        if path_text(&other.package.refr) != package {
            continue;
        }
        for rule in &other.policy {
            let refr = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. } => refr,
                },
                Rule::Default { refr, .. } => refr,
            };
            let name = ref_name(refr);
            names.insert(name.split('.').next().unwrap_or(&name).to_string());
        }
    }
    for import in &module.imports {
        let name = match &import.r#as {
            Some(alias) => alias.text().to_string(),
            None => path_text(&import.refr)
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        names.insert(name);
    }
    names
}

fn path_text(refr: &Ref<Expr>) -> String {
    Parser::get_path_ref_components(refr)
        .map(|parts| parts.iter().map(|s| s.text()).collect::<Vec<_>>().join("."))
        .unwrap_or_default()
}

/// A check run on each query of a rule, given the variables of its enclosing scopes.
type QueryCheck<'a, 'f> = dyn FnMut(&'a Query, &[&'a str]) -> Result<(), Gap> + 'f;

/// Every query of a rule (bodies, and the comprehensions and `every` bodies in them or in the
/// head) with the variables of its enclosing scopes.
fn each_query<'a>(rule: &'a Rule, f: &mut QueryCheck<'a, '_>) -> Result<(), Gap> {
    let Rule::Spec { head, bodies, .. } = rule else {
        return Ok(());
    };
    // Function arguments are variables of every body.
    let mut outer: Vec<&str> = Vec::new();
    if let RuleHead::Func { args, .. } = head {
        direct_vars(args.iter().map(Part::Expr).collect(), &mut outer);
    }
    // A comprehension in the head sees the variables of the bodies.
    let mut head_scope = outer.clone();
    for body in bodies {
        for stmt in &body.query.stmts {
            direct_vars(stmt_parts(stmt), &mut head_scope);
        }
    }
    for part in rule_parts(rule) {
        match part {
            Part::Query(body) => walk_query(body, &outer, f)?,
            expr => {
                let mut nested = Vec::new();
                collect_nested_queries(vec![expr], &mut nested);
                for query in nested {
                    walk_query(query, &head_scope, f)?;
                }
            }
        }
    }
    Ok(())
}

fn walk_query<'a>(
    query: &'a Query,
    outer: &[&'a str],
    f: &mut QueryCheck<'a, '_>,
) -> Result<(), Gap> {
    f(query, outer)?;
    let mut scope: Vec<&str> = outer.to_vec();
    for stmt in &query.stmts {
        direct_vars(stmt_parts(stmt), &mut scope);
        if let Literal::Every { key, value, .. } = &stmt.literal {
            scope.extend(key.iter().map(|k| k.text()));
            scope.push(value.text());
        }
    }
    // Nested queries (comprehensions, `every` bodies) see this query's variables.
    for stmt in &query.stmts {
        let mut nested: Vec<&'a Query> = Vec::new();
        collect_nested_queries(stmt_parts(stmt), &mut nested);
        for q in nested {
            walk_query(q, &scope, f)?;
        }
    }
    Ok(())
}

/// Finds each `name := value` statement of a rule and where its `:=` is, refusing the rewrite
/// when `=` could mean something else.
fn assignment_rewrites(
    rule: &Rule,
    names: &BTreeSet<String>,
    out: &mut Vec<(String, usize)>,
) -> Result<(), Gap> {
    each_query(rule, &mut |query, outer| {
        for stmt in &query.stmts {
            let Literal::Expr { expr, .. } = &stmt.literal else {
                continue;
            };
            let Expr::AssignExpr {
                op: AssignOp::ColEq,
                lhs,
                rhs,
                span,
                ..
            } = expr.as_ref()
            else {
                continue;
            };
            let mut assigned = Vec::new();
            each_expr(vec![Part::Expr(lhs)], &mut |e| {
                if let Expr::Var { span, .. } = e {
                    if span.text() != "_" {
                        assigned.push(span.text());
                    }
                }
            });
            for name in assigned {
                if names.contains(name) || outer.contains(&name) {
                    return Err(at(
                        lhs.span(),
                        format!(
                            "`{name} := ...` reuses the name of a rule, import or enclosing \
                             variable; regorus's RVM does not fail a body on `:=` from an \
                             undefined value, and Vigil fixes that by reading `:=` as `=`, \
                             which here could change the meaning"
                        ),
                    ));
                }
            }
            let source = span.source.contents();
            let (from, to) = (lhs.span().start as usize, rhs.span().start as usize);
            let offset = source
                .get(from..to)
                .and_then(|between| between.rfind(":="))
                .map(|i| from + i)
                .ok_or_else(|| at(span, "could not locate `:=` in the source"))?;
            out.push((span.source.file().clone(), offset));
        }
        Ok(())
    })
}

/// Refuses `every` bodies that index a reference with a variable not bound inside the body.
fn every_gaps(rule: &Rule) -> Result<(), Gap> {
    each_query(rule, &mut |query, _| {
        for stmt in &query.stmts {
            let Literal::Every { query: body, .. } = &stmt.literal else {
                continue;
            };
            let mut bound: BTreeSet<&str> = BTreeSet::new();
            let mut queries = vec![body.as_ref()];
            while let Some(q) = queries.pop() {
                for s in &q.stmts {
                    binders(s, &mut bound);
                    collect_nested_queries(stmt_parts(s), &mut queries);
                }
            }
            let mut gap = None;
            each_expr(vec![Part::Query(body)], &mut |e| {
                if let Expr::RefBrack { index, span, .. } = e {
                    if let Expr::Var { span: var, .. } = index.as_ref() {
                        if gap.is_none() && !bound.contains(var.text()) {
                            let start = ref_start(e);
                            let text = span
                                .source
                                .contents()
                                .get(start.start as usize..span.end as usize)
                                .unwrap_or_else(|| span.text());
                            gap = Some(at(
                                start,
                                format!(
                                    "`{text}` inside `every` is indexed by `{}`, a variable \
                                     bound outside the body or by the `every` itself; regorus's \
                                     RVM iterates such a reference instead of looking it up",
                                    var.text()
                                ),
                            ));
                        }
                    }
                }
            });
            if let Some(gap) = gap {
                return Err(gap);
            }
        }
        Ok(())
    })
}

/// Variables a statement binds: `x := e`, `x = e`, `some x`, `some k, v in e`.
fn binders<'a>(stmt: &'a LiteralStmt, out: &mut BTreeSet<&'a str>) {
    let mut vars = Vec::new();
    match &stmt.literal {
        Literal::Expr { expr, .. } => {
            if let Expr::AssignExpr { lhs, .. } = expr.as_ref() {
                direct_vars(vec![Part::Expr(lhs)], &mut vars);
            }
        }
        Literal::SomeIn { key, value, .. } => {
            direct_vars(
                key.iter().chain([value]).map(Part::Expr).collect(),
                &mut vars,
            );
        }
        Literal::SomeVars { vars: spans, .. } => vars.extend(spans.iter().map(|s| s.text())),
        Literal::NotExpr { .. } | Literal::Every { .. } => {}
    }
    out.extend(vars.into_iter().filter(|v| *v != "_"));
}

/// One definition of a complete rule, function or partial object.
struct Definition<'a> {
    kind: &'static str,
    name: String,
    span: &'a Span,
    args: &'a [Ref<Expr>],
    /// The value of each body (the head's value for the first, `true` when there is none).
    values: Vec<Option<Value>>,
    bodies: &'a [RuleBody],
}

fn definitions<'a>(package: &str, rule: &'a Rule) -> Option<Definition<'a>> {
    let Rule::Spec { head, bodies, span } = rule else {
        return None;
    };
    let (kind, refr, assign, args): (_, _, _, &[Ref<Expr>]) = match head {
        RuleHead::Compr { refr, assign, .. } => {
            let computed_key = matches!(refr.as_ref(), Expr::RefBrack { index, .. }
                if literal(index).is_none());
            let kind = if computed_key {
                "partial object"
            } else {
                "rule"
            };
            (kind, refr, assign.as_ref(), &[])
        }
        RuleHead::Func {
            refr, args, assign, ..
        } => ("function", refr, assign.as_ref(), args.as_slice()),
        RuleHead::Set { .. } => return None,
    };
    let head_value = assign.map_or(Some(Value::from(true)), |a| literal(&a.value));
    let values = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| match &body.assign {
            Some(a) => literal(&a.value),
            None if i == 0 => head_value.clone(),
            None => Some(Value::from(true)),
        })
        .collect::<Vec<_>>();
    let values = if values.is_empty() {
        vec![head_value]
    } else {
        values
    };
    Some(Definition {
        kind,
        name: format!("{package}.{}", ref_name(refr)),
        span,
        args,
        values,
        bodies,
    })
}

/// Refuses rules that could produce conflicting values (see the module docs).
fn conflict_gaps(modules: &[Ref<Module>]) -> Result<(), Gap> {
    let mut defs: Vec<Definition<'_>> = Vec::new();
    for module in modules {
        let package = path_text(&module.package.refr);
        defs.extend(
            module
                .policy
                .iter()
                .filter_map(|r| definitions(&package, r.as_ref())),
        );
    }
    let conflict = |d: &Definition<'_>, why: &str| {
        Err(at(
            d.span,
            format!(
                "{} {} {why}; OPA reports such a conflict as an error, regorus's RVM silently \
                 drops the value",
                d.kind, d.name
            ),
        ))
    };
    for (i, d) in defs.iter().enumerate() {
        let constant = d.values.iter().all(Option::is_some);
        if d.kind == "partial object"
            && (iterates(d) || defs.iter().filter(|o| o.name == d.name).count() > 1)
        {
            return conflict(d, "may produce two values for one key");
        }
        if !constant && iterates(d) {
            return conflict(d, "may produce several values for one request");
        }
        for other in defs.iter().skip(i + 1).filter(|o| o.name == d.name) {
            let mut values: Vec<&Option<Value>> = d.values.iter().chain(&other.values).collect();
            values.dedup();
            let same_constant = values.len() == 1 && values[0].is_some();
            if !same_constant && !exclusive(d, other) {
                return conflict(
                    d,
                    "has definitions that may both apply to one request with different values",
                );
            }
        }
    }
    Ok(())
}

/// Whether a definition's body can bind its variables in more than one way.
fn iterates(d: &Definition<'_>) -> bool {
    let mut args: Vec<&str> = Vec::new();
    direct_vars(d.args.iter().map(Part::Expr).collect(), &mut args);
    d.bodies.iter().any(|body| {
        let mut bound: BTreeSet<&str> = args.iter().copied().collect();
        for stmt in &body.query.stmts {
            if matches!(
                stmt.literal,
                Literal::SomeIn { .. } | Literal::SomeVars { .. }
            ) {
                return true;
            }
            let mut free_index = false;
            // References indexed by an unbound variable iterate (`x[_]`, `x[i]`); indexing by
            // a rule's value (`roles[role]`) is counted too, which errs on the safe side.
            let mut stack = stmt_parts(stmt);
            while let Some(part) = stack.pop() {
                let Part::Expr(e) = part else { continue };
                match e.as_ref() {
                    Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => {}
                    Expr::RefBrack { index, .. } => {
                        if let Expr::Var { span, .. } = index.as_ref() {
                            free_index |= !bound.contains(span.text());
                        }
                        stack.extend(expr_parts(e.as_ref()));
                    }
                    other => stack.extend(expr_parts(other)),
                }
            }
            if free_index {
                return true;
            }
            binders(stmt, &mut bound);
        }
        false
    })
}

/// Whether two single-body definitions can never both apply: their bodies test one reference
/// (or the same argument) in ways that exclude each other (`== "GET"` and `== "POST"`, `x` and
/// `not x`), or their arguments are different constants.
fn exclusive(a: &Definition<'_>, b: &Definition<'_>) -> bool {
    if a.bodies.len() > 1 || b.bodies.len() > 1 {
        return false;
    }
    let constant_args = a
        .args
        .iter()
        .zip(b.args)
        .any(|(x, y)| matches!((literal(x), literal(y)), (Some(x), Some(y)) if x != y));
    if constant_args {
        return true;
    }
    let (ta, tb) = (tests(a), tests(b));
    ta.iter().any(|(ra, x)| {
        tb.iter()
            .any(|(rb, y)| ra == rb && (excludes(x, y) || excludes(y, x)))
    })
}

/// What a statement requires of a reference (or of an expression such as `count(x)`).
enum Test {
    /// `ref == constant`.
    Equals(Value),
    /// `ref`: defined and not false.
    Holds,
    /// `not ref`: undefined or false.
    Fails,
    /// `ref < n`, `ref >= n`, ...: a number in an interval.
    Compare(BoolOp, f64),
}

/// The numbers a test admits, as (low, low included, high, high included).
fn interval(test: &Test) -> Option<(f64, bool, f64, bool)> {
    let inf = f64::INFINITY;
    Some(match test {
        Test::Equals(v) => {
            let n = v.as_f64().ok()?;
            (n, true, n, true)
        }
        Test::Compare(op, n) => match op {
            BoolOp::Lt => (-inf, false, *n, false),
            BoolOp::Le => (-inf, false, *n, true),
            BoolOp::Gt => (*n, false, inf, false),
            BoolOp::Ge => (*n, true, inf, false),
            BoolOp::Eq => (*n, true, *n, true),
            BoolOp::Ne => return None,
        },
        Test::Holds | Test::Fails => return None,
    })
}

fn excludes(a: &Test, b: &Test) -> bool {
    match (a, b) {
        (Test::Equals(x), Test::Equals(y)) => x != y,
        (Test::Holds, Test::Fails) => true,
        (Test::Equals(x), Test::Fails) => *x != Value::from(false),
        (Test::Equals(x), Test::Holds) => *x == Value::from(false),
        _ => match (interval(a), interval(b)) {
            (Some((al, ali, ah, ahi)), Some((bl, bli, bh, bhi))) => {
                let a_below_b = ah < bl || (ah == bl && !(ahi && bli));
                let b_below_a = bh < al || (bh == al && !(bhi && ali));
                a_below_b || b_below_a
            }
            _ => false,
        },
    }
}

/// The tests at the top of a definition's body, keyed by what they test: a reference by its
/// path (arguments named by their position, so that `f(x) if x == 1` and `f(y) if y == 2`
/// compare), another expression by its text. Expressions reading a variable bound in the body
/// are left out: the same text could mean two values in two bodies.
fn tests(d: &Definition<'_>) -> Vec<(String, Test)> {
    let mut args: Vec<&str> = Vec::new();
    direct_vars(d.args.iter().map(Part::Expr).collect(), &mut args);
    let Some(body) = d.bodies.first() else {
        return Vec::new();
    };
    let mut locals: BTreeSet<&str> = BTreeSet::new();
    for stmt in &body.query.stmts {
        binders(stmt, &mut locals);
    }
    let key = |r: &Ref<Expr>| -> Option<String> {
        let mut reads_local = false;
        each_expr(vec![Part::Expr(r)], &mut |e| {
            if let Expr::Var { span, .. } = e {
                reads_local |= locals.contains(span.text());
            }
        });
        if reads_local {
            return None;
        }
        if let Ok(parts) = Parser::get_path_ref_components(r) {
            let mut names: Vec<String> = parts.iter().map(|s| s.text().to_string()).collect();
            if let Some(pos) = args
                .iter()
                .position(|a| Some(*a) == names.first().map(String::as_str))
            {
                names[0] = format!("#arg{pos}");
            }
            return Some(names.join("."));
        }
        if !args.is_empty() {
            return None;
        }
        let text: String = r.span().text().split_whitespace().collect();
        Some(format!("expr:{text}"))
    };
    let mut out = Vec::new();
    for stmt in &body.query.stmts {
        if !stmt.with_mods.is_empty() {
            continue;
        }
        match &stmt.literal {
            Literal::NotExpr { expr, .. } if is_path(expr) => {
                out.extend(key(expr).map(|p| (p, Test::Fails)));
            }
            Literal::Expr { expr, .. } => match expr.as_ref() {
                Expr::BoolExpr {
                    op: BoolOp::Eq,
                    lhs,
                    rhs,
                    ..
                } => {
                    for (r, c) in [(lhs, rhs), (rhs, lhs)] {
                        let (Some(value), Some(p)) = (literal(c), key(r)) else {
                            continue;
                        };
                        // `r == ["a", "b"]` also says `r[0] == "a"`, which another
                        // definition's `r[0] == "c"` excludes.
                        if let Value::Array(items) = &value {
                            for (i, item) in items.iter().enumerate() {
                                out.push((format!("{p}.{i}"), Test::Equals(item.clone())));
                            }
                        }
                        out.push((p, Test::Equals(value)));
                    }
                }
                Expr::BoolExpr { op, lhs, rhs, .. } => {
                    let flipped = match op {
                        BoolOp::Lt => BoolOp::Gt,
                        BoolOp::Le => BoolOp::Ge,
                        BoolOp::Gt => BoolOp::Lt,
                        BoolOp::Ge => BoolOp::Le,
                        other => other.clone(),
                    };
                    for (r, c, op) in [(lhs, rhs, op.clone()), (rhs, lhs, flipped)] {
                        let number = literal(c).and_then(|v| v.as_f64().ok());
                        if let (Some(n), Some(p)) = (number, key(r)) {
                            out.push((p, Test::Compare(op, n)));
                        }
                    }
                }
                _ if is_path(expr) => out.extend(key(expr).map(|p| (p, Test::Holds))),
                _ => {}
            },
            _ => {}
        }
    }
    out
}

/// A variable or a reference with constant parts (`allow`, `input.a.b`, `x["k"]`).
fn is_path(expr: &Ref<Expr>) -> bool {
    matches!(
        expr.as_ref(),
        Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. }
    ) && Parser::get_path_ref_components(expr).is_ok()
}

/// The value of an expression made only of literals.
fn literal(expr: &Ref<Expr>) -> Option<Value> {
    match expr.as_ref() {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        Expr::Array { items, .. } => Some(Value::from(
            items.iter().map(literal).collect::<Option<Vec<_>>>()?,
        )),
        Expr::Set { items, .. } => Some(Value::from(
            items.iter().map(literal).collect::<Option<BTreeSet<_>>>()?,
        )),
        Expr::Object { fields, .. } => {
            let mut object = std::collections::BTreeMap::new();
            for (_, k, v) in fields {
                object.insert(literal(k)?, literal(v)?);
            }
            Some(Value::from(object))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::files::PolicyFile;

    fn gap(rego: &str) -> Option<String> {
        let files = vec![PolicyFile {
            path: "p.rego".into(),
            contents: rego.into(),
        }];
        let mut engine = crate::source::load_engine(&files).expect("parses");
        super::prepare(engine.get_modules(), &files).err()
    }

    #[test]
    fn definitions_kept_apart_by_their_tests_run_on_the_vm() {
        // Different constants for one reference, an element of a path, `x` and `not x`.
        assert_eq!(
            gap("package p\nallow := 1 if input.m == \"GET\"\nallow := 2 if input.m == \"POST\"\n"),
            None
        );
        assert_eq!(
            gap("package p\nallow := 1 if input.p[0] == \"a\"\nallow := 2 if input.p == [\"b\"]\n"),
            None
        );
        assert_eq!(
            gap("package p\nallow := 1 if input.x\nallow := 2 if { input.y; not input.x }\n"),
            None
        );
        // Same constant everywhere: no conflict possible.
        assert_eq!(gap("package p\nallow if input.x\nallow if input.y\n"), None);
        // Nothing keeps these apart.
        assert!(gap("package p\nallow := 1 if input.x\nallow := 2 if input.y\n").is_some());
        assert!(gap("package p\nf(x) := 1 if x > 0\nf(x) := 2 if x > 1\n").is_some());
        assert_eq!(gap("package p\nf(\"a\") := 1\nf(\"b\") := 2\n"), None);
        // Intervals of one expression that do not meet.
        assert_eq!(
            gap("package p\nallow := 1 if count(input.d) == 0\nallow := 2 if count(input.d) > 0\n"),
            None
        );
        assert!(gap(
            "package p\nallow := 1 if count(input.d) >= 0\nallow := 2 if count(input.d) > -1\n"
        )
        .is_some());
        // The same text over a variable of each body can mean two values.
        assert!(gap(
            "package p\nallow := 1 if { x := input.a; x == 1 }\nallow := 2 if { x := input.b; x == 2 }\n"
        )
        .is_some());
        // A single definition that iterates, with a value that depends on the iteration.
        assert!(gap("package p\nv := x if { some x in input.xs }\n").is_some());
        assert_eq!(
            gap("package p\nv := true if { some x in input.xs; x > 1 }\n"),
            None
        );
    }

    #[test]
    fn assignments_are_rewritten_unless_the_name_is_taken() {
        let files = vec![PolicyFile {
            path: "p.rego".into(),
            contents: "package p\nallow if {\n  x := input.a\n  x\n}\n".into(),
        }];
        let mut engine = crate::source::load_engine(&files).expect("parses");
        let out = super::prepare(engine.get_modules(), &files).expect("no gap");
        assert_eq!(
            out[0].contents,
            "package p\nallow if {\n  x =  input.a\n  x\n}\n"
        );
        let taken = gap("package p\nrole := 1\nallow if {\n  role := input.a\n  role\n}\n");
        assert!(taken.is_some_and(|g| g.starts_with("p.rego:4:3: `role := ...` reuses the name")),);
    }
}
