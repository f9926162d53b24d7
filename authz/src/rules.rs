//! A source-level outline of loaded modules: packages, rules, bodies and statements.
//!
//! The test runner needs every `test_*` rule and `explain` needs each rule body with its
//! location. regorus exposes its parsed modules only through `Engine::get_modules` and the
//! `unstable` AST types, so this file is the one place that depends on them (pinned by the
//! workspace's regorus 0.14 requirement).

use regorus::unstable::{Expr, Parser, Ref, Rule, RuleHead};
use regorus::Engine;

/// One module's rules.
pub(crate) struct ModuleOutline {
    /// Source file, as given when loading.
    pub file: String,
    /// Package path without `data.`, e.g. `vigil.authz`.
    pub package: String,
    /// The `package ...` line as written.
    pub package_text: String,
    /// The `import ...` lines as written.
    pub imports: Vec<String>,
    /// Rules in source order.
    pub rules: Vec<RuleOutline>,
}

/// What kind of definition a rule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DefinitionKind {
    /// `name := value if { ... }` or `name if { ... }`.
    Complete,
    /// `name contains x if { ... }` (or v0 `name[x] { ... }`).
    PartialSet,
    /// `name(args) := value if { ... }`.
    Function,
    /// `default name := value`.
    Default,
}

/// One rule definition.
pub(crate) struct RuleOutline {
    /// Name relative to the package, e.g. `allow`.
    pub name: String,
    pub kind: DefinitionKind,
    pub line: u32,
    /// Byte range of the whole definition in its file (the closing quote of a final string
    /// token is not included; see `stmt_text`).
    pub start: u32,
    pub end: u32,
    /// The definition's first line as written, for display.
    pub head_text: String,
    pub bodies: Vec<BodyOutline>,
}

/// One body (`{ ... }` or `else ... { ... }`) of a definition.
pub(crate) struct BodyOutline {
    pub line: u32,
    pub is_else: bool,
    /// The body's first line as written (for `else` bodies, the `else` line).
    pub head_text: String,
    pub stmts: Vec<StmtOutline>,
}

/// One statement of a body.
pub(crate) struct StmtOutline {
    pub line: u32,
    pub text: String,
}

/// Outlines every loaded module, in load order.
pub(crate) fn outline(engine: &mut Engine) -> Vec<ModuleOutline> {
    let packages = engine.get_policy_package_components().unwrap_or_default();
    let modules = engine.get_modules();
    let mut out = Vec::with_capacity(modules.len());
    for (module, pkg) in modules.iter().zip(packages) {
        let rules = module
            .policy
            .iter()
            .map(|rule| outline_rule(rule.as_ref()))
            .collect();
        out.push(ModuleOutline {
            file: pkg.source_file,
            package: pkg.components.join("."),
            package_text: module.package.span.text().to_string(),
            imports: module
                .imports
                .iter()
                .map(|i| i.span.text().to_string())
                .collect(),
            rules,
        });
    }
    out
}

fn outline_rule(rule: &Rule) -> RuleOutline {
    let span = rule.span();
    let head_text = span.text().lines().next().unwrap_or("").trim().to_string();
    match rule {
        Rule::Spec { head, bodies, .. } => {
            let (refr, kind) = match head {
                RuleHead::Compr { refr, .. } => (refr, DefinitionKind::Complete),
                RuleHead::Set { refr, .. } => (refr, DefinitionKind::PartialSet),
                RuleHead::Func { refr, .. } => (refr, DefinitionKind::Function),
            };
            let bodies = bodies
                .iter()
                .map(|b| BodyOutline {
                    line: b.span.line,
                    is_else: b.is_else,
                    head_text: b
                        .span
                        .source
                        .line(b.span.line.saturating_sub(1))
                        .trim()
                        .to_string(),
                    stmts: b
                        .query
                        .stmts
                        .iter()
                        .map(|s| StmtOutline {
                            line: s.span.line,
                            text: stmt_text(&s.span),
                        })
                        .collect(),
                })
                .collect();
            RuleOutline {
                name: ref_name(refr),
                kind,
                line: span.line,
                start: span.start,
                end: span.end,
                head_text,
                bodies,
            }
        }
        Rule::Default { refr, .. } => RuleOutline {
            name: ref_name(refr),
            kind: DefinitionKind::Default,
            line: span.line,
            start: span.start,
            end: span.end,
            head_text,
            bodies: Vec::new(),
        },
    }
}

/// A statement's source text. A statement's span ends where its last token's span ends, and a
/// string token's span excludes the closing quote, so put that back.
fn stmt_text(span: &regorus::unstable::Span) -> String {
    let contents = span.source.contents();
    let start = span.start as usize;
    let mut end = span.end as usize;
    if matches!(contents.as_bytes().get(end), Some(b'"' | b'`')) {
        end += 1;
    }
    contents
        .get(start..end)
        .map_or_else(|| span.text().to_string(), str::to_string)
}

/// The static part of a rule head's reference: `a.b["c"][x]` is `a.b.c` (with `[x]` computed
/// per definition). Rules are named by this prefix; their value is the document under it.
pub(crate) fn ref_name(refr: &Ref<Expr>) -> String {
    let mut parts = Vec::new();
    let mut node = refr;
    loop {
        match node.as_ref() {
            Expr::RefDot { refr, field, .. } => {
                parts.push(field.0.text().to_string());
                node = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } => {
                        parts.push(value.as_string().map(|s| s.to_string()).unwrap_or_default())
                    }
                    // A computed key: everything from here on is per definition.
                    _ => parts.clear(),
                }
                node = refr;
            }
            Expr::Var { span, .. } => {
                parts.push(span.text().to_string());
                break;
            }
            _ => {
                return Parser::get_path_ref_components(refr)
                    .map(|p| p.iter().map(|s| s.text()).collect::<Vec<_>>().join("."))
                    .unwrap_or_else(|_| refr.span().text().to_string())
            }
        }
    }
    parts.reverse();
    parts.join(".")
}
