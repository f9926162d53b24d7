//! Policy enforcement: the bundle in force (swapped lock-free with arc-swap), the
//! decision on each request, and the decision log (written by its own thread, see
//! [`crate::telemetry::log_writer`]). Bundles are compiled on the blocking pool by discovery.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::telemetry::log_writer::LineWriter;
use crate::telemetry::metrics::{no_label, CandidateLabels, Metrics, PolicyLabels};
use arc_swap::ArcSwapOption;
use vigil_authz::{
    AuthzInput, CandidateDecision, Decision, DecisionRecord, InputRecording, PolicyBundle,
    PolicyFile, PolicyOptions, QueryLogging,
};

/// The bundle in force and how much request body it wants to see.
pub struct InForce {
    pub bundle: PolicyBundle,
    pub request_body_bytes: usize,
    /// The decision rule as the metric label, made once per bundle.
    rule_label: Arc<str>,
    /// The series of this bundle's allows, the common decision, found once per bundle.
    allowed: prometheus_client::metrics::counter::Counter,
    /// What decision records keep of the input, when the bundle records inputs.
    recording: Option<InputRecording>,
    /// The bundle as received: a snapshot carrying the same one changes nothing (its
    /// version leaves out the workload's facts, and its options are not in the version).
    received: vigil_api::PolicyBundle,
    /// The mesh's services it was compiled with (see [`Authorizer::set_mesh_services`]).
    services: Option<Arc<String>>,
}

/// A candidate bundle evaluated beside the one in force and never enforced, with a tally
/// of how its decisions compare (reset when another candidate arrives).
pub struct Candidate {
    bundle: PolicyBundle,
    /// The mesh's services it was compiled with.
    services: Option<Arc<String>>,
    rule_label: Arc<str>,
    /// Decisions compared.
    compared: AtomicU64,
    /// The candidate denies what the bundle in force allows.
    allow_to_deny: AtomicU64,
    /// The candidate allows what the bundle in force denies.
    deny_to_allow: AtomicU64,
    /// Either side failed where the other did not.
    error_changes: AtomicU64,
}

/// How a candidate compares so far, for `/config` and the dashboard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CandidateReport {
    pub version: String,
    pub compared: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    pub error_changes: u64,
}

/// At most this many distinct `denied_by` values per proxy; later ones count as `other`,
/// so a policy that puts request data in its reasons cannot grow the series without end.
const MAX_DENIED_BY: usize = 64;

/// Holds the bundle in force and evaluates requests against it.
pub struct Authorizer {
    bundle: ArcSwapOption<InForce>,
    candidate: ArcSwapOption<Candidate>,
    /// The last bundle and candidate received, to compile again when the services change.
    received: ArcSwapOption<(vigil_api::PolicyBundle, Option<vigil_api::PolicyBundle>)>,
    /// `data.vigil.mesh.services`, from the proxy's view of the mesh.
    services: ArcSwapOption<String>,
    log: LineWriter,
    metrics: Arc<Metrics>,
    /// The `denied_by` label values seen so far (see [`MAX_DENIED_BY`]).
    denied_by: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    /// Last bundle the proxy refused, with the reason.
    pub last_refused: ArcSwapOption<String>,
    /// Whether the decision log keeps query strings as received (they are redacted unless
    /// this is set: they carry tokens and personal data).
    keep_query_strings: AtomicBool,
}

impl Authorizer {
    /// An authorizer with no bundle yet (every request is refused until one arrives),
    /// writing its decision log to `log`.
    pub fn new(
        log: Box<dyn Write + Send>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Authorizer>> {
        let log = LineWriter::start("decision", log, metrics.log_lines_dropped("decision"))?;
        Ok(Arc::new(Authorizer {
            bundle: ArcSwapOption::empty(),
            candidate: ArcSwapOption::empty(),
            received: ArcSwapOption::empty(),
            services: ArcSwapOption::empty(),
            log,
            metrics,
            denied_by: Default::default(),
            last_refused: ArcSwapOption::empty(),
            keep_query_strings: AtomicBool::new(false),
        }))
    }

    /// Makes the decision log keep query strings as received instead of redacting their
    /// values.
    pub fn keep_query_strings(&self, keep: bool) {
        self.keep_query_strings.store(keep, Ordering::Relaxed);
    }

    /// The engine the bundle in force runs on (`rvm` or `interpreter`) and, for the
    /// interpreter, why.
    pub fn engine(&self) -> Option<(&'static str, Option<String>)> {
        self.bundle.load().as_ref().map(|b| {
            let backend = b.bundle.backend();
            (backend.name(), backend.reason().map(str::to_string))
        })
    }

    /// Which of the mesh's policies is in force (`default` or an attached policy's name).
    pub fn policy_name(&self) -> Option<String> {
        self.bundle.load().as_ref().map(|b| b.received.name.clone())
    }

    /// The version of the bundle in force.
    pub fn version(&self) -> Option<String> {
        self.bundle
            .load()
            .as_ref()
            .map(|b| b.bundle.version().to_string())
    }

    /// Installs a bundle from discovery unless it is the one in force. One that does
    /// not compile is refused and the last good one stays.
    pub fn update(&self, wire: &vigil_api::PolicyBundle) {
        if let Some(current) = self.bundle.load().as_ref() {
            if current.received == *wire && current.services == self.services.load_full() {
                return;
            }
        }
        let services = self.services.load_full();
        match PolicyBundle::compile(
            self.files_with_services(wire, &services),
            wire_options(wire),
        ) {
            Ok(bundle) => {
                tracing::info!(
                    version = %bundle.version(),
                    engine = %bundle.backend(),
                    "policy bundle in force"
                );
                let rule_label: Arc<str> = Arc::from(bundle.options().rule.as_str());
                let recording = wire.record_input.as_ref().map(|r| InputRecording {
                    redact_headers: r.redact_headers.clone(),
                    max_bytes: r.max_bytes as usize,
                    bodies: r.bodies,
                });
                let allowed = self
                    .metrics
                    .policy_decisions
                    .get_or_create(&PolicyLabels {
                        outcome: "allow",
                        rule: rule_label.clone(),
                        denied_by: no_label(),
                    })
                    .clone();
                self.bundle.store(Some(Arc::new(InForce {
                    bundle,
                    request_body_bytes: wire.request_body_bytes as usize,
                    rule_label,
                    allowed,
                    recording,
                    received: wire.clone(),
                    services,
                })));
                self.last_refused.store(None);
            }
            Err(e) => {
                tracing::error!(version = %wire.version, error = %e, "policy bundle refused; keeping the last good one");
                self.last_refused.store(Some(Arc::new(e.to_string())));
            }
        }
    }

    /// Installs (or, with `None`, removes) the candidate bundle, unless it is the one
    /// already evaluated. One that does not compile is dropped with an error: a candidate
    /// never affects traffic.
    pub fn update_candidate(&self, wire: Option<&vigil_api::PolicyBundle>) {
        let Some(wire) = wire else {
            if self.candidate.swap(None).is_some() {
                tracing::info!("candidate policy bundle removed");
            }
            return;
        };
        let services = self.services.load_full();
        if let Some(current) = self.candidate.load().as_ref() {
            if current.bundle.version() == wire.version && current.services == services {
                return;
            }
        }
        match PolicyBundle::compile(
            self.files_with_services(wire, &services),
            wire_options(wire),
        ) {
            Ok(bundle) => {
                tracing::info!(version = %bundle.version(), "candidate policy bundle evaluated beside the one in force");
                let rule_label: Arc<str> = Arc::from(bundle.options().rule.as_str());
                self.candidate.store(Some(Arc::new(Candidate {
                    bundle,
                    services,
                    rule_label,
                    compared: AtomicU64::new(0),
                    allow_to_deny: AtomicU64::new(0),
                    deny_to_allow: AtomicU64::new(0),
                    error_changes: AtomicU64::new(0),
                })));
            }
            Err(e) => {
                tracing::error!(version = %wire.version, error = %e, "candidate policy bundle refused");
                self.candidate.store(None);
            }
        }
    }

    /// Installs what discovery received: the bundle and its candidate, compiled with the
    /// mesh's services (kept, to compile again when the services change).
    pub fn install(
        &self,
        policy: vigil_api::PolicyBundle,
        candidate: Option<vigil_api::PolicyBundle>,
    ) {
        self.update(&policy);
        self.update_candidate(candidate.as_ref());
        self.received.store(Some(Arc::new((policy, candidate))));
    }

    /// Sets `data.vigil.mesh.services` (JSON, from the proxy's view of the mesh) and, when
    /// it changed, compiles the bundle and candidate in force again with it. Called when
    /// the set of services changes, not for endpoint changes.
    pub fn set_mesh_services(&self, services: String) {
        if self.services.load().as_deref() == Some(&services) {
            return;
        }
        self.services.store(Some(Arc::new(services)));
        if let Some(received) = self.received.load_full() {
            self.update(&received.0);
            self.update_candidate(received.1.as_ref());
        }
    }

    /// A received bundle's files, with the mesh's services when there are any (unless the
    /// bundle has a file of its own there).
    fn files_with_services(
        &self,
        wire: &vigil_api::PolicyBundle,
        services: &Option<Arc<String>>,
    ) -> Vec<PolicyFile> {
        let mut files = wire_files(wire);
        if let Some(services) = services {
            if !files
                .iter()
                .any(|f| f.path == vigil_authz::SERVICES_DATA_PATH)
            {
                files.push(PolicyFile {
                    path: vigil_authz::SERVICES_DATA_PATH.to_string(),
                    contents: services.to_string(),
                });
            }
        }
        files
    }

    /// How the candidate's decisions compare with those in force, when there is one.
    pub fn candidate_report(&self) -> Option<CandidateReport> {
        self.candidate.load().as_ref().map(|c| CandidateReport {
            version: c.bundle.version().to_string(),
            compared: c.compared.load(Ordering::Relaxed),
            allow_to_deny: c.allow_to_deny.load(Ordering::Relaxed),
            deny_to_allow: c.deny_to_allow.load(Ordering::Relaxed),
            error_changes: c.error_changes.load(Ordering::Relaxed),
        })
    }

    /// Evaluates the candidate on the same input, counts how it compares and, where it
    /// decides otherwise, returns its decision for the log.
    fn compare_candidate(
        &self,
        input: &AuthzInput<'_>,
        in_force: &Decision,
        in_force_rule: &str,
    ) -> Option<CandidateDecision> {
        let guard = self.candidate.load();
        let candidate = guard.as_ref()?;
        let theirs = candidate.bundle.evaluate(input);
        candidate.compared.fetch_add(1, Ordering::Relaxed);
        let (ours_outcome, theirs_outcome) = (in_force.outcome(), theirs.outcome());
        let denied_by = if ours_outcome == theirs_outcome {
            no_label()
        } else {
            let rule = theirs
                .denied_by(&candidate.rule_label)
                .or_else(|| in_force.denied_by(in_force_rule))
                .unwrap_or("");
            self.denied_by_label(rule)
        };
        self.metrics
            .candidate_decisions
            .get_or_create(&CandidateLabels {
                in_force: ours_outcome,
                candidate: theirs_outcome,
                denied_by,
            })
            .inc();
        let tally = match (ours_outcome, theirs_outcome) {
            (ours, theirs) if ours == theirs => return None,
            ("allow", "deny") => &candidate.allow_to_deny,
            ("deny", "allow") => &candidate.deny_to_allow,
            _ => &candidate.error_changes,
        };
        tally.fetch_add(1, Ordering::Relaxed);
        Some(CandidateDecision {
            bundle_version: candidate.bundle.version().to_string(),
            result: theirs_outcome,
            reason: theirs.reason().to_string(),
        })
    }

    /// How many request body bytes the bundle in force wants to read (0: none).
    pub fn request_body_bytes(&self) -> usize {
        self.bundle
            .load()
            .as_ref()
            .map(|b| b.request_body_bytes)
            .unwrap_or(0)
    }

    /// `name` as a shared label value, or `other` once [`MAX_DENIED_BY`] are in use.
    fn denied_by_label(&self, name: &str) -> Arc<str> {
        let mut seen = self
            .denied_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = seen.get(name) {
            return known.clone();
        }
        if seen.len() >= MAX_DENIED_BY {
            return Arc::from("other");
        }
        let label: Arc<str> = Arc::from(name);
        seen.insert(label.clone());
        label
    }

    /// Decides one request or connection. Evaluation errors and a missing bundle deny
    /// (fail closed); dry-run allows but still logs what would have happened.
    pub fn decide(&self, input: &AuthzInput<'_>) -> Decision {
        let guard = self.bundle.load();
        let Some(in_force) = guard.as_ref() else {
            self.metrics
                .policy_decisions
                .get_or_create(&PolicyLabels {
                    outcome: "error",
                    rule: no_label(),
                    denied_by: no_label(),
                })
                .inc();
            return Decision::Error {
                reason: "no policy bundle received from the control plane yet".into(),
            };
        };
        let bundle = &in_force.bundle;
        let decision = bundle.evaluate(input);
        let refused = |denied_by| {
            self.metrics
                .policy_decisions
                .get_or_create(&PolicyLabels {
                    outcome: decision.outcome(),
                    rule: in_force.rule_label.clone(),
                    denied_by,
                })
                .inc()
        };
        match &decision {
            // An allow, the common decision, counts on the series the bundle found once.
            Decision::Allow { .. } => in_force.allowed.inc(),
            Decision::Deny { reason, .. } => refused(
                self.denied_by_label(vigil_authz::rule_named_by(reason, &in_force.rule_label)),
            ),
            Decision::Error { .. } => refused(no_label()),
        };
        let candidate = self.compare_candidate(input, &decision, &in_force.rule_label);
        if bundle.should_log(&decision) || candidate.is_some() {
            let query = if self.keep_query_strings.load(Ordering::Relaxed) {
                QueryLogging::Kept
            } else {
                QueryLogging::Redacted
            };
            let mut record = DecisionRecord::with_query_logging(bundle, input, &decision, query);
            if let Some(recording) = &in_force.recording {
                record = record.with_input(input, recording, query);
            }
            record.candidate = candidate;
            let line = record.to_json_line();
            self.log.write_line(line.into_bytes());
        }
        bundle.enforce(decision)
    }
}

/// A bundle's files as received.
fn wire_files(wire: &vigil_api::PolicyBundle) -> Vec<PolicyFile> {
    wire.files
        .iter()
        .map(|f| PolicyFile {
            path: f.path.clone(),
            contents: f.contents.clone(),
        })
        .collect()
}

/// A bundle's evaluation options as received.
fn wire_options(wire: &vigil_api::PolicyBundle) -> PolicyOptions {
    PolicyOptions {
        rule: wire.rule.clone(),
        dry_run: wire.dry_run,
        log_allows: wire.log_allows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    /// A decision log that can be read back while the authorizer holds it.
    #[derive(Clone, Default)]
    struct SharedLog(Arc<Mutex<Vec<u8>>>);

    impl SharedLog {
        /// The log once `lines` lines have arrived (its writer is a thread).
        fn text(&self, lines: usize) -> String {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let text =
                    String::from_utf8(self.0.lock().expect("log lock").clone()).expect("utf-8");
                if text.lines().count() >= lines || std::time::Instant::now() > deadline {
                    return text;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    impl Write for SharedLog {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wire(rego: &str) -> vigil_api::PolicyBundle {
        vigil_api::PolicyBundle {
            version: format!("v-{}", rego.len()),
            files: vec![vigil_api::PolicyFile {
                path: "policy.rego".into(),
                contents: rego.into(),
            }],
            rule: "data.vigil.authz.allow".into(),
            dry_run: false,
            log_allows: false,
            request_body_bytes: 0,
            record_input: None,
            name: "default".into(),
        }
    }

    #[test]
    fn reports_the_engine_and_why() {
        let authz = Authorizer::new(Box::new(std::io::sink()), Metrics::new()).expect("authorizer");
        assert_eq!(authz.engine(), None);
        authz.update(&wire("package vigil.authz\n\nallow := true\n"));
        assert_eq!(authz.engine(), Some(("rvm", None)));
        authz.update(&wire(
            "package vigil.authz\n\nx := input.a\n\nallow if x with input.a as true\n",
        ));
        let (name, reason) = authz.engine().expect("a bundle");
        assert_eq!(name, "interpreter");
        assert!(
            reason.as_deref().is_some_and(|r| r.contains("with")),
            "{reason:?}"
        );
        // A bundle calling a function Vigil cannot evaluate like OPA is refused by name, and
        // the last good one stays.
        authz.update(&wire(
            "package vigil.authz\n\nallow if http.send({\"method\": \"GET\", \"url\": input.u})\n",
        ));
        let refused = authz.last_refused.load_full().expect("refused");
        assert!(refused.contains("http.send"), "{refused}");
        assert_eq!(authz.engine().map(|(n, _)| n), Some("interpreter"));
    }

    #[test]
    fn decision_log_redacts_query_values_unless_told_to_keep_them() {
        let log = SharedLog::default();
        let authz = Authorizer::new(Box::new(log.clone()), Metrics::new()).expect("authorizer");
        authz.update(&wire("package vigil.authz\n\nallow := false\n"));
        let headers = http::HeaderMap::new();
        let input = AuthzInput {
            kind: vigil_authz::InputKind::Http(vigil_authz::HttpAttributes {
                id: "r1",
                method: "GET",
                path: "/orders?token=s3cr3t",
                host: "svc",
                scheme: "http",
                protocol: "HTTP/1.1",
                headers: &headers,
                body: None,
            }),
            source_address: "10.0.0.1:1".parse().expect("addr"),
            destination_address: "10.0.0.2:2".parse().expect("addr"),
            source_principal: None,
            destination_principal: None,
        };
        authz.decide(&input);
        authz.keep_query_strings(true);
        authz.decide(&input);
        let text = log.text(2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(r#""path":"/orders?token=REDACTED""#),
            "{text}"
        );
        assert!(
            lines[1].contains(r#""path":"/orders?token=s3cr3t""#),
            "{text}"
        );
    }
}
