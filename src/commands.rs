//! The CLI verbs as library functions: `validate`, `plan`, `apply`, `graph`, `schema`.
//! `main.rs` only parses arguments, calls these and maps a [`Failure`] to its exit code.

use crate::exit::Failure;
use crate::plan::{self, PlanSource};
use crate::redact::Redactor;
use crate::run::executor::RunInfo;
use crate::run::log::LogFormat;
use crate::run::preview::{self, PlanPreview, PreviewInput};
use crate::run::report::{self, Mode, ReportBuilder, RunStatus};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    Text,
    Markdown,
    Json,
}

impl PreviewFormat {
    /// The format asked for, else the one `--out`'s extension names (`plan.json` is a saved
    /// plan, `plan.md` a pull-request comment), else text.
    pub fn chosen(format: Option<PreviewFormat>, out: Option<&Path>) -> PreviewFormat {
        let extension = out
            .and_then(Path::extension)
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        format.unwrap_or(match extension.as_deref() {
            Some("json") => PreviewFormat::Json,
            Some("md" | "markdown") => PreviewFormat::Markdown,
            _ => PreviewFormat::Text,
        })
    }
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
    /// A one-shot command's plan, used instead of `file` (see [`crate::oneshot`]).
    pub generated: Option<Generated>,
}

/// A plan written from a command line (a one-shot command's), and the environment
/// variables it reads its values from (added to the process's own).
#[derive(Debug, Clone)]
pub struct Generated {
    pub source: PlanSource,
    pub env: BTreeMap<String, String>,
}

pub use crate::run::apply::Prepared;

/// Loads, validates and checks the command-line overrides against the plan.
pub fn prepare(args: &PlanArgs, env: BTreeMap<String, String>) -> Result<Prepared, Failure> {
    let (mut env, credentials) = with_credentials(env)?;
    let source = match &args.generated {
        Some(generated) => {
            env.extend(generated.env.clone());
            generated.source.clone()
        }
        None => PlanSource::read_within(&args.file, args.limits).map_err(Failure::Plan)?,
    };
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
    // What the plan names openly is no secret's text to hunt for (see `redact`): its
    // targets, repositories and steps, the roles, hosts and databases of the PostgreSQL
    // URLs it uses, and PostgreSQL's default role. Not the variables' values: a `--var`
    // may carry a secret.
    redactor.add_open("postgres");
    let names = plan
        .plan
        .targets
        .keys()
        .chain(plan.plan.repositories.keys());
    for name in names.chain(plan.plan.steps.iter().map(|s| &s.common.id)) {
        redactor.add_open(name);
    }
    for value in env.values().filter(|v| v.contains("://")) {
        redactor.add_url_names(value);
    }
    for value in &credentials {
        redactor.add(value);
    }
    for name in &plan.plan.secrets {
        if let Some(value) = env.get(name) {
            // A secret URL (a webhook's) is masked in its parts too: a server may echo them.
            redactor.add_url_parts(value);
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
            for secret in crate::redact::credential_values(value) {
                redactor.add(&secret);
            }
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

/// The secrets of the environment that are masked only by position (see
/// [`crate::redact`]), one sentence each, naming the variable and never the value.
pub fn weak_secrets(p: &Prepared) -> Vec<String> {
    let advice = "it is masked where its place is known (a URL's password), not wherever its text appears; use a longer, random value";
    let mut out = Vec::new();
    let used = crate::plan::env_references(&p.plan.plan);
    for (name, value) in &p.env {
        let used =
            used.contains(name) || p.plan.plan.secrets.contains(name) || name == "PGPASSWORD";
        let secret = p.plan.plan.secrets.contains(name) || crate::redact::is_credential_name(name);
        if !used {
            continue;
        }
        if secret
            && !value.is_empty()
            && !value.contains("://")
            && let Some(why) = p.redactor.weakness(value)
        {
            out.push(format!("secret {name} is weak: {why}; {advice}"));
        }
        if value.contains("://")
            && let Some(password) = url::Url::parse(value.trim())
                .ok()
                .and_then(|u| u.password().map(str::to_string))
            && let Some(why) = p.redactor.weakness(&password)
        {
            out.push(format!("the password in {name} is weak: {why}; {advice}"));
        }
    }
    out
}

/// The most a credential file may hold.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

/// systemd credentials (`LoadCredential=NAME`, see `opsrunner schedule systemd`): each file
/// in `$CREDENTIALS_DIRECTORY` whose name is an environment variable's becomes that
/// variable, unless the environment already sets it, and its value a secret. One trailing
/// newline is dropped (`echo value > file` writes one). Returns the values added.
fn with_credentials(
    mut env: BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Vec<String>), Failure> {
    let Some(dir) = env.get("CREDENTIALS_DIRECTORY").cloned() else {
        return Ok((env, Vec::new()));
    };
    let bad = |e: std::io::Error| Failure::Usage(format!("credentials in {dir}: {e}"));
    let mut added = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_name = !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name || env.contains_key(&name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(entry.path())
            .and_then(|f| f.take(MAX_CREDENTIAL_BYTES + 1).read_to_end(&mut bytes))
            .map_err(bad)?;
        if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
            return Err(Failure::Usage(format!(
                "credential {name} in {dir} is larger than {MAX_CREDENTIAL_BYTES} bytes"
            )));
        }
        let Ok(mut value) = String::from_utf8(bytes) else {
            return Err(Failure::Usage(format!(
                "credential {name} in {dir} is not UTF-8 text"
            )));
        };
        if value.ends_with('\n') {
            value.pop();
        }
        if !value.is_empty() {
            added.push(value.clone());
        }
        env.insert(name, value);
    }
    Ok((env, added))
}

pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

pub fn validate(args: &PlanArgs) -> Result<String, Failure> {
    let p = prepare(args, process_env())?;
    for warning in weak_secrets(&p) {
        eprintln!("warning: {warning}");
    }
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
    build_preview_with(p, confirm, PreviewMode::default()).await
}

/// How a preview is made beyond the plan and `--confirm`.
#[derive(Debug, Default)]
pub struct PreviewMode<'a> {
    /// `--untrusted`: read nothing.
    pub untrusted: bool,
    /// `--base OLD`: read only what is unchanged against the reviewed plan.
    pub base: Option<preview::BasePlan>,
    /// Record what a saved plan needs (the JSON preview), with these `--var` values.
    pub saved_with: Option<&'a BTreeMap<String, String>>,
}

pub async fn build_preview_with(
    p: &Prepared,
    confirm: &[String],
    mode: PreviewMode<'_>,
) -> PlanPreview {
    let no_overrides = BTreeMap::new();
    preview::build(
        &PreviewInput {
            source: &p.source,
            plan: &p.plan,
            vars: &p.vars,
            env: &p.env,
            confirmed: confirm,
            untrusted: mode.untrusted,
            base: mode.base.as_ref(),
            capture: mode.saved_with.is_some(),
            overrides: mode.saved_with.unwrap_or(&no_overrides),
        },
        &p.redactor,
    )
    .await
}

pub fn render_preview(preview: &PlanPreview, format: PreviewFormat) -> String {
    render_preview_within(preview, format, crate::run::markdown::GITHUB_COMMENT_LIMIT)
}

/// The preview in `format`; markdown in at most `max_chars` characters.
pub fn render_preview_within(
    preview: &PlanPreview,
    format: PreviewFormat,
    max_chars: usize,
) -> String {
    match format {
        PreviewFormat::Text => preview::render_text(preview),
        PreviewFormat::Markdown => crate::run::markdown::render(preview, max_chars),
        PreviewFormat::Json => preview::render_json(preview),
    }
}

/// How `opsrunner plan` writes its preview.
#[derive(Debug, Clone)]
pub struct PlanOutput<'a> {
    pub format: PreviewFormat,
    pub out: Option<&'a Path>,
    /// Markdown: the longest the preview may be (a pull-request comment's limit).
    pub max_chars: usize,
    /// Exit with [`crate::exit::INCOMPLETE`] when a target or repository could not be read.
    pub strict: bool,
}

/// `opsrunner plan`: the preview, to stdout or `out`.
pub async fn plan(args: &PlanArgs, output: &PlanOutput<'_>) -> Result<String, Failure> {
    let (format, out) = (output.format, output.out);
    let p = prepare(args, process_env())?;
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
            let mut vars = old.plan.vars.clone();
            vars.extend(overrides);
            Some(preview::BasePlan {
                plan: old.plan,
                vars,
            })
        }
    };
    let overrides: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    let mode = PreviewMode {
        untrusted: args.untrusted,
        base,
        saved_with: (format == PreviewFormat::Json).then_some(&overrides),
    };
    let preview = build_preview_with(&p, &args.confirm, mode).await;
    let text = render_preview_within(&preview, format, output.max_chars);
    let shown = match out {
        Some(path) => {
            write_atomically(path, &text)?;
            String::new()
        }
        None => text,
    };
    if output.strict && !preview.unread.is_empty() {
        let lines: Vec<String> = preview.unread.iter().map(|u| u.line()).collect();
        return Err(Failure::Incomplete {
            output: shown,
            message: format!("incomplete preview (--strict): {}", lines.join("; ")),
        });
    }
    Ok(shown)
}

/// Whether an output file (`--report`, `--junit`, `--metrics`) can be written, checked
/// before the run: its directory exists and takes a new file (a file is made there and
/// removed again), and the path is not a directory or another non-file.
fn check_output(flag: &str, path: &Path) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Failure::Usage(format!(
            "{flag}: directory {} does not exist",
            dir.display()
        )));
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(Failure::Usage(format!(
            "{flag}: {} is a directory (or another non-file); name a file",
            path.display()
        )));
    }
    let probe = dir.join(format!(".opsrunner-probe.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Failure::Usage(format!(
            "{flag}: cannot write into {}: {e}",
            dir.display()
        ))),
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    crate::atomic::write(path, text.as_bytes())
        .map_err(|e| Failure::Io(format!("cannot write {}: {e}", path.display())))
}

pub fn graph(args: &PlanArgs, format: GraphFormat) -> Result<String, Failure> {
    let p = prepare(args, process_env())?;
    let steps = &p.plan.plan.steps;
    let base_dir = p.source.base_dir();
    let label = |i: usize| crate::plan::graph::NodeLabel {
        id: steps[i].id().to_string(),
        kind: steps[i].kind.type_name().to_string(),
        condition: steps[i].common.condition.as_str().to_string(),
        destructive: steps[i].kind.destructive(&base_dir, true),
    };
    Ok(match format {
        GraphFormat::Dot => p.plan.dag.to_dot(&p.plan.plan.name, label),
        GraphFormat::Mermaid => p.plan.dag.to_mermaid(label),
    })
}

pub struct ApplyArgs {
    pub plan: PlanArgs,
    pub report: Option<PathBuf>,
    /// Write the run as JUnit XML (a test case per step) here.
    pub junit: Option<PathBuf>,
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
    /// How often a log that is not a terminal reports a long transfer's progress.
    pub progress_every: Duration,
    /// The age identity file for encrypted backups.
    pub identity: Option<PathBuf>,
    /// Print each step's outputs on stdout at the end (one-shot commands).
    pub print_outputs: bool,
}

/// `opsrunner apply`: runs the plan (or previews it with `--dry-run`) and writes the report.
pub async fn apply(mut args: ApplyArgs) -> Result<(), Failure> {
    let saved = match args.plan.generated {
        Some(_) => None,
        None => crate::run::saved::detect(&args.plan.file)?,
    };
    let saved_file = args.plan.file.display().to_string();
    if let Some(saved) = &saved {
        if !args.plan.vars.is_empty() {
            return Err(Failure::Usage(format!(
                "--var: the saved plan {} runs with the values it was saved with; make a new plan to change them",
                args.plan.file.display()
            )));
        }
        args.plan.vars = saved.state().vars.clone().into_iter().collect();
        args.plan.file = saved.plan_file();
        if !args.plan.file.is_file() {
            return Err(Failure::Refused(format!(
                "the saved plan's plan file is gone (neither {} nor {} exists): nothing was run",
                saved.state().plan_file.display(),
                saved.path
            )));
        }
    }
    let p = prepare(&args.plan, process_env())?;
    if let Some(saved) = &saved {
        let vars = &saved.state().vars;
        let mode = PreviewMode {
            saved_with: Some(vars),
            ..PreviewMode::default()
        };
        let now = build_preview_with(&p, &args.plan.confirm, mode).await;
        let changes = saved.changes(&now);
        if !changes.is_empty() {
            return Err(Failure::Refused(format!(
                "the saved plan {saved_file} is stale, nothing was run:\n  - {}\nmake and review a new one: opsrunner plan {} --out {saved_file}",
                changes.join("\n  - "),
                saved.path
            )));
        }
    }
    if !args.dry_run {
        check_env(&p)?;
    }
    for warning in weak_secrets(&p) {
        eprintln!("warning: {warning}");
    }
    let identities = load_identities(args.identity.as_deref())?;
    for secret in identities.iter().flat_map(|i| i.secret_texts()) {
        p.redactor.add(secret);
    }
    if !args.dry_run {
        check_identity(&p, identities.as_ref())?;
    }
    // Finding out after an hour-long run that an output cannot be written helps nobody:
    // every output asked for is checked the same way before anything runs.
    let outputs = [
        ("--report", args.report.as_deref()),
        ("--junit", args.junit.as_deref()),
        ("--metrics", args.metrics.as_deref()),
    ];
    for (i, (flag, path)) in outputs.iter().enumerate() {
        let Some(path) = path else { continue };
        check_output(flag, path)?;
        if let Some((other, _)) = outputs[..i]
            .iter()
            .find(|(_, p)| p.is_some_and(|p| p == *path))
        {
            return Err(Failure::Usage(format!(
                "{other} and {flag} name the same file {}; give each its own",
                path.display()
            )));
        }
    }
    if args.dry_run {
        let preview = build_preview(&p, &args.plan.confirm).await;
        print!("{}", render_preview(&preview, PreviewFormat::Text));
        let run = RunInfo::new(&p.plan.plan.name);
        let builder = ReportBuilder::new(&p.source, &p.plan, &run.id, Mode::DryRun, run.started_at);
        let report = builder.finish(RunStatus::Planned);
        if let Some(path) = &args.junit {
            write_atomically(path, &crate::run::junit::render(&report))?;
        }
        return match &args.report {
            Some(path) => report::write(&report, path)
                .map_err(|e| Failure::Io(format!("cannot write report {}: {e}", path.display()))),
            None => Ok(()),
        };
    }
    let options = crate::run::apply::Options {
        report: args.report,
        junit: args.junit,
        concurrency: args.concurrency,
        log_format: args.log_format,
        kill_grace: args.kill_grace,
        wait_lock: args.wait_lock,
        resume: args.resume,
        metrics: args.metrics,
        confirm: args.plan.confirm,
        progress_every: args.progress_every,
        print_outputs: args.print_outputs,
    };
    crate::run::apply::run(p, identities, options).await
}

/// Every environment variable the plan needs is set, or the run does not start: all the
/// missing ones in one message, each with the places that need it (exit 2).
fn check_env(p: &Prepared) -> Result<(), Failure> {
    let missing = crate::plan::missing_env(&p.plan.plan, &p.env);
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|(name, places)| format!("  {name}  (used by {})", places.join(", ")))
        .collect();
    Err(Failure::Usage(format!(
        "{}: {} environment variable{} the plan needs {} not set, nothing was run:\n{}\nset {} (for systemd: Environment= or LoadCredential=, see `opsrunner schedule systemd`)",
        p.source.display,
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        if missing.len() == 1 { "is" } else { "are" },
        lines.join("\n"),
        if missing.len() == 1 { "it" } else { "them" },
    )))
}

/// A plan that writes encrypted backups and then restores or verifies them needs the
/// identity that reads them, and finding out after the backup (at 3 a.m., from the
/// verify) helps nobody: it is checked before the first step — given, and holding a key
/// the repository encrypts to.
fn check_identity(
    p: &Prepared,
    identities: Option<&crate::repo::crypto::Identities>,
) -> Result<(), Failure> {
    let plan = &p.plan.plan;
    let written: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind.type_name(), "backup" | "base_backup"))
        .filter_map(|s| s.kind.repository())
        .collect();
    for step in &plan.steps {
        if !matches!(step.kind.type_name(), "verify" | "restore") {
            continue;
        }
        let Some(name) = step.kind.repository() else {
            continue;
        };
        let Some(config) = plan
            .repositories
            .get(name)
            .and_then(|r| r.encryption.as_ref())
        else {
            continue;
        };
        if !written.contains(&name) {
            continue;
        }
        let Some(identities) = identities else {
            return Err(Failure::Usage(format!(
                "step `{}` reads the backups this plan encrypts into repository `{name}`: give the identity that decrypts them, --identity FILE (or {}); nothing was run",
                step.id(),
                crate::repo::crypto::IDENTITY_ENV
            )));
        };
        let Ok(recipients) = crate::repo::crypto::Recipients::of(config, &p.source.base_dir())
        else {
            continue;
        };
        let recipients = recipients.texts();
        if !identities
            .public_keys()
            .iter()
            .any(|k| recipients.contains(k))
        {
            return Err(Failure::Usage(format!(
                "step `{}` reads the backups this plan encrypts into repository `{name}`, but identity file {} holds none of the keys they are encrypted to ({}); nothing was run",
                step.id(),
                identities.path().display(),
                recipients.join(", ")
            )));
        }
    }
    Ok(())
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

/// `opsrunner diff OLD NEW`: what the change does to the plan's behaviour.
pub fn diff(old: &Path, new: &Path, format: PreviewFormat) -> Result<String, Failure> {
    let load = |path: &Path| -> Result<crate::plan::ValidPlan, Failure> {
        let source = PlanSource::read(path).map_err(Failure::Plan)?;
        Ok(plan::check(source).map_err(Failure::Plan)?.1)
    };
    let (a, b) = (load(old)?, load(new)?);
    let changes = crate::diff::between(&a.plan, &b.plan);
    let (old, new) = (old.display().to_string(), new.display().to_string());
    Ok(match format {
        PreviewFormat::Markdown => crate::diff::render_markdown(&changes, &old, &new),
        _ => crate::diff::render_text(&changes, &old, &new),
    })
}
