//! Semantic checks on a loaded plan: ids, needs, cycles, references to targets, conditions,
//! template references. All problems are collected; a plan that passes is a [`ValidPlan`].

use super::graph::Dag;
use super::model::{Condition, Plan};
use super::step_params::CheckScope;
use super::template::{self, Reference};
use super::yaml::{self, Node, PathSegment, format_path};
use crate::diag::{Diagnostic, Span, did_you_mean};
use std::collections::{BTreeMap, HashMap};

/// What `{{ run.… }}` offers.
pub const RUN_FIELDS: &[&str] = &["id", "started_at", "plan", "status"];
const TEMPLATE_ROOTS: &[&str] = &["vars", "env", "run", "steps"];

/// A plan whose references resolve and whose steps form a DAG.
#[derive(Debug, Clone)]
pub struct ValidPlan {
    pub plan: Plan,
    pub dag: Dag,
    pub index: HashMap<String, usize>,
}

pub fn validate(
    plan: Plan,
    source: &str,
    limits: yaml::Limits,
) -> Result<ValidPlan, Vec<Diagnostic>> {
    let mut v = Validator {
        plan: &plan,
        tree: Default::default(),
        limits,
        source,
        problems: Vec::new(),
        upstream: Default::default(),
    };
    let index = v.ids();
    let needs = v.needs(&index);
    v.conditions();
    v.ranges();
    v.steps_params();
    let dag = match needs {
        Some(needs) => match Dag::build(needs) {
            Ok(dag) => Some(dag),
            Err(cycle) => {
                v.cycle(&cycle);
                None
            }
        },
        None => None,
    };
    if let Some(dag) = &dag {
        v.templates(&index, dag);
    }
    match dag {
        Some(dag) if v.problems.is_empty() => Ok(ValidPlan { plan, dag, index }),
        _ => Err(v.problems),
    }
}

struct Validator<'a> {
    plan: &'a Plan,
    /// The plan's YAML tree, parsed again only when a problem has to be placed: a valid
    /// plan never holds it (see `load::load_partial`).
    tree: std::cell::OnceCell<Option<Node>>,
    limits: yaml::Limits,
    source: &'a str,
    problems: Vec<Diagnostic>,
    /// See [`Validator::is_upstream`].
    upstream: std::cell::RefCell<Option<(usize, fixedbitset::FixedBitSet)>>,
}

/// The most parallel pg_dump/pg_restore workers a step may ask for.
const MAX_JOBS: u32 = 64;
/// The most attempts a retry policy may ask for.
const MAX_ATTEMPTS: u32 = 1000;

fn step_path(i: usize, rest: &[PathSegment]) -> Vec<PathSegment> {
    let mut p = vec![PathSegment::Key("steps".into()), PathSegment::Index(i)];
    p.extend_from_slice(rest);
    p
}

fn key(k: &str) -> PathSegment {
    PathSegment::Key(k.into())
}

impl Validator<'_> {
    fn span(&self, path: &[PathSegment]) -> Option<Span> {
        // The text parsed once already, within the same limits, so this parse succeeds.
        let root = self
            .tree
            .get_or_init(|| yaml::parse_within(self.source, self.limits).ok())
            .as_ref()?;
        (0..=path.len())
            .rev()
            .find_map(|n| root.lookup(&path[..n]).map(|(node, _)| node.span))
    }

    fn report(&mut self, path: &[PathSegment], message: String, len: usize, help: Option<String>) {
        self.problems.push(
            Diagnostic::new(message)
                .at_opt(self.span(path))
                .with_len(len)
                .with_path(format_path(path))
                .with_help_opt(help),
        );
    }

    /// Like [`Validator::report`], for a value that is a secret: the location is named,
    /// the line is not printed.
    fn report_secret(&mut self, path: &[PathSegment], message: String, help: &str) {
        self.problems.push(
            Diagnostic::new(message)
                .at_opt(self.span(path))
                .with_path(format_path(path))
                .concealing_source()
                .with_help(help),
        );
    }

    fn ids(&mut self) -> HashMap<String, usize> {
        let mut index = HashMap::new();
        for (i, step) in self.plan.steps.iter().enumerate() {
            let id = step.id();
            if step.broken && id.is_empty() {
                // Its loading problem is reported already.
                continue;
            }
            let path = step_path(i, &[key("id")]);
            let valid = id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                self.report(
                    &path,
                    format!("invalid step id `{id}`"),
                    id.chars().count(),
                    Some("ids start with a letter and use letters, digits, `_` and `-`".into()),
                );
            }
            if let Some(&first) = index.get(id) {
                let first_line = self
                    .span(&step_path(first, &[key("id")]))
                    .map_or(0, |s| s.line);
                self.report(
                    &path,
                    format!("duplicate step id `{id}`"),
                    id.chars().count(),
                    Some(format!("`{id}` is already the id of steps[{first}] (line {first_line}); step ids must be unique")),
                );
            } else {
                index.insert(id.to_string(), i);
            }
        }
        index
    }

    fn needs(&mut self, index: &HashMap<String, usize>) -> Option<Vec<Vec<usize>>> {
        let mut all = Vec::new();
        let mut ok = true;
        for (i, step) in self.plan.steps.iter().enumerate() {
            let mut step_needs = Vec::new();
            for (j, need) in step.common.needs.iter().enumerate() {
                let path = step_path(i, &[key("needs"), PathSegment::Index(j)]);
                match index.get(need) {
                    Some(&n) => {
                        if !step_needs.contains(&n) {
                            step_needs.push(n);
                        }
                    }
                    None => {
                        ok = false;
                        let help = did_you_mean(need, index.keys().map(String::as_str))
                            .unwrap_or_else(|| {
                                "`needs` lists ids of other steps in this plan".into()
                            });
                        self.report(
                            &path,
                            format!("step `{}` needs unknown step `{need}`", step.id()),
                            need.chars().count(),
                            Some(help),
                        );
                    }
                }
            }
            all.push(step_needs);
        }
        ok.then_some(all)
    }

    fn cycle(&mut self, cycle: &[usize]) {
        let names: Vec<&str> = cycle.iter().map(|&i| self.plan.steps[i].id()).collect();
        // A cycle through thousands of steps is shown by its ends, not as one huge line.
        const SHOWN: usize = 12;
        let shown = if names.len() > SHOWN {
            format!(
                "{} → … ({} more) → {}",
                names[..SHOWN - 2].join(" → "),
                names.len() - SHOWN,
                names[names.len() - 2..].join(" → ")
            )
        } else {
            names.join(" → ")
        };
        let first = cycle[0];
        self.report(
            &step_path(first, &[key("needs")]),
            format!("steps depend on each other in a cycle: {shown}"),
            1,
            Some(
                "each step in the cycle waits for the one before it; remove one of these `needs`"
                    .into(),
            ),
        );
    }

    fn conditions(&mut self) {
        for (i, step) in self.plan.steps.iter().enumerate() {
            if step.common.condition == Condition::Failure && step.common.needs.is_empty() {
                self.report(
                    &step_path(i, &[key("if")]),
                    format!(
                        "step `{}` runs on `failure()` but needs no step, so it could never run",
                        step.id()
                    ),
                    "failure()".len(),
                    Some("list the steps whose failure it reacts to in `needs`".into()),
                );
            }
            if let Some(retry) = &step.common.retry
                && retry.attempts == 0
            {
                self.report(
                    &step_path(i, &[key("retry"), key("attempts")]),
                    "`attempts` counts the first try too and must be at least 1".into(),
                    0,
                    None,
                );
            }
            if step.common.timeout.is_some_and(|t| t.0.is_zero()) {
                self.report(
                    &step_path(i, &[key("timeout")]),
                    "a timeout of zero would fail every attempt".into(),
                    0,
                    None,
                );
            }
        }
    }

    /// Counts that would exhaust the machine rather than fail cleanly: parallel workers,
    /// attempts, S3 part sizes.
    fn ranges(&mut self) {
        let mut out_of_range = Vec::new();
        for (i, step) in self.plan.steps.iter().enumerate() {
            if let Some(n) = step.kind.jobs()
                && !(1..=MAX_JOBS).contains(&n)
            {
                out_of_range.push((step_path(i, &[key("jobs")]), "jobs", n, 1, MAX_JOBS));
            }
            if let Some(retry) = &step.common.retry
                && retry.attempts > MAX_ATTEMPTS
            {
                out_of_range.push((
                    step_path(i, &[key("retry"), key("attempts")]),
                    "attempts",
                    retry.attempts,
                    1,
                    MAX_ATTEMPTS,
                ));
            }
        }
        for (name, repo) in &self.plan.repositories {
            if let Some(n) = repo.part_size_mib
                && !(5..=5120).contains(&n)
            {
                out_of_range.push((
                    vec![key("repositories"), key(name), key("part_size_mib")],
                    "part_size_mib",
                    n,
                    5,
                    5120,
                ));
            }
        }
        for (path, what, n, min, max) in out_of_range {
            self.report(
                &path,
                format!("`{what}: {n}` is out of range; it must be between {min} and {max}"),
                0,
                None,
            );
        }
    }

    fn steps_params(&mut self) {
        let targets: Vec<&str> = self.plan.targets.keys().map(String::as_str).collect();
        for (i, step) in self.plan.steps.iter().enumerate() {
            if let Some(target) = step.kind.target()
                && !self.plan.targets.contains_key(target)
            {
                let help = did_you_mean(target, targets.iter().copied()).unwrap_or_else(|| {
                    if targets.is_empty() {
                        "declare it under `targets:` with a `url`".into()
                    } else {
                        format!("declared targets: {}", targets.join(", "))
                    }
                });
                self.report(
                    &step_path(i, &[key("target")]),
                    format!("unknown target `{target}`"),
                    target.chars().count(),
                    Some(help),
                );
            }
            for (repo, field) in [
                (step.kind.repository(), "repository"),
                (step.kind.source_repository(), "source"),
            ]
            .into_iter()
            .filter_map(|(r, f)| Some((r?, f)))
            .filter(|(r, _)| !self.plan.repositories.contains_key(*r))
            {
                let names: Vec<&str> = self.plan.repositories.keys().map(String::as_str).collect();
                let help = did_you_mean(repo, names.iter().copied()).unwrap_or_else(|| {
                    if names.is_empty() {
                        format!(
                            "declare it under `repositories:` with a `url` ({})",
                            crate::steps::registry::supported_repositories()
                        )
                    } else {
                        format!("declared repositories: {}", names.join(", "))
                    }
                });
                let at: Vec<PathSegment> = step
                    .kind
                    .reference_path(field)
                    .iter()
                    .map(|k| key(k))
                    .collect();
                self.report(
                    &step_path(i, &at),
                    format!("unknown repository `{repo}`"),
                    0,
                    Some(help),
                );
            }
            let scope = CheckScope {
                step_id: step.id(),
                secrets: &self.plan.secrets,
            };
            for problem in step.kind.check(&scope) {
                let at: Vec<PathSegment> = problem.at.iter().map(|k| key(k)).collect();
                let path = step_path(i, &at);
                let mut d = Diagnostic::new(problem.message)
                    .at_opt(self.span(&path))
                    .with_path(format_path(&path))
                    .with_help_opt(problem.help);
                if let Some(text) = &problem.narrow_to {
                    d = self.narrow_to(d, text);
                }
                self.problems.push(d);
            }
        }
        for (name, repo) in &self.plan.repositories {
            if repo.sse_kms_key_id.is_some()
                && repo.sse != Some(crate::plan::model::SseAlgorithm::AwsKms)
            {
                self.report(
                    &[key("repositories"), key(name), key("sse_kms_key_id")],
                    "`sse_kms_key_id` needs `sse: aws:kms`".into(),
                    0,
                    None,
                );
            }
            if let Some(enc) = &repo.encryption {
                let at = [key("repositories"), key(name), key("encryption")];
                if enc.recipients.is_empty() && enc.recipients_file.is_none() {
                    self.report(
                        &at,
                        format!("repository `{name}`: `encryption` names no recipient"),
                        0,
                        Some("add `recipients: [age1…]` or `recipients_file: path`".into()),
                    );
                }
                for (i, r) in enc.recipients.iter().enumerate() {
                    if let Err(e) = crate::steps::registry::parse_recipient(r) {
                        let path = [
                            key("repositories"),
                            key(name),
                            key("encryption"),
                            key("recipients"),
                            PathSegment::Index(i),
                        ];
                        let message = format!("repository `{name}`: recipient {}: {e}", i + 1);
                        // A private key pasted by mistake is refused without being echoed.
                        if crate::steps::registry::is_private_key(r) {
                            self.report_secret(
                                &path,
                                message,
                                "remove the private key from the plan and treat it as leaked: anyone who read this file can decrypt what was encrypted to it",
                            );
                        } else {
                            self.report(&path, message, 0, None);
                        }
                    }
                }
            }
            let templated = repo.url.starts_with("{{");
            match crate::steps::registry::repository_url_problem(&repo.url) {
                _ if templated => {}
                None => {}
                Some(crate::steps::registry::UrlProblem::Unsupported(examples)) => self.report(
                    &[key("repositories"), key(name), key("url")],
                    format!("repository `{name}` has an unsupported URL `{}`", repo.url),
                    repo.url.chars().count(),
                    Some(format!("use {examples}")),
                ),
                // Not echoed: what is wrong may be a secret in it.
                Some(crate::steps::registry::UrlProblem::Invalid(problem)) => self.report(
                    &[key("repositories"), key(name), key("url")],
                    format!("repository `{name}`: {problem}"),
                    repo.url.chars().count(),
                    None,
                ),
                Some(crate::steps::registry::UrlProblem::Credentials(problem)) => self.report_secret(
                    &[key("repositories"), key(name), key("url")],
                    format!("repository `{name}`: {problem}"),
                    "credentials never go in the plan: remove them from the URL, and treat them as leaked; opsrunner takes them from the standard chain of the store (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, web identity or the instance role; for Azure: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY)",
                ),
            }
        }
    }

    fn templates(&mut self, index: &HashMap<String, usize>, dag: &Dag) {
        for (name, repo) in &self.plan.repositories {
            let path = [key("repositories"), key(name), key("url")];
            self.check_string(&path, &repo.url, None, index, dag);
        }
        for (name, target) in &self.plan.targets {
            let path = [key("targets"), key(name), key("url")];
            self.check_string(&path, target.url_template(), None, index, dag);
            if target.ephemeral && target.url.is_some() {
                self.report(
                    &[key("targets"), key(name), key("ephemeral")],
                    format!("target `{name}` has both `url` and `ephemeral: true`"),
                    0,
                    Some("an ephemeral target is a new local cluster; remove `url`, or remove `ephemeral` to use the server at `url`".into()),
                );
            }
            if target
                .pg_bin_dir
                .as_deref()
                .is_some_and(crate::plan::template::has_template)
            {
                self.report(
                    &[key("targets"), key(name), key("pg_bin_dir")],
                    format!("`pg_bin_dir` of target `{name}` takes no template: a directory of programs is written out, never rendered"),
                    0,
                    Some("write the directory as it is".into()),
                );
            }
            if target
                .data_directory
                .as_deref()
                .is_some_and(crate::plan::template::has_template)
            {
                self.report(
                    &[key("targets"), key(name), key("data_directory")],
                    format!("`data_directory` of target `{name}` takes no template: the directory a backup reads is written out, never rendered"),
                    0,
                    Some("write the directory as it is".into()),
                );
            }
            if target.run_as.is_some() && !target.ephemeral {
                self.report(
                    &[key("targets"), key(name), key("run_as")],
                    format!("`run_as` applies to ephemeral targets only, and `{name}` is not one"),
                    0,
                    None,
                );
            }
        }
        for (i, step) in self.plan.steps.iter().enumerate() {
            let mut fields = Vec::new();
            collect_strings(&step.raw_params.value(), &mut Vec::new(), &mut fields);
            for (rel, text) in fields {
                let path = step_path(i, &rel);
                self.check_string(&path, &text, Some(i), index, dag);
            }
        }
    }

    fn check_string(
        &mut self,
        path: &[PathSegment],
        text: &str,
        step: Option<usize>,
        index: &HashMap<String, usize>,
        dag: &Dag,
    ) {
        let refs = match template::references(text) {
            Ok(r) => r,
            Err(e) => {
                self.report(
                    path,
                    e,
                    0,
                    Some("templates look like `{{ vars.name }}`".into()),
                );
                return;
            }
        };
        for r in refs {
            if let Some((message, help)) = self.check_reference(&r, step, index, dag) {
                let d = Diagnostic::new(message)
                    .at_opt(self.span(path))
                    .with_path(format_path(path))
                    .with_help_opt(help);
                let d = self.narrow_to(d, &r.dotted());
                self.problems.push(d);
            }
        }
    }

    /// Whether `other` is among the steps `current` transitively needs. The set of one step
    /// at a time is kept, as templates are checked step by step.
    fn is_upstream(&self, dag: &Dag, current: usize, other: usize) -> bool {
        let mut cache = self.upstream.borrow_mut();
        if cache.as_ref().is_none_or(|(step, _)| *step != current) {
            let mut set = fixedbitset::FixedBitSet::with_capacity(dag.len());
            set.extend(dag.upstream(current));
            *cache = Some((current, set));
        }
        cache.as_ref().is_some_and(|(_, set)| set.contains(other))
    }

    /// Points the caret at `needle` itself when it stands on the diagnostic's line.
    fn narrow_to(&self, mut d: Diagnostic, needle: &str) -> Diagnostic {
        let Some(span) = d.span else { return d };
        let Some(line) = self.source.lines().nth(span.line - 1) else {
            return d;
        };
        let from = line
            .char_indices()
            .nth(span.col.saturating_sub(1))
            .map_or(0, |(b, _)| b);
        if let Some(pos) = line[from..].find(needle) {
            let col = line[..from + pos].chars().count() + 1;
            d.span = Some(Span {
                line: span.line,
                col,
                len: needle.chars().count(),
            });
        }
        d
    }

    fn check_reference(
        &self,
        r: &Reference,
        step: Option<usize>,
        index: &HashMap<String, usize>,
        dag: &Dag,
    ) -> Option<(String, Option<String>)> {
        let dotted = r.dotted();
        let root = r.path[0].as_str();
        let second = r.path.get(1).map(String::as_str);
        match root {
            "vars" => {
                let Some(name) = second else {
                    return Some((
                        "`vars` alone is not a value".into(),
                        Some("write `{{ vars.NAME }}`".into()),
                    ));
                };
                if !self.plan.vars.contains_key(name) {
                    let help = did_you_mean(name, self.plan.vars.keys().map(String::as_str))
                        .unwrap_or_else(|| format!("declare it under `vars:` (e.g. `vars: {{ {name}: … }}`); `--var {name}=…` can then override it"));
                    return Some((format!("unknown variable `{dotted}`"), Some(help)));
                }
                None
            }
            "env" => {
                if r.path.len() != 2 {
                    return Some((
                        format!("`{dotted}` is not an environment variable reference"),
                        Some("write `{{ env.NAME }}`".into()),
                    ));
                }
                None
            }
            "run" => {
                let field = second.unwrap_or("");
                if step.is_none() || !RUN_FIELDS.contains(&field) || r.path.len() != 2 {
                    let help = did_you_mean(field, RUN_FIELDS.iter().copied())
                        .unwrap_or_else(|| format!("`run` offers: {}", RUN_FIELDS.join(", ")));
                    return Some((format!("unknown reference `{dotted}`"), Some(help)));
                }
                None
            }
            "steps" => {
                let Some(current) = step else {
                    return Some((
                        format!("`{dotted}`: target and repository URLs cannot use step outputs"),
                        None,
                    ));
                };
                let id = second.unwrap_or("");
                let Some(&other) = index.get(id) else {
                    let help = did_you_mean(id, index.keys().map(String::as_str));
                    return Some((format!("`{dotted}` refers to unknown step `{id}`"), help));
                };
                let what = r.path.get(2).map(String::as_str);
                let status_or_error = matches!(what, Some("status" | "error")) && r.path.len() == 3;
                if !status_or_error && (what != Some("outputs") || r.path.len() != 4) {
                    return Some((
                        format!("`{dotted}` is not a step output reference"),
                        Some(format!(
                            "write `{{{{ steps.{id}.outputs.NAME }}}}`, `{{{{ steps.{id}.status }}}}` or `{{{{ steps.{id}.error }}}}`"
                        )),
                    ));
                }
                if status_or_error {
                    return (!self.is_upstream(dag, current, other)).then(|| {
                        let me = self.plan.steps[current].id();
                        (
                            format!("step `{me}` reads the outcome of `{id}` but does not need it"),
                            Some(format!(
                                "add `{id}` to `needs` of `{me}` so that it runs first"
                            )),
                        )
                    });
                }
                if self.plan.steps[other].broken {
                    return None;
                }
                // A step that runs after failures or a cancellation cannot count on the
                // outputs of the steps before it: they may not have produced any.
                let condition = self.plan.steps[current].common.condition;
                if condition != Condition::Success && !r.optional {
                    let me = self.plan.steps[current].id();
                    return Some((
                        format!(
                            "step `{me}` runs on `{}`, when `{id}` may have failed or been skipped, so `{dotted}` may not exist",
                            condition.as_str()
                        ),
                        Some(format!(
                            "give it a fallback, `{{{{ default {dotted} \"n/a\" }}}}`, or read `{{{{ steps.{id}.status }}}}` and `{{{{ steps.{id}.error }}}}`, which always exist"
                        )),
                    ));
                }
                let output = r.path[3].as_str();
                let outputs = self.plan.steps[other].kind.output_names();
                if !outputs.contains(&output) {
                    let help = did_you_mean(output, outputs.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "a `{}` step sets: {}",
                            self.plan.steps[other].kind.type_name(),
                            outputs.join(", ")
                        )
                    });
                    return Some((format!("step `{id}` has no output `{output}`"), Some(help)));
                }
                if !self.is_upstream(dag, current, other) {
                    let me = self.plan.steps[current].id();
                    return Some((
                        format!("step `{me}` uses an output of `{id}` but does not need it"),
                        Some(format!(
                            "add `{id}` to `needs` of `{me}` so that it runs first"
                        )),
                    ));
                }
                None
            }
            other => {
                let help = did_you_mean(other, TEMPLATE_ROOTS.iter().copied())
                    .unwrap_or_else(|| "templates can use vars.NAME, env.NAME, run.id, run.started_at, run.plan, run.status, steps.ID.outputs.NAME, steps.ID.status and steps.ID.error".into());
                Some((format!("unknown reference `{dotted}`"), Some(help)))
            }
        }
    }
}

fn collect_strings(
    value: &serde_json::Value,
    path: &mut Vec<PathSegment>,
    out: &mut Vec<(Vec<PathSegment>, String)>,
) {
    match value {
        serde_json::Value::String(s) => out.push((path.clone(), s.clone())),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(PathSegment::Index(i));
                collect_strings(v, path, out);
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                path.push(PathSegment::Key(k.clone()));
                collect_strings(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Checks `--var NAME=VALUE` overrides against the plan's declared variables.
pub fn check_overrides(plan: &Plan, overrides: &BTreeMap<String, String>) -> Result<(), String> {
    for name in overrides.keys() {
        if !plan.vars.contains_key(name) {
            let hint = did_you_mean(name, plan.vars.keys().map(String::as_str))
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            return Err(format!(
                "--var {name}: the plan declares no variable `{name}`{hint}"
            ));
        }
    }
    Ok(())
}
