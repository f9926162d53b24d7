//! Differential suite: Vigil's policy decisions against OPA's, with OPA as the oracle.
//!
//! Every shipped policy (policies/), every policy of the corpus (tests/opa_oracle/corpus/,
//! written to exercise the language and the builtins) and the bundles imported from Istio's
//! documented examples (tests/istio_import/) is evaluated on the same requests by
//! OPA 1.x (the `opa-golib-python-bindings` package, driven by tests/opa_oracle/driver.py in
//! one python3 process) and by Vigil on every engine path it uses: the engine the bundle runs
//! on in the proxy, and the tree interpreter. Input documents come from the proxy's own
//! builder, so OPA sees exactly what Vigil evaluates. Any difference fails the test, printing
//! the policy, the input and both answers.
//!
//! OPA runs there with strict builtin errors: where one of its builtins fails, the suite checks
//! that Vigil's builtin fails too (on the interpreter, in strict mode) instead of comparing
//! values. Bundles Vigil refuses at compile time are counted, not compared; requests Vigil
//! refuses to turn into an input document (unparseable, so the proxy fails closed) likewise.

#[path = "opa_oracle/jwt_corpus.rs"]
mod jwt_corpus;
#[path = "opa_oracle/requests.rs"]
mod requests;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value as Json};
use vigil_authz::{
    BackendPreference, PolicyBundle, PolicyFile, PolicyOptions, Value, SUPPORTED_BUILTINS,
};

use requests::RequestFacts;

const INSTALL_HINT: &str = "install OPA for Python with: \
    pip3 install --ignore-requires-python opa-golib-python-bindings \
    (or run scripts/test.sh, which installs it)";

fn authz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// OPA behind a python3 process speaking JSON lines.
struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn start() -> Oracle {
        let probe = Command::new("python3")
            .args(["-c", "import opa_bindings"])
            .output()
            .unwrap_or_else(|e| {
                panic!("python3 is needed for the OPA oracle ({e}); {INSTALL_HINT}")
            });
        assert!(
            probe.status.success(),
            "python3 cannot import opa_bindings ({}); {INSTALL_HINT}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        let mut child = Command::new("python3")
            .arg(authz_dir().join("tests/opa_oracle/driver.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OPA driver");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        Oracle {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, request: &Json) -> Json {
        let mut line = serde_json::to_string(request).expect("request JSON");
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .expect("write to driver");
        self.stdin.flush().expect("flush driver");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from driver");
        assert!(!answer.is_empty(), "the OPA driver exited; see its stderr");
        serde_json::from_str(&answer).expect("driver answer JSON")
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bundle of the suite and its decision rule.
struct Case {
    name: String,
    files: Vec<PolicyFile>,
    rule: String,
    shipped: bool,
}

fn rule_of(files: &[PolicyFile]) -> String {
    for file in files {
        for line in file.contents.lines() {
            if let Some(rule) = line.strip_prefix("# decision:") {
                return rule.trim().to_string();
            }
        }
    }
    if files
        .iter()
        .any(|f| f.contents.contains("\npackage envoy.authz"))
    {
        "data.envoy.authz.allow".to_string()
    } else {
        "data.vigil.authz.allow".to_string()
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let shipped = authz_dir().join("../policies");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&shipped)
        .expect("policies/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let files = PolicyBundle::read_dir(&dir).expect("readable policy directory");
        out.push(Case {
            name: format!(
                "policies/{}",
                dir.file_name().expect("name").to_string_lossy()
            ),
            rule: rule_of(&files),
            files,
            shipped: true,
        });
    }
    // A corpus entry is one .rego file, or a directory holding a bundle.
    let corpus = authz_dir().join("tests/opa_oracle/corpus");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("corpus/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rego"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let files = if path.is_dir() {
            PolicyBundle::read_dir(&path).expect("readable corpus bundle")
        } else {
            vec![PolicyFile {
                path: name.clone(),
                contents: std::fs::read_to_string(&path).expect("corpus file"),
            }]
        };
        out.push(Case {
            name: format!("corpus/{name}"),
            rule: rule_of(&files),
            files,
            shipped: false,
        });
    }
    // The bundles `vigil policy import istio` writes for Istio's documented examples
    // (tests/istio_import/): Vigil's importer must write Rego both engines read alike.
    let examples = authz_dir().join("tests/istio_import");
    let mut yamls: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("istio_import/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    yamls.sort();
    for path in yamls {
        let yaml = std::fs::read_to_string(&path).expect("example");
        let import = vigil_authz::import_istio(&yaml, &vigil_authz::IstioImportOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push(Case {
            name: format!(
                "istio_import/{}",
                path.file_name().expect("name").to_string_lossy()
            ),
            files: import
                .files
                .into_iter()
                .filter(|f| !f.path.ends_with("_test.rego"))
                .collect(),
            rule: "data.vigil.authz.allow".to_string(),
            shipped: true,
        });
    }
    out
}

/// The data document of a bundle's data files (merged at their directory), for OPA.
fn data_document(files: &[PolicyFile]) -> Json {
    let mut data = json!({});
    for file in files.iter().filter(|f| f.path.ends_with(".json")) {
        let mut value: Json = serde_json::from_str(&file.contents).expect("data JSON");
        let mut dirs: Vec<&str> = file.path.split('/').collect();
        dirs.pop();
        for dir in dirs.iter().rev() {
            value = json!({ *dir: value });
        }
        merge(&mut data, value);
    }
    data
}

fn merge(into: &mut Json, from: Json) {
    match (into, from) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Json::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A regorus interpreter over the bundle with strict builtin errors, to tell whether a
/// builtin fails where OPA's does.
fn strict_interpreter(files: &[PolicyFile]) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_strict_builtin_errors(true);
    vigil_authz::register_vigil_builtins(&mut engine, true);
    for file in files {
        if file.path.ends_with(".rego") {
            engine
                .add_policy(file.path.clone(), file.contents.clone())
                .expect("policy parses");
        }
    }
    let data = data_document(files);
    engine
        .add_data(Value::from_json_str(&data.to_string()).expect("data"))
        .expect("data merges");
    engine
}

/// One engine's answer for one input.
#[derive(Clone, Debug)]
enum Answer {
    Value(Json),
    Undefined,
    Error(String),
}

impl Answer {
    fn of(result: Result<Value, String>) -> Answer {
        match result {
            Ok(Value::Undefined) => Answer::Undefined,
            Ok(v) => Answer::Value(serde_json::to_value(&v).expect("value JSON")),
            Err(e) => Answer::Error(e),
        }
    }

    fn show(&self) -> String {
        match self {
            Answer::Value(v) => v.to_string(),
            Answer::Undefined => "undefined".to_string(),
            Answer::Error(e) => format!("error: {e}"),
        }
    }
}

/// JSON equality with numbers compared by value (OPA prints 2.0 where Vigil prints 2).
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// What OPA said, as the driver reports it.
enum OpaAnswer {
    Plain(Answer),
    BuiltinError(String),
}

fn opa_answer(result: &Json) -> OpaAnswer {
    let message = || result["message"].as_str().unwrap_or("").to_string();
    match result["kind"].as_str() {
        Some("value") => OpaAnswer::Plain(Answer::Value(result["value"].clone())),
        Some("undefined") => OpaAnswer::Plain(Answer::Undefined),
        Some("builtin_error") => OpaAnswer::BuiltinError(message()),
        _ => OpaAnswer::Plain(Answer::Error(message())),
    }
}

fn agrees(opa: &Answer, vigil: &Answer) -> bool {
    match (opa, vigil) {
        (Answer::Value(a), Answer::Value(b)) => same(a, b),
        (Answer::Undefined, Answer::Undefined) => true,
        (Answer::Error(_), Answer::Error(_)) => true,
        _ => false,
    }
}

struct Difference {
    case: String,
    engine: &'static str,
    input: Json,
    opa: String,
    vigil: String,
}

#[derive(Default)]
struct Tally {
    policies: usize,
    refused: Vec<(String, String)>,
    inputs: usize,
    inputs_refused: Vec<String>,
    pairs: usize,
    decisions_compared: usize,
    builtin_error_pairs: usize,
    inconclusive: Vec<String>,
    engines: BTreeMap<String, String>,
}

fn compile(case: &Case, preference: BackendPreference) -> Result<PolicyBundle, String> {
    let options = PolicyOptions {
        rule: case.rule.clone(),
        ..PolicyOptions::default()
    };
    PolicyBundle::compile_with(case.files.clone(), options, preference).map_err(|e| e.to_string())
}

/// Input documents of every request; `None` for requests Vigil cannot turn into one.
fn documents(requests: &[RequestFacts], refused: &mut Vec<String>) -> Vec<Option<Value>> {
    requests
        .iter()
        .map(|r| {
            r.with_input(|input| match input.document() {
                Ok(document) => Some(document),
                Err(e) => {
                    refused.push(e.to_string());
                    None
                }
            })
        })
        .collect()
}

#[test]
fn vigil_decides_like_opa() {
    let mut oracle = Oracle::start();
    let mut requests = requests::hand_written();
    let hand = requests.len();
    requests.extend(requests::generated(48));
    let mut inputs_refused = Vec::new();
    let docs = documents(&requests, &mut inputs_refused);
    let json_docs: Vec<Json> = docs
        .iter()
        .flatten()
        .map(|d| serde_json::to_value(d).expect("input JSON"))
        .collect();

    let mut tally = Tally {
        inputs: requests.len(),
        inputs_refused,
        ..Tally::default()
    };
    let mut differences: Vec<Difference> = Vec::new();

    for case in cases() {
        tally.policies += 1;
        let chosen = match compile(&case, BackendPreference::default()) {
            Ok(bundle) => bundle,
            Err(reason) => {
                assert!(
                    !case.shipped,
                    "{}: a shipped policy must compile, but Vigil refuses it: {reason}",
                    case.name
                );
                tally.refused.push((case.name.clone(), reason));
                continue;
            }
        };
        tally
            .engines
            .insert(case.name.clone(), format!("{:?}", chosen.backend()));
        let interpreter =
            compile(&case, BackendPreference::Interpreter).expect("compiles for the interpreter");
        let mut strict = strict_interpreter(&case.files);

        let modules: Vec<Json> = case
            .files
            .iter()
            .filter(|f| f.path.ends_with(".rego"))
            .map(|f| json!({"path": f.path, "text": f.contents}))
            .collect();
        let answer = oracle.ask(&json!({
            "modules": modules,
            "data": data_document(&case.files),
            "query": case.rule,
            "inputs": json_docs,
        }));
        if let Some(error) = answer["compile_error"].as_str() {
            panic!(
                "{}: OPA refuses a bundle Vigil accepts ({:?}): {error}",
                case.name,
                chosen.backend()
            );
        }
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), json_docs.len(), "{}", case.name);

        for ((doc, json_doc), result) in docs.iter().flatten().zip(&json_docs).zip(results) {
            tally.pairs += 1;
            let mut record = |engine: &'static str, opa: String, vigil: &Answer| {
                differences.push(Difference {
                    case: case.name.clone(),
                    engine,
                    input: json_doc.clone(),
                    opa,
                    vigil: vigil.show(),
                });
            };
            match opa_answer(result) {
                OpaAnswer::Plain(opa) => {
                    let runs = [
                        ("chosen engine", chosen.eval_raw(doc.clone())),
                        ("interpreter", interpreter.eval_raw_interpreted(doc.clone())),
                    ];
                    for (engine, result) in runs {
                        tally.decisions_compared += 1;
                        let vigil = Answer::of(result.map_err(|e| e.to_string()));
                        if !agrees(&opa, &vigil) {
                            record(engine, opa.show(), &vigil);
                        }
                    }
                }
                OpaAnswer::BuiltinError(message) => {
                    tally.builtin_error_pairs += 1;
                    tally.decisions_compared += 1;
                    strict.set_input(doc.clone());
                    let vigil = Answer::of(
                        strict
                            .eval_rule(case.rule.clone())
                            .map_err(|e| format!("{e:#}")),
                    );
                    // Where Vigil's builtin makes the expression undefined instead of failing,
                    // the non-strict outcome (the one that counts) is the same, but cannot be
                    // told from OPA's strict answer.
                    if !matches!(vigil, Answer::Error(_)) {
                        tally.inconclusive.push(format!("{}: {message}", case.name));
                    }
                }
            }
        }
    }

    report(&tally, hand, &differences);
    assert!(
        differences.is_empty(),
        "{} decisions differ from OPA's (listed above)",
        differences.len()
    );
}

fn report(tally: &Tally, hand: usize, differences: &[Difference]) {
    println!("OPA differential suite");
    println!(
        "  policies: {} ({} refused at compile time by Vigil)",
        tally.policies,
        tally.refused.len()
    );
    for (name, reason) in &tally.refused {
        println!("    refused {name}: {reason}");
    }
    println!(
        "  inputs: {} per policy ({hand} hand-written, {} generated; {} refused by Vigil's \
         input builder, so failed closed without evaluation)",
        tally.inputs,
        tally.inputs - hand,
        tally.inputs_refused.len()
    );
    for reason in &tally.inputs_refused {
        println!("    refused input: {reason}");
    }
    println!(
        "  (policy, input) pairs: {}; decisions compared: {} ({} pairs where OPA's builtin \
         fails, compared in strict mode; {} of them inconclusive because Vigil's builtin \
         gives undefined there instead of failing)",
        tally.pairs,
        tally.decisions_compared,
        tally.builtin_error_pairs,
        tally.inconclusive.len()
    );
    for line in tally.inconclusive.iter().take(5) {
        println!("    inconclusive: {line}");
    }
    for (name, engine) in &tally.engines {
        println!("    engine {name}: {engine}");
    }
    println!("  differences: {}", differences.len());
    let mut per_case: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for d in differences {
        *per_case.entry((&d.case, d.engine)).or_default() += 1;
    }
    for ((case, engine), n) in &per_case {
        println!("    {case} [{engine}]: {n}");
    }
    let mut shown: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for d in differences {
        let seen = shown.entry((&d.case, d.engine)).or_default();
        *seen += 1;
        if *seen > 3 {
            continue;
        }
        println!("--- {} [{}]", d.case, d.engine);
        println!("  input: {}", brief_input(&d.input));
        println!("  OPA:   {}", d.opa);
        println!("  Vigil: {}", d.vigil);
    }
}

/// The parts of an input document that matter to a reader of a difference.
fn brief_input(input: &Json) -> String {
    let http = &input["attributes"]["request"]["http"];
    let mut brief = json!({
        "method": http["method"],
        "path": http["path"],
        "headers": http["headers"],
        "principal": input["attributes"]["source"]["principal"],
        "parsed_path": input["parsed_path"],
        "parsed_query": input["parsed_query"],
    });
    if let Some(body) = input.get("parsed_body") {
        brief["parsed_body"] = body.clone();
    }
    brief.to_string()
}

/// Every builtin Vigil accepts, called on edge-case arguments (tests/opa_oracle/
/// builtin_probes.rego), gives OPA's value; where OPA's builtin fails, Vigil's fails in strict
/// mode and makes the expression undefined otherwise (which is what OPA does outside strict
/// mode). The JWT builtins are probed with a corpus of tokens and keys generated on each run
/// (`opa_oracle/jwt_corpus.rs`).
#[test]
fn builtins_evaluate_like_opa() {
    builtin_probes(
        &std::fs::read_to_string(authz_dir().join("tests/opa_oracle/builtin_probes.rego"))
            .expect("probes file"),
        &jwt_corpus::probes(),
    );
}

fn builtin_probes<'a>(text: &'a str, generated: &'a [String]) {
    let (accepted, refused) = text
        .split_once("# --- refused")
        .expect("the probes file has a refused section");
    let calls = |section: &'a str| -> Vec<&'a str> {
        section
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    };
    // The rest of the marker line is a comment.
    let refused = refused.split_once('\n').map_or("", |(_, rest)| rest);
    let (mut probes, refused) = (calls(accepted), calls(refused));
    let static_probes = probes.len();
    probes.extend(generated.iter().map(String::as_str));
    for call in &refused {
        let name = call.split('(').next().unwrap_or(call);
        let files = vec![PolicyFile {
            path: "probe.rego".into(),
            contents: format!("package probe\n\nx := {call}\n"),
        }];
        let options = PolicyOptions {
            rule: "data.probe.x".into(),
            ..PolicyOptions::default()
        };
        match PolicyBundle::compile(files, options) {
            Ok(_) => panic!("Vigil accepts {call}, listed as refused"),
            Err(e) => assert!(
                e.to_string()
                    .starts_with(&format!("probe.rego:3:6: {name}")),
                "{call}: {e}"
            ),
        }
    }
    let unprobed: Vec<&&str> = SUPPORTED_BUILTINS
        .iter()
        .filter(|name| **name != "print")
        .filter(|name| !probes.iter().any(|p| p.starts_with(&format!("{name}("))))
        .collect();
    assert!(
        unprobed.is_empty(),
        "builtins Vigil accepts without a probe against OPA: {unprobed:?}"
    );

    let mut oracle = Oracle::start();
    let answer = oracle.ask(&json!({ "probes": probes }));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), probes.len());
    let mut differences = Vec::new();
    let mut failing = 0;
    // Tokens OPA finds valid: a corpus where none verifies would prove little.
    let mut verified_tokens = 0;
    for (probe, result) in probes.iter().zip(results) {
        if probe.starts_with("io.jwt.verify") && result["value"] == json!(true)
            || probe.starts_with("io.jwt.decode_verify") && result["value"][0] == json!(true)
        {
            verified_tokens += 1;
        }
        let case = Case {
            name: format!("probe {probe}"),
            files: vec![PolicyFile {
                path: "probe.rego".into(),
                contents: format!("package probe\n\nx := {probe}\n"),
            }],
            rule: "data.probe.x".into(),
            shipped: false,
        };
        let chosen = compile(&case, BackendPreference::default());
        let interpreter = compile(&case, BackendPreference::Interpreter);
        let (chosen, interpreter) = match (chosen, interpreter) {
            (Ok(c), Ok(i)) => (c, i),
            (Err(e), _) | (_, Err(e)) => {
                if result["kind"] != "compile_error" {
                    differences.push(format!("{probe}\n  OPA:   {result}\n  Vigil: refused: {e}"));
                }
                continue;
            }
        };
        let input = Value::new_object();
        let vigil = [
            (
                "chosen engine",
                Answer::of(chosen.eval_raw(input.clone()).map_err(|e| e.to_string())),
            ),
            (
                "interpreter",
                Answer::of(
                    interpreter
                        .eval_raw_interpreted(input.clone())
                        .map_err(|e| e.to_string()),
                ),
            ),
        ];
        let expected = match result["kind"].as_str() {
            Some("builtin_error") => {
                failing += 1;
                let mut strict = strict_interpreter(&case.files);
                strict.set_input(input.clone());
                let strict_answer = Answer::of(
                    strict
                        .eval_rule(case.rule.clone())
                        .map_err(|e| format!("{e:#}")),
                );
                if !matches!(strict_answer, Answer::Error(_)) {
                    differences.push(format!(
                        "{probe}\n  OPA:   {}\n  Vigil (strict): {}",
                        result["message"],
                        strict_answer.show()
                    ));
                }
                Answer::Undefined
            }
            Some("compile_error") => Answer::Error(result["message"].to_string()),
            _ => match opa_answer(result) {
                OpaAnswer::Plain(a) => a,
                OpaAnswer::BuiltinError(m) => Answer::Error(m),
            },
        };
        for (engine, answer) in &vigil {
            if !agrees(&expected, answer) {
                differences.push(format!(
                    "{probe} [{engine}]\n  OPA:   {}\n  Vigil: {}",
                    expected.show(),
                    answer.show()
                ));
            }
        }
    }
    println!(
        "builtin probes: {} calls ({} from the JWT corpus, {verified_tokens} of them on tokens \
         OPA verifies) of {} builtins ({} where OPA's builtin fails); differences: {}",
        probes.len(),
        probes.len() - static_probes,
        SUPPORTED_BUILTINS.len(),
        failing,
        differences.len()
    );
    for d in &differences {
        println!("--- {d}");
    }
    assert!(
        generated.is_empty() || verified_tokens > 100,
        "only {verified_tokens} probes of the JWT corpus verify in OPA: the corpus is broken"
    );
    assert!(
        differences.is_empty(),
        "{} builtin probes differ from OPA (listed above)",
        differences.len()
    );
}
