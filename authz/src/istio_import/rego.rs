//! Writes the lowered policies as one Rego module deciding `data.vigil.authz.allow`.
//!
//! Every field becomes a small named rule with one body per value (Rego's OR), so a reader
//! can find each Istio field by the comment above it; values are turned into the exact,
//! prefix, suffix or presence test at import time instead of being matched by a helper
//! function on every request.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::model::{Action, Attribute, Match, Pattern, Policy, Rule};
use super::Untranslated;

/// Request values the module reads, each defined once at the bottom when used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    DestinationIp,
    DestinationPort,
    Host,
    Method,
    Path,
    Headers,
    IsHttp,
    WorkloadNamespace,
}

const DEFINITIONS: &[(Value, &str)] = &[
    (
        Value::SourcePrincipal,
        "# The caller's SPIFFE ID without `spiffe://`, as Istio's principals are written.\n\
         source_principal := trim_prefix(input.attributes.source.principal, \"spiffe://\") if {\n\
         \tstartswith(input.attributes.source.principal, \"spiffe://\")\n}\n",
    ),
    (
        Value::SourceNamespace,
        "# The namespace of spiffe://<trust domain>/ns/<namespace>/sa/<service account>.\n\
         source_namespace := parts[4] if {\n\
         \tparts := split(input.attributes.source.principal, \"/\")\n\
         \tcount(parts) == 7\n\
         \tparts[0] == \"spiffe:\"\n\
         \tparts[1] == \"\"\n\
         \tparts[3] == \"ns\"\n\
         \tparts[5] == \"sa\"\n}\n",
    ),
    (
        Value::WorkloadNamespace,
        "# The namespace of this workload, from its own SPIFFE ID.\n\
         workload_namespace := parts[4] if {\n\
         \tparts := split(input.attributes.destination.principal, \"/\")\n\
         \tcount(parts) == 7\n\
         \tparts[0] == \"spiffe:\"\n\
         \tparts[1] == \"\"\n\
         \tparts[3] == \"ns\"\n\
         \tparts[5] == \"sa\"\n}\n",
    ),
    (
        Value::SourceIp,
        "source_ip := input.attributes.source.address.socketAddress.address\n",
    ),
    (
        Value::DestinationIp,
        "destination_ip := input.attributes.destination.address.socketAddress.address\n",
    ),
    (
        Value::DestinationPort,
        "destination_port := input.attributes.destination.address.socketAddress.portValue\n",
    ),
    (
        Value::Host,
        "# Istio compares hosts case-insensitively.\n\
         request_host := lower(input.attributes.request.http.host)\n",
    ),
    (
        Value::Method,
        "request_method := input.attributes.request.http.method\n",
    ),
    (
        Value::Path,
        "# Istio matches the path without its query string.\n\
         request_path := split(input.attributes.request.http.path, \"?\")[0]\n",
    ),
    (
        Value::Headers,
        "request_headers := input.attributes.request.http.headers\n",
    ),
    (
        Value::IsHttp,
        "is_http if is_object(input.attributes.request.http)\n",
    ),
];

/// The generated module, and which sets it defines (for the tests).
pub(crate) struct Module {
    pub text: String,
    pub defines_audit: bool,
}

/// Builds `policy.rego`.
pub(crate) fn module(
    policies: &[Policy],
    untranslated: &[Untranslated],
    notes: &[String],
    source: &str,
) -> Module {
    let mut w = Writer::default();
    header(&mut w.out, untranslated, notes, source);
    let mut body = String::new();
    let scoped = policies.iter().any(|p| !p.mesh_wide);
    if scoped {
        w.used.insert(Value::WorkloadNamespace);
    }
    let mut sets = BTreeSet::new();
    for (index, policy) in policies.iter().enumerate() {
        w.policy(&mut body, index, policy, &mut sets);
    }

    let out = &mut w.out;
    out.push_str("package vigil.authz\n\nimport rego.v1\n\ndefault allow := false\n\n");
    let guard = if scoped {
        "\t# Outside the root namespace a policy applies to the workloads of its own namespace;\n\
         \t# without this workload's SPIFFE ID, Vigil cannot tell which apply.\n\
         \tworkload_namespace\n"
    } else {
        ""
    };
    let not_denied = if sets.contains("denied_by") {
        "\tcount(denied_by) == 0\n"
    } else {
        ""
    };
    if sets.contains("allow_policies") {
        let _ = write!(
            out,
            "# No ALLOW policy applies to this workload: allowed unless denied.\n\
             allow if {{\n{guard}{not_denied}\tcount(allow_policies) == 0\n}}\n\n"
        );
        if sets.contains("allowed_by") {
            let _ = write!(
                out,
                "# An ALLOW policy matches.\n\
                 allow if {{\n{guard}{not_denied}\tcount(allowed_by) > 0\n}}\n\n"
            );
        }
    } else {
        let _ = write!(out, "# No ALLOW policy: allowed unless denied.\nallow if {{\n{guard}{not_denied}\ttrue\n}}\n\n");
    }
    out.push_str(&body);
    out.push_str("# Request values.\n\n");
    for (value, definition) in DEFINITIONS {
        if w.used.contains(value) {
            out.push_str(definition);
            out.push('\n');
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    Module {
        defines_audit: sets.contains("audit"),
        text: w.out,
    }
}

fn header(out: &mut String, untranslated: &[Untranslated], notes: &[String], source: &str) {
    let _ = write!(
        out,
        "# Generated by `vigil policy import istio` from\n\
         #   {source}\n\
         # Re-run the import rather than editing by hand.\n\
         #\n\
         # Istio's evaluation, for the workload this bundle is attached to:\n\
         #   1. a matching DENY policy denies (CUSTOM policies are imported as DENY);\n\
         #   2. with no ALLOW policy for the workload, the request is allowed;\n\
         #   3. a matching ALLOW policy allows;\n\
         #   4. anything else is denied.\n\
         # AUDIT policies do not change the decision: the set `audit` names those that match.\n\
         # For TCP connections, an ALLOW rule naming an HTTP-only field (hosts, methods, paths,\n\
         # request headers) never matches, and in a DENY rule such a field matches anything.\n"
    );
    if untranslated.is_empty() {
        out.push_str("#\n# Every field was translated.\n");
    } else {
        out.push_str("#\n# NOT TRANSLATED (field: why; what the import did instead):\n");
        for u in untranslated {
            let _ = writeln!(out, "#   {}", u.to_string().replace('\n', " "));
        }
    }
    if !notes.is_empty() {
        out.push_str("#\n# Notes:\n");
        for note in notes {
            let _ = writeln!(out, "#   {note}");
        }
    }
    out.push('\n');
}

#[derive(Default)]
struct Writer {
    out: String,
    used: BTreeSet<Value>,
}

impl Writer {
    fn policy(
        &mut self,
        out: &mut String,
        index: usize,
        policy: &Policy,
        sets: &mut BTreeSet<&'static str>,
    ) {
        let name = quote(&policy.name);
        let _ = writeln!(
            out,
            "# ---- {} ({}){}",
            policy.name,
            policy.action,
            if policy.mesh_wide {
                ", root namespace: applies to every workload"
            } else {
                ""
            }
        );
        if let Some(note) = &policy.scope_note {
            let _ = writeln!(out, "# Istio {note}.");
        }
        let scope = if policy.mesh_wide {
            String::new()
        } else {
            format!("\tworkload_namespace == {}\n", quote(&policy.namespace))
        };
        if policy.action == Action::Allow {
            sets.insert("allow_policies");
            let body = if scope.is_empty() {
                "\ttrue\n"
            } else {
                scope.as_str()
            };
            let _ = writeln!(out, "allow_policies contains {name} if {{\n{body}}}\n");
        }
        let set = match policy.action {
            Action::Allow => "allowed_by",
            Action::Deny | Action::Custom => "denied_by",
            Action::Audit => "audit",
        };
        let live: Vec<(usize, &Rule)> = policy
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.dropped)
            .collect();
        if live.is_empty() {
            let _ = writeln!(
                out,
                "# No rule{}: this policy matches nothing.\n",
                if policy.rules.is_empty() {
                    ""
                } else {
                    " left after the import"
                }
            );
            return;
        }
        sets.insert(set);
        for (r, rule) in live {
            let prefix = format!("p{index}_r{r}");
            let mut conjuncts = Vec::new();
            let mut helpers = String::new();
            if policy.action == Action::Allow && rule.has_http_only() {
                self.used.insert(Value::IsHttp);
                conjuncts.push("is_http".to_string());
            }
            for (part, list) in [("from", &rule.from), ("to", &rule.to)] {
                // Empty, or one alternative without fields: anything matches.
                if list.is_empty() || list.iter().any(Vec::is_empty) {
                    continue;
                }
                let either = format!("{prefix}_{part}");
                for (i, alternative) in list.iter().enumerate() {
                    let names: Vec<String> = alternative
                        .iter()
                        .map(|m| {
                            let helper = format!("{either}{i}_{}", field_name(&m.field));
                            self.field(&mut helpers, &helper, policy.action, m);
                            helper
                        })
                        .collect();
                    let _ = writeln!(helpers, "{either} if {{\n\t{}\n}}\n", names.join("\n\t"));
                }
                conjuncts.push(either);
            }
            for (k, m) in rule.when.iter().enumerate() {
                let helper = format!("{prefix}_when{k}");
                self.field(&mut helpers, &helper, policy.action, m);
                conjuncts.push(helper);
            }
            if conjuncts.is_empty() {
                conjuncts.push("true".to_string());
            }
            let _ = writeln!(
                out,
                "# spec.rules[{r}]\n{set} contains {name} if {{\n{scope}\t{}\n}}\n",
                conjuncts.join("\n\t")
            );
            out.push_str(&helpers);
        }
    }

    /// Writes rule `name`, true when the field `m` holds. An absent value (no identity, a TCP
    /// connection) matches none of `values`, so `not <excluded>` holds for it.
    fn field(&mut self, out: &mut String, name: &str, action: Action, m: &Match) {
        let _ = writeln!(out, "# {}", m.field);
        if action.widens() && m.attribute.http_only() && !m.values.is_empty() {
            self.used.insert(Value::IsHttp);
            let _ = writeln!(out, "{name} if not is_http");
        }
        let (listed, excluded) = (format!("{name}_listed"), format!("{name}_excluded"));
        match (m.values.is_empty(), m.not_values.is_empty()) {
            (false, true) => self.values(out, name, &m.attribute, &m.values),
            (true, false) => {
                let _ = writeln!(out, "{name} if not {excluded}");
                self.values(out, &excluded, &m.attribute, &m.not_values);
            }
            _ => {
                let _ = writeln!(out, "{name} if {{\n\t{listed}\n\tnot {excluded}\n}}");
                self.values(out, &listed, &m.attribute, &m.values);
                self.values(out, &excluded, &m.attribute, &m.not_values);
            }
        }
        out.push('\n');
    }

    fn values(
        &mut self,
        out: &mut String,
        name: &str,
        attribute: &Attribute,
        patterns: &[Pattern],
    ) {
        for pattern in patterns {
            let test = self.test(attribute, pattern);
            let _ = writeln!(out, "{name} if {test}");
        }
    }

    /// One value of a field as a Rego expression.
    fn test(&mut self, attribute: &Attribute, pattern: &Pattern) -> String {
        let (value, subject) = match attribute {
            Attribute::SourcePrincipal => (Value::SourcePrincipal, "source_principal".to_string()),
            Attribute::SourceNamespace => (Value::SourceNamespace, "source_namespace".to_string()),
            Attribute::SourceIp => (Value::SourceIp, "source_ip".to_string()),
            Attribute::DestinationIp => (Value::DestinationIp, "destination_ip".to_string()),
            Attribute::DestinationPort => (Value::DestinationPort, "destination_port".to_string()),
            Attribute::Host => (Value::Host, "request_host".to_string()),
            Attribute::Method => (Value::Method, "request_method".to_string()),
            Attribute::Path => (Value::Path, "request_path".to_string()),
            Attribute::Header(h) => (Value::Headers, format!("request_headers[{}]", quote(h))),
        };
        self.used.insert(value);
        match pattern {
            Pattern::Present if matches!(attribute, Attribute::Header(_)) => {
                format!("is_string({subject})")
            }
            Pattern::Present => format!("{subject} != \"\""),
            Pattern::Prefix(p) => format!("startswith({subject}, {})", quote(p)),
            Pattern::Suffix(s) => format!("endswith({subject}, {})", quote(s)),
            Pattern::Exact(e) => format!("{subject} == {}", quote(e)),
            Pattern::Cidr(network, length) => {
                format!(
                    "net.cidr_contains({}, {subject})",
                    quote(&format!("{network}/{length}"))
                )
            }
            Pattern::Port(port) => format!("{subject} == {port}"),
        }
    }
}

/// `spec.rules[0].from[0].source.ipBlocks` gives `ip_blocks`.
fn field_name(field: &str) -> String {
    let last = field.rsplit('.').next().unwrap_or(field);
    let mut name = String::new();
    for c in last.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// A Rego string literal (JSON's escaping is Rego's).
pub(crate) fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}
