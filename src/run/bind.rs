//! Binding a step to what it runs with: its parameters rendered with the values known when
//! it starts, its `retry` and `timeout`, its target's URL and its repository's definition —
//! every secret among them handed to the redactor — and the guard's answer on what will
//! run. The preview and the executor both bind through [`bind`], so that what a preview
//! shows (and what its probes read) is what `apply` runs.

use crate::plan::model::{Common, Plan, Repository, StepDef};
use crate::plan::step_params::StepKind;
use crate::plan::template::{self, Templates};
use crate::redact::Redactor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// What a step is bound against.
pub struct Scope<'a> {
    pub plan: &'a Plan,
    pub templates: &'a Templates,
    /// The values templates may name: vars, env, run, earlier steps' outputs.
    pub context: &'a Value,
    pub redactor: &'a Redactor,
    pub base_dir: &'a Path,
    /// The protected targets `--confirm` names.
    pub confirmed: &'a [String],
    /// Whether the guard may read files the parameters name (SQL files); not under
    /// `--untrusted`, where such a step counts as destructive.
    pub read_files: bool,
    /// Target URLs settled before the run (the ephemeral clusters apply started).
    pub fixed_target_urls: Option<&'a BTreeMap<String, String>>,
}

/// A bound step. Each part is bound on its own, so that a preview can still show the rest
/// of a step one part of which cannot be rendered; the executor refuses any error.
pub struct Bound {
    /// The rendered parameters and the step's kind typed from them.
    pub params: Result<(Value, StepKind), String>,
    /// `retry` and `timeout` as they will be enforced (`{{ env.T }}` rendered).
    pub common: Result<Common, String>,
    /// The step's target and its URL as rendered.
    pub target: Option<(String, Result<String, String>)>,
    /// The step's repository and its definition as rendered.
    pub repository: Option<(String, Result<Repository, String>)>,
    /// The repository the step only reads (a copy's source), as rendered.
    pub source: Option<(String, Result<Repository, String>)>,
    /// The protected target the step may destroy data on without `--confirm`, judged on
    /// the rendered parameters (templates may make a harmless-looking step destructive).
    pub unconfirmed: Option<String>,
}

impl Bound {
    /// The step's kind: as rendered, or as written when it could not be rendered.
    pub fn kind<'a>(&'a self, step: &'a StepDef) -> &'a StepKind {
        self.params.as_ref().map_or(&step.kind, |(_, kind)| kind)
    }
}

pub fn bind(step: &StepDef, scope: &Scope<'_>) -> Bound {
    let redactor = scope.redactor;
    let params = crate::plan::resolve::step(scope.templates, step, scope.context).inspect(
        |(rendered, kind)| {
            let mut strings = Vec::new();
            template::strings(rendered, &mut strings);
            strings.iter().for_each(|s| redactor.add_url_passwords(s));
            for secret in kind.secrets() {
                redactor.add(&secret);
            }
        },
    );
    let common = crate::plan::resolve::common(scope.templates, step, scope.context);
    let kind = params.as_ref().map_or(&step.kind, |(_, kind)| kind);
    let Definitions {
        target,
        repository,
        source,
    } = definitions(kind, scope);
    let unconfirmed = crate::steps::unconfirmed(
        kind,
        &scope.plan.targets,
        scope.base_dir,
        scope.confirmed,
        scope.read_files,
    )
    .map(str::to_string);
    Bound {
        params,
        common,
        target,
        repository,
        source,
        unconfirmed,
    }
}

/// The target's URL and the repository's definition a step names, rendered.
pub struct Definitions {
    pub target: Option<(String, Result<String, String>)>,
    pub repository: Option<(String, Result<Repository, String>)>,
    /// The repository a step only reads (a copy's source) and its definition as rendered.
    pub source: Option<(String, Result<Repository, String>)>,
}

/// Renders the target and the repository `kind` names under `scope`. Part of [`bind`]; the
/// preview also calls it under `--base` for its probes, which read the definitions with
/// the real values but only for the names the step was previewed and checked with.
pub fn definitions(kind: &StepKind, scope: &Scope<'_>) -> Definitions {
    let redactor = scope.redactor;
    let target = kind
        .target()
        .and_then(|name| scope.plan.targets.get_key_value(name))
        .map(|(name, target)| {
            let url = match scope.fixed_target_urls.and_then(|f| f.get(name)) {
                Some(url) => Ok(url.clone()),
                None => scope
                    .templates
                    .render_str(target.url_template(), scope.context)
                    .map_err(|e| format!("target `{name}`: {e}")),
            };
            if let Ok(url) = &url {
                redactor.add_url_passwords(url);
                redactor.add_url_names(url);
            }
            (name.clone(), url)
        });
    let repository = |name: Option<&str>| {
        name.and_then(|name| scope.plan.repositories.get_key_value(name))
            .map(|(name, definition)| {
                let rendered = crate::plan::resolve::repository(
                    scope.templates,
                    name,
                    definition,
                    scope.context,
                );
                if let Ok(r) = &rendered {
                    redactor.add_url_passwords(&r.url);
                }
                (name.clone(), rendered)
            })
    };
    Definitions {
        target,
        repository: repository(kind.repository()),
        source: repository(kind.source_repository()),
    }
}
