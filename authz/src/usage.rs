//! Which optional parts of the input document a bundle can observe.
//!
//! Request headers are the largest part of the input document (each one is a string key and
//! value to allocate). A bundle whose modules never mention `headers` (as a name or in a string)
//! and never take `input`, `input.attributes`, `input.attributes.request` or
//! `input.attributes.request.http` as a whole (which could reach the headers by iterating or
//! serializing) cannot tell whether they are there, so its input gets an empty headers object.

use regorus::unstable::TokenKind;

use crate::files::PolicyFile;
use crate::fold::{tokenize, Tok};
use crate::source::FileKind;

/// What the input document of a bundle must contain beyond what is always there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InputNeeds {
    /// `attributes.request.http.headers`.
    pub headers: bool,
    /// `attributes.{source,destination}.address`.
    pub addresses: bool,
    /// `parsed_query`.
    pub parsed_query: bool,
    /// `attributes.request.http.id`, the request id: different on every request, so a
    /// bundle that cannot observe it gets the same document for the same request and its
    /// decisions can be remembered (see `engine.rs`).
    pub request_id: bool,
}

impl InputNeeds {
    /// Everything: for callers that don't know the policy.
    pub(crate) const ALL: InputNeeds = InputNeeds {
        headers: true,
        addresses: true,
        parsed_query: true,
        request_id: true,
    };
}

/// An optional part: where it is in the document, and the word that names it.
struct Part {
    paths: &'static [&'static [&'static str]],
    word: &'static str,
    /// A name must be the word itself, not merely contain it: for a word as short as
    /// `id`, which is inside `identity`, `valid`, ...
    whole_name: bool,
}

const HEADERS: Part = Part {
    paths: &[&["attributes", "request", "http", "headers"]],
    word: "headers",
    whole_name: false,
};
const ADDRESSES: Part = Part {
    paths: &[
        &["attributes", "source", "address"],
        &["attributes", "destination", "address"],
    ],
    word: "address",
    whole_name: false,
};
const PARSED_QUERY: Part = Part {
    paths: &[&["parsed_query"]],
    word: "parsed_query",
    whole_name: false,
};
const REQUEST_ID: Part = Part {
    paths: &[&["attributes", "request", "http", "id"]],
    word: "id",
    whole_name: true,
};

/// Works out what the bundle's modules can observe; everything when in doubt.
pub(crate) fn input_needs(files: &[PolicyFile]) -> InputNeeds {
    let mut needs = InputNeeds {
        headers: false,
        addresses: false,
        parsed_query: false,
        request_id: false,
    };
    for file in files {
        if !matches!(
            FileKind::of(&file.path),
            FileKind::Rego | FileKind::RegoTest
        ) {
            continue;
        }
        let Some(toks) = tokenize(file) else {
            return InputNeeds::ALL;
        };
        let refs = input_refs(&toks);
        needs.headers |= may_reach(&toks, &refs, &HEADERS);
        needs.addresses |= may_reach(&toks, &refs, &ADDRESSES);
        needs.parsed_query |= may_reach(&toks, &refs, &PARSED_QUERY);
        needs.request_id |= may_reach(&toks, &refs, &REQUEST_ID);
    }
    needs
}

/// Whether a module names the part (as a name or in a string) or uses one of its ancestors as
/// a whole (which could reach it by iterating, a computed key or serializing).
fn may_reach(toks: &[Tok], refs: &[Vec<String>], part: &Part) -> bool {
    toks.iter().any(|t| names(t, part))
        || refs.iter().any(|r| {
            part.paths
                .iter()
                .any(|path| r.len() < path.len() && r.iter().zip(path.iter()).all(|(a, b)| a == b))
        })
}

/// Whether a token may name the part: any string containing its word; a name containing
/// it, or that is it when the part asks for a whole name.
fn names(t: &Tok, part: &Part) -> bool {
    match t.kind {
        TokenKind::String | TokenKind::RawString => t.text.contains(part.word),
        _ if part.whole_name => t.text == part.word,
        _ => t.text.contains(part.word),
    }
}

/// The static paths of every reference to `input` (through import aliases too), e.g.
/// `["attributes", "request", "http", "method"]`; `input[x]` gives `[]`.
fn input_refs(toks: &[Tok]) -> Vec<Vec<String>> {
    let text = |i: usize| toks.get(i).map(|t| t.text.as_str());
    let ident = |i: usize| {
        toks.get(i)
            .filter(|t| matches!(t.kind, TokenKind::Ident))
            .map(|t| t.text.as_str())
    };
    // Aliases of input paths: `import input.attributes.request.http as req`.
    let mut aliases: Vec<(String, Vec<String>)> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.text == "import" && ident(i + 1) == Some("input") {
            let (path, mut j) = ref_path(toks, i + 2);
            let alias = if text(j) == Some("as") {
                j += 1;
                ident(j).map(str::to_string)
            } else {
                path.last().cloned().or_else(|| Some("input".to_string()))
            };
            if let Some(alias) = alias {
                aliases.push((alias, path));
            }
        }
    }
    let mut refs = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if !matches!(t.kind, TokenKind::Ident) || (i > 0 && text(i - 1) == Some(".")) {
            continue;
        }
        // The import itself (`import input...` and its `as alias`) is not a use.
        if i > 0 && matches!(text(i - 1), Some("import" | "as")) {
            continue;
        }
        let mut path: Vec<String> = if t.text == "input" {
            Vec::new()
        } else if let Some((_, path)) = aliases.iter().find(|(a, _)| *a == t.text) {
            path.clone()
        } else {
            continue;
        };
        path.extend(ref_path(toks, i + 1).0);
        refs.push(path);
    }
    refs
}

/// `.a.b.c` starting at `i`: the names, and the index after them.
fn ref_path(toks: &[Tok], mut i: usize) -> (Vec<String>, usize) {
    let mut path = Vec::new();
    while toks.get(i).is_some_and(|t| t.text == ".")
        && toks
            .get(i + 1)
            .is_some_and(|t| matches!(t.kind, TokenKind::Ident))
    {
        path.push(toks[i + 1].text.clone());
        i += 2;
    }
    (path, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(rego: &str) -> bool {
        input_needs(&[PolicyFile {
            path: "p.rego".into(),
            contents: rego.into(),
        }])
        .headers
    }

    fn all(rego: &str) -> InputNeeds {
        input_needs(&[PolicyFile {
            path: "p.rego".into(),
            contents: rego.into(),
        }])
    }

    #[test]
    fn headers_only_when_observable() {
        let pkg = "package p\n";
        assert!(!needs(&format!(
            "{pkg}allow if input.attributes.request.http.method == \"GET\""
        )));
        assert!(!needs(&format!(
            "{pkg}allow if input.parsed_path[0] == \"x\""
        )));
        assert!(needs(&format!(
            "{pkg}allow if input.attributes.request.http.headers.x"
        )));
        assert!(needs(&format!(
            "{pkg}allow if object.get(input.attributes.request.http, \"headers\", 1)"
        )));
        assert!(needs(&format!(
            "{pkg}allow if {{ h := input.attributes.request.http; h[k] }}"
        )));
        assert!(needs(&format!("{pkg}allow if json.marshal(input)")));
        assert!(needs(&format!("{pkg}allow if input[x]")));
        assert!(needs(&format!(
            "{pkg}import input.attributes.request.http as req\nallow if req[k]"
        )));
        assert!(!needs(&format!(
            "{pkg}import input.attributes.request.http as req\nallow if req.method"
        )));
        assert!(needs(&format!(
            "{pkg}allow if {{ x := {{\"a\": 1}} with input as {{}} }}"
        )));
    }

    #[test]
    fn addresses_and_query() {
        let pkg = "package p\n";
        let n = all(&format!(
            "{pkg}allow if input.attributes.source.principal == \"x\""
        ));
        assert!(!n.addresses && !n.parsed_query && !n.headers);
        let n = all(&format!(
            "{pkg}allow if net.cidr_contains(\"10.0.0.0/8\", input.attributes.source.address.socketAddress.address)"
        ));
        assert!(n.addresses && !n.parsed_query);
        let n = all(&format!(
            "{pkg}allow if {{ s := input.attributes.source; s[k] }}"
        ));
        assert!(n.addresses);
        let n = all(&format!("{pkg}allow if input.parsed_query.debug"));
        assert!(n.parsed_query && !n.addresses);
        assert_eq!(all(&format!("{pkg}allow if input")), InputNeeds::ALL);
    }

    #[test]
    fn the_request_id_only_when_observable() {
        let pkg = "package p\n";
        let n = all(&format!(
            "{pkg}mesh_identity if startswith(input.attributes.source.principal, \"spiffe://\")\nallow if mesh_identity"
        ));
        assert!(!n.request_id, "names that merely contain `id` do not count");
        for observing in [
            "allow if input.attributes.request.http.id != \"\"",
            "allow if object.get(input.attributes.request.http, \"id\", 1)",
            "allow if { h := input.attributes.request.http; h[k] }",
            "allow if count(input.attributes.request) > 0",
            "import input.attributes.request.http as req\nallow if req.id",
        ] {
            assert!(all(&format!("{pkg}{observing}")).request_id, "{observing}");
        }
    }
}
