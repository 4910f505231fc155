//! The dry-run preview: what each step will do, in execution order, with parameters
//! resolved as far as they can be before anything runs. Values only a run can produce are
//! shown as `(known after STEP)`, never guessed. Building a preview has no side effects.

use super::saved_state::{self, StepDigest};
use crate::plan::model::StepKind;
use crate::plan::template::{self, Templates};
use crate::plan::{PlanSource, ValidPlan};
use crate::redact::Redactor;
use crate::steps;
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
    let mut warnings = Vec::new();
    let context = preview_context(input, &mut warnings);
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
    let started = std::time::Instant::now();
    let base_dir = input.source.base_dir();
    let mut confirmations = Vec::new();
    let mut unread_all: Vec<Unread> = Vec::new();
    let mut steps_out = Vec::new();
    // What a saved plan records: each target and repository as the run will reach it.
    let mut target_states = BTreeMap::new();
    let mut repository_states = BTreeMap::new();
    let capture = input.capture && !input.untrusted && input.base.is_none();
    for (position, &i) in input.plan.dag.order.iter().enumerate() {
        let step = &plan.steps[i];
        // The resolver apply uses: the preview shows what apply would run.
        let (params, kind) = match crate::plan::resolve::step(&templates, step, &context) {
            Ok((v, kind)) => {
                let mut strings = Vec::new();
                template::strings(&v, &mut strings);
                strings.iter().for_each(|s| redactor.add_url_passwords(s));
                for secret in kind.secrets() {
                    redactor.add(&secret);
                }
                (v, kind)
            }
            Err(e) => {
                warnings.push(format!("step `{}`: {e}", step.id()));
                (step.raw_params.value(), step.kind.clone())
            }
        };
        let target = kind.target().map(str::to_string);
        let protected = target
            .as_ref()
            .is_some_and(|t| plan.targets.get(t).is_some_and(|t| t.protected));
        // Under --untrusted no file is read: SQL from a file counts as destructive.
        let read_files = !input.untrusted;
        let destructive = kind.destructive(&base_dir, read_files);
        // The guard apply asks, on the same rendered parameters.
        if let Some(t) =
            steps::unconfirmed(&kind, &plan.targets, &base_dir, input.confirmed, read_files)
            && !confirmations.iter().any(|c| c == t)
        {
            confirmations.push(t.to_string());
        }
        let target_url = target.as_ref().and_then(|t| plan.targets.get(t)).map(|t| {
            if t.ephemeral {
                return "(an ephemeral local cluster, created at apply)".to_string();
            }
            if t.url.is_none() {
                return "(from the PG* environment variables)".to_string();
            }
            let url = templates
                .render_str(t.url_template(), &context)
                .unwrap_or_else(|_| t.url_template().to_string());
            redactor.add_url_passwords(&url);
            redactor.redact(&url)
        });
        let view_url = target
            .as_ref()
            .and_then(|t| plan.targets.get(t))
            .and_then(|t| {
                if t.ephemeral {
                    None
                } else {
                    templates.render_str(t.url_template(), &probe_context).ok()
                }
            });
        let view = match target.as_ref().and_then(|t| plan.targets.get(t)) {
            Some(t) if t.ephemeral => TargetView::Ephemeral,
            Some(_) => view_url
                .as_deref()
                .map_or(TargetView::None, TargetView::Url),
            None => TargetView::None,
        };
        let repo = kind
            .repository()
            .and_then(|r| plan.repositories.get(r))
            .map(|r| {
                let name = kind.repository().unwrap_or_default();
                crate::plan::resolve::repository(&templates, name, r, &probe_context)
                    .unwrap_or_else(|_| r.clone())
            });
        if capture {
            if let Some(name) = target.as_ref().filter(|t| !target_states.contains_key(*t)) {
                let state = match &view {
                    TargetView::Ephemeral => saved_state::TargetState::Ephemeral,
                    TargetView::Url(url) => saved_state::target_state(url).await,
                    TargetView::None => saved_state::TargetState::Unread {
                        error: "its URL could not be rendered".into(),
                    },
                };
                target_states.insert(name.clone(), state);
            }
            if let Some(name) = kind
                .repository()
                .filter(|r| !repository_states.contains_key(*r))
            {
                let state = match &repo {
                    Some(r) => saved_state::repository_state(r, &base_dir).await,
                    None => saved_state::RepositoryState::Unread {
                        error: "its definition could not be rendered".into(),
                    },
                };
                repository_states.insert(name.to_string(), state);
            }
        }
        let skip = if input.untrusted {
            Some("--untrusted".to_string())
        } else {
            base.as_ref().and_then(|b| b.refuses(&kind))
        };
        let mut incomplete = None;
        let findings: Findings = if let Some(why) = skip {
            let reads = registry::reads_of(&kind);
            if let Some(what) = reads {
                incomplete = Some(format!("probe skipped ({why}): {what} unknown"));
            }
            reads
                .map(|what| format!("probe skipped ({why}): would read {what}"))
                .into_iter()
                .collect::<Vec<_>>()
                .into()
        } else if started.elapsed() >= PREVIEW_DEADLINE {
            let line = format!(
                "probe skipped: the preview's {}s deadline has passed",
                PREVIEW_DEADLINE.as_secs()
            );
            match timed_out(&kind, &line) {
                Some(u) => Findings::unread(u),
                None => vec![line].into(),
            }
        } else {
            let limit = PROBE_TIMEOUT.min(PREVIEW_DEADLINE - started.elapsed());
            let pg_bin_dirs = crate::run::executor::pg_bin_dirs(plan, target.as_deref(), &base_dir);
            // Boxed: the probes' futures are deep, and every caller would carry their layout.
            let probe = registry::probe_step(
                &kind,
                Probe {
                    base_dir: &base_dir,
                    target: &view,
                    repo: repo.as_ref(),
                    pg_bin_dirs: &pg_bin_dirs,
                },
            );
            match tokio::time::timeout(limit, probe).await {
                Ok(findings) => findings,
                Err(_) => {
                    let line = format!(
                        "probe timed out after {}s: nothing could be read{}",
                        limit.as_secs(),
                        registry::reads_of(&kind)
                            .map(|w| format!(" about {w}"))
                            .unwrap_or_default()
                    );
                    match timed_out(&kind, &line) {
                        Some(u) => Findings::unread(u),
                        None => vec![line].into(),
                    }
                }
            }
        };
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
        let common = match crate::plan::resolve::common(&templates, step, &context) {
            Ok(c) => c,
            Err(e) => {
                // Under review modes the environment's values are placeholders.
                if !input.untrusted && input.base.is_none() {
                    warnings.push(redactor.redact(&format!("step `{}`: {e}", step.id())));
                }
                step.common.clone()
            }
        };
        steps_out.push(StepPreview {
            position: position + 1,
            id: step.id().to_string(),
            step_type: step.kind.type_name().to_string(),
            action: redactor.redact(&kind.describe()),
            params,
            needs: step.common.needs.clone(),
            condition: step.common.condition.as_str().to_string(),
            retry: common.retry.as_ref().map(|r| {
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
            }),
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
        });
    }
    let redact_error = |e: &mut String| *e = redactor.redact(e);
    for state in target_states.values_mut() {
        if let saved_state::TargetState::Unread { error } = state {
            redact_error(error);
        }
    }
    for state in repository_states.values_mut() {
        if let saved_state::RepositoryState::Unread { error } = state {
            redact_error(error);
        }
    }
    // A saved plan carries its --var values verbatim (apply runs with them): one that holds
    // a secret would put it into a file meant for review, so none is saved.
    let secret_var = input.overrides.values().any(|v| redactor.redact(v) != *v);
    let capture = capture && !secret_var;
    let saved = capture.then(|| saved_state::SavedState {
        plan_file: std::path::absolute(&input.source.path).unwrap_or(input.source.path.clone()),
        vars: input.overrides.clone(),
        steps: step_digests(&steps_out),
        deletes: deletes(&steps_out),
        targets: target_states,
        repositories: repository_states,
    });
    let review_only = if input.untrusted {
        Some("--untrusted".to_string())
    } else if secret_var && input.capture {
        Some("a --var value that is a secret".to_string())
    } else {
        input.base.as_ref().map(|_| "--base".to_string())
    };
    PlanPreview {
        opsrunner_saved_plan: saved_state::FORMAT,
        review_only,
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
