//! The scheduler: starts each step when its needs have finished and its condition holds,
//! at most `concurrency` at a time, renders its parameters with the outputs known so far,
//! retries transient failures, enforces timeouts and stops everything on cancellation.

use super::retry::delay_after;
use crate::exec::events::{Attempt, Event, Events, Outputs, StepStatus, Verdict};
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::plan::ValidPlan;
use crate::plan::model::{Common, Condition, StepKind};
use crate::plan::template::Templates;
use crate::steps::StepRunner;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a cancelled step may take beyond `--kill-grace` to stop before it is dropped.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Identity of one run, available to templates as `run.*`.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub plan: String,
}

impl RunInfo {
    /// A new run id: sortable by time, unique enough, and valid inside SQL identifiers
    /// (`verify_{{ run.id }}`).
    pub fn new(plan: &str) -> RunInfo {
        let now = Utc::now();
        RunInfo {
            id: format!(
                "{}_{:06x}",
                now.format("%Y%m%d_%H%M%S"),
                fastrand::u32(..0x100_0000)
            ),
            started_at: now,
            plan: plan.to_string(),
        }
    }
}

pub struct ExecOptions {
    pub concurrency: usize,
    /// Plan variables after `--var` overrides.
    pub vars: BTreeMap<String, Value>,
    pub env: BTreeMap<String, String>,
    pub base_dir: PathBuf,
    pub run: RunInfo,
    pub kill_grace: Duration,
    /// age identities for encrypted backups.
    pub identities: Option<crate::repo::crypto::Identities>,
    /// URLs of targets that are not rendered from the plan: ephemeral clusters.
    pub fixed_target_urls: BTreeMap<String, String>,
    /// The throwaway clusters of ephemeral targets, by name.
    pub ephemeral: BTreeMap<String, crate::exec::EphemeralDir>,
    /// Protected targets that `--confirm` allows destructive steps on.
    pub confirmed: Vec<String>,
    /// Steps taken as done from an earlier run (`apply --resume`), by index, with their
    /// outputs; and that run's id.
    pub reused: BTreeMap<usize, Outputs>,
    pub resumed_from: Option<String>,
    /// Exclusive locks on what the steps write to; `None` takes none (benchmarks).
    pub locks: Option<Arc<super::locks::Locks>>,
    /// The second signal: once the run is cancelled, cleanup and alert steps (`always()`,
    /// `failure()`, `cancelled()`) still run, and this stops them.
    pub abort: CancellationToken,
}

/// How each step ended, in plan order.
#[derive(Debug, Clone)]
pub struct ExecSummary {
    pub statuses: Vec<StepStatus>,
    pub cancelled: bool,
    /// A step failed without `continue_on_error`.
    pub failed: bool,
    /// A step was refused by a safety rule (exit code 3).
    pub refused: bool,
    /// What failed verifications found (exit codes 5 and 6).
    pub verdicts: Vec<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done(StepStatus),
}

/// The base render context: everything but step outputs.
pub fn base_context(opts: &ExecOptions) -> Value {
    json!({
        "vars": opts.vars,
        "env": opts.env,
        "run": { "id": opts.run.id, "started_at": opts.run.started_at.to_rfc3339(), "plan": opts.run.plan, "status": "running" },
        "steps": {},
    })
}

struct Finished {
    index: usize,
    status: StepStatus,
    outputs: Outputs,
    error: Option<String>,
    /// The step failed because a safety rule refused it.
    refused: bool,
    verdict: Option<Verdict>,
}

pub async fn execute(
    plan: Arc<ValidPlan>,
    opts: ExecOptions,
    runner: Arc<dyn StepRunner>,
    events: Events,
    cancel: CancellationToken,
) -> ExecSummary {
    let started = Instant::now();
    let steps = &plan.plan.steps;
    let n = steps.len();
    events.emit(Event::RunStarted {
        run_id: opts.run.id.clone(),
        plan: plan.plan.name.clone(),
        steps: n,
        at: Utc::now(),
    });
    let templates = Arc::new(Templates::new());
    let opts = Arc::new(opts);
    let mut context = base_context(&opts);
    let mut state = vec![State::Waiting; n];
    let mut waiting_on: Vec<usize> = plan.dag.needs.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let step_refs = template_references(&plan);
    let mut running: JoinSet<Finished> = JoinSet::new();
    // Which step each task runs, so that a task that panics still gets its step marked.
    let mut task_steps: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut cancelled = false;
    let mut refused = false;
    let mut verdicts = Vec::new();
    let concurrency = opts.concurrency.max(1);

    let mut failed_so_far = false;
    loop {
        // After a cancellation, only cleanup and alert steps start, under the second
        // signal's token (the run's own has fired); every other step is skipped. Read from
        // the token itself: a cancelled step may be reported before the select below sees
        // the cancellation.
        cancelled |= cancel.is_cancelled();
        while running.len() < concurrency {
            let Some(Reverse(i)) = ready.pop() else { break };
            if let Some(outputs) = opts.reused.get(&i) {
                state[i] = State::Done(StepStatus::Succeeded);
                reused(&steps[i], outputs, &opts, &events, &mut context);
                release(&plan, i, &mut waiting_on, &mut ready);
                continue;
            }
            let decision = if cancelled && steps[i].common.condition == Condition::Success {
                Err("the run was cancelled before this step started".to_string())
            } else {
                decide(&plan, &state, i, cancelled)
            };
            match decision {
                Ok(()) => {
                    state[i] = State::Running;
                    context["run"]["status"] = json!(run_status(cancelled, failed_so_far));
                    let mut refs = step_refs[i].clone();
                    refs.push(vec!["run".into(), "status".into()]);
                    let task = StepTask {
                        index: i,
                        plan: plan.clone(),
                        opts: opts.clone(),
                        runner: runner.clone(),
                        events: events.clone(),
                        cancel: if cancelled {
                            opts.abort.clone()
                        } else {
                            cancel.clone()
                        },
                        templates: templates.clone(),
                        context: crate::plan::template::subset(&context, &refs),
                        refused: Default::default(),
                        verdict: Default::default(),
                    };
                    let handle = running.spawn(task.run());
                    task_steps.insert(handle.id(), i);
                }
                Err(reason) => {
                    state[i] = State::Done(StepStatus::Skipped);
                    skipped(&steps[i], reason, &events, &mut context);
                    release(&plan, i, &mut waiting_on, &mut ready);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                let done = match joined {
                    Ok((_, done)) => done,
                    Err(e) => lost(task_steps[&e.id()], &e, steps, &events),
                };
                state[done.index] = State::Done(done.status);
                refused |= done.refused;
                if let Some(v) = done.verdict
                    && !steps[done.index].common.continue_on_error
                {
                    verdicts.push(v);
                }
                failed_so_far |= done.status == StepStatus::Failed
                    && !steps[done.index].common.continue_on_error;
                // What later steps (alerts above all) can say about this one.
                let mut record = json!({
                    "status": done.status.as_str(),
                    "error": done.error.clone().unwrap_or_default(),
                });
                if done.status == StepStatus::Succeeded {
                    record["outputs"] = json!(done.outputs);
                }
                context["steps"][steps[done.index].id()] = record;
                release(&plan, done.index, &mut waiting_on, &mut ready);
            }
            _ = cancel.cancelled(), if !cancelled => {
                // Running steps see the same token and stop; wait for them to report.
                cancelled = true;
            }
        }
    }
    cancelled |= cancel.is_cancelled();
    let statuses = final_statuses(&mut state, steps, &events);
    let failed = statuses
        .iter()
        .zip(steps)
        .any(|(s, step)| *s == StepStatus::Failed && !step.common.continue_on_error);
    events.emit(Event::RunFinished {
        status: run_status(cancelled, failed).to_string(),
        cancelled,
        at: Utc::now(),
        duration_ms: started.elapsed().as_millis() as u64,
    });
    ExecSummary {
        statuses,
        cancelled,
        failed,
        refused,
        verdicts,
    }
}

/// A step whose outputs a resumed run reuses: succeeded, as the earlier run left it.
fn reused(
    step: &crate::plan::model::StepDef,
    outputs: &Outputs,
    opts: &ExecOptions,
    events: &Events,
    context: &mut Value,
) {
    events.emit(Event::StepReused {
        step: step.id().to_string(),
        from_run: opts.resumed_from.clone().unwrap_or_default(),
        outputs: outputs.clone(),
        at: Utc::now(),
    });
    context["steps"][step.id()] = json!({
        "status": StepStatus::Succeeded.as_str(),
        "error": "",
        "outputs": outputs,
    });
}

/// A step that does not run (its condition, or a cancelled run).
fn skipped(
    step: &crate::plan::model::StepDef,
    reason: String,
    events: &Events,
    context: &mut Value,
) {
    tracing::debug!(step = step.id(), %reason, "skipping");
    // An alert names every step's status, and a skipped step's is the one that matters most
    // (`verify skipped`): without it the alert would not render.
    context["steps"][step.id()] = json!({
        "status": StepStatus::Skipped.as_str(),
        "error": "",
    });
    events.emit(Event::StepSkipped {
        step: step.id().to_string(),
        reason,
        at: Utc::now(),
    });
}

/// A step whose task panicked: failed, said so. A bug in a step must not take the report
/// down with it.
fn lost(
    index: usize,
    e: &tokio::task::JoinError,
    steps: &[crate::plan::model::StepDef],
    events: &Events,
) -> Finished {
    events.emit(Event::StepFinished {
        step: steps[index].id().to_string(),
        status: StepStatus::Failed,
        at: Utc::now(),
        duration_ms: 0,
        attempts: Vec::new(),
        outputs: Outputs::new(),
        error: Some(format!("internal error in opsrunner: {e}")),
        verdict: None,
    });
    Finished {
        index,
        status: StepStatus::Failed,
        outputs: Outputs::new(),
        error: Some("internal error in opsrunner".into()),
        refused: false,
        verdict: None,
    }
}

/// Each step's final status: those still waiting when the run stopped are skipped (and
/// said so), those that never finished cancelled.
fn final_statuses(
    state: &mut [State],
    steps: &[crate::plan::model::StepDef],
    events: &Events,
) -> Vec<StepStatus> {
    for (i, s) in state.iter_mut().enumerate() {
        if *s == State::Waiting {
            *s = State::Done(StepStatus::Skipped);
            events.emit(Event::StepSkipped {
                step: steps[i].id().to_string(),
                reason: "the run was cancelled before this step started".into(),
                at: Utc::now(),
            });
        }
    }
    state
        .iter()
        .map(|s| match s {
            State::Done(st) => *st,
            _ => StepStatus::Cancelled,
        })
        .collect()
}

/// What each step's templates refer to: a step is handed only those values, not the whole
/// (growing) context, so that starting a step costs the same in a large plan.
fn template_references(plan: &ValidPlan) -> Vec<Vec<Vec<String>>> {
    plan.plan
        .steps
        .iter()
        .map(|s| {
            let target_url = s
                .kind
                .target()
                .and_then(|t| plan.plan.targets.get(t))
                .map(|t| t.url_template());
            // Every setting of the repository is rendered, the endpoint too.
            let mut repo_strings = Vec::new();
            for r in [s.kind.repository(), s.kind.source_repository()]
                .into_iter()
                .flatten()
                .filter_map(|r| plan.plan.repositories.get(r))
            {
                repo_strings.push(r.url.clone());
                crate::plan::template::strings(&r.written.value(), &mut repo_strings);
            }
            // The common keys (`timeout: "{{ env.T }}"`) are rendered when the step starts.
            crate::plan::template::strings(&s.raw_common.value(), &mut repo_strings);
            crate::plan::template::reference_paths(
                &s.raw_params.value(),
                target_url
                    .into_iter()
                    .chain(repo_strings.iter().map(String::as_str)),
            )
        })
        .collect()
}

/// The run's outcome so far, as `{{ run.status }}` and the final event say it.
fn run_status(cancelled: bool, failed: bool) -> &'static str {
    if cancelled {
        "cancelled"
    } else if failed {
        "failed"
    } else {
        "succeeded"
    }
}

/// Marks step `i` finished for its dependents and queues those now free to start.
fn release(
    plan: &ValidPlan,
    i: usize,
    waiting_on: &mut [usize],
    ready: &mut BinaryHeap<Reverse<usize>>,
) {
    for &d in &plan.dag.dependents[i] {
        waiting_on[d] -= 1;
        if waiting_on[d] == 0 {
            ready.push(Reverse(d));
        }
    }
}

/// Whether a step whose needs have all finished should run, or why it is skipped.
fn decide(plan: &ValidPlan, state: &[State], i: usize, cancelled: bool) -> Result<(), String> {
    let steps = &plan.plan.steps;
    // A failed step with continue_on_error counts as passed for everything downstream.
    let broke = |j: usize| match state[j] {
        State::Done(StepStatus::Failed) => !steps[j].common.continue_on_error,
        State::Done(StepStatus::Cancelled) => true,
        _ => false,
    };
    match steps[i].common.condition {
        Condition::Always => Ok(()),
        Condition::Cancelled if cancelled => Ok(()),
        Condition::Cancelled => Err("`if: cancelled()`: the run was not cancelled".into()),
        Condition::Failure => {
            if plan.dag.upstream(i).into_iter().any(broke) {
                Ok(())
            } else {
                Err("`if: failure()`: no upstream step failed".into())
            }
        }
        Condition::Success => {
            for &j in &plan.dag.needs[i] {
                let id = steps[j].id();
                match state[j] {
                    State::Done(StepStatus::Succeeded) => {}
                    State::Done(StepStatus::Failed) if steps[j].common.continue_on_error => {}
                    State::Done(StepStatus::Failed) => {
                        return Err(format!("needs `{id}`, which failed"));
                    }
                    State::Done(StepStatus::Cancelled) => {
                        return Err(format!("needs `{id}`, which was cancelled"));
                    }
                    _ => return Err(format!("needs `{id}`, which was skipped")),
                }
            }
            Ok(())
        }
    }
}

struct StepTask {
    index: usize,
    plan: Arc<ValidPlan>,
    opts: Arc<ExecOptions>,
    runner: Arc<dyn StepRunner>,
    events: Events,
    cancel: CancellationToken,
    templates: Arc<Templates>,
    context: Value,
    refused: std::sync::atomic::AtomicBool,
    /// What the last attempt's failure found about a backup.
    verdict: std::sync::Mutex<Option<Verdict>>,
}

impl StepTask {
    async fn run(self) -> Finished {
        let step = &self.plan.plan.steps[self.index];
        let id = step.id().to_string();
        let started_at = Utc::now();
        let clock = Instant::now();
        self.events.emit(Event::StepStarted {
            step: id.clone(),
            at: started_at,
        });

        let mut attempts = Vec::new();
        let prepared = match (self.prepare(), &self.opts.locks) {
            (Ok((kind, ctx, common)), Some(locks)) => {
                // Taking a lock reads the repository (an S3 lease) or the target: the step's
                // timeout and the run's cancellation bound it like the step's own work.
                let timeout = common.timeout.map(|t| t.0);
                let deadline = async {
                    match timeout {
                        Some(limit) => tokio::time::sleep(limit).await,
                        None => std::future::pending().await,
                    }
                };
                let taken = tokio::select! {
                    r = locks.for_step(&kind, &ctx) => r,
                    _ = deadline => Err(StepError::transient(format!(
                        "timed out after {} while taking the run's locks",
                        crate::plan::duration::format(timeout.unwrap_or_default())
                    ))),
                    _ = self.cancel.cancelled() => Err(StepError::cancelled()),
                };
                taken.map(|()| (kind, ctx, common))
            }
            (prepared, _) => prepared,
        };
        let (status, outputs, error) = match prepared {
            Err(e) => {
                if e.kind == ErrorKind::Refused {
                    self.refused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                attempts.push(Attempt {
                    number: 1,
                    started_at,
                    duration_ms: clock.elapsed().as_millis() as u64,
                    error: Some(e.message.clone()),
                    transient: Some(false),
                });
                (StepStatus::Failed, Outputs::new(), Some(e.message))
            }
            Ok((kind, ctx, common)) => self.attempts(&kind, ctx, &common, &mut attempts).await,
        };
        self.events.emit(Event::StepFinished {
            step: id,
            status,
            at: Utc::now(),
            duration_ms: clock.elapsed().as_millis() as u64,
            attempts,
            outputs: outputs.clone(),
            error: error.clone(),
            verdict: self.verdict(),
        });
        Finished {
            index: self.index,
            status,
            outputs,
            error,
            refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            verdict: self.verdict(),
        }
    }

    fn verdict(&self) -> Option<Verdict> {
        *self.verdict.lock().expect("not poisoned")
    }

    /// Binds the step ([`super::bind`]) with the outputs known now; any part that cannot
    /// be rendered, or a guard that refuses what will run, fails it.
    fn prepare(&self) -> Result<(StepKind, StepContext, Common), StepError> {
        let step = &self.plan.plan.steps[self.index];
        let bound = super::bind::bind(
            step,
            &super::bind::Scope {
                plan: &self.plan.plan,
                templates: &self.templates,
                context: &self.context,
                redactor: self.events.redactor(),
                base_dir: &self.opts.base_dir,
                confirmed: &self.opts.confirmed,
                read_files: true,
                fixed_target_urls: Some(&self.opts.fixed_target_urls),
            },
        );
        let (_, kind) = bound.params.map_err(StepError::permanent)?;
        let common = bound.common.map_err(StepError::permanent)?;
        let mut targets = BTreeMap::new();
        if let Some((name, url)) = bound.target {
            targets.insert(name, url.map_err(StepError::permanent)?);
        }
        let mut repositories = BTreeMap::new();
        for (name, repo) in bound.repository.into_iter().chain(bound.source) {
            repositories.insert(name, repo.map_err(StepError::permanent)?);
        }
        // The guard before the run looked at the plan as written; templates may have turned
        // a harmless-looking step into a destructive one. Checked again on what will run.
        if let Some(name) = bound.unconfirmed {
            return Err(StepError {
                kind: ErrorKind::Refused,
                message: format!(
                    "with its templates rendered, the step may destroy data on protected target `{name}`; nothing was run. Pass --confirm {name} to go ahead"
                ),
            });
        }
        let ctx = StepContext {
            protected: self
                .plan
                .plan
                .targets
                .iter()
                .filter(|(_, t)| t.protected)
                .map(|(n, _)| n.clone())
                .collect(),
            step_id: step.id().to_string(),
            base_dir: self.opts.base_dir.clone(),
            targets,
            repositories,
            events: self.events.clone(),
            cancel: self.cancel.child_token(),
            kill_grace: self.opts.kill_grace,
            timeout: common.timeout.map(|t| t.0),
            run_id: self.opts.run.id.clone(),
            identities: self.opts.identities.clone(),
            ephemeral: self.opts.ephemeral.clone(),
            pg_bin_dirs: pg_bin_dirs(&self.plan.plan, kind.target(), &self.opts.base_dir),
            data_directory: data_directory(&self.plan.plan, kind.target(), &self.opts.base_dir),
        };
        Ok((kind, ctx, common))
    }

    async fn attempts(
        &self,
        kind: &StepKind,
        ctx: StepContext,
        common: &Common,
        attempts: &mut Vec<Attempt>,
    ) -> (StepStatus, Outputs, Option<String>) {
        let step = &self.plan.plan.steps[self.index];
        let max = common.retry.as_ref().map_or(1, |r| r.attempts.max(1));
        let timeout = common.timeout.map(|t| t.0);
        for number in 1..=max {
            let started_at = Utc::now();
            let clock = Instant::now();
            let attempt_ctx = StepContext {
                cancel: self.cancel.child_token(),
                ..ctx.clone()
            };
            let result = {
                let fut = self.runner.run(kind, &attempt_ctx);
                tokio::pin!(fut);
                let deadline = async {
                    match timeout {
                        Some(limit) => tokio::time::sleep(limit).await,
                        None => std::future::pending().await,
                    }
                };
                // A step stops when its token is cancelled; one that does not (an await
                // nothing cancels) is dropped after the grace its children get, which kills
                // them, so that neither a timeout nor a signal can be outwaited.
                let window = self.opts.kill_grace + STOP_MARGIN;
                let abandoned = || {
                    format!(
                        "it did not stop within {} and was abandoned",
                        crate::plan::duration::format(window)
                    )
                };
                tokio::select! {
                    r = &mut fut => r,
                    _ = deadline => {
                        let limit = timeout.unwrap_or_default();
                        // Let the step stop its children, then report the timeout.
                        attempt_ctx.cancel.cancel();
                        // The step may know more than "timed out" (what it was waiting for).
                        let detail = match tokio::time::timeout(window, &mut fut).await {
                            Ok(Err(e)) if e.kind != ErrorKind::Cancelled => format!(": {e}"),
                            Ok(_) => String::new(),
                            Err(_) => format!("; {}", abandoned()),
                        };
                        Err(StepError::transient(format!("timed out after {}{detail}", crate::plan::duration::format(limit))))
                    }
                    _ = self.cancel.cancelled() => {
                        match tokio::time::timeout(window, &mut fut).await {
                            Ok(r) => r,
                            Err(_) => Err(StepError {
                                kind: ErrorKind::Cancelled,
                                message: format!("cancelled; {}", abandoned()),
                            }),
                        }
                    }
                }
            };
            let duration_ms = clock.elapsed().as_millis() as u64;
            match result {
                Ok(outputs) => {
                    attempts.push(Attempt {
                        number,
                        started_at,
                        duration_ms,
                        error: None,
                        transient: None,
                    });
                    return (StepStatus::Succeeded, outputs, None);
                }
                Err(e) => {
                    let cancelled = self.cancel.is_cancelled() || e.kind == ErrorKind::Cancelled;
                    let message = if self.cancel.is_cancelled() {
                        "cancelled: the run was interrupted".to_string()
                    } else {
                        e.message.clone()
                    };
                    let transient = e.kind == ErrorKind::Transient;
                    let attempt = Attempt {
                        number,
                        started_at,
                        duration_ms,
                        error: Some(message.clone()),
                        transient: Some(transient),
                    };
                    if cancelled {
                        attempts.push(attempt);
                        return (StepStatus::Cancelled, Outputs::new(), Some(message));
                    }
                    if e.kind == ErrorKind::Refused {
                        self.refused
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let ErrorKind::Verdict(v) = e.kind {
                        *self.verdict.lock().expect("not poisoned") = Some(v);
                    }
                    if !transient || number == max {
                        attempts.push(attempt);
                        let message = if number > 1 {
                            format!("{message} (after {number} attempts)")
                        } else {
                            message
                        };
                        return (StepStatus::Failed, Outputs::new(), Some(message));
                    }
                    let retry = common
                        .retry
                        .as_ref()
                        .expect("more than one attempt means retry is set");
                    let pause = delay_after(retry, number);
                    self.events.emit(Event::AttemptFailed {
                        step: step.id().to_string(),
                        attempt: attempt.clone(),
                        retry_in_ms: Some(pause.as_millis() as u64),
                    });
                    attempts.push(attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => {
                            return (StepStatus::Cancelled, Outputs::new(), Some("cancelled while waiting to retry".into()));
                        }
                    }
                }
            }
        }
        unreachable!("the loop returns on the last attempt")
    }
}

/// The data directory of a step's target, when the plan names one, relative to the plan
/// file's directory.
pub fn data_directory(
    plan: &crate::plan::model::Plan,
    target: Option<&str>,
    base_dir: &std::path::Path,
) -> Option<std::path::PathBuf> {
    target
        .and_then(|t| plan.targets.get(t))
        .and_then(|t| t.data_directory.as_deref())
        .map(|dir| base_dir.join(dir))
}

/// The program directories a step's plan names: its target's `pg_bin_dir`, then the
/// plan's, relative to the plan file's directory.
pub fn pg_bin_dirs(
    plan: &crate::plan::model::Plan,
    target: Option<&str>,
    base_dir: &std::path::Path,
) -> Vec<std::path::PathBuf> {
    let own = target
        .and_then(|t| plan.targets.get(t))
        .and_then(|t| t.pg_bin_dir.as_deref());
    own.into_iter()
        .chain(plan.pg_bin_dir.as_deref())
        .map(|dir| base_dir.join(dir))
        .collect()
}
