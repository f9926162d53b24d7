//! `vigil policy explain`: why a request would be allowed or denied.
//!
//! regorus 0.14 has explanation report types but nothing that produces them, so this works at
//! the source level with the tree interpreter: it evaluates every rule of the decision's
//! package, and for each body of the `allow`/`deny` rules it evaluates the body on its own
//! (as a probe rule in the same package) to say whether it matched and, if not, the first
//! statement that did not hold.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use regorus::{Engine, Value};

use crate::bundle::PolicyBundle;
use crate::cli::w;
use crate::cli::{load_bundle, parse_input};
use crate::decision::Decision;
use crate::files::BundleError;
use crate::input::{AuthzInput, HttpAttributes, InputKind};
use crate::rules::{self, BodyOutline, DefinitionKind, ModuleOutline, StmtOutline};
use crate::source::{condense_error, rule_components};

/// The request to explain, as a security engineer would describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExplainRequest {
    /// The caller's SPIFFE ID (`None`: an unauthenticated peer).
    pub source: Option<String>,
    /// The called workload's SPIFFE ID.
    pub destination: Option<String>,
    /// HTTP method; empty explains a TCP connection instead.
    pub method: String,
    /// Path with optional `?query`.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Host / `:authority`.
    pub host: String,
}

const PROBE: &str = "__vigil_explain_probe";

/// Builds the input the proxy would build for `request`, evaluates it, and prints the input,
/// the decision, the value of each rule in the decision's package, and which `allow`/`deny`
/// bodies matched (with file:line) or where they stopped. Returns the decision.
pub fn explain(
    policy_dir: &Path,
    request: ExplainRequest,
    rule: Option<&str>,
    out: &mut dyn Write,
) -> Result<Decision, BundleError> {
    let bundle = load_bundle(policy_dir, rule)?;
    let headers = header_map(&request.headers)?;
    // The CLI has no real connection; addresses are placeholders (and printed as such).
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let kind = if request.method.is_empty() {
        InputKind::Tcp
    } else {
        InputKind::Http(HttpAttributes {
            id: "explain",
            method: &request.method,
            path: &request.path,
            host: &request.host,
            scheme: "http",
            protocol: "HTTP/1.1",
            headers: &headers,
            body: None,
        })
    };
    let input = AuthzInput {
        kind,
        source_address: unspecified,
        destination_address: unspecified,
        source_principal: request.source.as_deref(),
        destination_principal: request.destination.as_deref(),
    };
    print_input(out, &request)?;
    let input_value = match input.document() {
        Ok(document) => document,
        Err(e) => {
            // As in the proxy: what OPA-Envoy could not parse is refused before any rule runs.
            let decision = Decision::Error {
                reason: e.to_string(),
            };
            print_decision(out, &bundle, &decision)?;
            return Ok(decision);
        }
    };
    explain_document(&bundle, input_value, out)
}

/// Like [`explain`], for an input document given as it is (`vigil policy explain --input`),
/// such as one copied from a decision log or written by hand for OPA.
pub fn explain_input(
    policy_dir: &Path,
    input_json: &str,
    rule: Option<&str>,
    out: &mut dyn Write,
) -> Result<Decision, BundleError> {
    let bundle = load_bundle(policy_dir, rule)?;
    let input_value = parse_input(input_json)?;
    let field = |path: &[&str]| {
        let mut value = &input_value;
        for key in path {
            value = &value[*key];
        }
        match value {
            Value::Undefined => "-".to_string(),
            other => show(other),
        }
    };
    w(out, format_args!("input (as given):\n"))?;
    for (label, path) in [
        ("source", &["attributes", "source", "principal"][..]),
        (
            "destination",
            &["attributes", "destination", "principal"][..],
        ),
        ("method", &["attributes", "request", "http", "method"][..]),
        ("path", &["attributes", "request", "http", "path"][..]),
    ] {
        w(out, format_args!("  {label:<12}{}\n", field(path)))?;
    }
    explain_document(&bundle, input_value, out)
}

/// The decision for an input document, the values of the decision package's rules, and which
/// bodies of its allow/deny rules matched or where they stopped.
fn explain_document(
    bundle: &PolicyBundle,
    input_value: Value,
    out: &mut dyn Write,
) -> Result<Decision, BundleError> {
    let decision = bundle.evaluate_value(input_value.clone());
    print_decision(out, bundle, &decision)?;

    let mut engine = bundle.compiled.interpreter.clone();
    engine.set_input(input_value.clone());
    let rule = bundle.options().rule.clone();
    let interpreted = engine.eval_rule(bundle.compiled.entry_rule.clone());
    if let (Ok(value), Ok(vm_value)) = (&interpreted, bundle.eval_raw(input_value.clone())) {
        if *value != vm_value {
            w(
                out,
                format_args!(
                    "warning: the RVM ({}) and the interpreter ({}) disagree on {rule}\n",
                    show(&vm_value),
                    show(value)
                ),
            )?;
        }
    }

    let Some(components) = rule_components(&rule) else {
        return Ok(decision);
    };
    let (rule_name, package) = match components.split_last() {
        Some((name, pkg)) => (name.to_string(), pkg.join(".")),
        None => return Ok(decision),
    };
    let outline: Vec<ModuleOutline> = rules::outline(&mut engine)
        .into_iter()
        .filter(|m| m.package == package)
        .collect();

    // Values of the package's rules: the decision and the helpers it is built from.
    w(out, format_args!("\nrules in data.{package}:\n"))?;
    let mut names: Vec<&str> = Vec::new();
    for module in &outline {
        for r in &module.rules {
            if r.kind != DefinitionKind::Function
                && !r.name.starts_with("test_")
                && !names.contains(&r.name.as_str())
            {
                names.push(&r.name);
            }
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    for name in &names {
        let shown = match engine.eval_rule(format!("data.{package}.{name}")) {
            Ok(v) => show(&v),
            Err(e) => format!("error: {}", condense_error(&format!("{e:#}"))),
        };
        w(out, format_args!("  {name:<width$} = {shown}\n"))?;
    }

    // Which bodies of the decision rule and of allow/deny-style rules matched.
    let interesting = |name: &str| {
        name == rule_name
            || ["allow", "deny", "violation"]
                .iter()
                .any(|p| name.starts_with(p))
    };
    let mut base = bundle.compiled.interpreter.clone();
    base.set_input(input_value);
    for name in names.iter().copied().filter(|n| interesting(n)) {
        w(out, format_args!("\ndefinitions of {name}:\n"))?;
        for module in &outline {
            for r in module.rules.iter().filter(|r| r.name == name) {
                if r.kind == DefinitionKind::Default {
                    w(
                        out,
                        format_args!("  default    {}:{}  {}\n", module.file, r.line, r.head_text),
                    )?;
                    continue;
                }
                // An `else` body only counts when every body before it in the chain failed.
                let mut chain_matched = false;
                for body in &r.bodies {
                    let head = if body.is_else {
                        &body.head_text
                    } else {
                        &r.head_text
                    };
                    let line = if body.is_else { body.line } else { r.line };
                    if body.is_else && chain_matched {
                        w(
                            out,
                            format_args!("  skipped    {}:{line}  {head}\n", module.file),
                        )?;
                        continue;
                    }
                    let at = format!("{}:{line}", module.file);
                    chain_matched |= explain_body(out, &base, module, &package, &at, head, body)?;
                }
            }
        }
    }
    Ok(decision)
}

/// Prints whether one body matched (and where it stopped if not); returns whether it matched.
fn explain_body(
    out: &mut dyn Write,
    base: &Engine,
    module: &ModuleOutline,
    package: &str,
    location: &str,
    head_text: &str,
    body: &BodyOutline,
) -> Result<bool, BundleError> {
    if body.stmts.is_empty() {
        w(out, format_args!("  matched    {location}  {head_text}\n"))?;
        return Ok(true);
    }
    match probe(base, module, package, &body.stmts) {
        Ok(true) => {
            w(out, format_args!("  matched    {location}  {head_text}\n"))?;
            Ok(true)
        }
        Ok(false) => {
            w(out, format_args!("  no match   {location}  {head_text}\n"))?;
            if let Some(stmt) = first_failing(base, module, package, &body.stmts) {
                w(
                    out,
                    format_args!(
                        "             stopped at {}:{}: {}\n",
                        module.file,
                        stmt.line,
                        one_line(&stmt.text)
                    ),
                )?;
            }
            Ok(false)
        }
        Err(e) => {
            w(
                out,
                format_args!("  error      {location}  {head_text}\n             {e}\n"),
            )?;
            Ok(false)
        }
    }
}

/// The first statement after which the body no longer holds (also used by `vigil policy test`
/// to show where a failing test stopped).
pub(crate) fn first_failing<'a>(
    base: &Engine,
    module: &ModuleOutline,
    package: &str,
    stmts: &'a [StmtOutline],
) -> Option<&'a StmtOutline> {
    for k in 1..stmts.len() {
        // A prefix can be unsafe on its own (a later statement binds its variable); skip those.
        if let Ok(false) = probe(base, module, package, &stmts[..k]) {
            return stmts.get(k - 1);
        }
    }
    stmts.last()
}

/// Evaluates the statements as the body of a probe rule in the module's package.
fn probe(
    base: &Engine,
    module: &ModuleOutline,
    package: &str,
    stmts: &[StmtOutline],
) -> Result<bool, String> {
    let mut text = String::new();
    text.push_str(&module.package_text);
    text.push('\n');
    for import in &module.imports {
        text.push_str(import);
        text.push('\n');
    }
    text.push_str(PROBE);
    text.push_str(" if {\n");
    for stmt in stmts {
        text.push_str(&stmt.text);
        text.push('\n');
    }
    text.push_str("}\n");
    let mut engine = base.clone();
    engine
        .add_policy("<explain>".into(), text)
        .map_err(|e| condense_error(&format!("{e:#}")))?;
    match engine.eval_rule(format!("data.{package}.{PROBE}")) {
        Ok(Value::Bool(true)) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(condense_error(&format!("{e:#}"))),
    }
}

fn print_input(out: &mut dyn Write, r: &ExplainRequest) -> Result<(), BundleError> {
    let none = "(none: unauthenticated peer)";
    w(out, format_args!("input:\n"))?;
    w(
        out,
        format_args!("  source       {}\n", r.source.as_deref().unwrap_or(none)),
    )?;
    w(
        out,
        format_args!(
            "  destination  {}\n",
            r.destination.as_deref().unwrap_or(none)
        ),
    )?;
    if r.method.is_empty() {
        w(out, format_args!("  connection   TCP\n"))?;
    } else {
        w(
            out,
            format_args!(
                "  request      {} {} (host {:?})\n",
                r.method, r.path, r.host
            ),
        )?;
        for (name, value) in &r.headers {
            w(
                out,
                format_args!("  header       {}: {value}\n", name.to_ascii_lowercase()),
            )?;
        }
    }
    w(
        out,
        format_args!("  addresses    0.0.0.0:0 (placeholders; policies matching IPs won't)\n"),
    )
}

fn print_decision(
    out: &mut dyn Write,
    bundle: &PolicyBundle,
    decision: &Decision,
) -> Result<(), BundleError> {
    let summary = match decision {
        Decision::Allow {
            request_headers_to_add,
            ..
        } => {
            let added: Vec<String> = request_headers_to_add
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            if added.is_empty() {
                "ALLOW".to_string()
            } else {
                format!("ALLOW (adds {})", added.join(", "))
            }
        }
        Decision::Deny { status, reason, .. } => format!("DENY {status}: {reason}"),
        Decision::Error { reason } => format!("ERROR (fails closed): {reason}"),
    };
    w(
        out,
        format_args!(
            "\ndecision: {summary}\n  rule {} in bundle {} ({})\n",
            bundle.options().rule,
            bundle.version(),
            bundle.backend()
        ),
    )
}

fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap, BundleError> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| BundleError::Input(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| BundleError::Input(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A value as compact JSON, shortened for one line.
fn show(value: &Value) -> String {
    if *value == Value::Undefined {
        return "undefined".to_string();
    }
    let text = serde_json::to_string(value).unwrap_or_default();
    one_line(&text)
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        let cut: String = flat.chars().take(97).collect();
        format!("{cut}...")
    } else {
        flat
    }
}
