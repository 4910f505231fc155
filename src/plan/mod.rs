//! The plan pipeline: YAML text → [`yaml`] nodes → [`load`]ed [`model::Plan`] →
//! [`validate`]d [`ValidPlan`] with its [`graph::Dag`]. [`template`] renders values later,
//! as the run reaches each step.

pub mod calendar;
pub mod duration;
pub mod graph;
pub mod identity;
pub mod load;
pub mod model;
pub mod resolve;
pub mod step_params;
pub mod template;
pub mod validate;
pub mod yaml;

pub use validate::ValidPlan;

use crate::diag::Diagnostic;
use crate::digest::hex;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A plan file as read from disk.
#[derive(Debug, Clone)]
pub struct PlanSource {
    pub path: PathBuf,
    /// The path as the user gave it, for messages.
    pub display: String,
    pub text: String,
    pub sha256: String,
    /// What loading it may cost.
    pub limits: yaml::Limits,
}

impl PlanSource {
    pub fn read(path: &Path) -> Result<PlanSource, PlanError> {
        PlanSource::read_within(path, yaml::Limits::default())
    }

    /// Reads a plan file of at most `limits.max_bytes` (a larger one, or an endless one such
    /// as a device, is refused without being read whole).
    pub fn read_within(path: &Path, limits: yaml::Limits) -> Result<PlanSource, PlanError> {
        use std::io::Read;
        let display = path.display().to_string();
        let io = |error| PlanError::Io {
            display: display.clone(),
            error,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(limits.max_bytes + 1).read_to_end(&mut bytes))
            .map_err(io)?;
        if bytes.len() as u64 > limits.max_bytes {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the plan is larger than {} bytes; raise the limit with --max-plan-bytes if it really is a plan",
                    limits.max_bytes
                ),
            )));
        }
        let sha256 = hex(&Sha256::digest(&bytes));
        // A byte-order mark, as some Windows editors write, is not part of the YAML.
        if bytes.starts_with(b"\xef\xbb\xbf") {
            bytes.drain(..3);
        }
        let text = String::from_utf8(bytes).map_err(|_| PlanError::Io {
            display: display.clone(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            ),
        })?;
        Ok(PlanSource {
            path: path.to_path_buf(),
            display,
            text,
            sha256,
            limits,
        })
    }

    pub fn from_text(display: &str, text: &str) -> PlanSource {
        PlanSource {
            path: PathBuf::from(display),
            display: display.to_string(),
            text: text.strip_prefix('\u{feff}').unwrap_or(text).to_string(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
            limits: yaml::Limits::default(),
        }
    }

    /// The directory relative paths in the plan (workdir, SQL files) are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

#[derive(Debug)]
pub enum PlanError {
    Io {
        display: String,
        error: std::io::Error,
    },
    Invalid {
        source: Box<PlanSource>,
        diagnostics: Vec<Diagnostic>,
    },
}

impl PlanError {
    pub fn render(&self, color: bool) -> String {
        match self {
            PlanError::Io { display, error } => {
                format!("error: cannot read plan {display}: {error}\n")
            }
            PlanError::Invalid {
                source,
                diagnostics,
            } => crate::diag::render_all(diagnostics, &source.display, &source.text, color),
        }
    }
}

/// Loads and validates a plan: all problems, or a plan ready to preview and run.
pub fn check(source: PlanSource) -> Result<(PlanSource, ValidPlan), PlanError> {
    check_with(source, &std::collections::BTreeMap::new())
}

/// [`check`] with `--var` overrides of the plan's variables, which are rendered into every
/// field before it is checked.
pub fn check_with(
    source: PlanSource,
    overrides: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<(PlanSource, ValidPlan), PlanError> {
    let result = match load::load_partial(&source.text, source.limits, overrides) {
        Err(problems) => Err(problems),
        Ok((None, problems)) => Err(problems),
        Ok((Some(plan), mut problems)) => {
            match validate::validate(plan, &source.text, source.limits) {
                Ok(valid) if problems.is_empty() => Ok(valid),
                Ok(_) => Err(problems),
                Err(more) => {
                    problems.extend(more);
                    Err(problems)
                }
            }
        }
    };
    match result {
        Ok(valid) => Ok((source, valid)),
        Err(diagnostics) => Err(PlanError::Invalid {
            source: Box::new(source),
            diagnostics,
        }),
    }
}

/// The environment variables a plan needs that `env` does not set: each name once, in
/// the order it first appears, with the places that need it (`step \`alert\``, `target
/// \`app\``, `repository \`local\``). A reference with a fallback (`{{ default env.X "…" }}`)
/// needs nothing. Checked before a run starts: a missing `ALERT_TOKEN` found when the
/// failure alert itself runs is found too late.
pub fn missing_env(
    plan: &model::Plan,
    env: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, Vec<String>)> {
    let mut places: Vec<(String, Vec<String>)> = Vec::new();
    let mut note = |texts: Vec<String>, place: String| {
        for text in &texts {
            for r in template::references(text).unwrap_or_default() {
                if r.optional || r.path.len() != 2 || r.path[0] != "env" {
                    continue;
                }
                let name = &r.path[1];
                if env.contains_key(name) {
                    continue;
                }
                match places.iter_mut().find(|(n, _)| n == name) {
                    Some((_, at)) if at.contains(&place) => {}
                    Some((_, at)) => at.push(place.clone()),
                    None => places.push((name.clone(), vec![place.clone()])),
                }
            }
        }
    };
    for step in &plan.steps {
        let mut strings = Vec::new();
        template::strings(&step.raw_params.value(), &mut strings);
        template::strings(&step.raw_common.value(), &mut strings);
        note(strings, format!("step `{}`", step.id()));
    }
    for (name, target) in &plan.targets {
        let mut strings: Vec<String> = target.url.clone().into_iter().collect();
        template::strings(&target.written.value(), &mut strings);
        note(strings, format!("target `{name}`"));
    }
    for (name, repo) in &plan.repositories {
        let mut strings = vec![repo.url.clone()];
        template::strings(&repo.written.value(), &mut strings);
        note(strings, format!("repository `{name}`"));
    }
    places
}

/// The environment variables a plan's templates name (`{{ env.NAME }}`), each once, in
/// the order they first appear: steps, then targets, then repositories. What a scheduler
/// must provide, and what a preview shows as placeholders.
pub fn env_references(plan: &model::Plan) -> Vec<String> {
    let mut strings = Vec::new();
    for step in &plan.steps {
        template::strings(&step.raw_params.value(), &mut strings);
        template::strings(&step.raw_common.value(), &mut strings);
    }
    strings.extend(plan.targets.values().filter_map(|t| t.url.clone()));
    for target in plan.targets.values() {
        template::strings(&target.written.value(), &mut strings);
    }
    strings.extend(plan.repositories.values().map(|r| r.url.clone()));
    for repo in plan.repositories.values() {
        template::strings(&repo.written.value(), &mut strings);
    }
    let mut names: Vec<String> = Vec::new();
    for text in &strings {
        for r in template::references(text).unwrap_or_default() {
            if r.path.len() == 2 && r.path[0] == "env" && !names.contains(&r.path[1]) {
                names.push(r.path[1].clone());
            }
        }
    }
    names
}
