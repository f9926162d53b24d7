//! Running a bundle's decision rule.
//!
//! `RegoVM` and `Engine` need `&mut self` to evaluate, so each thread keeps its own evaluator
//! per bundle (a handful at most, most recently used first). Creating one costs a clone of
//! reference-counted program and data; after that a decision takes no lock and allocates only
//! what the policy itself needs. A bundle whose decisions depend on the input document alone
//! (no clock, no `print`: `crate::PolicyBundle::remembers_decisions`) has its recent decisions
//! remembered by a key of everything its document would hold (`AuthzInput::key_for`), so a
//! request like one just decided (same caller, method, path and whatever else the bundle can
//! observe; the request id only when the bundle reads it) is answered without building the
//! document or running the policy. A program calling one of Vigil's own builtins
//! (`opa_builtins.rs`) runs in the VM's suspendable mode: it stops at each such call and Vigil
//! answers it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use regorus::rvm::vm::{ExecutionMode, ExecutionState, SuspendReason};
use regorus::rvm::{Program, RegoVM};
use regorus::{Engine, Value};

use crate::opa_builtins;
use crate::source::condense_error;

/// Why the decision rule could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// Evaluators kept per thread. Old bundles fall out after a few reloads; keeping more than one
/// avoids thrashing while requests for the old and new bundle overlap during a swap.
const RUNNERS_PER_THREAD: usize = 4;

struct Runner {
    bundle_id: u64,
    kind: RunnerKind,
    /// Recent decisions by input key, for a bundle whose decisions depend on the document
    /// alone (`crate::PolicyBundle::repeatable`): requests alike (same caller, method, path, and
    /// what else the bundle can observe) are answered without building the document or
    /// running the policy again. `None` for any other bundle.
    remembered: Option<Remembered>,
}

/// Decisions remembered per bundle and thread, by the key of their input
/// (`AuthzInput::key_for`), which is written without building the document. A lookup costs
/// the key and a few byte comparisons, which traffic that never repeats would pay for
/// nothing: when fewer than a quarter of [`CHECK_EVERY`] lookups find a decision,
/// remembering stops for [`PAUSE`] decisions.
struct Remembered {
    decisions: BTreeMap<Vec<u8>, Value>,
    lookups: u32,
    found: u32,
    paused: u32,
}

/// Most decisions remembered per bundle and thread; past it the first in order goes.
const REMEMBERED: usize = 128;
const CHECK_EVERY: u32 = 1024;
const PAUSE: u32 = 16 * 1024;

/// What a lookup in [`Remembered`] found.
#[derive(Debug, PartialEq)]
enum Lookup {
    Found(Value),
    /// Nothing: the decision made is to be kept.
    Missing,
    /// Remembering is paused: the decision made is not kept.
    Paused,
}

impl Remembered {
    fn new() -> Remembered {
        Remembered {
            decisions: BTreeMap::new(),
            lookups: 0,
            found: 0,
            paused: 0,
        }
    }

    /// What is remembered for the input whose key is `key`.
    fn find(&mut self, key: &[u8]) -> Lookup {
        if self.paused > 0 {
            self.paused -= 1;
            return Lookup::Paused;
        }
        self.lookups += 1;
        let found = self.decisions.get(key).cloned();
        if found.is_some() {
            self.found += 1;
        }
        if self.lookups >= CHECK_EVERY {
            if self.found < CHECK_EVERY / 4 {
                self.paused = PAUSE;
                self.decisions.clear();
            }
            (self.lookups, self.found) = (0, 0);
        }
        match found {
            Some(decision) => Lookup::Found(decision),
            None if self.paused > 0 => Lookup::Paused,
            None => Lookup::Missing,
        }
    }

    fn keep(&mut self, key: &[u8], decision: Value) {
        if self.decisions.len() >= REMEMBERED {
            self.decisions.pop_first();
        }
        self.decisions.insert(key.to_vec(), decision);
    }
}

enum RunnerKind {
    Vm(Box<RegoVM>),
    Interpreter(Box<Engine>),
}

/// Upper bound on VM instructions per decision, so a runaway policy fails closed instead of
/// stalling the proxy. regorus's default (25k) is too low for policies that loop over a few
/// hundred routes.
pub(crate) const MAX_INSTRUCTIONS: usize = 1_000_000;

/// What evaluating a bundle takes, made by [`crate::PolicyBundle`] when it compiles one:
/// the engine sees this, not how a bundle is built.
pub(crate) struct Compiled {
    /// Process-unique id keying the per-thread evaluators (never reused, unlike versions).
    pub(crate) id: u64,
    /// The rule the engines evaluate: the decision rule, or a rule made of the decision
    /// document when the decision is written as rules under its path (`result["allowed"]`).
    pub(crate) entry_rule: String,
    /// RVM bytecode, compiled once; `None` when the interpreter backend is used.
    pub(crate) program: Option<Arc<Program>>,
    /// The merged data document.
    pub(crate) data: Value,
    /// The same input document always gets the same decision (see `calls::repeatable`), so
    /// each thread's evaluator remembers recent ones.
    pub(crate) repeatable: bool,
    /// A prepared interpreter: template for per-thread clones, cross-checks and `explain`.
    pub(crate) interpreter: Engine,
}

thread_local! {
    static RUNNERS: RefCell<Vec<Runner>> = const { RefCell::new(Vec::new()) };
}

fn new_runner(bundle: &Compiled) -> Result<Runner, EvalError> {
    let kind = match &bundle.program {
        Some(program) => {
            let mut vm = RegoVM::new();
            // A program calling Vigil's own builtins stops at each call for Vigil to answer.
            if program.has_host_await() {
                vm.set_execution_mode(ExecutionMode::Suspendable);
            }
            vm.load_program(program.clone());
            vm.set_max_instructions(MAX_INSTRUCTIONS);
            vm.set_data(bundle.data.clone())
                .map_err(|e| EvalError(e.to_string()))?;
            RunnerKind::Vm(Box::new(vm))
        }
        None => RunnerKind::Interpreter(Box::new(bundle.interpreter.clone())),
    };
    Ok(Runner {
        bundle_id: bundle.id,
        kind,
        remembered: bundle.repeatable.then(Remembered::new),
    })
}

impl Runner {
    /// The decision for the input whose key is `key`: remembered, or evaluated on the
    /// document `build` makes (and remembered, when the bundle's decisions can be).
    fn run_keyed(
        &mut self,
        key: &[u8],
        build: impl FnOnce() -> Result<Value, EvalError>,
        rule: &str,
    ) -> Result<Value, EvalError> {
        let Some(remembered) = &mut self.remembered else {
            return self.evaluate(build()?, rule);
        };
        match remembered.find(key) {
            Lookup::Found(decision) => Ok(decision),
            Lookup::Paused => self.evaluate(build()?, rule),
            Lookup::Missing => {
                let decision = self.evaluate(build()?, rule)?;
                if let Some(remembered) = &mut self.remembered {
                    remembered.keep(key, decision.clone());
                }
                Ok(decision)
            }
        }
    }

    fn evaluate(&mut self, input: Value, rule: &str) -> Result<Value, EvalError> {
        match &mut self.kind {
            RunnerKind::Vm(vm) => {
                vm.set_input(input);
                // The program has one entry point, compiled at instruction 0; `execute` runs it
                // without the per-call name lookup and copy of `execute_entry_point_by_*`.
                let result = run_vm(vm);
                // Let go of the document: a body-less one is filled again in place by the
                // thread's next request (`AuthzInput::document_for`), which needs it unshared,
                // and one with a body is not kept alive until the next request.
                vm.set_input(Value::Undefined);
                result.map_err(|e| EvalError(condense_error(&e)))
            }
            RunnerKind::Interpreter(engine) => run_interpreter(engine, input, rule),
        }
    }
}

/// Runs the VM to its result, answering each call to one of Vigil's own builtins.
fn run_vm(vm: &mut RegoVM) -> Result<Value, String> {
    let mut result = vm.execute().map_err(|e| e.to_string());
    loop {
        let (identifier, argument) = match vm.execution_state() {
            ExecutionState::Suspended {
                reason:
                    SuspendReason::HostAwait {
                        identifier,
                        argument,
                        ..
                    },
                ..
            } => (identifier.clone(), argument.clone()),
            _ => return result,
        };
        let name = identifier
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let args = argument.as_array().map(|a| a.to_vec()).unwrap_or_default();
        let answer = opa_builtins::call(&name, &args)?;
        result = vm.resume(Some(answer)).map_err(|e| e.to_string());
    }
}

fn run_interpreter(engine: &mut Engine, input: Value, rule: &str) -> Result<Value, EvalError> {
    engine.set_input(input);
    let result = engine.eval_rule(rule.to_string());
    engine.set_input(Value::Undefined);
    result.map_err(|e| EvalError(condense_error(&format!("{e:#}"))))
}

/// Evaluates the decision rule for `input` with the bundle's backend on this thread's
/// evaluator.
pub(crate) fn eval(bundle: &Compiled, input: Value) -> Result<Value, EvalError> {
    with_runner(bundle, |runner, rule| runner.evaluate(input, rule))
}

/// Like [`eval`] for the input whose key is `key` (`AuthzInput::key_for`): a decision
/// remembered for it is answered without `build` making the document.
pub(crate) fn eval_keyed(
    bundle: &Compiled,
    key: &[u8],
    build: impl FnOnce() -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    with_runner(bundle, |runner, rule| runner.run_keyed(key, build, rule))
}

/// Runs `run` on this thread's evaluator for `bundle` (made when there is none).
fn with_runner(
    bundle: &Compiled,
    run: impl FnOnce(&mut Runner, &str) -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    let rule = bundle.entry_rule.as_str();
    let mut run = Some(run);
    let cached = RUNNERS.try_with(|cell| {
        // Only fails on re-entrance, which evaluation never does; fall back rather than panic.
        let Ok(mut runners) = cell.try_borrow_mut() else {
            return None;
        };
        let index = match runners.iter().position(|r| r.bundle_id == bundle.id) {
            Some(i) => i,
            None => match new_runner(bundle) {
                Ok(runner) => {
                    runners.truncate(RUNNERS_PER_THREAD - 1);
                    runners.push(runner);
                    runners.len() - 1
                }
                Err(e) => return Some(Err(e)),
            },
        };
        // Most recently used first, so eviction drops the bundle that was swapped out.
        runners[..=index].rotate_right(1);
        let run = run.take()?;
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&mut runners[0], rule)));
        Some(match outcome {
            Ok(result) => result,
            Err(_) => {
                // A panicking evaluator may be left inconsistent; rebuild it next time.
                runners.remove(0);
                Err(EvalError("policy evaluation panicked".into()))
            }
        })
    });
    match (cached, run) {
        (Ok(Some(result)), _) => result,
        // Thread-local storage is gone (thread exiting) or busy: use a one-off evaluator.
        (_, Some(run)) => {
            let mut runner = new_runner(bundle)?;
            catch_unwind(AssertUnwindSafe(|| run(&mut runner, rule)))
                .unwrap_or_else(|_| Err(EvalError("policy evaluation panicked".into())))
        }
        (_, None) => Err(EvalError("policy evaluation could not start".into())),
    }
}

/// Evaluates the decision rule with the tree interpreter, whatever the backend.
pub(crate) fn eval_interpreted(bundle: &Compiled, input: Value) -> Result<Value, EvalError> {
    let mut engine = bundle.interpreter.clone();
    let rule = bundle.entry_rule.as_str();
    catch_unwind(AssertUnwindSafe(|| {
        run_interpreter(&mut engine, input, rule)
    }))
    .unwrap_or_else(|_| Err(EvalError("policy evaluation panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembering_pauses_for_traffic_that_never_repeats_and_stays_bounded() {
        let mut r = Remembered::new();
        let decision = Value::from(true);
        // Distinct documents: none is found, and at most REMEMBERED are kept.
        for i in 0..CHECK_EVERY - 1 {
            let key = format!("request {i}");
            assert_eq!(r.find(key.as_bytes()), Lookup::Missing);
            r.keep(key.as_bytes(), decision.clone());
            assert!(r.decisions.len() <= REMEMBERED);
        }
        assert_eq!(r.find(b"the last"), Lookup::Paused);
        // A quarter found was too few: remembering pauses, and what was kept is dropped.
        assert!(r.decisions.is_empty());
        let again = b"again";
        for _ in 0..PAUSE {
            assert_eq!(r.find(again), Lookup::Paused);
        }
        // Then it resumes: a repeated request is found.
        assert_eq!(r.find(again), Lookup::Missing);
        r.keep(again, decision.clone());
        for _ in 0..CHECK_EVERY {
            assert_eq!(r.find(again), Lookup::Found(decision.clone()));
        }
        assert_eq!(r.paused, 0, "traffic that repeats keeps being remembered");
    }
}
