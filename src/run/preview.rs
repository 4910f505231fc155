//! The dry-run preview: what each step will do, in execution order, with parameters
//! resolved as far as they can be before anything runs. Values only a run can produce are
//! shown as `(known after STEP)`, never guessed. Building a preview has no side effects.

use super::bind::{Bound, Scope, bind, definitions};
use super::saved_state::{self, StepDigest};
use crate::plan::model::{Repository, StepKind};
use crate::plan::template::Templates;
use crate::plan::{PlanSource, ValidPlan};
use crate::redact::Redactor;
use crate::steps::probe::{Findings, Probe, TargetView, Unread};
use crate::steps::registry;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PlanPreview {
    /// The saved-plan format (`apply` takes this JSON as a saved plan; see `run::saved`).
    pub opsrunner_saved_plan: u32,
    pub plan: String,
    pub path: String,
    /// SHA-256 of the plan file's bytes (as in the run report): which version was previewed.
    pub plan_sha256: String,
    pub steps: Vec<StepPreview>,
    /// Targets that `apply` will refuse to touch without `--confirm NAME`.
    pub confirmations_needed: Vec<String>,
    /// Things the preview could not resolve (e.g. unset environment variables).
    pub warnings: Vec<String>,
    /// Targets and repositories a probe needed and could not read: what the preview says
    /// about them is incomplete (`plan --strict` fails on any).
    pub unread: Vec<Unread>,
    /// Why this preview cannot be applied as a saved plan (`--untrusted`, `--base`): it
    /// read nothing, or not everything, of what it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_only: Option<String>,
    /// What `apply` checks again before it runs this preview as a saved plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<saved_state::SavedState>,
    /// SHA-256 of this saved plan without this field: a saved plan damaged or edited after
    /// it was reviewed is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_plan_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepPreview {
    /// 1-based position in execution order.
    pub position: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub step_type: String,
    /// What the step will do, in one line.
    pub action: String,
    /// Parameters with templates resolved and secrets redacted.
    pub params: Value,
    pub needs: Vec<String>,
    #[serde(rename = "if")]
    pub condition: String,
    pub retry: Option<String>,
    pub timeout: Option<String>,
    pub continue_on_error: bool,
    pub destructive: bool,
    pub target: Option<String>,
    /// Whether the step writes to its target (and so locks it during a run).
    pub writes_target: bool,
    /// The repository the step reads or writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Whether the step writes to its repository.
    pub writes_repository: bool,
    /// The target's connection URL as the step will use it, password redacted.
    pub target_url: Option<String>,
    pub protected_target: bool,
    /// What the step will do in detail: exact SQL, pending migrations, seed files, which
    /// backup `latest` is — read without changing anything.
    pub details: Vec<String>,
    /// The backups this step would delete (a prune), by id, as read now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
    /// Why the preview cannot say everything this step will do: its probe was skipped,
    /// timed out, or could not read its target or repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

pub struct PreviewInput<'a> {
    pub source: &'a PlanSource,
    pub plan: &'a ValidPlan,
    pub vars: &'a BTreeMap<String, Value>,
    pub env: &'a BTreeMap<String, String>,
    pub confirmed: &'a [String],
    /// Review mode: no probe runs and no environment value is read (see README).
    pub untrusted: bool,
    /// `plan NEW --base OLD`: the targets and repositories defined exactly as in the
    /// reviewed plan. Probes run only for steps that use nothing else; environment values
    /// are shown as placeholders throughout.
    pub base: Option<&'a BasePlan>,
    /// Read what a saved plan records (each target's identity, each repository's newest
    /// backup) for [`PlanPreview::saved`].
    pub capture: bool,
    /// The `--var` values given, recorded in a saved plan.
    pub overrides: &'a BTreeMap<String, String>,
}

/// `plan NEW --base OLD`: the reviewed plan, with its own variables (after the same
/// `--var` values as NEW's).
#[derive(Debug, Clone)]
pub struct BasePlan {
    pub plan: crate::plan::model::Plan,
    pub vars: BTreeMap<String, Value>,
}

/// What `--base` found unchanged.
#[derive(Debug, Clone, Default)]
pub struct BaseTrust {
    pub targets: std::collections::BTreeSet<String>,
    pub repositories: std::collections::BTreeSet<String>,
}

impl BaseTrust {
    /// The targets and repositories of `new` that would contact exactly what `old`'s
    /// would: each definition rendered in full, with `context` (the probes' own: the real
    /// environment) and each plan's own variables, then compared field by field. The text
    /// as written is not enough: `postgres://…@{{ vars.host }}/db` reads the same in both
    /// plans while a pull request points `vars.host` elsewhere. What cannot be rendered
    /// in either plan is not provably identical, so it counts as changed.
    pub fn between(
        templates: &Templates,
        old: &BasePlan,
        new: &crate::plan::model::Plan,
        context: &Value,
    ) -> BaseTrust {
        let mut old_context = context.clone();
        old_context["vars"] = serde_json::to_value(&old.vars).unwrap_or(Value::Null);
        let same = |before: Option<Value>, now: Value| {
            let render = |v: &Value, c: &Value| templates.render_value(v, c).ok();
            match (
                before.and_then(|b| render(&b, &old_context)),
                render(&now, context),
            ) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        };
        fn unchanged_of<T>(
            old: &BTreeMap<String, T>,
            new: &BTreeMap<String, T>,
            definition: impl Fn(&T) -> Value,
            same: &dyn Fn(Option<Value>, Value) -> bool,
        ) -> std::collections::BTreeSet<String> {
            new.iter()
                .filter(|(name, def)| same(old.get(*name).map(&definition), definition(def)))
                .map(|(name, _)| name.clone())
                .collect()
        }
        let targets = unchanged_of(&old.plan.targets, &new.targets, target_definition, &same);
        let repositories = unchanged_of(
            &old.plan.repositories,
            &new.repositories,
            repository_definition,
            &same,
        );
        BaseTrust {
            targets,
            repositories,
        }
    }

    /// Why a step's probes may not run, if they may not.
    fn refuses(&self, kind: &StepKind) -> Option<String> {
        if let Some(t) = kind.target().filter(|t| !self.targets.contains(*t)) {
            return Some(format!(
                "target `{t}` is new or changed against the base plan"
            ));
        }
        if let Some(r) = kind
            .repository()
            .filter(|r| !self.repositories.contains(*r))
        {
            return Some(format!(
                "repository `{r}` is new or changed against the base plan"
            ));
        }
        None
    }
}

/// A target's whole definition, templates unrendered: as written when the loader kept
/// that, else as typed.
fn target_definition(t: &crate::plan::model::Target) -> Value {
    if t.written.is_empty() {
        serde_json::to_value(t).unwrap_or(Value::Null)
    } else {
        t.written.value()
    }
}

fn repository_definition(r: &crate::plan::model::Repository) -> Value {
    if r.written.is_empty() {
        serde_json::to_value(r).unwrap_or(Value::Null)
    } else {
        r.written.value()
    }
}

/// How long one probe (a server's applied migrations, a repository's listing) may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long all probes of one preview may take together.
const PREVIEW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn build(input: &PreviewInput<'_>, redactor: &Redactor) -> PlanPreview {
    let plan = &input.plan.plan;
    let mut gathered = Gathered::default();
    let context = preview_context(input, &mut gathered.warnings);
    // Probes under --base connect with the real values, only to unchanged definitions.
    let probe_context = match &input.base {
        Some(_) => preview_context(
            &PreviewInput {
                base: None,
                ..*input
            },
            &mut Vec::new(),
        ),
        None => context.clone(),
    };
    let templates = Templates::new();
    let base = input
        .base
        .map(|old| BaseTrust::between(&templates, old, plan, &probe_context));
    let shared = Shared {
        input,
        redactor,
        templates,
        context,
        probe_context,
        base,
        base_dir: input.source.base_dir(),
        started: std::time::Instant::now(),
        capture: input.capture && !input.untrusted && input.base.is_none(),
    };
    let mut steps_out = Vec::new();
    for &i in &input.plan.dag.order {
        let position = steps_out.len();
        let previewed = preview_step(&shared, &mut gathered, position, &plan.steps[i]).await;
        steps_out.push(previewed);
    }
    let Gathered {
        warnings,
        confirmations,
        unread: unread_all,
        mut states,
        created: _,
    } = gathered;
    states.redact(redactor);
    // A saved plan carries its --var values verbatim (apply runs with them): one that holds
    // a secret would put it into a file meant for review, so none is saved.
    let secret_var = input.overrides.values().any(|v| redactor.redact(v) != *v);
    let capture = shared.capture && !secret_var;
    let saved = capture.then(|| saved_state::SavedState {
        plan_file: std::path::absolute(&input.source.path).unwrap_or(input.source.path.clone()),
        vars: input.overrides.clone(),
        steps: step_digests(&steps_out),
        deletes: deletes(&steps_out),
        targets: states.targets,
        repositories: states.repositories,
    });
    PlanPreview {
        opsrunner_saved_plan: saved_state::FORMAT,
        review_only: review_only(input, secret_var),
        saved,
        saved_plan_sha256: None,
        plan: plan.name.clone(),
        path: input.source.display.clone(),
        plan_sha256: input.source.sha256.clone(),
        steps: steps_out,
        confirmations_needed: confirmations,
        warnings: warnings.into_iter().map(|w| redactor.redact(&w)).collect(),
        unread: unread_all,
    }
}

/// What every step's preview reads.
struct Shared<'a> {
    input: &'a PreviewInput<'a>,
    redactor: &'a Redactor,
    templates: Templates,
    /// The values shown (placeholders under `--untrusted` and `--base`).
    context: Value,
    /// The values probes connect with.
    probe_context: Value,
    base: Option<BaseTrust>,
    base_dir: std::path::PathBuf,
    started: std::time::Instant,
    /// Whether a saved plan records the targets' and repositories' states.
    capture: bool,
}

/// What the steps' previews gather for the whole preview.
#[derive(Default)]
struct Gathered {
    warnings: Vec<String>,
    confirmations: Vec<String>,
    unread: Vec<Unread>,
    states: States,
    /// Databases earlier steps create: (target, database, step id).
    created: Vec<(String, String, String)>,
}

/// The database a step creates (target, database), from its rendered parameters: a
/// `reset`'s, a `restore`'s `into`.
fn creates(step_type: &str, params: &Value) -> Option<(String, String)> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match step_type {
        "reset" => Some((text(params.get("target"))?, text(params.get("database"))?)),
        "restore" => {
            let into = params.get("into")?;
            Some((text(into.get("target"))?, text(into.get("database"))?))
        }
        _ => None,
    }
}

/// One step's preview: bound as apply binds it, its probe run (or said skipped).
async fn preview_step(
    shared: &Shared<'_>,
    gathered: &mut Gathered,
    position: usize,
    step: &crate::plan::model::StepDef,
) -> StepPreview {
    let Shared {
        input,
        redactor,
        templates,
        context,
        probe_context,
        base,
        base_dir,
        started,
        capture,
    } = shared;
    let Gathered {
        warnings,
        confirmations,
        unread: unread_all,
        states,
        created,
    } = gathered;
    let plan = &input.plan.plan;
    // Bound as apply binds it: the preview shows what apply would run.
    let read_files = !input.untrusted;
    let scope = |context| Scope {
        plan,
        templates,
        context,
        redactor,
        base_dir,
        confirmed: input.confirmed,
        read_files,
        fixed_target_urls: None,
    };
    let bound = bind(step, &scope(context));
    let kind = bound.kind(step).clone();
    let params = match &bound.params {
        Ok((rendered, _)) => rendered.clone(),
        Err(e) => {
            warnings.push(format!("step `{}`: {e}", step.id()));
            step.raw_params.value()
        }
    };
    let target = kind.target().map(str::to_string);
    let defined_target = target.as_ref().and_then(|t| plan.targets.get(t));
    let protected = defined_target.is_some_and(|t| t.protected);
    // Under --untrusted no file is read: SQL from a file counts as destructive.
    let destructive = kind.destructive(base_dir, read_files);
    // The guard apply asks, on the same rendered parameters.
    if let Some(t) = &bound.unconfirmed
        && !confirmations.contains(t)
    {
        confirmations.push(t.clone());
    }
    let target_url = defined_target.map(|t| target_shown(t, &bound, redactor));
    // What the probes read: under --base the definitions rendered with the real values,
    // for the very names this step was previewed (and its base checked) with.
    let probed = input
        .base
        .is_some()
        .then(|| definitions(&kind, &scope(probe_context)));
    let (probe_target, probe_repository, probe_source) = match &probed {
        Some(d) => (&d.target, &d.repository, &d.source),
        None => (&bound.target, &bound.repository, &bound.source),
    };
    let view = match defined_target {
        Some(t) if t.ephemeral => TargetView::Ephemeral,
        Some(_) => match probe_target {
            Some((_, Ok(url))) => TargetView::Url(url.as_str()),
            _ => TargetView::None,
        },
        None => TargetView::None,
    };
    let rendered = |definition: &Option<(String, Result<Repository, String>)>| {
        definition.as_ref().map(|(name, r)| match r {
            Ok(r) => r.clone(),
            Err(_) => plan.repositories[name].clone(),
        })
    };
    let repo = rendered(probe_repository);
    let source = rendered(probe_source);
    if *capture {
        if let Some(name) = target.as_ref().filter(|t| !states.targets.contains_key(*t)) {
            states
                .targets
                .insert(name.clone(), target_state(&view).await);
        }
        if let Some(name) = kind
            .repository()
            .filter(|r| !states.repositories.contains_key(*r))
        {
            let state = match &repo {
                Some(r) => saved_state::repository_state(r, base_dir).await,
                None => saved_state::RepositoryState::Unread {
                    error: "its definition could not be rendered".into(),
                },
            };
            states.repositories.insert(name.to_string(), state);
        }
    }
    let skip = if input.untrusted {
        Some("--untrusted".to_string())
    } else {
        base.as_ref().and_then(|b| b.refuses(&kind))
    };
    let mut incomplete = None;
    let findings = match skip {
        Some(why) => {
            let (findings, said) = skipped_probe(&kind, &why);
            incomplete = said;
            findings
        }
        None => {
            let pg_bin_dirs = crate::run::executor::pg_bin_dirs(plan, target.as_deref(), base_dir);
            let data_directory =
                crate::run::executor::data_directory(plan, target.as_deref(), base_dir);
            let database = params.get("database").and_then(Value::as_str);
            let created_by = created
                .iter()
                .find(|(t, d, _)| {
                    Some(t.as_str()) == target.as_deref() && Some(d.as_str()) == database
                })
                .map(|(_, _, step)| step.as_str());
            let probe = Probe {
                base_dir,
                target: &view,
                repo: repo.as_ref(),
                source: source.as_ref(),
                pg_bin_dirs: &pg_bin_dirs,
                data_directory: data_directory.as_deref(),
                created_by,
            };
            probe_within_deadline(&kind, probe, *started).await
        }
    };
    if let Some((target, database)) = creates(step.kind.type_name(), &params) {
        created.push((target, database, step.id().to_string()));
    }
    // A repository the run writes to must be one (`opsrunner repo init`): said here, once,
    // rather than found when the step starts. Read only; never under review modes.
    if !input.untrusted
        && input.base.is_none()
        && kind.writes_repository()
        && let (Some(name), Some(definition)) = (kind.repository(), repo.as_ref())
        && let Ok(store) = crate::repo::open(definition, base_dir).await
        && let Some(said) = crate::repo::record::assess(&store, definition, base_dir).await
    {
        let warning = redactor.redact(&format!("repository `{name}`: {said}"));
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
    }
    let details: Vec<String> = findings.lines.iter().map(|d| redactor.redact(d)).collect();
    for mut u in findings.unread {
        u.error = redactor.redact(&u.error);
        incomplete.get_or_insert_with(|| u.line());
        if !unread_all.contains(&u) {
            unread_all.push(u);
        }
    }
    let mut params = params;
    redactor.redact_json(&mut params);
    // `retry` and `timeout` as apply will enforce them (from `{{ env.X }}` too); a
    // value that will not parse is said now rather than when the step starts.
    let common = match bound.common {
        Ok(c) => c,
        Err(e) => {
            // Under review modes the environment's values are placeholders.
            if !input.untrusted && input.base.is_none() {
                warnings.push(redactor.redact(&format!("step `{}`: {e}", step.id())));
            }
            step.common.clone()
        }
    };
    StepPreview {
        position: position + 1,
        id: step.id().to_string(),
        step_type: step.kind.type_name().to_string(),
        action: redactor.redact(&kind.describe()),
        params,
        needs: step.common.needs.clone(),
        condition: step.common.condition.as_str().to_string(),
        retry: common.retry.as_ref().map(retry_text),
        timeout: common.timeout.map(|t| t.to_string()),
        continue_on_error: step.common.continue_on_error,
        destructive,
        writes_target: kind.writes_target(),
        repository: kind.repository().map(str::to_string),
        writes_repository: kind.writes_repository(),
        target,
        target_url,
        protected_target: protected,
        details,
        deletes: findings.deletes,
        incomplete,
    }
}

/// What a saved plan records of the targets and repositories, as the run will reach them.
#[derive(Default)]
struct States {
    targets: BTreeMap<String, saved_state::TargetState>,
    repositories: BTreeMap<String, saved_state::RepositoryState>,
}

impl States {
    /// The errors of what could not be read, redacted (they may quote a URL).
    fn redact(&mut self, redactor: &Redactor) {
        for state in self.targets.values_mut() {
            if let saved_state::TargetState::Unread { error } = state {
                *error = redactor.redact(error);
            }
        }
        for state in self.repositories.values_mut() {
            if let saved_state::RepositoryState::Unread { error } = state {
                *error = redactor.redact(error);
            }
        }
    }
}

async fn target_state(view: &TargetView<'_>) -> saved_state::TargetState {
    match view {
        TargetView::Ephemeral => saved_state::TargetState::Ephemeral,
        TargetView::Url(url) => saved_state::target_state(url).await,
        TargetView::None => saved_state::TargetState::Unread {
            error: "its URL could not be rendered".into(),
        },
    }
}

/// The target's URL as the preview shows it: rendered, with its password masked.
fn target_shown(t: &crate::plan::model::Target, bound: &Bound, redactor: &Redactor) -> String {
    if t.ephemeral {
        return "(an ephemeral local cluster, created at apply)".to_string();
    }
    if t.url.is_none() {
        return "(from the PG* environment variables)".to_string();
    }
    let url = match &bound.target {
        Some((_, Ok(url))) => url.clone(),
        _ => t.url_template().to_string(),
    };
    redactor.add_url_passwords(&url);
    redactor.redact(&url)
}

/// A probe not run (`why`: `--untrusted`, `--base`): what it would have read, and what the
/// preview therefore does not know.
fn skipped_probe(kind: &StepKind, why: &str) -> (Findings, Option<String>) {
    let reads = registry::reads_of(kind);
    let incomplete = reads.map(|what| format!("probe skipped ({why}): {what} unknown"));
    let findings = reads
        .map(|what| format!("probe skipped ({why}): would read {what}"))
        .into_iter()
        .collect::<Vec<_>>()
        .into();
    (findings, incomplete)
}

/// Why the preview is for review only, if it is.
fn review_only(input: &PreviewInput<'_>, secret_var: bool) -> Option<String> {
    if input.untrusted {
        Some("--untrusted".to_string())
    } else if secret_var && input.capture {
        Some("a --var value that is a secret".to_string())
    } else {
        input.base.as_ref().map(|_| "--base".to_string())
    }
}

/// Runs a step's probe within what is left of the preview's deadline (and at most
/// [`PROBE_TIMEOUT`]); a probe that runs out of time says what it could not read.
async fn probe_within_deadline(
    kind: &StepKind,
    probe: Probe<'_>,
    started: std::time::Instant,
) -> Findings {
    if started.elapsed() >= PREVIEW_DEADLINE {
        let line = format!(
            "probe skipped: the preview's {}s deadline has passed",
            PREVIEW_DEADLINE.as_secs()
        );
        return match timed_out(kind, &line) {
            Some(u) => Findings::unread(u),
            None => vec![line].into(),
        };
    }
    let limit = PROBE_TIMEOUT.min(PREVIEW_DEADLINE - started.elapsed());
    // Boxed: the probes' futures are deep, and every caller would carry their layout.
    match tokio::time::timeout(limit, registry::probe_step(kind, probe)).await {
        Ok(findings) => findings,
        Err(_) => {
            let line = format!(
                "probe timed out after {}s: nothing could be read{}",
                limit.as_secs(),
                registry::reads_of(kind)
                    .map(|w| format!(" about {w}"))
                    .unwrap_or_default()
            );
            match timed_out(kind, &line) {
                Some(u) => Findings::unread(u),
                None => vec![line].into(),
            }
        }
    }
}

/// `3 attempts, exponential 1s up to 1m with jitter`.
fn retry_text(r: &crate::plan::model::Retry) -> String {
    let mut s = format!(
        "{} attempts, {} {}",
        r.attempts,
        serde_json::to_value(r.backoff)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        r.delay
    );
    if let Some(max) = r.max_delay {
        let _ = write!(s, " up to {max}");
    }
    if r.jitter {
        s.push_str(" with jitter");
    }
    s
}

/// A probe that ran out of time read nothing about the step's repository (or target).
fn timed_out(kind: &StepKind, line: &str) -> Option<Unread> {
    let unknown = registry::reads_of(kind)
        .map(|w| format!("{w} unknown"))
        .unwrap_or_else(|| "its effect unknown".into());
    if let Some(r) = kind.repository() {
        return Some(Unread::repository(r, line, &unknown));
    }
    kind.target().map(|t| Unread::target(t, line, &unknown))
}

/// The render context for a preview: real vars and environment, placeholders for what only
/// a run knows.
fn preview_context(input: &PreviewInput<'_>, warnings: &mut Vec<String>) -> Value {
    let plan = &input.plan.plan;
    let mut env = serde_json::Map::new();
    for name in crate::plan::env_references(plan) {
        if input.untrusted || input.base.is_some() {
            // The plan's author chose these names: never show, never send, a value.
            env.insert(name.clone(), Value::String(format!("(env {name})")));
            continue;
        }
        let value = match input.env.get(&name) {
            Some(v) => v.clone(),
            None => {
                let w = format!(
                    "environment variable {name} is not set; `apply` will fail unless it is"
                );
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
                format!("(env {name} not set)")
            }
        };
        env.insert(name, Value::String(value));
    }
    let mut steps = serde_json::Map::new();
    for step in &plan.steps {
        let outputs: serde_json::Map<String, Value> = step
            .kind
            .output_names()
            .iter()
            .map(|o| {
                (
                    o.to_string(),
                    Value::String(format!("(known after {})", step.id())),
                )
            })
            .collect();
        let later = format!("(known after {})", step.id());
        steps.insert(
            step.id().to_string(),
            json!({ "outputs": outputs, "status": later, "error": later }),
        );
    }
    json!({
        "vars": input.vars,
        "env": env,
        "run": { "id": "(known at apply)", "started_at": "(known at apply)", "plan": plan.name, "status": "(known at apply)" },
        "steps": steps,
    })
}

pub(crate) fn dash(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

pub(crate) fn destructive_note(s: &StepPreview) -> Option<String> {
    if !s.destructive {
        return None;
    }
    Some(match (&s.target, s.protected_target) {
        (Some(t), true) => {
            format!("DESTRUCTIVE on protected target `{t}` (apply needs --confirm {t})")
        }
        (Some(t), false) => format!("DESTRUCTIVE on target `{t}`"),
        _ => "DESTRUCTIVE".into(),
    })
}

pub fn render_text(p: &PlanPreview) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan `{}` ({}): {} step{}. Dry run: nothing has been changed.",
        p.plan,
        p.path,
        p.steps.len(),
        if p.steps.len() == 1 { "" } else { "s" }
    );
    if !p.unread.is_empty() {
        let _ = writeln!(
            out,
            "\n!! INCOMPLETE PREVIEW: what this plan would do where it could not read is unknown"
        );
        for u in &p.unread {
            let _ = writeln!(out, "!! {}", u.line());
        }
    }
    for s in &p.steps {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:>2}. {} ({})", s.position, s.id, s.step_type);
        if let Some(note) = destructive_note(s) {
            let _ = writeln!(out, "    !! {note}");
        }
        let _ = writeln!(out, "    will {}", s.action);
        if let Some(why) = &s.incomplete {
            let _ = writeln!(out, "    !! incomplete: {why}");
        }
        if let (Some(t), Some(url)) = (&s.target, &s.target_url) {
            let _ = writeln!(out, "    target {t}: {url}");
        }
        for d in &s.details {
            let _ = writeln!(out, "    - {d}");
        }
        if let Some(params) = s.params.as_object() {
            for (k, v) in params {
                let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                let _ = writeln!(out, "    {k}: {}", shown.replace('\n', "\n      "));
            }
        }
        let _ = writeln!(out, "    needs: {}   if: {}", dash(&s.needs), s.condition);
        let mut extras = Vec::new();
        if let Some(r) = &s.retry {
            extras.push(format!("retry: {r}"));
        }
        if let Some(t) = &s.timeout {
            extras.push(format!("timeout: {t}"));
        }
        if s.continue_on_error {
            extras.push("continue on error".into());
        }
        if !extras.is_empty() {
            let _ = writeln!(out, "    {}", extras.join("   "));
        }
    }
    footer(&mut out, p, "");
    out
}

fn footer(out: &mut String, p: &PlanPreview, bullet: &str) {
    if !p.confirmations_needed.is_empty() || !p.warnings.is_empty() {
        let _ = writeln!(out);
    }
    for t in &p.confirmations_needed {
        let _ = writeln!(
            out,
            "{bullet}apply will refuse to run without --confirm {t}"
        );
    }
    for w in &p.warnings {
        let _ = writeln!(out, "{bullet}warning: {w}");
    }
}

/// The JSON preview, which is also the saved plan `apply` takes (see `run::saved`): with its
/// own SHA-256 over the rest, so that a file damaged or edited after it was reviewed is not
/// applied. It is a check, not a signature: whoever may write the file may also recompute it.
pub fn render_json(preview: &PlanPreview) -> String {
    let mut sealed = preview.clone();
    sealed.saved_plan_sha256 = None;
    if sealed.saved.is_some() {
        sealed.saved_plan_sha256 = Some(saved_state::seal(
            &serde_json::to_value(&sealed).expect("previews serialize"),
        ));
    }
    serde_json::to_string_pretty(&sealed).expect("previews serialize") + "\n"
}

/// Each step's identity for comparison: everything that decides what it does, nothing
/// that only describes what the preview read (details, which can mention ages).
pub fn step_digests(steps: &[StepPreview]) -> Vec<StepDigest> {
    steps
        .iter()
        .map(|s| {
            let what = serde_json::json!({
                "id": s.id, "type": s.step_type, "action": s.action, "params": s.params,
                "needs": s.needs, "if": s.condition, "retry": s.retry, "timeout": s.timeout,
                "continue_on_error": s.continue_on_error, "destructive": s.destructive,
                "target": s.target, "target_url": s.target_url, "repository": s.repository,
            });
            StepDigest {
                id: s.id.clone(),
                sha256: saved_state::sha256(&what.to_string()),
            }
        })
        .collect()
}

/// The prune victims per step, as the preview read them.
pub fn deletes(steps: &[StepPreview]) -> BTreeMap<String, Vec<String>> {
    steps
        .iter()
        .filter(|s| !s.deletes.is_empty())
        .map(|s| (s.id.clone(), s.deletes.clone()))
        .collect()
}
