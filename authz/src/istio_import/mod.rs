//! `vigil policy import istio`: Istio `AuthorizationPolicy` documents turned into a Vigil
//! policy bundle.
//!
//! Teams moving from Istio keep their policies: [`import_istio`] reads `security.istio.io/v1`
//! (or `v1beta1`) `AuthorizationPolicy` documents and writes `policy.rego`, deciding
//! `data.vigil.authz.allow` with Istio's documented semantics, and `policy_test.rego`, whose
//! tests `vigil policy test` runs. Each test's expected decision comes from a second,
//! independent implementation of Istio's semantics in this module (`eval.rs`), so the
//! generated Rego is checked against it on requests built from the policies' own values.
//!
//! What cannot be translated (CUSTOM actions, JWT fields, `connection.sni`, path templates,
//! unknown fields) is never silently dropped: it is listed in [`IstioImport::untranslated`],
//! printed by the CLI and written at the top of `policy.rego`, and translated the closed way:
//! an ALLOW rule with such a field is dropped (it can only deny more), a DENY rule loses the
//! field (it matches more requests), and a CUSTOM policy becomes a DENY policy.
//!
//! No existing crate converts Istio policies to Rego; the YAML is read with the workspace's
//! `serde_yaml` and the Rego written as text, since regorus has no Rego printer.
//!
//! ```
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: allow-get, namespace: istio-system}
//! spec:
//!   rules: [{to: [{operation: {methods: [GET]}}]}]
//! "#;
//! let import = vigil_authz::import_istio(yaml, &vigil_authz::IstioImportOptions::default())
//!     .unwrap();
//! assert!(import.untranslated.is_empty());
//! assert_eq!(import.files.len(), 2);
//! ```

mod cases;
mod document;
mod eval;
mod model;
mod rego;

use std::fmt;
use std::path::Path;

use crate::files::PolicyFile;

/// How [`import_istio`] reads the policies.
#[derive(Clone, Debug)]
pub struct IstioImportOptions {
    /// Istio's root namespace: policies there apply to every workload.
    pub root_namespace: String,
    /// Named in the generated comments as where the policies came from.
    pub source_name: String,
}

impl Default for IstioImportOptions {
    fn default() -> Self {
        IstioImportOptions {
            root_namespace: "istio-system".to_string(),
            source_name: "Istio AuthorizationPolicy YAML".to_string(),
        }
    }
}

/// One field Vigil did not translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untranslated {
    /// `namespace/name` of the policy, or the document's place for a document skipped whole.
    pub policy: String,
    /// The field's path, e.g. `spec.rules[0].when[1].key`.
    pub field: String,
    /// Why it was not translated.
    pub reason: String,
    /// What the import did instead.
    pub effect: String,
}

impl fmt::Display for Untranslated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}; {}",
            self.policy, self.field, self.reason, self.effect
        )
    }
}

/// The bundle and the report of one import.
#[derive(Clone, Debug)]
pub struct IstioImport {
    /// `policy.rego` and `policy_test.rego`.
    pub files: Vec<PolicyFile>,
    /// Fields not translated, also listed at the top of `policy.rego`.
    pub untranslated: Vec<Untranslated>,
    /// Remarks that change nothing in the decision (selectors, skipped dry-run policies, ...).
    pub notes: Vec<String>,
    /// Number of policies imported.
    pub policies: usize,
}

impl IstioImport {
    /// The report the CLI prints: one line per untranslated field, then the notes.
    pub fn report(&self) -> String {
        let mut out = format!(
            "imported {} AuthorizationPolicy document(s)\n",
            self.policies
        );
        if !self.untranslated.is_empty() {
            out.push_str("not translated (field: why; what the import did instead):\n");
            for u in &self.untranslated {
                out.push_str(&format!("  {u}\n"));
            }
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }

    /// Writes the files into `dir`, creating it if needed.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for file in &self.files {
            std::fs::write(dir.join(&file.path), &file.contents)?;
        }
        Ok(())
    }
}

/// Why an import could not be done at all.
#[derive(Debug, thiserror::Error)]
pub enum IstioImportError {
    /// The text is not YAML.
    #[error("YAML document {document} does not parse: {message}")]
    Yaml { document: usize, message: String },
    /// A document does not have the shape of a Kubernetes object or of the policy.
    #[error("{place}: {message} (check it against the AuthorizationPolicy reference)")]
    Document { place: String, message: String },
    /// Nothing to import.
    #[error("no AuthorizationPolicy found; pass a file of security.istio.io AuthorizationPolicy documents")]
    Empty,
}

/// Translates the `AuthorizationPolicy` documents of `yaml` (several documents separated by
/// `---`, or a `List`) into a Vigil bundle. Fields that cannot be translated are reported in
/// the result, not as an error.
pub fn import_istio(
    yaml: &str,
    options: &IstioImportOptions,
) -> Result<IstioImport, IstioImportError> {
    let lowered = model::lower(yaml, &options.root_namespace)?;
    if lowered.policies.is_empty() && lowered.notes.is_empty() {
        return Err(IstioImportError::Empty);
    }
    let module = rego::module(
        &lowered.policies,
        &lowered.untranslated,
        &lowered.notes,
        &options.source_name,
    );
    let tests = cases::test_module(&lowered.policies, module.defines_audit);
    Ok(IstioImport {
        files: vec![
            PolicyFile {
                path: "policy.rego".to_string(),
                contents: module.text,
            },
            PolicyFile {
                path: "policy_test.rego".to_string(),
                contents: tests,
            },
        ],
        untranslated: lowered.untranslated,
        notes: lowered.notes,
        policies: lowered.policies.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{PolicyBundle, PolicyOptions};

    fn import(yaml: &str) -> IstioImport {
        import_istio(yaml, &IstioImportOptions::default()).expect("imports")
    }

    fn run_generated_tests(import: &IstioImport) -> String {
        let dir = std::env::temp_dir().join(format!(
            "vigil-istio-import-{}-{}",
            std::process::id(),
            import.files[0].contents.len()
        ));
        import.write_to(&dir).expect("writes");
        let mut out = Vec::new();
        let summary = crate::testing::run_tests(&dir, &mut out, false).expect("runs");
        let text = String::from_utf8_lossy(&out).into_owned();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            summary.success(),
            "{text}\n{}\n{}",
            import.files[0].contents,
            import.files[1].contents
        );
        text
    }

    const MIXED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-dev-post, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [dev]}}]
    to: [{operation: {methods: [POST], notPaths: ["/public*"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep]}
    - source: {namespaces: ["te*"], notIpBlocks: [203.0.113.0/24]}
    to:
    - operation: {methods: [GET, HEAD], paths: ["/info*", "*.json"], hosts: ["*.Example.com"]}
    - operation: {ports: ["9000"]}
    when:
    - key: request.headers[X-Env]
      values: [prod]
      notValues: [prod-canary]
  - to: [{operation: {notMethods: [DELETE], ports: ["8443"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-profile, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [GET], paths: ["/user/profile/*"]}}]}]
"#;

    #[test]
    fn istio_generated_tests_pass_and_the_bundle_compiles() {
        let import = import(MIXED);
        assert!(import.untranslated.is_empty(), "{}", import.report());
        assert!(import.notes.iter().any(|n| n.contains("app=httpbin")));
        PolicyBundle::compile(import.files.clone(), PolicyOptions::default())
            .unwrap_or_else(|e| panic!("{e}\n{}", import.files[0].contents));
        let text = run_generated_tests(&import);
        assert!(text.contains("PASS"), "{text}");
    }

    #[test]
    fn istio_untranslatable_fields_are_reported_and_closed() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: my-custom-authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: istio-system}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
  - to: [{operation: {paths: ["/api/{*}/x"]}}]
    when: [{key: connection.sni, values: [a.example]}]
  - to: [{operation: {methods: [GET], frobnicate: [x]}}]
  - to: [{operation: {paths: ["/health"]}}]
"#;
        let import = import(yaml);
        let fields: Vec<&str> = import
            .untranslated
            .iter()
            .map(|u| u.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.action",
                "spec.rules[0].from[0].source.requestPrincipals",
                "spec.rules[1].to[0].operation.paths",
                "spec.rules[1].when[0].key",
                "spec.rules[2].to[0].operation.frobnicate",
            ],
            "{}",
            import.report()
        );
        let policy = &import.files[0].contents;
        assert!(policy.contains("NOT TRANSLATED"), "{policy}");
        assert!(policy.contains("CUSTOM hands the decision"), "{policy}");
        run_generated_tests(&import);
        let bundle = PolicyBundle::compile(import.files.clone(), PolicyOptions::default())
            .expect("compiles");
        let decide = |path: &str| {
            let headers = http::HeaderMap::new();
            let input = crate::AuthzInput {
                kind: crate::InputKind::Http(crate::HttpAttributes {
                    id: "1",
                    method: "GET",
                    path,
                    host: "h",
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    headers: &headers,
                    body: None,
                }),
                source_address: "10.0.0.1:1".parse().expect("addr"),
                destination_address: "10.0.0.2:80".parse().expect("addr"),
                source_principal: None,
                destination_principal: None,
            };
            bundle.evaluate(&input).allowed()
        };
        assert!(decide("/health"));
        assert!(!decide("/admin/x"), "CUSTOM imported as DENY");
        assert!(!decide("/other"), "dropped ALLOW rules allow nothing");
    }

    #[test]
    fn istio_dry_run_policies_are_skipped_and_other_kinds_reported() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: foo
  annotations: {"istio.io/dry-run": "true"}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec: {mtls: {mode: STRICT}}
"#;
        let import = import(yaml);
        assert_eq!(import.policies, 0);
        assert_eq!(import.untranslated.len(), 1, "{}", import.report());
        assert!(import.notes[0].contains("dry-run"));
    }

    #[test]
    fn istio_bad_documents_are_errors() {
        let error = import_istio("spec: [", &IstioImportOptions::default()).expect_err("not YAML");
        assert!(error.to_string().contains("does not parse"), "{error}");
        let error = import_istio(
            "kind: AuthorizationPolicy\nspec: {rules: [{from: 3}]}\n",
            &IstioImportOptions::default(),
        )
        .expect_err("bad shape");
        assert!(error.to_string().contains("document 0"), "{error}");
        assert!(matches!(
            import_istio("", &IstioImportOptions::default()),
            Err(IstioImportError::Empty)
        ));
    }
}
