//! Constant folding: rules that cannot depend on the request are evaluated once per bundle.
//!
//! The RVM caches a rule only within one evaluation, so a rule that merely reshapes `data`
//! (an index of routes, a set of public paths) would be recomputed on every request. Such a
//! rule (no `input`, no `with`, no non-deterministic builtin, and only references to other such
//! rules or to plain data) is evaluated here with the tree interpreter, and the VM gets a copy
//! of the module in which its definitions are replaced by one constant definition,
//! `name := <value>`, on the same line (line numbers of everything else are kept).
//!
//! The analysis is token-based and conservative: a local variable that shares a name with a
//! request-dependent rule, or `data[...]` with a computed key, makes a rule count as dynamic.
//! Anything unexpected skips folding altogether; the bundle then runs as written.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Lexer, TokenKind};
use regorus::{Engine, Source, Value};

use crate::files::PolicyFile;
use crate::rules::{self, DefinitionKind};
use crate::source::{rule_components, FileKind};

/// Builtins whose result can differ between two evaluations with the same input.
const NON_DETERMINISTIC: &[&str] = &[
    "now_ns",
    "rand",
    "http",
    "uuid",
    "opa",
    "trace",
    "print",
    "lookup_ip_addr",
];

/// The folded form of a bundle.
pub(crate) struct Folding {
    /// The bundle's files with folded rules replaced by constants.
    pub files: Vec<PolicyFile>,
    /// Paths of the folded rules, e.g. `vigil.authz.route_index`.
    pub rules: Vec<String>,
}

/// One token of a module.
pub(crate) struct Tok {
    pub kind: TokenKind,
    pub text: String,
    pub start: u32,
}

/// What one rule definition refers to.
#[derive(Default)]
struct Refs {
    /// Reads `input`, uses `with`, a non-deterministic builtin or a computed `data[...]` key.
    dynamic: bool,
    /// Identifiers (possibly rules of the same package).
    idents: BTreeSet<String>,
    /// `data.a.b` references, as component lists.
    data_paths: Vec<Vec<String>>,
}

struct Def {
    path: Vec<String>,
    /// How many leading components of `path` are the package.
    package_len: usize,
    file: String,
    start: usize,
    end: usize,
    foldable_kind: bool,
    refs: Refs,
}

/// Folds what can be folded; `None` when nothing can (or the analysis hit something it does
/// not understand). `keep` is the decision rule, which always stays a rule.
pub(crate) fn fold(files: &[PolicyFile], engine: &mut Engine, keep: &str) -> Option<Folding> {
    let keep: Vec<String> = rule_components(keep)?
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut tokens: BTreeMap<&str, Vec<Tok>> = BTreeMap::new();
    for file in files {
        if matches!(
            FileKind::of(&file.path),
            FileKind::Rego | FileKind::RegoTest
        ) {
            tokens.insert(&file.path, tokenize(file)?);
        }
    }

    let mut defs = Vec::new();
    for module in rules::outline(engine) {
        let toks = tokens.get(module.file.as_str())?;
        let package: Vec<String> = module.package.split('.').map(str::to_string).collect();
        let aliases = import_aliases(&module.imports);
        for rule in &module.rules {
            let (start, end) = (rule.start as usize, rule.end as usize);
            let mut path = package.clone();
            path.extend(rule.name.split('.').map(str::to_string));
            let in_rule: Vec<&Tok> = toks
                .iter()
                .filter(|t| (t.start as usize) >= start && (t.start as usize) < end)
                .collect();
            defs.push(Def {
                path,
                package_len: package.len(),
                file: module.file.clone(),
                start,
                end,
                foldable_kind: !matches!(rule.kind, DefinitionKind::Function)
                    && !rule.name.contains('.'),
                refs: refs_of(&in_rule, &aliases),
            });
        }
    }

    // Purity: a rule or function is pure when none of its definitions reads the request (or
    // uses `with` or a non-deterministic builtin) and everything it refers to is pure.
    let mut pure: BTreeMap<Vec<String>, bool> = BTreeMap::new();
    for def in &defs {
        pure.entry(def.path.clone())
            .and_modify(|p| *p &= !def.refs.dynamic)
            .or_insert(!def.refs.dynamic);
    }
    let all_paths: Vec<Vec<String>> = pure.keys().cloned().collect();
    loop {
        let mut changed = false;
        for def in &defs {
            if !pure.get(&def.path).copied().unwrap_or(false) {
                continue;
            }
            let package = &def.path[..def.package_len];
            let depends_on_impure = all_paths.iter().any(|p| {
                if p == &def.path || pure.get(p).copied().unwrap_or(false) {
                    return false;
                }
                // A bare name refers to a rule of the same package (`a` for `a.b := ...` too).
                let local = p.len() > package.len()
                    && p[..package.len()] == *package
                    && def.refs.idents.contains(&p[package.len()]);
                local || def.refs.data_paths.iter().any(|r| overlaps(r, p))
            });
            if depends_on_impure {
                pure.insert(def.path.clone(), false);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // Foldable: pure rules (not functions, which need arguments) other than the decision rule,
    // and not nested under or above another rule (`a := ...` with `a.b := ...`), which could not
    // become one constant.
    let candidates: BTreeMap<Vec<String>, bool> = all_paths
        .iter()
        .map(|path| {
            let foldable = pure.get(path).copied().unwrap_or(false)
                && *path != keep
                && defs
                    .iter()
                    .filter(|d| &d.path == path)
                    .all(|d| d.foldable_kind)
                && !all_paths.iter().any(|p| p != path && overlaps(p, path));
            (path.clone(), foldable)
        })
        .collect();

    let mut folded: BTreeMap<Vec<String>, Value> = BTreeMap::new();
    for (path, is_static) in &candidates {
        if !is_static {
            continue;
        }
        // A query rather than eval_rule: it also accepts rules with computed keys in the head.
        let Ok(results) = engine.eval_query(format!("data.{}", path.join(".")), false) else {
            continue; // e.g. conflicting values: leave it to the VM to report per request
        };
        let value = match results.result.as_slice() {
            [] => Value::Undefined,
            [one] => match one.expressions.as_slice() {
                [expr] => expr.value.clone(),
                _ => continue,
            },
            _ => continue,
        };
        folded.insert(path.clone(), value);
    }
    if folded.is_empty() {
        return None;
    }

    let mut out_files = files.to_vec();
    for file in &mut out_files {
        let mut text = file.contents.clone();
        // Rewrite from the end of the file so earlier offsets stay valid.
        let mut in_file: Vec<&Def> = defs
            .iter()
            .filter(|d| d.file == file.path && folded.contains_key(&d.path))
            .collect();
        in_file.sort_by_key(|d| std::cmp::Reverse(d.start));
        let mut first_of: BTreeMap<&Vec<String>, usize> = BTreeMap::new();
        for def in defs.iter().filter(|d| folded.contains_key(&d.path)) {
            first_of.entry(&def.path).or_insert(def.start);
        }
        for def in in_file {
            let bytes = text.as_bytes();
            let mut end = def.end.min(bytes.len());
            // A definition ending in a string stops before its closing quote.
            if matches!(bytes.get(end), Some(b'"' | b'`')) {
                end += 1;
            }
            let old = text.get(def.start..end)?;
            let newlines = old.matches('\n').count();
            let is_first = first_of.get(&def.path) == Some(&def.start)
                && defs
                    .iter()
                    .find(|d| d.path == def.path)
                    .is_some_and(|d| d.file == file.path);
            let mut replacement = if is_first {
                let name = def.path.last()?;
                match folded.get(&def.path)? {
                    // Never defined: keep the name defined as a rule that never holds.
                    Value::Undefined => format!("{name} if false"),
                    value => format!("{name} := {}", rego_literal(value)?),
                }
            } else {
                String::new()
            };
            replacement.push_str(&"\n".repeat(newlines));
            text.replace_range(def.start..end, &replacement);
        }
        file.contents = text;
    }

    Some(Folding {
        files: out_files,
        rules: folded.into_keys().map(|p| p.join(".")).collect(),
    })
}

/// A value as Rego source (sets as `{...}`/`set()`, which JSON can't express).
fn rego_literal(value: &Value) -> Option<String> {
    Some(match value {
        Value::Undefined => return None,
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            serde_json::to_string(value).ok()?
        }
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(rego_literal).collect();
            format!("[{}]", parts?.join(", "))
        }
        Value::Set(items) if items.is_empty() => "set()".to_string(),
        Value::Set(items) => {
            let parts: Option<Vec<String>> = items.iter().map(rego_literal).collect();
            format!("{{{}}}", parts?.join(", "))
        }
        Value::Object(entries) => {
            let parts: Option<Vec<String>> = entries
                .iter()
                .map(|(k, v)| Some(format!("{}: {}", rego_literal(k)?, rego_literal(v)?)))
                .collect();
            format!("{{{}}}", parts?.join(", "))
        }
    })
}

/// The module's tokens (comments dropped); `None` if it does not lex.
pub(crate) fn tokenize(file: &PolicyFile) -> Option<Vec<Tok>> {
    let source = Source::from_contents(file.path.clone(), file.contents.clone()).ok()?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        let token = lexer.next_token().ok()?;
        if matches!(token.0, TokenKind::Eof) {
            return Some(out);
        }
        out.push(Tok {
            text: token.1.text().to_string(),
            start: token.1.start,
            kind: token.0,
        });
    }
}

/// Import aliases: `import input.x as y` makes `y` mean input; `import data.a.b` makes `b`
/// mean `data.a.b`.
fn import_aliases(imports: &[String]) -> BTreeMap<String, Option<Vec<String>>> {
    let mut out = BTreeMap::new();
    for import in imports {
        let words: Vec<&str> = import
            .split(|c: char| c.is_whitespace() || c == '.')
            .filter(|w| !w.is_empty())
            .collect();
        let Some(("import", rest)) = words.split_first().map(|(a, b)| (*a, b)) else {
            continue;
        };
        let (path, alias) = match rest.iter().position(|w| *w == "as") {
            Some(i) => (&rest[..i], rest.get(i + 1).copied()),
            None => (rest, rest.last().copied()),
        };
        let (Some(root), Some(alias)) = (path.first(), alias) else {
            continue;
        };
        match *root {
            "input" => {
                out.insert(alias.to_string(), None);
            }
            "data" => {
                let components = path[1..].iter().map(|s| s.to_string()).collect();
                out.insert(alias.to_string(), Some(components));
            }
            _ => {}
        }
    }
    out
}

fn refs_of(toks: &[&Tok], aliases: &BTreeMap<String, Option<Vec<String>>>) -> Refs {
    let mut refs = Refs::default();
    let is = |i: usize, kind: fn(&TokenKind) -> bool, text: &str| {
        toks.get(i).is_some_and(|t| kind(&t.kind) && t.text == text)
    };
    let symbol = |k: &TokenKind| matches!(k, TokenKind::Symbol);
    for (i, t) in toks.iter().enumerate() {
        if !matches!(t.kind, TokenKind::Ident) {
            continue;
        }
        // A field name after '.' is not a reference of its own.
        if i > 0 && is(i - 1, symbol, ".") {
            if NON_DETERMINISTIC.contains(&t.text.as_str()) {
                refs.dynamic = true;
            }
            continue;
        }
        match t.text.as_str() {
            "input" | "with" => refs.dynamic = true,
            "data" => {
                if is(i + 1, symbol, "[") {
                    refs.dynamic = true;
                }
                let mut path = Vec::new();
                let mut j = i + 1;
                while is(j, symbol, ".")
                    && toks
                        .get(j + 1)
                        .is_some_and(|n| matches!(n.kind, TokenKind::Ident))
                {
                    path.push(toks[j + 1].text.clone());
                    j += 2;
                }
                // `data.a["b"]`: a computed or quoted key; only the static prefix is known.
                refs.data_paths.push(path);
            }
            name if NON_DETERMINISTIC.contains(&name) => refs.dynamic = true,
            name => match aliases.get(name) {
                Some(None) => refs.dynamic = true,
                Some(Some(path)) => refs.data_paths.push(path.clone()),
                None => {
                    refs.idents.insert(name.to_string());
                }
            },
        }
    }
    refs
}

/// Whether a reference to `data.<r>` can read rule `p` (one is a prefix of the other).
fn overlaps(r: &[String], p: &[String]) -> bool {
    r.iter().zip(p.iter()).all(|(a, b)| a == b)
}
