//! Reading bundle directories and loading their files into a regorus engine.
//!
//! Shared by bundle compilation, the test runner and `explain`, so that all three see exactly
//! the same modules and data document.

use std::fs;
use std::path::Path;

use regorus::{Engine, Value};

use crate::files::{BundleError, CompileProblem, PolicyFile};

/// Which files of a directory to read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestFiles {
    Skip,
    Include,
}

/// Reads policy and data files under `dir`, recursively, in sorted path order.
pub(crate) fn read_dir(dir: &Path, tests: TestFiles) -> Result<Vec<PolicyFile>, BundleError> {
    let mut files = Vec::new();
    walk(dir, dir, tests, 0, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Deeper than any real bundle; stops a symlink loop from recursing forever.
const MAX_DEPTH: usize = 32;

fn walk(
    root: &Path,
    dir: &Path,
    tests: TestFiles,
    depth: usize,
    out: &mut Vec<PolicyFile>,
) -> Result<(), BundleError> {
    if depth > MAX_DEPTH {
        return Err(BundleError::io(
            dir,
            std::io::Error::other("directory nesting too deep (symlink loop?)"),
        ));
    }
    let entries = fs::read_dir(dir).map_err(|e| BundleError::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BundleError::io(dir, e))?;
        paths.push(entry.path());
    }
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Hidden entries (.git, .manifest, editor swap files, and the ..data directories of
        // Kubernetes ConfigMap mounts, whose files are also linked from the top) are skipped.
        if name.starts_with('.') {
            continue;
        }
        let file_type = fs::metadata(&path).map_err(|e| BundleError::io(&path, e))?;
        if file_type.is_dir() {
            walk(root, &path, tests, depth + 1, out)?;
            continue;
        }
        let kind = FileKind::of(&name);
        let wanted = match kind {
            FileKind::Rego => true,
            FileKind::RegoTest => tests == TestFiles::Include,
            FileKind::Json | FileKind::Yaml => true,
            FileKind::Other => false,
        };
        if !wanted {
            continue;
        }
        let contents = fs::read_to_string(&path).map_err(|e| BundleError::io(&path, e))?;
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let rel = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        out.push(PolicyFile {
            path: rel,
            contents,
        });
    }
    Ok(())
}

/// What a bundle file is, decided by its name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FileKind {
    Rego,
    RegoTest,
    Json,
    Yaml,
    Other,
}

impl FileKind {
    pub(crate) fn of(path: &str) -> FileKind {
        if path.ends_with("_test.rego") {
            FileKind::RegoTest
        } else if path.ends_with(".rego") {
            FileKind::Rego
        } else if path.ends_with(".json") {
            FileKind::Json
        } else if path.ends_with(".yaml") || path.ends_with(".yml") {
            FileKind::Yaml
        } else {
            FileKind::Other
        }
    }
}

/// Loads every module and data file (sorted by path) into a fresh engine, collecting all
/// parse problems.
pub(crate) fn load_engine(files: &[PolicyFile]) -> Result<Engine, BundleError> {
    let mut engine = Engine::new();
    // Builtins that fail (bad regex, bad base64) make the expression undefined, as in OPA,
    // instead of aborting the whole evaluation.
    engine.set_strict_builtin_errors(false);
    // Vigil's versions of builtins where regorus's differ from OPA's.
    crate::opa_builtins::register(&mut engine, false);
    let mut problems = Vec::new();
    for pair in files.windows(2) {
        if pair[0].path == pair[1].path {
            problems.push(CompileProblem {
                file: pair[1].path.clone(),
                line: 0,
                column: 0,
                message: "duplicate file path in bundle".into(),
            });
        }
    }
    for file in files {
        match FileKind::of(&file.path) {
            FileKind::Rego | FileKind::RegoTest => {
                if let Err(problem) = add_module(&mut engine, file) {
                    problems.push(problem);
                }
            }
            FileKind::Json | FileKind::Yaml => add_data_file(&mut engine, file)?,
            FileKind::Other => {}
        }
    }
    if !problems.is_empty() {
        return Err(BundleError::from_problems(problems));
    }
    Ok(engine)
}

/// Adds one module, accepting Rego v1 and, for policies written before OPA 1.0, Rego v0.
fn add_module(engine: &mut Engine, file: &PolicyFile) -> Result<(), CompileProblem> {
    match engine.add_policy(file.path.clone(), file.contents.clone()) {
        Ok(_) => Ok(()),
        Err(v1_error) => {
            // OPA-Envoy deployments still carry v0 policies (`allow { ... }`); OPA accepts them
            // in v0-compatible mode, so do the same rather than refuse them.
            engine.set_rego_v0(true);
            let v0 = engine.add_policy(file.path.clone(), file.contents.clone());
            engine.set_rego_v0(false);
            match v0 {
                Ok(_) => {
                    tracing::debug!(file = %file.path, "loaded policy with Rego v0 syntax");
                    Ok(())
                }
                // Report the v1 error: v1 is the language we document.
                Err(_) => Err(problem_from_error(&format!("{v1_error:#}"), &file.path)),
            }
        }
    }
}

/// Merges a JSON or YAML data file into `data` at the path of its directory.
fn add_data_file(engine: &mut Engine, file: &PolicyFile) -> Result<(), BundleError> {
    let data_error = |message: String| BundleError::Data {
        file: file.path.clone(),
        message,
    };
    let parsed = if file.path.ends_with(".json") {
        Value::from_json_str(&file.contents)
    } else {
        Value::from_yaml_str(&file.contents)
    }
    .map_err(|e| data_error(format!("{e:#}")))?;

    let mut dirs: Vec<&str> = file.path.split('/').collect();
    dirs.pop();
    let mut value = parsed;
    for dir in dirs.iter().rev() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(Value::from(*dir), value);
        value = Value::from(map);
    }
    if value.as_object().is_err() {
        return Err(data_error(
            "a data file at the bundle root must hold an object".into(),
        ));
    }
    engine
        .add_data(value)
        .map_err(|e| data_error(format!("{e:#}")))
}

/// Turns a regorus error ("\n--> file:line:col\n ... \nerror: message") into a problem.
pub(crate) fn problem_from_error(text: &str, fallback_file: &str) -> CompileProblem {
    let located = text.find("--> ").and_then(|start| {
        let rest = &text[start + 4..];
        let loc = rest.lines().next()?;
        let mut parts = loc.rsplitn(3, ':');
        let column = parts.next()?.trim().parse::<u32>().ok()?;
        let line = parts.next()?.trim().parse::<u32>().ok()?;
        let file = parts.next()?.to_string();
        let message = rest
            .find("error: ")
            .map(|i| {
                rest[i + 7..]
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| first_line(text));
        Some(CompileProblem {
            file,
            line,
            column,
            message,
        })
    });
    located.unwrap_or_else(|| CompileProblem {
        file: fallback_file.to_string(),
        line: 0,
        column: 0,
        message: first_line(text),
    })
}

/// Condenses a multi-line regorus error into one "file:line:col: message" line.
pub(crate) fn condense_error(text: &str) -> String {
    if text.contains("--> ") {
        problem_from_error(text, "").to_string()
    } else {
        first_line(text)
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Splits `data.a.b.c` into `["a", "b", "c"]`; `None` when it is not a plain rule path.
pub(crate) fn rule_components(rule: &str) -> Option<Vec<&str>> {
    let rest = rule.strip_prefix("data.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    let valid = parts.iter().all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    (valid && parts.len() >= 2).then_some(parts)
}

/// Whether some loaded module declares the rule (a definition or a default).
pub(crate) fn rule_is_declared(engine: &Engine, rule: &str) -> bool {
    let Some(components) = rule_components(rule) else {
        return false;
    };
    let Ok(packages) = engine.get_policy_package_components() else {
        return false;
    };
    packages.iter().any(|pkg| {
        let n = pkg.components.len();
        n < components.len()
            && pkg
                .components
                .iter()
                .zip(components.iter())
                .all(|(a, b)| a == b)
            && engine
                .has_declared_rule_rooted_at(&pkg.source_file, &components[n..].join("."))
                .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regorus_locations() {
        let text = "\n--> dir/a.rego:3:5\n  |\n3 | allow if {\n  |     ^\nerror: unexpected token";
        let p = problem_from_error(text, "x");
        assert_eq!(p.file, "dir/a.rego");
        assert_eq!((p.line, p.column), (3, 5));
        assert_eq!(p.message, "unexpected token");
    }

    #[test]
    fn rule_paths() {
        assert_eq!(
            rule_components("data.vigil.authz.allow"),
            Some(vec!["vigil", "authz", "allow"])
        );
        assert_eq!(rule_components("vigil.authz.allow"), None);
        assert_eq!(rule_components("data.allow"), None);
    }
}
