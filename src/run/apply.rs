//! Running a plan for `apply`: the guard before anything starts, ephemeral clusters,
//! signals (the first cancels, the second aborts cleanup), the repository and target locks,
//! the executor with the live log and the report as its event consumers, the run history,
//! `--resume`, and the metrics. `commands::apply` only reads the command line and the plan.

use super::executor::{self, ExecOptions, RunInfo};
use super::history::History;
use super::locks::Locks;
use super::log::{LiveLog, LogFormat};
use super::report::{self, Mode, ReportBuilder, RunStatus};
use super::resume::{self, Reuse};
use crate::exec::events::{Event, Events};
use crate::exit::Failure;
use crate::pg::cluster::EphemeralCluster;
use crate::plan::{PlanSource, ValidPlan};
use crate::redact::Redactor;
use crate::repo::lease::Holder;
use crate::steps::{self, Builtin};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A checked plan with everything needed to preview or run it.
pub struct Prepared {
    pub source: PlanSource,
    pub plan: ValidPlan,
    pub vars: BTreeMap<String, Value>,
    pub env: BTreeMap<String, String>,
    pub redactor: Redactor,
}

/// How to run: what `apply`'s command line says beyond the plan.
pub struct Options {
    pub report: Option<PathBuf>,
    /// Write the run as JUnit XML here.
    pub junit: Option<PathBuf>,
    pub concurrency: usize,
    pub log_format: LogFormat,
    /// How long child processes get between SIGTERM and SIGKILL on timeout or Ctrl-C.
    pub kill_grace: Duration,
    /// How long to wait for another run's lock on a target or repository.
    pub wait_lock: Duration,
    /// An earlier run whose succeeded steps are reused (`--resume RUN_ID`).
    pub resume: Option<String>,
    /// Write Prometheus metrics of the run and its repositories here.
    pub metrics: Option<PathBuf>,
    /// Protected targets destructive steps may run on.
    pub confirm: Vec<String>,
    /// How often a log that is not a terminal reports a long transfer's progress.
    pub progress_every: Duration,
    /// One-shot commands: print each step's outputs on stdout when the run ends (the
    /// backup id a backup made, the value a query returned), for the operator at the
    /// terminal and for scripts.
    pub print_outputs: bool,
}

/// Runs a prepared plan: the guard, ephemeral clusters, signals, locks, the executor with
/// its live log and report, the history, the metrics; the outcome as a [`Failure`].
pub async fn run(
    p: Prepared,
    identities: Option<crate::repo::crypto::Identities>,
    o: Options,
) -> Result<(), Failure> {
    let Prepared {
        source,
        plan,
        vars,
        env,
        redactor,
    } = p;
    let plan = Arc::new(plan);
    crate::run::log::redact_library_messages(&redactor);
    let history = History::open();
    let reuse = reused_steps(o.resume.as_deref(), history.as_ref(), &plan, &vars)?;
    let run = RunInfo::new(&plan.plan.name);
    let new_builder = |mode: Mode| {
        let mut builder = ReportBuilder::new(&source, &plan, &run.id, mode, run.started_at);
        if mode == Mode::Apply {
            builder.identify(&plan, &vars);
            if let Some(id) = &o.resume {
                builder.resumes(id);
            }
        }
        builder
    };
    // Every run is kept in the history; a history that cannot be written does not fail a
    // run that did its work, but says so.
    // The outputs asked for (--report, --junit, --metrics) follow one rule: each is tried,
    // and any that could not be written fails the command (see `written`).
    let write_report = |report: &report::RunReport, metrics: Result<(), String>| {
        if report.mode == Mode::Apply
            && let Some(history) = &history
            && let Err(e) = history.record(report)
        {
            eprintln!(
                "warning: cannot keep the run in the history {}: {e}",
                history.dir().display()
            );
        }
        let mut errors: Vec<String> = metrics.err().into_iter().collect();
        if let Some(path) = &o.junit
            && let Err(e) = crate::atomic::write(path, crate::run::junit::render(report).as_bytes())
        {
            errors.push(format!("cannot write JUnit report {}: {e}", path.display()));
        }
        if let Some(path) = &o.report
            && let Err(e) = report::write(report, path)
        {
            errors.push(format!("cannot write report {}: {e}", path.display()));
        }
        errors
    };
    if let Err(message) = guard(&plan, &source.base_dir(), &o.confirm) {
        let mut builder = new_builder(Mode::Apply);
        builder.not_started(RunStatus::Refused, message.clone());
        let report = builder.finish(RunStatus::Refused);
        let metrics = write_metrics(&o, &vars, &env, &source.base_dir(), &plan, &report).await;
        return written(
            write_report(&report, metrics),
            Err(Failure::Refused(message)),
        );
    }

    let cancel = CancellationToken::new();
    let abort = CancellationToken::new();
    // The live log exists only once the clusters are up; a signal before that is said
    // on stderr with the same timestamp.
    let signal_log: SignalLog = Arc::new(std::sync::Mutex::new(None));
    let signals = tokio::spawn(cancel_on_signal(
        cancel.clone(),
        abort.clone(),
        signal_log.clone(),
    ));
    // Ephemeral clusters live exactly as long as this binding: dropping them (at the end of
    // this function, whatever happened) stops the servers and removes their directories.
    let clusters = match start_ephemeral_clusters(&plan, &source.base_dir(), &cancel).await {
        Ok(clusters) => clusters,
        Err(message) => {
            signals.abort();
            let mut builder = new_builder(Mode::Apply);
            builder.not_started(RunStatus::Failed, message.clone());
            let report = builder.finish(RunStatus::Failed);
            let metrics = write_metrics(&o, &vars, &env, &source.base_dir(), &plan, &report).await;
            let failure = if cancel.is_cancelled() {
                Failure::Interrupted
            } else {
                Failure::Io(message)
            };
            return written(write_report(&report, metrics), Err(failure));
        }
    };
    let fixed_target_urls = clusters
        .iter()
        .map(|(name, c)| (name.clone(), c.url("postgres")))
        .collect();
    let ephemeral = clusters
        .iter()
        .map(|(name, c)| (name.clone(), c.handle()))
        .collect();

    let (events, consumer) = report_events(&redactor, new_builder(Mode::Apply), live_log(&o));
    *signal_log.lock().unwrap_or_else(|e| e.into_inner()) = Some(events.clone());

    let locks = Arc::new(Locks::new(
        Holder::this_process(&run.id, &run.plan, run.started_at),
        o.wait_lock,
        lease_ttl(),
        clusters.iter().map(|(name, _)| name.clone()).collect(),
        events.clone(),
        cancel.clone(),
    ));
    let opts = ExecOptions {
        reused: reuse.steps,
        resumed_from: o.resume.clone(),
        locks: Some(locks.clone()),
        abort: abort.clone(),
        concurrency: o.concurrency,
        vars: vars.clone(),
        env: env.clone(),
        base_dir: source.base_dir(),
        run,
        kill_grace: o.kill_grace,
        identities,
        fixed_target_urls,
        ephemeral,
        confirmed: o.confirm.clone(),
    };
    let summary = executor::execute(plan.clone(), opts, Arc::new(Builtin), events, cancel).await;
    // The live log ends when the last sender goes: the signal handler's too.
    signal_log.lock().unwrap_or_else(|e| e.into_inner()).take();
    locks.release_all().await;
    drop(locks);
    signals.abort();
    drop(clusters);
    let builder = consumer.await.expect("the reporter task does not panic");
    let status = run_status(&summary);
    let report = builder.finish(status);
    let metrics = write_metrics(&o, &vars, &env, &source.base_dir(), &plan, &report).await;
    if o.print_outputs {
        print!("{}", outputs_text(&report));
    }
    let outcome = outcome_of(status, &summary.verdicts);
    written(write_report(&report, metrics), outcome)
}

/// Each step's outputs that are not empty, one `name: value` line each (a step's id first
/// when there are several), as the report holds them (redacted).
fn outputs_text(report: &report::RunReport) -> String {
    let mut text = String::new();
    let several = report.steps.len() > 1;
    for step in &report.steps {
        for (name, value) in step.outputs.iter().filter(|(_, v)| !v.is_empty()) {
            if several {
                text.push_str(&format!("{}.{name}: {value}\n", step.id));
            } else {
                text.push_str(&format!("{name}: {value}\n"));
            }
        }
    }
    text
}

/// The run's events, and the task that hands each to the live log and the report; the
/// task ends, with the report's builder, when the last sender is dropped.
fn report_events(
    redactor: &Redactor,
    mut builder: ReportBuilder,
    mut log: LiveLog<std::io::Stderr>,
) -> (Events, tokio::task::JoinHandle<ReportBuilder>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let consumer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            log.on_event(&event);
            builder.on_event(&event);
        }
        builder
    });
    (Events::new(tx, redactor.clone()), consumer)
}

/// With `--resume RUN_ID`: the steps of that run to reuse.
fn reused_steps(
    resume: Option<&str>,
    history: Option<&History>,
    plan: &ValidPlan,
    vars: &BTreeMap<String, Value>,
) -> Result<Reuse, Failure> {
    let Some(id) = resume else {
        return Ok(Reuse::default());
    };
    let history = history.ok_or_else(|| {
        Failure::Usage("--resume: no state directory (set OPSRUNNER_STATE_DIR or HOME)".into())
    })?;
    let old = history
        .load(id)
        .map_err(|e| Failure::Usage(format!("--resume: {e}")))?;
    resume::reuse(&old, plan, vars).map_err(|e| Failure::Usage(format!("--resume {id}: {e}")))
}

/// The live log on stderr: bars on a terminal, timestamped lines elsewhere.
fn live_log(o: &Options) -> LiveLog<std::io::Stderr> {
    let color = crate::run::log::stderr_wants_color();
    let log = LiveLog::new(std::io::stderr(), o.log_format, color).progress_every(o.progress_every);
    if o.log_format != LogFormat::Text {
        log
    } else if crate::run::log::stderr_is_terminal() {
        log.on_terminal()
    } else {
        log.with_timestamps()
    }
}

fn run_status(summary: &executor::ExecSummary) -> RunStatus {
    if summary.cancelled {
        RunStatus::Cancelled
    } else if summary.refused {
        RunStatus::Refused
    } else if summary.failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    }
}

/// What a finished run means for the command.
fn outcome_of(status: RunStatus, verdicts: &[crate::exec::events::Verdict]) -> Result<(), Failure> {
    match status {
        RunStatus::Cancelled => Err(Failure::Interrupted),
        RunStatus::Failed => Err(verdict_failure(verdicts)),
        RunStatus::Refused => Err(Failure::Refused(
            "a step was refused by a safety rule or a lock held by another run (see its error above)".into(),
        )),
        _ => Ok(()),
    }
}

/// The command's outcome once its outputs were written: a run that succeeded but whose
/// report, JUnit file or metrics could not be written fails with exit 1, naming each; a
/// run that failed keeps its own (more specific) exit code, and the output errors are
/// printed all the same. Never exit 0 with an output missing.
fn written(errors: Vec<String>, outcome: Result<(), Failure>) -> Result<(), Failure> {
    if errors.is_empty() {
        return outcome;
    }
    match outcome {
        Ok(()) => Err(Failure::Io(errors.join("; "))),
        Err(failure) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Err(failure)
        }
    }
}

/// A failed run's exit: a corrupt backup outranks a stale one, which outranks other failures.
fn verdict_failure(verdicts: &[crate::exec::events::Verdict]) -> Failure {
    use crate::exec::events::Verdict;
    if verdicts.contains(&Verdict::BackupCorrupt) {
        Failure::Verdict(Verdict::BackupCorrupt)
    } else if verdicts.contains(&Verdict::BackupTooOld) {
        Failure::Verdict(Verdict::BackupTooOld)
    } else {
        Failure::StepsFailed
    }
}

/// Destructive steps on protected targets that lack `--confirm`.
fn guard(plan: &ValidPlan, base_dir: &std::path::Path, confirm: &[String]) -> Result<(), String> {
    let mut refused = Vec::new();
    for step in &plan.plan.steps {
        if let Some(target) =
            steps::unconfirmed(&step.kind, &plan.plan.targets, base_dir, confirm, true)
        {
            refused.push(format!(
                "step `{}` may destroy data on protected target `{target}`",
                step.id()
            ));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let mut targets: Vec<&str> = plan
        .plan
        .steps
        .iter()
        .filter_map(|s| s.kind.target())
        .filter(|t| plan.plan.targets[*t].protected)
        .collect();
    targets.dedup();
    Err(format!(
        "{}; nothing was run. Check the preview (`opsrunner plan`) and pass {} to go ahead.",
        refused.join("; "),
        targets
            .iter()
            .map(|t| format!("--confirm {t}"))
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// `--metrics FILE`: the run and the state of the plan's repositories, read after the run.
/// Like every output asked for, one that cannot be written fails the command (see
/// [`written`]).
async fn write_metrics(
    args: &Options,
    vars: &BTreeMap<String, Value>,
    env: &BTreeMap<String, String>,
    base_dir: &std::path::Path,
    plan: &ValidPlan,
    report: &report::RunReport,
) -> Result<(), String> {
    let Some(path) = &args.metrics else {
        return Ok(());
    };
    let templates = crate::plan::template::Templates::new();
    let context = serde_json::json!({
        "vars": vars,
        "env": env,
        "run": { "id": report.run_id, "plan": report.plan.name, "started_at": report.started_at.to_rfc3339(), "status": "" },
        "steps": {},
    });
    let repositories = plan
        .plan
        .repositories
        .iter()
        .filter_map(|(name, r)| {
            crate::plan::resolve::repository(&templates, name, r, &context)
                .ok()
                .map(|r| (name.clone(), r))
        })
        .collect();
    let states = crate::run::metrics::repository_states(plan, &repositories, base_dir).await;
    let text = crate::run::metrics::render(report, plan, &states);
    crate::run::metrics::write(path, &text)
        .map_err(|e| format!("cannot write metrics {}: {e}", path.display()))
}

/// How long an S3 lease lasts without renewal: `OPSRUNNER_LEASE_TTL` (a duration such as
/// `90s`), by default one minute. A dead holder's lease is taken over after this long.
pub fn lease_ttl() -> Duration {
    use crate::repo::lease::{DEFAULT_TTL, MAX_TTL, MIN_TTL};
    std::env::var("OPSRUNNER_LEASE_TTL")
        .ok()
        .and_then(|v| crate::plan::duration::parse(&v).ok())
        .filter(|d| (MIN_TTL..=MAX_TTL).contains(d))
        .unwrap_or(DEFAULT_TTL)
}

/// Starts a cluster for every ephemeral target some step uses, all at once.
async fn start_ephemeral_clusters(
    plan: &ValidPlan,
    base_dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<Vec<(String, EphemeralCluster)>, String> {
    let mut names: Vec<&str> = plan
        .plan
        .steps
        .iter()
        .flat_map(|s| s.kind.targets())
        .collect();
    names.sort();
    names.dedup();
    let mut starting = Vec::new();
    for name in names {
        let target = &plan.plan.targets[name];
        if !target.ephemeral {
            continue;
        }
        let run_as = target.run_as.clone().unwrap_or_else(|| "postgres".into());
        let search = crate::pg::tools::Search::new(crate::run::executor::pg_bin_dirs(
            &plan.plan,
            Some(name),
            base_dir,
        ));
        starting.push((
            name.to_string(),
            tokio::task::spawn_blocking(move || EphemeralCluster::start(&run_as, &search)),
        ));
    }
    let mut clusters = Vec::new();
    let mut problems = Vec::new();
    for (name, handle) in starting {
        match handle.await {
            Ok(Ok(cluster)) => {
                tracing::debug!(target = name, dir = %cluster.socket_dir().display(), "ephemeral cluster started");
                clusters.push((name, cluster));
            }
            Ok(Err(e)) => problems.push(format!("ephemeral target `{name}`: {e}")),
            Err(e) => problems.push(format!("ephemeral target `{name}`: {e}")),
        }
    }
    if cancel.is_cancelled() {
        problems.push("interrupted while starting ephemeral clusters".into());
    }
    if problems.is_empty() {
        Ok(clusters)
    } else {
        Err(problems.join("; "))
    }
}

/// The first SIGINT/SIGTERM cancels the running steps (cleanup and alert steps still run);
/// a second one stops those too.
/// Where the signal handler says what it does: the live log once there is one (and no
/// longer once the run has ended, so that the log can end).
type SignalLog = Arc<std::sync::Mutex<Option<Events>>>;

async fn cancel_on_signal(cancel: CancellationToken, abort: CancellationToken, log: SignalLog) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    // Through the live log (its timestamps, its JSON) once there is one.
    let say = |message: String| match log.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(events) => events.notice(None, format!("opsrunner: {message}")),
        None => eprintln!(
            "{} opsrunner: {message}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        ),
    };
    async fn next(
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> &'static str {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    let which = next(&mut term, &mut int).await;
    say(format!(
        "interrupted ({which}); stopping running steps (cleanup steps still run; interrupt again to stop them)"
    ));
    cancel.cancel();
    let which = next(&mut term, &mut int).await;
    say(format!(
        "interrupted again ({which}); stopping cleanup steps"
    ));
    abort.cancel();
}
