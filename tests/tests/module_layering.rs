//! The module layering `docs/architecture.md` describes, kept true as the code changes:
//! inside every crate the modules depend on each other in one direction (no cycle of
//! `crate::` / `super::` references between files), and the proxy's concerns stack in the
//! order the document lists, each using only those before it.
//!
//! A reference is a `crate::…` or `super::…` path in code (comments and `#[cfg(test)]`
//! modules left out, since a test may reach anywhere); it counts for the deepest module
//! file the path names. The crate root, which declares and wires every module, is left
//! out of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module by its path inside its crate (`["outbound", "balance"]`).
type Module = Vec<String>;

/// Every module file of a crate's `src/`, by module path (binaries left out).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![(src.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, parent)) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !(parent.is_empty() && name == "bin") {
                    let mut module = parent.clone();
                    module.push(name);
                    dirs.push((path, module));
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            let module = match stem {
                "main" if parent.is_empty() => continue,
                "lib" | "main" | "mod" => parent.clone(),
                _ => parent.iter().cloned().chain([stem.to_string()]).collect(),
            };
            found.insert(module, path);
        }
    }
    found
}

/// The file's lines with comments and `#[cfg(test)]` modules blanked (numbering kept).
fn code_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            let item = lines.get(j).map_or("", |l| l.trim_start());
            let item = item.strip_prefix("pub ").unwrap_or(item);
            if item.starts_with("mod ") && item.trim_end().ends_with('{') {
                let mut depth = 0i32;
                let mut k = j;
                while k < lines.len() {
                    depth += lines[k].matches('{').count() as i32;
                    depth -= lines[k].matches('}').count() as i32;
                    k += 1;
                    if depth <= 0 {
                        break;
                    }
                }
                out.extend((i..k).map(|_| String::new()));
                i = k;
                continue;
            }
        }
        out.push(if trimmed.starts_with("//") {
            String::new()
        } else {
            lines[i].to_string()
        });
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The leading `a::b::c` of `s`.
fn path_prefix(s: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = s.trim_start();
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(more) => rest = more,
            None => break,
        }
    }
    segments.retain(|s| s != "self");
    segments
}

/// The module paths a line of `module` names, absolute, one per path or group item.
fn references(line: &str, module: &[String]) -> Vec<Module> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = line[at..].find("::").map(|p| p + at) {
        at = pos + 2;
        let before = &line[..pos];
        let word_start = before.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
        let word = &before[word_start..];
        if word != "crate" && word != "super" {
            continue;
        }
        // Only where a path starts: not the `super` of `a::super::b`.
        if before[..word_start].ends_with("::") {
            continue;
        }
        // `super` is the parent module, for `a/b.rs` and `a/b/mod.rs` alike.
        let mut base: Module = if word == "crate" {
            Vec::new()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut rest = &line[at..];
        while let Some(more) = rest.strip_prefix("super::") {
            base.pop();
            rest = more;
            at += "super::".len();
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    let mut full = base.clone();
                    full.extend(path_prefix(&item));
                    found.push(full);
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    item.push(c);
                }
            }
        } else {
            let mut full = base;
            full.extend(path_prefix(rest));
            found.push(full);
        }
    }
    found
}

/// File-level references between a crate's modules: (from, to) → where, first seen.
fn graph(src: &Path) -> BTreeMap<(Module, Module), String> {
    let modules = modules(src);
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("source file");
        for (n, line) in code_lines(&text).iter().enumerate() {
            for path in references(line, module) {
                let target = (0..=path.len())
                    .rev()
                    .map(|k| path[..k].to_vec())
                    .find(|p| modules.contains_key(p));
                match target {
                    Some(t) if !t.is_empty() && t != *module && !module.is_empty() => {
                        edges
                            .entry((module.clone(), t))
                            .or_insert_with(|| format!("{}:{}", file.display(), n + 1));
                    }
                    _ => {}
                }
            }
        }
    }
    edges
}

/// A cycle among the graph's modules, as the references that make it, if there is one.
fn cycle(edges: &BTreeMap<(Module, Module), String>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first, colouring: a grey module met again closes a cycle.
    fn visit<'a>(
        m: &'a Module,
        next: &BTreeMap<&'a Module, Vec<&'a Module>>,
        grey: &mut Vec<&'a Module>,
        done: &mut BTreeSet<&'a Module>,
    ) -> Option<Vec<&'a Module>> {
        if let Some(i) = grey.iter().position(|g| *g == m) {
            let mut found = grey[i..].to_vec();
            found.push(m);
            return Some(found);
        }
        if !done.insert(m) {
            return None;
        }
        grey.push(m);
        for n in next.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, next, grey, done) {
                return Some(c);
            }
        }
        grey.pop();
        None
    }
    let mut done = BTreeSet::new();
    for start in next.keys() {
        let mut grey = Vec::new();
        if let Some(path) = visit(start, &next, &mut grey, &mut done) {
            return Some(
                path.windows(2)
                    .map(|w| {
                        let at = &edges[&(w[0].clone(), w[1].clone())];
                        format!("{} uses {} ({at})", w[0].join("::"), w[1].join("::"))
                    })
                    .collect(),
            );
        }
    }
    None
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_crate_has_a_cycle_between_its_modules() {
    for krate in ["api", "identity", "authz", "proxy", "control-plane"] {
        let src = workspace().join(krate).join("src");
        let edges = graph(&src);
        assert!(
            edges.len() > 1,
            "{krate}: found no references between modules in {}: is the parser still right?",
            src.display()
        );
        if let Some(cycle) = cycle(&edges) {
            panic!(
                "{krate}: its modules depend on each other in a cycle; move what they share \
                 into a leaf module of its own (docs/architecture.md, \"Layout\"):\n  {}",
                cycle.join("\n  ")
            );
        }
    }
}

/// The proxy's concerns in the order docs/architecture.md gives, lowest first.
fn documented_order() -> Vec<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/architecture.md"))
        .expect("docs/architecture.md");
    let start = doc
        .find("In the proxy the concerns stack")
        .expect("docs/architecture.md says how the proxy's concerns stack");
    // Lines are wrapped anywhere: compare with the whitespace collapsed.
    let paragraph = doc[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let end = paragraph
        .find("which the crate root wires together")
        .expect("the order ends with what the crate root wires together");
    paragraph[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_proxy_concerns_use_only_those_below_them() {
    let order = documented_order();
    assert!(
        order.len() > 5,
        "the documented order is too short: {order:?}"
    );
    let rank = |c: &str| order.iter().position(|o| o == c);
    let mut wrong = Vec::new();
    for ((from, to), at) in graph(&workspace().join("proxy/src")) {
        let (a, b) = (&from[0], &to[0]);
        if a == b {
            continue;
        }
        match (rank(a), rank(b)) {
            (Some(x), Some(y)) if y < x => {}
            (Some(_), Some(_)) => wrong.push(format!("{a} uses {b}, which is above it ({at})")),
            (None, _) => wrong.push(format!("{a} is not in the documented order ({at})")),
            (_, None) => wrong.push(format!("{b} is not in the documented order ({at})")),
        }
    }
    assert!(
        wrong.is_empty(),
        "the proxy's concerns no longer stack as docs/architecture.md says ({order:?}); \
         move the shared part below both, or change the order there:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_checker_finds_a_cycle_and_skips_comments_and_tests() {
    let dir = std::env::temp_dir().join(format!("vigil-layering-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("low")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod low;\npub mod high;\n").unwrap();
    std::fs::write(src.join("low/mod.rs"), "pub mod leaf;\npub use leaf::X;\n").unwrap();
    std::fs::write(
        src.join("low/leaf.rs"),
        "// crate::high in a comment does not count\nuse crate::{high::Y, low};\npub struct X;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("high.rs"),
        "use super::low::leaf::X;\npub struct Y;\n#[cfg(test)]\nmod tests {\n    use crate::low;\n}\n",
    )
    .unwrap();
    let edges = graph(&src);
    let names: Vec<String> = edges
        .keys()
        .map(|(a, b)| format!("{}>{}", a.join("::"), b.join("::")))
        .collect();
    assert_eq!(
        names,
        ["high>low::leaf", "low::leaf>high", "low::leaf>low"],
        "{edges:?}"
    );
    let found = cycle(&edges).expect("a cycle between high and low::leaf");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("leaf.rs:2") || found[1].contains("leaf.rs:2"),
        "{found:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
