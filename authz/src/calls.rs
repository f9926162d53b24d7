//! Which functions a bundle calls, and whether Vigil evaluates each one exactly as OPA does.
//!
//! A decision must equal the one OPA would make, or the bundle is refused when it is compiled.
//! A call is accepted when it names a function the bundle defines, or a builtin in
//! [`SUPPORTED_BUILTINS`]: builtins of regorus (Vigil's engine) that the OPA differential
//! suite (`authz/tests/opa_oracle.rs`) checks against OPA, each one on edge-case arguments.
//! Everything else is refused with the function's name and `file:line:col`: OPA builtins
//! regorus lacks and Vigil does not carry (`io.jwt.encode_sign`, `crypto.x509.*`, ...), regorus builtins whose results differ from
//! OPA's (`json.marshal`, `time.format`, ...), and `http.send`, which the sidecar does not
//! support (a decision never waits on the network). Without this check such a bundle loads and
//! every request reaching the call fails with an error.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Module, Parser, Ref, Rule, RuleHead, BUILTINS};

use crate::files::CompileProblem;
use crate::opa_builtins;
use crate::rules::ref_name;
use crate::source::FileKind;
use crate::syntax::{call_name, each_expr, rule_parts};

/// The builtins Vigil evaluates exactly like OPA: every one is exercised against OPA by the
/// differential suite, which also fails if one of them is missing from its probes. Most are
/// regorus's; those in `opa_builtins::REPLACED` are Vigil's own versions of OPA's.
pub const SUPPORTED_BUILTINS: &[&str] = &[
    // Aggregates, arrays, sets.
    "count",
    "sum",
    "product",
    "max",
    "min",
    "sort",
    "array.concat",
    "array.slice",
    "array.reverse",
    "intersection",
    "union",
    // Objects.
    "object.get",
    "object.keys",
    "object.remove",
    "object.union",
    "object.union_n",
    "object.filter",
    "object.subset",
    "json.remove",
    "json.filter",
    // Strings.
    "concat",
    "contains",
    "endswith",
    "startswith",
    "indexof_n",
    "replace",
    "split",
    "substring",
    "trim",
    "trim_left",
    "trim_right",
    "trim_prefix",
    "trim_suffix",
    "trim_space",
    "sprintf",
    "upper",
    "lower",
    "indexof",
    "strings.count",
    "strings.replace_n",
    "strings.reverse",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    // Regular expressions and globs.
    "regex.match",
    "regex.is_valid",
    "regex.find_n",
    "regex.replace",
    "regex.find_all_string_submatch_n",
    "regex.split",
    "regex.template_match",
    "glob.match",
    "glob.quote_meta",
    // Numbers.
    "abs",
    "floor",
    "round",
    "ceil",
    "to_number",
    "format_int",
    "numbers.range",
    "numbers.range_step",
    "bits.and",
    "bits.or",
    "bits.xor",
    "bits.negate",
    "bits.lsh",
    "bits.rsh",
    // Types.
    "is_string",
    "is_number",
    "is_boolean",
    "is_array",
    "is_set",
    "is_object",
    "is_null",
    "type_name",
    // Encodings.
    "base64.encode",
    "base64.decode",
    "base64.is_valid",
    "base64url.encode",
    "base64url.decode",
    "base64url.encode_no_pad",
    "hex.encode",
    "hex.decode",
    "json.unmarshal",
    "json.is_valid",
    "urlquery.encode",
    "urlquery.encode_object",
    "urlquery.decode",
    "urlquery.decode_object",
    // Networks.
    "net.cidr_is_valid",
    "net.cidr_contains",
    "net.cidr_expand",
    "net.cidr_merge",
    // Time.
    "time.now_ns",
    "time.date",
    "time.clock",
    "time.weekday",
    "time.diff",
    "time.parse_rfc3339_ns",
    "time.parse_duration_ns",
    "time.add_date",
    // Versions and units.
    "semver.compare",
    "semver.is_valid",
    "units.parse",
    "units.parse_bytes",
    // JSON Web Tokens (`tokens.rs`).
    "io.jwt.decode",
    "io.jwt.decode_verify",
    "io.jwt.verify_rs256",
    "io.jwt.verify_rs384",
    "io.jwt.verify_rs512",
    "io.jwt.verify_ps256",
    "io.jwt.verify_ps384",
    "io.jwt.verify_ps512",
    "io.jwt.verify_es256",
    "io.jwt.verify_es384",
    "io.jwt.verify_es512",
    "io.jwt.verify_eddsa",
    "io.jwt.verify_hs256",
    "io.jwt.verify_hs384",
    "io.jwt.verify_hs512",
    // Digests and HMACs (`digests.rs`).
    "crypto.md5",
    "crypto.sha1",
    "crypto.sha256",
    "crypto.hmac.md5",
    "crypto.hmac.sha1",
    "crypto.hmac.sha256",
    "crypto.hmac.sha512",
    "crypto.hmac.equal",
    // Output only: never changes a decision.
    "print",
];

/// Builtins whose results would differ from OPA's: regorus's, as the differential suite found,
/// and OPA builtins Vigil cannot reproduce.
const DIFFERENT_FROM_OPA: &[(&str, &str)] = &[
    (
        "crypto.x509.parse_certificates",
        "OPA returns Go's x509.Certificate structure field for field (raw DER, Go-named \
         extensions, big-integer encodings), which Vigil does not reproduce",
    ),
    (
        "json.marshal",
        "OPA escapes <, > and & in strings (\\u003c ...) and Vigil's engine does not",
    ),
    (
        "time.format",
        "fractional seconds are printed differently (OPA: .5Z, Vigil's engine: .500Z)",
    ),
    (
        "yaml.marshal",
        "strings are quoted differently (OPA: \"7\", Vigil's engine: '7')",
    ),
    (
        "time.parse_ns",
        "times OPA rejects (a lowercase `z`, a leap second, `2-29` for `01-02`) are accepted",
    ),
];

/// Namespaces of OPA builtins, to tell an OPA builtin Vigil lacks from a typo.
const OPA_NAMESPACES: &[&str] = &[
    "io",
    "crypto",
    "net",
    "graph",
    "graphql",
    "json",
    "yaml",
    "time",
    "strings",
    "regex",
    "units",
    "uuid",
    "rego",
    "opa",
    "providers",
    "http",
    "glob",
    "object",
    "array",
    "bits",
    "base64",
    "base64url",
    "hex",
    "urlquery",
    "semver",
    "numbers",
    "rand",
    "trace",
    "walk",
];

/// Why a call to `name` (a function the bundle does not define) is refused.
fn refusal(name: &str) -> String {
    if name == "http.send" {
        return "http.send is not supported in the Vigil sidecar: a decision never waits on \
                the network. Put what the policy needs in the bundle's data files, or have \
                the application call the service"
            .to_string();
    }
    if let Some((_, why)) = DIFFERENT_FROM_OPA.iter().find(|(n, _)| *n == name) {
        return format!(
            "{name} is refused because Vigil would not evaluate it exactly like OPA: {why}. \
             Rewrite the policy without it"
        );
    }
    if BUILTINS.contains_key(name) {
        return format!(
            "{name} is not among the builtins Vigil evaluates exactly like OPA \
             (vigil_authz::SUPPORTED_BUILTINS). Rewrite the policy without it"
        );
    }
    let namespace = name.split('.').next().unwrap_or(name);
    if name.contains('.') && OPA_NAMESPACES.contains(&namespace) {
        return format!(
            "{name} is an OPA builtin that Vigil does not implement, so every request \
             reaching this call would fail. Rewrite the policy without it"
        );
    }
    format!(
        "unknown function {name}: it is neither defined in the bundle nor a builtin Vigil \
         evaluates (check the name, or the import that should bring it in)"
    )
}

/// Why a call to a supported builtin is refused all the same: some builtins agree with OPA only
/// for arguments Vigil can check in the source.
fn argument_problem(name: &str, params: &[Ref<Expr>]) -> Option<String> {
    match name {
        "glob.match" => {
            let literal_pattern = matches!(
                params.first().map(|p| p.as_ref()),
                Some(Expr::String { value, .. } | Expr::RawString { value, .. })
                    if value.as_string().is_ok_and(|p| !p.contains("**"))
            );
            let literal_delimiters = matches!(
                params.get(1).map(|p| p.as_ref()),
                Some(Expr::Array { items, .. }) if !items.is_empty()
            );
            if literal_pattern && literal_delimiters {
                None
            } else {
                Some(
                    "glob.match is accepted only with a pattern written in the policy without \
                     `**`, and delimiters written as a non-empty array (e.g. [\"/\"]): Vigil's \
                     engine matches `**`, and [] (which OPA reads as [\".\"]), differently from \
                     OPA. Compare path segments instead (see policies/method-path)"
                        .to_string(),
                )
            }
        }
        "sprintf" => {
            let format = match params.first().map(|p| p.as_ref()) {
                Some(Expr::String { value, .. } | Expr::RawString { value, .. }) => {
                    value.as_string().ok().map(|s| s.to_string())
                }
                _ => None,
            };
            match format {
                Some(format) => opa_builtins::unsupported_directive(&format).map(|directive| {
                    format!(
                        "sprintf is accepted only with the verbs %s, %v, %d, %q and %% (no \
                         flags, widths or precisions), which Vigil formats exactly like OPA; \
                         this format has {directive}. Use those verbs, or concat"
                    )
                }),
                None => Some(
                    "sprintf is accepted only with a format string written in the policy (a \
                     string literal), so that Vigil can check it uses only the verbs it formats \
                     exactly like OPA (%s, %v, %d, %q, %%). Write the format in the call, or \
                     use concat"
                        .to_string(),
                ),
            }
        }
        _ => None,
    }
}

/// Refuses calls to functions that are neither defined in the bundle nor supported builtins,
/// in the bundle's policy modules (test modules, when loaded, are not checked).
pub(crate) fn check(modules: &[Ref<Module>]) -> Vec<CompileProblem> {
    let defined = defined_functions(modules);
    let sprintf_problem = sprintf_bundle_problem(modules);
    let mut problems = Vec::new();
    for module in modules {
        let file = module.package.span.source.file().clone();
        if FileKind::of(&file) != FileKind::Rego {
            continue;
        }
        let package = path_of(&module.package.refr).unwrap_or_default();
        let aliases = import_aliases(module);
        let mut seen = BTreeSet::new();
        for rule in &module.policy {
            each_expr(rule_parts(rule.as_ref()), &mut |expr| {
                let Expr::Call { fcn, params, .. } = expr else {
                    return;
                };
                // The call's own span starts at its `(`: point at the name instead.
                let Some((name, span)) = call_name(fcn) else {
                    return;
                };
                if resolves(&name, &package, &aliases, &defined) {
                    return;
                }
                let message = if SUPPORTED_BUILTINS.contains(&name.as_str()) {
                    let bundle_problem = match name.as_str() {
                        "sprintf" => sprintf_problem.clone(),
                        _ => None,
                    };
                    match bundle_problem.or_else(|| argument_problem(&name, params)) {
                        Some(message) => message,
                        None => return,
                    }
                } else {
                    refusal(&name)
                };
                if seen.insert((name, span.line)) {
                    problems.push(CompileProblem {
                        file: file.clone(),
                        line: span.line,
                        column: span.col,
                        message,
                    });
                }
            });
        }
    }
    problems
}

/// Supported builtins whose answer is not a function of their arguments alone: the clock
/// (`time.now_ns`, and `io.jwt.decode_verify`, which checks expiry against it), and
/// `print`, whose output is a side effect every evaluation must make.
const NOT_REPEATABLE: &[&str] = &["time.now_ns", "io.jwt.decode_verify", "print"];

/// Whether the bundle's decisions are a function of the input document alone (no call to a
/// builtin in [`NOT_REPEATABLE`]), so the same document always gets the same decision.
pub(crate) fn repeatable(modules: &[Ref<Module>]) -> bool {
    first_builtin_call(modules, &|name| NOT_REPEATABLE.contains(&name)).is_none()
}

/// The first call, as `file:line:col: name`, to a builtin (not a function of the bundle) that
/// `wanted` accepts.
fn first_builtin_call(modules: &[Ref<Module>], wanted: &dyn Fn(&str) -> bool) -> Option<String> {
    let defined = defined_functions(modules);
    for module in modules {
        let file = module.package.span.source.file().clone();
        let package = path_of(&module.package.refr).unwrap_or_default();
        let aliases = import_aliases(module);
        let mut found = None;
        for rule in &module.policy {
            each_expr(rule_parts(rule.as_ref()), &mut |expr| {
                let Expr::Call { fcn, .. } = expr else {
                    return;
                };
                let Some((name, span)) = call_name(fcn) else {
                    return;
                };
                if found.is_none()
                    && wanted(&name)
                    && !resolves(&name, &package, &aliases, &defined)
                {
                    found = Some(format!("{file}:{}:{}: {name}", span.line, span.col));
                }
            });
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Why `sprintf` cannot be accepted in this bundle whatever its format: OPA prints some
/// numbers as the text they were written in, which Vigil does not keep.
fn sprintf_bundle_problem(modules: &[Ref<Module>]) -> Option<String> {
    if let Some(call) = first_builtin_call(modules, &|name| name == "to_number") {
        return Some(format!(
            "sprintf is refused in a bundle that also calls to_number ({call}): OPA keeps the \
             text of the string a number came from and sprintf prints it (to_number(\"1e3\") \
             prints as 1e3), which Vigil does not keep. Format the string itself, or compare \
             numbers without formatting them"
        ));
    }
    let mut literal = None;
    for module in modules {
        for rule in &module.policy {
            each_expr(rule_parts(rule.as_ref()), &mut |expr| {
                if let Expr::Number { span, .. } = expr {
                    let text = span.text();
                    if literal.is_none() && text.contains(['e', 'E']) && !text.contains('.') {
                        literal = Some(format!(
                            "{}:{}:{}: {text}",
                            span.source.file(),
                            span.line,
                            span.col
                        ));
                    }
                }
            });
        }
    }
    literal.map(|at| {
        format!(
            "sprintf is refused in a bundle holding a number written with an exponent and no \
             decimal point ({at}): OPA's sprintf prints such a number as written (1e3), Vigil as \
             its value (1000). Write the number out (1000) or with a decimal point (1.0e3)"
        )
    })
}

/// `data.`-rooted paths of every function the bundle defines.
fn defined_functions(modules: &[Ref<Module>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for module in modules {
        let Some(package) = path_of(&module.package.refr) else {
            continue;
        };
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Func { refr, .. },
                    ..
                } => refr,
                Rule::Default { refr, args, .. } if !args.is_empty() => refr,
                _ => continue,
            };
            out.insert(format!("data.{package}.{}", ref_name(refr)));
        }
    }
    out
}

/// The dotted path of a reference: `a.b` for `package a.b`, `data.a.b` for `import data.a.b`.
fn path_of(refr: &Ref<Expr>) -> Option<String> {
    let parts = Parser::get_path_ref_components(refr).ok()?;
    Some(parts.iter().map(|s| s.text()).collect::<Vec<_>>().join("."))
}

/// Import aliases of a module: `import data.lib` gives `lib`, `import data.x as y` gives `y`.
fn import_aliases(module: &Module) -> BTreeMap<String, String> {
    let mut aliases = BTreeMap::new();
    for import in &module.imports {
        let Some(path) = path_of(&import.refr) else {
            continue;
        };
        let alias = match &import.r#as {
            Some(span) => span.text().to_string(),
            None => path.rsplit('.').next().unwrap_or_default().to_string(),
        };
        aliases.insert(alias, path);
    }
    aliases
}

/// Whether a call names a function the bundle defines: in the caller's package, by its
/// `data.` path, or through an import alias.
fn resolves(
    name: &str,
    package: &str,
    aliases: &BTreeMap<String, String>,
    defined: &BTreeSet<String>,
) -> bool {
    if defined.contains(&format!("data.{package}.{name}")) || defined.contains(name) {
        return true;
    }
    let (head, rest) = name.split_once('.').unwrap_or((name, ""));
    aliases.get(head).is_some_and(|path| {
        let full = if rest.is_empty() {
            path.clone()
        } else {
            format!("{path}.{rest}")
        };
        defined.contains(&full)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(rego: &str) -> Vec<CompileProblem> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("p.rego".into(), rego.into())
            .expect("parses");
        check(engine.get_modules())
    }

    #[test]
    fn supported_builtins_are_regorus_or_vigil_builtins() {
        let vigil: Vec<&str> = opa_builtins::vigil_builtins().map(|(n, _)| n).collect();
        for name in SUPPORTED_BUILTINS {
            assert!(
                *name == "print" || BUILTINS.contains_key(name) || vigil.contains(name),
                "{name} is not a builtin of this regorus build"
            );
        }
    }

    #[test]
    fn names_the_function_and_where() {
        let p = problems(
            "package p\nallow if {\n  x := io.jwt.encode_sign({}, {}, {})\n  x\n}\n\
             y := json.marshal({}) if true\nz := http.send({})\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!((p[0].file.as_str(), p[0].line), ("p.rego", 3));
        assert!(
            p[0].message
                .starts_with("io.jwt.encode_sign is an OPA builtin"),
            "{p:?}"
        );
        assert!(p[1].message.starts_with("json.marshal is refused"), "{p:?}");
        assert!(
            p[2].message.contains("not supported in the Vigil sidecar"),
            "{p:?}"
        );
    }

    #[test]
    fn sprintf_is_accepted_only_with_formats_vigil_writes_like_opa() {
        let p = problems(
            "package p\nf := \"%s\"\na := sprintf(\"%s-%d %v %q 100%%\", [1, 2, 3, 4])\n\
             b := sprintf(\"%5s\", [\"x\"])\nc := sprintf(f, [\"x\"])\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].line, 4);
        assert!(p[0].message.contains("this format has %5"), "{p:?}");
        assert_eq!(p[1].line, 5);
        assert!(p[1].message.contains("written in the policy"), "{p:?}");
        let p = problems("package p\na := sprintf(\"%v\", [to_number(input.n)])\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("also calls to_number"), "{p:?}");
    }

    #[test]
    fn bundle_functions_resolve() {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(
                "lib.rego".into(),
                "package lib\nf(x) := x\nns.g(x) := x\n".into(),
            )
            .expect("parses");
        engine
            .add_policy(
                "p.rego".into(),
                "package p\nimport data.lib\nimport data.lib as l2\nh(x) := x\n\
                 allow if { lib.f(1); l2.ns.g(2); data.lib.f(3); h(4); trim_space(\" A\") }\n\
                 deny if nope(1)\n"
                    .into(),
            )
            .expect("parses");
        let p = check(engine.get_modules());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.starts_with("unknown function nope"), "{p:?}");
    }
}
