//! The model Istio `AuthorizationPolicy` documents are lowered to.
//!
//! Lowering turns every source, operation and `when` condition into [`Match`]es on one request
//! [`Attribute`], which both the Rego generator and the reference evaluator read, so the two
//! cannot disagree about what a field means, only about how it is evaluated.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::document::{ConditionSpec, Document, OperationSpec, RuleSpec, SourceSpec, Spec};

use super::{IstioImportError, Untranslated};

/// What an Istio policy does when its rules match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny,
    Audit,
    /// Imported as a DENY: the external authorizer Istio would ask can only deny.
    Custom,
}

impl Action {
    /// DENY, AUDIT and CUSTOM rules: Istio widens them where a field cannot apply.
    pub(crate) fn widens(self) -> bool {
        self != Action::Allow
    }

    pub(crate) fn denies(self) -> bool {
        matches!(self, Action::Deny | Action::Custom)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        })
    }
}

/// A request attribute a rule can test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attribute {
    /// The caller's SPIFFE ID without `spiffe://`.
    SourcePrincipal,
    /// The `ns` segment of the caller's SPIFFE ID.
    SourceNamespace,
    /// The peer address (also `remoteIpBlocks`: a sidecar has no trusted proxy in front).
    SourceIp,
    DestinationIp,
    DestinationPort,
    /// The `:authority`, compared case-insensitively.
    Host,
    Method,
    /// The path without its query string.
    Path,
    /// A request header, by lower-case name.
    Header(String),
}

impl Attribute {
    /// Fields that exist only for HTTP (Istio's "HTTP only" attributes).
    pub(crate) fn http_only(&self) -> bool {
        matches!(
            self,
            Attribute::Host | Attribute::Method | Attribute::Path | Attribute::Header(_)
        )
    }
}

/// One value of a field, already parsed for its attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `*`: any non-empty value (for a header: the header is present).
    Present,
    /// `abc*`.
    Prefix(String),
    /// `*abc`.
    Suffix(String),
    Exact(String),
    /// An IP block, host bits cleared.
    Cidr(IpAddr, u8),
    Port(u16),
}

/// `values` OR'ed together, and-not any of `not_values`.
#[derive(Clone, Debug)]
pub(crate) struct Match {
    pub attribute: Attribute,
    pub values: Vec<Pattern>,
    pub not_values: Vec<Pattern>,
    /// Where it came from, e.g. `spec.rules[0].from[0].source.principals`.
    pub field: String,
}

/// A rule: one of `from` (each source's matches AND'ed), one of `to`, and every `when`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rule {
    /// An ALLOW rule with a field Vigil cannot translate never matches.
    pub dropped: bool,
    /// Empty: any source.
    pub from: Vec<Vec<Match>>,
    /// Empty: any operation.
    pub to: Vec<Vec<Match>>,
    pub when: Vec<Match>,
}

impl Rule {
    pub(crate) fn matches(&self) -> impl Iterator<Item = &Match> {
        self.from
            .iter()
            .flatten()
            .chain(self.to.iter().flatten())
            .chain(&self.when)
    }

    pub(crate) fn has_http_only(&self) -> bool {
        self.matches().any(|m| m.attribute.http_only())
    }
}

/// One imported policy.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub namespace: String,
    /// In the root namespace: applies to every workload.
    pub mesh_wide: bool,
    pub action: Action,
    /// No rules: matches nothing.
    pub rules: Vec<Rule>,
    /// Where Istio would apply it, for the comments (selector, targetRef).
    pub scope_note: Option<String>,
}

/// The policies of a file, with what was not translated and other remarks.
#[derive(Debug, Default)]
pub(crate) struct Lowered {
    pub policies: Vec<Policy>,
    pub untranslated: Vec<Untranslated>,
    pub notes: Vec<String>,
}

/// Parses every document of `yaml` and lowers the `AuthorizationPolicy` ones.
pub(crate) fn lower(yaml: &str, root_namespace: &str) -> Result<Lowered, IstioImportError> {
    let mut out = Lowered::default();
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| IstioImportError::Yaml {
                document: index,
                message: e.to_string(),
            })?;
        values.push((index, value));
    }
    let mut remote_ip_noted = false;
    let mut queue: Vec<(String, serde_yaml::Value)> = values
        .into_iter()
        .map(|(i, v)| (format!("document {i}"), v))
        .collect();
    queue.reverse();
    while let Some((place, value)) = queue.pop() {
        if value.is_null() {
            continue;
        }
        let doc: Document =
            serde_yaml::from_value(value).map_err(|e| IstioImportError::Document {
                place: place.clone(),
                message: e.to_string(),
            })?;
        let kind = doc.kind.as_deref().unwrap_or("");
        if let Some(items) = doc.items.filter(|_| kind.ends_with("List")) {
            for (i, item) in items.into_iter().enumerate().rev() {
                queue.push((format!("{place} items[{i}]"), item));
            }
            continue;
        }
        let name = format!(
            "{}/{}",
            doc.metadata.namespace.as_deref().unwrap_or("default"),
            doc.metadata.name.as_deref().unwrap_or("unnamed")
        );
        if kind != "AuthorizationPolicy" {
            out.untranslated.push(Untranslated {
                policy: place,
                field: "kind".into(),
                reason: format!("{kind:?} is not an AuthorizationPolicy"),
                effect: "the document is skipped".into(),
            });
            continue;
        }
        let api = doc.api_version.as_deref().unwrap_or("");
        if !matches!(api, "security.istio.io/v1" | "security.istio.io/v1beta1") {
            out.untranslated.push(Untranslated {
                policy: name.clone(),
                field: "apiVersion".into(),
                reason: format!(
                    "{api:?} is neither security.istio.io/v1 nor security.istio.io/v1beta1"
                ),
                effect: "imported as if it were security.istio.io/v1".into(),
            });
        }
        if doc.metadata.namespace.is_none() {
            out.notes.push(format!(
                "{name}: metadata.namespace is not set; taken as \"default\", as kubectl would"
            ));
        }
        let dry_run = doc
            .metadata
            .annotations
            .get("istio.io/dry-run")
            .is_some_and(|v| v.as_str() == Some("true") || v.as_bool() == Some(true));
        if dry_run {
            out.notes.push(format!(
                "{name}: istio.io/dry-run is \"true\", so Istio does not enforce it; skipped"
            ));
            continue;
        }
        let namespace = doc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let policy = lower_policy(
            name,
            namespace.clone(),
            namespace == root_namespace,
            doc.spec.unwrap_or_default(),
            &mut out,
        );
        if !remote_ip_noted
            && policy
                .rules
                .iter()
                .flat_map(Rule::matches)
                .any(|m| m.field.ends_with("remoteIpBlocks") || m.field.contains("(remote.ip)"))
        {
            remote_ip_noted = true;
            out.notes.push(
                "remoteIpBlocks and remote.ip are matched against the peer address, as \
                 ipBlocks are: a sidecar has no trusted proxy (numTrustedProxies) in front \
                 of it, so Istio's remote IP is the source IP there"
                    .into(),
            );
        }
        out.policies.push(policy);
    }
    Ok(out)
}

/// Collects what one policy cannot translate, then decides per rule what to do about it.
struct Findings<'a> {
    policy: &'a str,
    found: Vec<(String, String)>,
}

impl Findings<'_> {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.found.push((field.into(), reason.into()));
    }
}

fn lower_policy(
    name: String,
    namespace: String,
    mesh_wide: bool,
    spec: Spec,
    out: &mut Lowered,
) -> Policy {
    let mut findings = Findings {
        policy: &name,
        found: Vec::new(),
    };
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            let provider = spec
                .provider
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("?");
            findings.add(
                "spec.action",
                format!(
                    "CUSTOM hands the decision to the extension provider {provider:?}, which \
                     Vigil does not call"
                ),
            );
            Action::Custom
        }
        other => {
            findings.add(
                "spec.action",
                format!("{other:?} is not an Istio action (ALLOW, DENY, AUDIT or CUSTOM)"),
            );
            Action::Custom
        }
    };
    let mut scope = Vec::new();
    if let Some(selector) = &spec.selector {
        let labels: Vec<String> = selector
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        scope.push(format!("workloads with labels {}", labels.join(",")));
    }
    for target in spec
        .target_ref
        .iter()
        .chain(spec.target_refs.iter().flatten())
    {
        let field = |k: &str| target.get(k).and_then(|v| v.as_str()).unwrap_or("?");
        scope.push(format!("the {} {}", field("kind"), field("name")));
    }
    let scope_note = (!scope.is_empty()).then(|| {
        format!(
            "applies to {} in {}; attach the bundle with a policy target",
            scope.join(" and "),
            if mesh_wide {
                "every namespace".to_string()
            } else {
                format!("namespace {namespace}")
            }
        )
    });
    if let Some(note) = &scope_note {
        out.notes.push(format!("{name}: {note}"));
    }
    for key in spec.other.keys() {
        findings.add(format!("spec.{key}"), "unknown field");
    }
    // A spec-level field Vigil does not know may narrow where the policy applies: an ALLOW
    // policy then allows nothing, while a DENY policy is kept (it denies more).
    let spec_level = findings.found.len();
    let allow_dropped = action == Action::Allow && spec_level > 0;
    for (field, reason) in findings.found.drain(..) {
        out.untranslated.push(Untranslated {
            policy: name.clone(),
            field,
            reason,
            effect: match action {
                Action::Allow => "the policy allows nothing (it still makes the workload deny \
                                  what no other ALLOW policy allows)"
                    .into(),
                Action::Custom => "its rules are imported as a DENY policy: a request they \
                                   match is denied"
                    .into(),
                _ => "ignored; the policy applies more broadly".into(),
            },
        });
    }
    let mut rules = Vec::new();
    for (i, spec_rule) in spec.rules.into_iter().enumerate() {
        let mut rule = lower_rule(&format!("spec.rules[{i}]"), spec_rule, &mut findings);
        let effect = if action == Action::Allow {
            rule.dropped |= !findings.found.is_empty();
            "the rule is dropped: it never allows"
        } else {
            "the field is left out, so the rule matches more requests"
        };
        rule.dropped |= allow_dropped;
        for (field, reason) in findings.found.drain(..) {
            out.untranslated.push(Untranslated {
                policy: findings.policy.to_string(),
                field,
                reason,
                effect: effect.into(),
            });
        }
        rules.push(rule);
    }
    Policy {
        name,
        namespace,
        mesh_wide,
        action,
        rules,
        scope_note,
    }
}

/// Lowers one rule; untranslatable fields go to `findings` and are left out of the rule.
fn lower_rule(at: &str, spec: RuleSpec, findings: &mut Findings<'_>) -> Rule {
    let mut rule = Rule::default();
    for key in spec.other.keys() {
        findings.add(format!("{at}.{key}"), "unknown field");
    }
    for (i, from) in spec.from.into_iter().enumerate() {
        let at = format!("{at}.from[{i}]");
        for key in from.other.keys() {
            findings.add(format!("{at}.{key}"), "unknown field");
        }
        rule.from
            .push(lower_source(&at, from.source.unwrap_or_default(), findings));
    }
    for (i, to) in spec.to.into_iter().enumerate() {
        let at = format!("{at}.to[{i}]");
        for key in to.other.keys() {
            findings.add(format!("{at}.{key}"), "unknown field");
        }
        rule.to.push(lower_operation(
            &at,
            to.operation.unwrap_or_default(),
            findings,
        ));
    }
    for (i, condition) in spec.when.into_iter().enumerate() {
        let at = format!("{at}.when[{i}]");
        for key in condition.other.keys() {
            findings.add(format!("{at}.{key}"), "unknown field");
        }
        if let Some(m) = lower_condition(&at, condition, findings) {
            rule.when.push(m);
        }
    }
    rule
}

fn lower_source(at: &str, s: SourceSpec, findings: &mut Findings<'_>) -> Vec<Match> {
    let at = format!("{at}.source");
    for key in s.other.keys() {
        findings.add(format!("{at}.{key}"), "unknown field");
    }
    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
        findings.add(
            format!("{at}.requestPrincipals"),
            "JWT request principals need a RequestAuthentication to validate the token, which \
             Vigil does not import",
        );
    }
    let fields = [
        (
            "principals",
            Attribute::SourcePrincipal,
            s.principals,
            s.not_principals,
        ),
        (
            "namespaces",
            Attribute::SourceNamespace,
            s.namespaces,
            s.not_namespaces,
        ),
        (
            "ipBlocks",
            Attribute::SourceIp,
            s.ip_blocks,
            s.not_ip_blocks,
        ),
        (
            "remoteIpBlocks",
            Attribute::SourceIp,
            s.remote_ip_blocks,
            s.not_remote_ip_blocks,
        ),
    ];
    lower_fields(&at, fields, findings)
}

fn lower_operation(at: &str, o: OperationSpec, findings: &mut Findings<'_>) -> Vec<Match> {
    let at = format!("{at}.operation");
    for key in o.other.keys() {
        findings.add(format!("{at}.{key}"), "unknown field");
    }
    let fields = [
        ("hosts", Attribute::Host, o.hosts, o.not_hosts),
        ("ports", Attribute::DestinationPort, o.ports, o.not_ports),
        ("methods", Attribute::Method, o.methods, o.not_methods),
        ("paths", Attribute::Path, o.paths, o.not_paths),
    ];
    lower_fields(&at, fields, findings)
}

fn lower_fields<const N: usize>(
    at: &str,
    fields: [(&str, Attribute, Vec<String>, Vec<String>); N],
    findings: &mut Findings<'_>,
) -> Vec<Match> {
    let mut matches = Vec::new();
    for (name, attribute, values, not_values) in fields {
        if values.is_empty() && not_values.is_empty() {
            continue;
        }
        let field = format!("{at}.{name}");
        match patterns(&attribute, &values)
            .and_then(|v| patterns(&attribute, &not_values).map(|n| (v, n)))
        {
            Ok((values, not_values)) => matches.push(Match {
                attribute,
                values,
                not_values,
                field,
            }),
            Err(reason) => findings.add(field, reason),
        }
    }
    matches
}

fn lower_condition(at: &str, c: ConditionSpec, findings: &mut Findings<'_>) -> Option<Match> {
    let field = format!("{at}.key");
    let key = c.key.as_str();
    let attribute = if let Some(rest) = key.strip_prefix("request.headers") {
        match rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(name) if !name.is_empty() => Attribute::Header(name.to_ascii_lowercase()),
            _ => {
                findings.add(field, format!("{key:?}: expected request.headers[NAME]"));
                return None;
            }
        }
    } else {
        match key {
            "source.ip" | "remote.ip" => Attribute::SourceIp,
            "source.namespace" => Attribute::SourceNamespace,
            "source.principal" => Attribute::SourcePrincipal,
            "destination.ip" => Attribute::DestinationIp,
            "destination.port" => Attribute::DestinationPort,
            "connection.sni" => {
                findings.add(
                    field,
                    "connection.sni: Vigil's authorization input does not carry the TLS \
                     server name",
                );
                return None;
            }
            k if k.starts_with("request.auth.") => {
                findings.add(
                    field,
                    format!(
                        "{k}: JWT attributes need a RequestAuthentication to validate the \
                         token, which Vigil does not import"
                    ),
                );
                return None;
            }
            k if k.starts_with("experimental.") => {
                findings.add(
                    field,
                    format!("{k}: Envoy filter metadata does not exist in Vigil"),
                );
                return None;
            }
            k => {
                findings.add(field, format!("{k:?} is not an Istio condition key"));
                return None;
            }
        }
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        findings.add(
            format!("{at}.values"),
            "neither values nor notValues is set (Istio refuses such a condition)",
        );
        return None;
    }
    match patterns(&attribute, &c.values)
        .and_then(|v| patterns(&attribute, &c.not_values).map(|n| (v, n)))
    {
        Ok((values, not_values)) => Some(Match {
            attribute,
            values,
            not_values,
            field: format!("{at} ({key})"),
        }),
        Err(reason) => {
            findings.add(format!("{at}.values"), reason);
            None
        }
    }
}

/// Parses each value for its attribute; the first that cannot be is the error.
fn patterns(attribute: &Attribute, values: &[String]) -> Result<Vec<Pattern>, String> {
    values.iter().map(|v| pattern(attribute, v)).collect()
}

fn pattern(attribute: &Attribute, value: &str) -> Result<Pattern, String> {
    match attribute {
        Attribute::SourceIp | Attribute::DestinationIp => {
            parse_cidr(value).ok_or_else(|| format!("{value:?} is not an IP address or CIDR"))
        }
        Attribute::DestinationPort => value
            .parse::<u16>()
            .map(Pattern::Port)
            .map_err(|_| format!("{value:?} is not a port number")),
        Attribute::Path if value.contains('{') => Err(format!(
            "{value:?}: path templates ({{*}}, {{**}}) are not translated"
        )),
        // Istio turns every `*` of a namespace into `.*` in a regular expression; only the
        // forms that are also prefix, suffix or presence matches are translated.
        Attribute::SourceNamespace
            if value.len() > 1 && value[1..value.len() - 1].contains('*') =>
        {
            Err(format!(
                "{value:?}: a `*` inside a namespace is not translated (only abc*, *abc and *)"
            ))
        }
        Attribute::Host => Ok(string_pattern(&value.to_ascii_lowercase())),
        _ => Ok(string_pattern(value)),
    }
}

/// Istio's string match: `*` presence, `*abc` suffix, `abc*` prefix, anything else exact
/// (a `*` elsewhere is a literal character).
pub(crate) fn string_pattern(value: &str) -> Pattern {
    if value == "*" {
        Pattern::Present
    } else if let Some(suffix) = value.strip_prefix('*') {
        Pattern::Suffix(suffix.to_string())
    } else if let Some(prefix) = value.strip_suffix('*') {
        Pattern::Prefix(prefix.to_string())
    } else {
        Pattern::Exact(value.to_string())
    }
}

/// A single address (a /32 or /128) or a CIDR, host bits cleared.
pub(crate) fn parse_cidr(value: &str) -> Option<Pattern> {
    let (address, length) = match value.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (value.parse::<IpAddr>().ok()?, None),
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length = length.unwrap_or(max);
    if length > max {
        return None;
    }
    Some(Pattern::Cidr(mask(address, length), length))
}

/// `address` with all but its first `length` bits cleared.
pub(crate) fn mask(address: IpAddr, length: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let kept = bits.checked_shr(32 - u32::from(length)).unwrap_or(0);
            IpAddr::V4(kept.checked_shl(32 - u32::from(length)).unwrap_or(0).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let kept = bits.checked_shr(128 - u32::from(length)).unwrap_or(0);
            IpAddr::V6(
                kept.checked_shl(128 - u32::from(length))
                    .unwrap_or(0)
                    .into(),
            )
        }
    }
}
