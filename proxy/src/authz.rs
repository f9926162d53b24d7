//! Policy enforcement: the bundle in force (swapped lock-free with arc-swap), the
//! decision on each request, and the decision log.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::metrics::{Metrics, PolicyLabels};
use arc_swap::ArcSwapOption;
use vigil_authz::{AuthzInput, Decision, DecisionRecord, PolicyBundle, PolicyFile, PolicyOptions};

/// The bundle in force and how much request body it wants to see.
pub struct InForce {
    pub bundle: PolicyBundle,
    pub request_body_bytes: usize,
}

/// Holds the bundle in force and evaluates requests against it.
pub struct Authorizer {
    bundle: ArcSwapOption<InForce>,
    log: Mutex<Box<dyn Write + Send>>,
    metrics: Arc<Metrics>,
    /// Last bundle the proxy refused, with the reason.
    pub last_refused: ArcSwapOption<String>,
}

impl Authorizer {
    /// An authorizer with no bundle yet (every request is refused until one arrives),
    /// writing its decision log to `log`.
    pub fn new(log: Box<dyn Write + Send>, metrics: Arc<Metrics>) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            bundle: ArcSwapOption::empty(),
            log: Mutex::new(log),
            metrics,
            last_refused: ArcSwapOption::empty(),
        })
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
            if current.bundle.version() == wire.version
                && current.request_body_bytes == wire.request_body_bytes as usize
            {
                return;
            }
        }
        let files = wire
            .files
            .iter()
            .map(|f| PolicyFile {
                path: f.path.clone(),
                contents: f.contents.clone(),
            })
            .collect();
        let options = PolicyOptions {
            rule: wire.rule.clone(),
            dry_run: wire.dry_run,
            log_allows: wire.log_allows,
        };
        match PolicyBundle::compile(files, options) {
            Ok(bundle) => {
                tracing::info!(version = %bundle.version(), "policy bundle in force");
                self.bundle.store(Some(Arc::new(InForce {
                    bundle,
                    request_body_bytes: wire.request_body_bytes as usize,
                })));
                self.last_refused.store(None);
            }
            Err(e) => {
                tracing::error!(version = %wire.version, error = %e, "policy bundle refused; keeping the last good one");
                self.last_refused.store(Some(Arc::new(e.to_string())));
            }
        }
    }

    /// How many request body bytes the bundle in force wants to read (0: none).
    pub fn request_body_bytes(&self) -> usize {
        self.bundle
            .load()
            .as_ref()
            .map(|b| b.request_body_bytes)
            .unwrap_or(0)
    }

    /// Decides one request or connection. Evaluation errors and a missing bundle deny
    /// (fail closed); dry-run allows but still logs what would have happened.
    pub fn decide(&self, input: &AuthzInput<'_>) -> Decision {
        let guard = self.bundle.load();
        let Some(bundle) = guard.as_ref().map(|f| &f.bundle) else {
            self.metrics
                .policy_decisions
                .get_or_create(&PolicyLabels {
                    outcome: "error",
                    rule: String::new(),
                })
                .inc();
            return Decision::Error {
                reason: "no policy bundle received from the control plane yet".into(),
            };
        };
        let decision = bundle.evaluate(input);
        self.metrics
            .policy_decisions
            .get_or_create(&PolicyLabels {
                outcome: decision.outcome(),
                rule: bundle.options().rule.clone(),
            })
            .inc();
        if bundle.should_log(&decision) {
            let mut line = DecisionRecord::new(bundle, input, &decision).to_json_line();
            if !line.ends_with('\n') {
                line.push('\n');
            }
            if let Ok(mut log) = self.log.lock() {
                let _ = log.write_all(line.as_bytes());
                let _ = log.flush();
            }
        }
        bundle.enforce(decision)
    }
}
