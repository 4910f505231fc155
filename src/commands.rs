//! The CLI verbs as library functions: `validate`, `plan`, `apply`, `graph`, `schema`.
//! `main.rs` only parses arguments, calls these and maps a [`Failure`] to its exit code.

use crate::exec::events::{Event, Events};
use crate::exit::Failure;
use crate::pg::cluster::EphemeralCluster;
use crate::plan::{self, PlanSource, ValidPlan};
use crate::redact::Redactor;
use crate::repo::lease::Holder;
use crate::run::executor::{self, ExecOptions, RunInfo};
use crate::run::history::History;
use crate::run::locks::Locks;
use crate::run::log::{LiveLog, LogFormat};
use crate::run::preview::{self, PlanPreview, PreviewInput};
use crate::run::report::{self, Mode, ReportBuilder, RunStatus};
use crate::run::resume::{self, Reuse};
use crate::steps::{self, Builtin};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// What every verb that reads a plan gets from the command line.
#[derive(Debug, Clone, Default)]
pub struct PlanArgs {
    pub file: PathBuf,
    pub vars: Vec<(String, String)>,
    pub confirm: Vec<String>,
    /// Colour in error output.
    pub color: bool,
    /// What loading the plan may cost.
    pub limits: crate::plan::yaml::Limits,
    /// `plan --untrusted`: preview without reading the environment or contacting anything.
    pub untrusted: bool,
    /// `plan --base OLD`: probe only what is unchanged against the reviewed plan.
    pub base: Option<PathBuf>,
}

/// A checked plan with everything needed to preview or run it.
pub struct Prepared {
    pub source: PlanSource,
    pub plan: ValidPlan,
    pub vars: BTreeMap<String, Value>,
    pub env: BTreeMap<String, String>,
    pub redactor: Redactor,
}

/// Loads, validates and checks the command-line overrides against the plan.
pub fn prepare(args: &PlanArgs, env: BTreeMap<String, String>) -> Result<Prepared, Failure> {
    let source = PlanSource::read_within(&args.file, args.limits).map_err(Failure::Plan)?;
    let overrides: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    let as_values = overrides
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let (source, plan) = plan::check_with(source, &as_values).map_err(Failure::Plan)?;
    plan::validate::check_overrides(&plan.plan, &overrides).map_err(Failure::Usage)?;
    for name in &args.confirm {
        if !plan.plan.targets.contains_key(name) {
            let hint =
                crate::diag::did_you_mean(name, plan.plan.targets.keys().map(String::as_str))
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default();
            return Err(Failure::Usage(format!(
                "--confirm {name}: the plan has no target `{name}`{hint}"
            )));
        }
    }
    let mut vars = plan.plan.vars.clone();
    for (k, v) in overrides {
        vars.insert(k, Value::String(v));
    }
    let redactor = Redactor::new();
    for name in &plan.plan.secrets {
        if let Some(value) = env.get(name) {
            redactor.add(value);
        }
    }
    // A password inside any environment variable the plan uses as a URL is a secret too.
    for value in env.values() {
        if value.contains("://") {
            redactor.add_url_passwords(value);
        }
    }
    // Credentials the plan did not declare (a pull request writes that list) are secrets
    // all the same. Values too short to be credentials would mask half of every log.
    for (name, value) in &env {
        if crate::redact::is_credential_name(name) && value.chars().count() >= 4 {
            redactor.add(value);
        }
    }
    Ok(Prepared {
        source,
        plan,
        vars,
        env,
        redactor,
    })
}

pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

pub fn validate(args: &PlanArgs) -> Result<String, Failure> {
    let p = prepare(args, process_env())?;
    Ok(format!(
        "{}: valid plan `{}` with {} step{}\n",
        p.source.display,
        p.plan.plan.name,
        p.plan.plan.steps.len(),
        if p.plan.plan.steps.len() == 1 {
            ""
        } else {
            "s"
        }
    ))
}

pub async fn build_preview(p: &Prepared, confirm: &[String]) -> PlanPreview {
    build_preview_with(p, confirm, false, None).await
}

pub async fn build_preview_with(
    p: &Prepared,
    confirm: &[String],
    untrusted: bool,
    base: Option<preview::BaseTrust>,
) -> PlanPreview {
    preview::build(
        &PreviewInput {
            source: &p.source,
            plan: &p.plan,
            vars: &p.vars,
            env: &p.env,
            confirmed: confirm,
            untrusted,
            base,
        },
        &p.redactor,
    )
    .await
}

pub fn render_preview(preview: &PlanPreview, format: PreviewFormat) -> String {
    match format {
        PreviewFormat::Text => preview::render_text(preview),
        PreviewFormat::Markdown => preview::render_markdown(preview),
        PreviewFormat::Json => preview::render_json(preview),
    }
}

/// `opsrunner plan`: the preview, to stdout or `out`.
pub fn plan(args: &PlanArgs, format: PreviewFormat, out: Option<&Path>) -> Result<String, Failure> {
    let p = prepare(args, process_env())?;
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let base = match &args.base {
        None => None,
        Some(path) => {
            let old = PlanSource::read_within(path, args.limits).map_err(Failure::Plan)?;
            // The same --var values: only what the plan itself changed counts.
            let overrides = args
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let (_, old) = plan::check_with(old, &overrides).map_err(Failure::Plan)?;
            Some(preview::BaseTrust::between(&old.plan, &p.plan.plan))
        }
    };
    let preview = runtime.block_on(build_preview_with(&p, &args.confirm, args.untrusted, base));
    let text = render_preview(&preview, format);
    match out {
        Some(path) => {
            write_atomically(path, &text)?;
            Ok(String::new())
        }
        None => Ok(text),
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Io(format!("cannot write {}: {e}", path.display())))
}

pub fn graph(args: &PlanArgs, format: GraphFormat) -> Result<String, Failure> {
    let p = prepare(args, process_env())?;
    let steps = &p.plan.plan.steps;
    let label = |i: usize| {
        (
            steps[i].id().to_string(),
            steps[i].kind.type_name().to_string(),
        )
    };
    Ok(match format {
        GraphFormat::Dot => p.plan.dag.to_dot(&p.plan.plan.name, label),
        GraphFormat::Mermaid => p.plan.dag.to_mermaid(label),
    })
}

pub struct ApplyArgs {
    pub plan: PlanArgs,
    pub report: Option<PathBuf>,
    pub dry_run: bool,
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
    /// The age identity file for encrypted backups.
    pub identity: Option<PathBuf>,
}

/// Destructive steps on protected targets that lack `--confirm`.
fn guard(p: &Prepared, confirm: &[String]) -> Result<(), String> {
    let base_dir = p.source.base_dir();
    let mut refused = Vec::new();
    for step in &p.plan.plan.steps {
        if let Some(target) =
            steps::unconfirmed(&step.kind, &p.plan.plan.targets, &base_dir, confirm, true)
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
    let mut targets: Vec<&str> = p
        .plan
        .plan
        .steps
        .iter()
        .filter_map(|s| s.kind.target())
        .filter(|t| p.plan.plan.targets[*t].protected)
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

/// `opsrunner apply`: runs the plan (or previews it with `--dry-run`) and writes the report.
pub async fn apply(args: ApplyArgs) -> Result<(), Failure> {
    let p = prepare(&args.plan, process_env())?;
    let identities = load_identities(args.identity.as_deref())?;
    for secret in identities.iter().flat_map(|i| i.secret_texts()) {
        p.redactor.add(secret);
    }
    // Finding out after an hour-long run that the report cannot be written helps nobody.
    if let Some(dir) = args.report.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(Failure::Usage(format!(
            "--report: directory {} does not exist",
            dir.display()
        )));
    }
    if let Some(path) = args.report.as_deref()
        && std::fs::metadata(path).is_ok_and(|m| !m.is_file())
    {
        return Err(Failure::Usage(format!(
            "--report: {} is a directory (or another non-file); name a file",
            path.display()
        )));
    }
    if let Some(dir) = args.metrics.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(Failure::Usage(format!(
            "--metrics: directory {} does not exist",
            dir.display()
        )));
    }
    let history = History::open();
    let reuse = match &args.resume {
        None => Reuse::default(),
        Some(id) => {
            let history = history.as_ref().ok_or_else(|| {
                Failure::Usage(
                    "--resume: no state directory (set OPSRUNNER_STATE_DIR or HOME)".into(),
                )
            })?;
            let old = history
                .load(id)
                .map_err(|e| Failure::Usage(format!("--resume: {e}")))?;
            resume::reuse(&old, &p.plan, &p.vars)
                .map_err(|e| Failure::Usage(format!("--resume {id}: {e}")))?
        }
    };
    let run = RunInfo::new(&p.plan.plan.name);
    let new_builder = |mode: Mode| {
        let mut builder = ReportBuilder::new(&p.source, &p.plan, &run.id, mode, run.started_at);
        if mode == Mode::Apply {
            builder.identify(&p.plan, &p.vars);
            if let Some(id) = &args.resume {
                builder.resumes(id);
            }
        }
        builder
    };
    // Every run is kept in the history; a history that cannot be written does not fail a
    // run that did its work, but says so.
    let write_report = |report: &report::RunReport| -> Result<(), Failure> {
        if report.mode == Mode::Apply
            && let Some(history) = &history
            && let Err(e) = history.record(report)
        {
            eprintln!(
                "warning: cannot keep the run in the history {}: {e}",
                history.dir().display()
            );
        }
        match &args.report {
            Some(path) => report::write(report, path)
                .map_err(|e| Failure::Io(format!("cannot write report {}: {e}", path.display()))),
            None => Ok(()),
        }
    };
    if args.dry_run {
        let preview = build_preview(&p, &args.plan.confirm).await;
        print!("{}", render_preview(&preview, PreviewFormat::Text));
        let builder = new_builder(Mode::DryRun);
        return write_report(&builder.finish(RunStatus::Planned));
    }
    if let Err(message) = guard(&p, &args.plan.confirm) {
        let mut builder = new_builder(Mode::Apply);
        builder.not_started(RunStatus::Refused, message.clone());
        let report = builder.finish(RunStatus::Refused);
        write_metrics(&args, &p, &p.plan, &report).await;
        write_report(&report)?;
        return Err(Failure::Refused(message));
    }

    let cancel = CancellationToken::new();
    let abort = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(cancel.clone(), abort.clone()));
    // Ephemeral clusters live exactly as long as this binding: dropping them (at the end of
    // this function, whatever happened) stops the servers and removes their directories.
    let clusters = match start_ephemeral_clusters(&p, &cancel).await {
        Ok(clusters) => clusters,
        Err(message) => {
            signals.abort();
            let mut builder = new_builder(Mode::Apply);
            builder.not_started(RunStatus::Failed, message.clone());
            let report = builder.finish(RunStatus::Failed);
            write_metrics(&args, &p, &p.plan, &report).await;
            write_report(&report)?;
            return Err(if cancel.is_cancelled() {
                Failure::Interrupted
            } else {
                Failure::Io(message)
            });
        }
    };
    let fixed_target_urls = clusters
        .iter()
        .map(|(name, c)| (name.clone(), c.url("postgres")))
        .collect();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let events = Events::new(tx, p.redactor.clone());
    let mut builder = new_builder(Mode::Apply);
    let color = crate::run::log::stderr_wants_color();
    let log_format = args.log_format;
    let consumer = tokio::spawn(async move {
        let mut log = LiveLog::new(std::io::stderr(), log_format, color);
        while let Some(event) = rx.recv().await {
            log.on_event(&event);
            builder.on_event(&event);
        }
        builder
    });

    let locks = Arc::new(Locks::new(
        Holder::this_process(&run.id, &run.plan, run.started_at),
        args.wait_lock,
        lease_ttl(),
        clusters.iter().map(|(name, _)| name.clone()).collect(),
        events.clone(),
        cancel.clone(),
    ));
    let opts = ExecOptions {
        reused: reuse.steps,
        resumed_from: args.resume.clone(),
        locks: Some(locks.clone()),
        abort: abort.clone(),
        concurrency: args.concurrency,
        vars: p.vars.clone(),
        env: p.env.clone(),
        base_dir: p.source.base_dir(),
        run,
        kill_grace: args.kill_grace,
        identities,
        fixed_target_urls,
        confirmed: args.plan.confirm.clone(),
    };
    let plan = Arc::new(p.plan.clone());
    let summary = executor::execute(plan.clone(), opts, Arc::new(Builtin), events, cancel).await;
    locks.release_all().await;
    drop(locks);
    signals.abort();
    drop(clusters);
    let builder = consumer.await.expect("the reporter task does not panic");
    let status = if summary.cancelled {
        RunStatus::Cancelled
    } else if summary.refused {
        RunStatus::Refused
    } else if summary.failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    let report = builder.finish(status);
    write_metrics(&args, &p, &plan, &report).await;
    write_report(&report)?;
    match status {
        RunStatus::Cancelled => Err(Failure::Interrupted),
        RunStatus::Failed => Err(Failure::StepsFailed),
        RunStatus::Refused => Err(Failure::Refused(
            "a step was refused by a safety rule or a lock held by another run (see its error above)".into(),
        )),
        _ => Ok(()),
    }
}

/// `--metrics FILE`: the run and the state of the plan's repositories, read after the run.
/// Metrics that cannot be written are a warning: the run itself did its work.
async fn write_metrics(
    args: &ApplyArgs,
    p: &Prepared,
    plan: &ValidPlan,
    report: &report::RunReport,
) {
    let Some(path) = &args.metrics else { return };
    let templates = crate::plan::template::Templates::new();
    let context = serde_json::json!({
        "vars": p.vars,
        "env": p.env,
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
    let states =
        crate::run::metrics::repository_states(plan, &repositories, &p.source.base_dir()).await;
    let text = crate::run::metrics::render(report, plan, &states);
    if let Err(e) = crate::run::metrics::write(path, &text) {
        eprintln!("warning: cannot write metrics {}: {e}", path.display());
    }
}

/// How long an S3 lease lasts without renewal: `OPSRUNNER_LEASE_TTL` (a duration such as
/// `90s`), by default one minute. A dead holder's lease is taken over after this long.
fn lease_ttl() -> Duration {
    std::env::var("OPSRUNNER_LEASE_TTL")
        .ok()
        .and_then(|v| crate::plan::duration::parse(&v).ok())
        .filter(|d| *d >= Duration::from_secs(3))
        .unwrap_or(crate::repo::lease::DEFAULT_TTL)
}

/// Reads `--identity` up front: a wrong path should stop the run before an hour of work,
/// not after it.
pub fn load_identities(
    path: Option<&Path>,
) -> Result<Option<crate::repo::crypto::Identities>, Failure> {
    path.map(crate::repo::crypto::Identities::load)
        .transpose()
        .map_err(Failure::Usage)
}

/// Starts a cluster for every ephemeral target some step uses, all at once.
async fn start_ephemeral_clusters(
    p: &Prepared,
    cancel: &CancellationToken,
) -> Result<Vec<(String, EphemeralCluster)>, String> {
    let mut names: Vec<&str> = p
        .plan
        .plan
        .steps
        .iter()
        .flat_map(|s| s.kind.targets())
        .collect();
    names.sort();
    names.dedup();
    let mut starting = Vec::new();
    for name in names {
        let target = &p.plan.plan.targets[name];
        if !target.ephemeral {
            continue;
        }
        let run_as = target.run_as.clone().unwrap_or_else(|| "postgres".into());
        starting.push((
            name.to_string(),
            tokio::task::spawn_blocking(move || EphemeralCluster::start(&run_as)),
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
async fn cancel_on_signal(cancel: CancellationToken, abort: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!(
        "opsrunner: interrupted; stopping running steps (cleanup steps still run; interrupt again to stop them)"
    );
    cancel.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("opsrunner: interrupted again; stopping cleanup steps");
    abort.cancel();
}

pub fn schema(which: SchemaKind) -> String {
    match which {
        SchemaKind::Plan => crate::schema::plan_schema(),
        SchemaKind::Report => crate::schema::report_schema(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    Plan,
    Report,
}
