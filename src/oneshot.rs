//! One-shot commands (`opsrunner backup`, `restore`, `verify`, `prune`, `sql`, `migrate`,
//! `seed`, `reset`): a plan of one step, written from the command line, that runs through
//! the same engine as `apply` — the same preview for `--dry-run`, guards and `--confirm`,
//! locks, history, report and exit codes. Nothing about a one-shot run is special once
//! its plan is built; that is the point.
//!
//! The plan is JSON (which is YAML) built with serde_json, so no value from the command
//! line can change its structure. A value that holds template braces (`{{`) is not put in
//! the plan at all: the plan reads it from a variable of the run's environment, so it is
//! used as the text it is and never rendered as a template.

use crate::exit::Failure;
use crate::plan::{self, PlanSource};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::commands::Generated;

/// Writes the one-step plan of a one-shot command.
pub struct Builder {
    verb: &'static str,
    /// The plan named by `--plan`, whose targets and repositories may be named.
    plan: Option<(PlanSource, plan::model::Plan)>,
    targets: Map<String, Value>,
    repositories: Map<String, Value>,
    env: BTreeMap<String, String>,
    /// Warnings for the user (a password on the command line), printed before the run.
    pub warnings: Vec<String>,
}

/// The names a one-shot plan gives what came as URLs; a plan's own names are kept.
const TARGET: &str = "target";
const REPOSITORY: &str = "repository";

impl Builder {
    /// `plan_file`: the plan whose targets and repositories `--target NAME` and
    /// `--repository NAME` name.
    pub fn new(verb: &'static str, plan_file: Option<&Path>) -> Result<Builder, Failure> {
        let plan = match plan_file {
            None => None,
            Some(path) => {
                let source = PlanSource::read(path).map_err(Failure::Plan)?;
                let (source, valid) = plan::check(source).map_err(Failure::Plan)?;
                Some((source, valid.plan))
            }
        };
        Ok(Builder {
            verb,
            plan,
            targets: Map::new(),
            repositories: Map::new(),
            env: BTreeMap::new(),
            warnings: Vec::new(),
        })
    }

    /// A value from the command line as plan text: as it is, or — when it holds template
    /// braces — read from a variable of the run's environment, so it stays that text.
    pub fn text(&mut self, value: &str) -> Value {
        if !value.contains("{{") && !value.contains("}}") {
            return Value::String(value.to_string());
        }
        let name = format!("OPSRUNNER_ARG_{}", self.env.len());
        self.env.insert(name.clone(), value.to_string());
        Value::String(format!("{{{{ env.{name} }}}}"))
    }

    /// `--target`: a libpq URL, `env:NAME` (the URL in that environment variable, which
    /// keeps a password off the command line), or the name of a target of `--plan`.
    /// Returns the name the step uses.
    pub fn target(&mut self, spec: &str) -> Result<String, Failure> {
        if let Some(name) = spec.strip_prefix("env:") {
            let definition =
                json!({ "url": format!("{{{{ env.{} }}}}", env_name("--target", name)?) });
            self.targets.insert(TARGET.into(), definition);
            return Ok(TARGET.into());
        }
        if spec.contains("://") {
            if crate::pg::conn::ConnInfo::parse(spec).is_ok_and(|c| c.password().is_some()) {
                self.warnings.push(
                    "--target: the URL holds a password, which other users of this machine can read on the command line (ps); next time use --target env:NAME, PGPASSWORD or ~/.pgpass".into(),
                );
            }
            // Through the environment, so that the password in it is redacted like any
            // URL's from the environment.
            self.env
                .insert("OPSRUNNER_TARGET_URL".into(), spec.to_string());
            self.targets.insert(
                TARGET.into(),
                json!({ "url": "{{ env.OPSRUNNER_TARGET_URL }}" }),
            );
            return Ok(TARGET.into());
        }
        let definition = self.declared("--target", "target", spec, |p| {
            p.targets
                .iter()
                .map(|(k, t)| (k.clone(), t.written.value()))
                .collect()
        })?;
        self.targets.insert(spec.into(), definition);
        Ok(spec.into())
    }

    /// A throwaway cluster for this run (`ephemeral: true`), named `name`.
    pub fn ephemeral_target(&mut self, name: &str) -> String {
        self.targets
            .insert(name.into(), json!({ "ephemeral": true }));
        name.into()
    }

    /// `--repository`: a URL (`file:///var/backups`, `s3://bucket/prefix`,
    /// `azure://container/prefix`; endpoint and region from the store's environment) or
    /// the name of a repository of `--plan`. Returns the name the step uses.
    pub fn repository(&mut self, spec: &str) -> Result<String, Failure> {
        self.repository_as("--repository", spec, REPOSITORY)
    }

    /// A repository given by `flag` (as [`Builder::repository`]); a URL is named
    /// `url_name` in the plan (a copy has two).
    pub fn repository_as(
        &mut self,
        flag: &str,
        spec: &str,
        url_name: &str,
    ) -> Result<String, Failure> {
        if spec.contains("://") {
            let url = self.text(spec);
            self.repositories
                .insert(url_name.into(), json!({ "url": url }));
            return Ok(url_name.into());
        }
        let definition = self.declared(flag, "repository", spec, |p| {
            p.repositories
                .iter()
                .map(|(k, r)| (k.clone(), r.written.value()))
                .collect()
        })?;
        self.repositories.insert(spec.into(), definition);
        Ok(spec.into())
    }

    /// The definition `--plan` gives `name`, or why there is none.
    fn declared(
        &self,
        flag: &str,
        what: &str,
        name: &str,
        all: impl Fn(&plan::model::Plan) -> BTreeMap<String, Value>,
    ) -> Result<Value, Failure> {
        let Some((source, plan)) = &self.plan else {
            return Err(Failure::Usage(format!(
                "{flag} {name}: not a URL; give a URL ({}), or the plan that declares `{name}` with --plan FILE",
                if what == "target" {
                    "postgres://user@host/db, or env:DATABASE_URL to read it from the environment"
                } else {
                    "file:///var/backups, s3://bucket/prefix"
                }
            )));
        };
        let declared = all(plan);
        declared.get(name).cloned().ok_or_else(|| {
            let hint = crate::diag::did_you_mean(name, declared.keys().map(String::as_str))
                .map(|h| format!("; {h}"))
                .unwrap_or_else(|| {
                    format!(
                        "; it declares: {}",
                        declared.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                });
            Failure::Usage(format!(
                "{flag} {name}: {} declares no {what} `{name}`{hint}",
                source.display
            ))
        })
    }

    /// The plan: these targets and repositories, the `--plan`'s variables, secrets and
    /// programs directory, and `step` (an object with its `type`) as its one step `id`.
    pub fn finish(self, id: &str, step: Value) -> Generated {
        let mut step = match step {
            Value::Object(map) => map,
            _ => unreachable!("a step is built as an object"),
        };
        step.insert("id".into(), Value::String(id.into()));
        let mut plan = Map::new();
        plan.insert("version".into(), json!(1));
        plan.insert("name".into(), json!(format!("opsrunner {}", self.verb)));
        if let Some((_, p)) = &self.plan {
            if !p.vars.is_empty() {
                plan.insert("vars".into(), json!(p.vars));
            }
            if !p.secrets.is_empty() {
                plan.insert("secrets".into(), json!(p.secrets));
            }
            if let Some(dir) = &p.pg_bin_dir {
                plan.insert("pg_bin_dir".into(), json!(dir));
            }
        }
        if !self.targets.is_empty() {
            plan.insert("targets".into(), Value::Object(self.targets));
        }
        if !self.repositories.is_empty() {
            plan.insert("repositories".into(), Value::Object(self.repositories));
        }
        plan.insert("steps".into(), json!([Value::Object(step)]));
        let text = serde_json::to_string_pretty(&Value::Object(plan))
            .expect("a JSON value always serializes")
            + "\n";
        // Relative paths (a `file://` repository, a migrations directory) mean what they
        // mean in the plan named by --plan, else in the working directory.
        let display = format!("opsrunner {}", self.verb);
        let mut source = PlanSource::from_text(&display, &text);
        source.path = match &self.plan {
            Some((plan, _)) => plan.path.clone(),
            None => PathBuf::from("opsrunner"),
        };
        Generated {
            source,
            env: self.env,
        }
    }
}

/// The name after `env:`, checked.
fn env_name<'a>(flag: &str, name: &'a str) -> Result<&'a str, Failure> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err(Failure::Usage(format!(
            "{flag} env:{name}: `{name}` is not an environment variable's name (letters, digits, _)"
        )))
    }
}

/// Sets `key` in `step` when `value` is given.
pub fn set(step: &mut Value, key: &str, value: Option<Value>) {
    if let (Some(value), Value::Object(map)) = (value, step) {
        map.insert(key.into(), value);
    }
}

/// `opsrunner psql`: where the interactive shell connects, and with which program.
pub struct ShellSession {
    pub program: PathBuf,
    conn: crate::pg::conn::ConnInfo,
    /// A protected target without `--confirm`: every transaction is read-only.
    pub read_only: bool,
    pub target: String,
}

impl ShellSession {
    /// psql connected to the target: the URL without its password as `--dbname`, the
    /// password in `PGPASSWORD`, `extra` after them.
    pub fn command(&self, extra: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command
            .arg("--dbname")
            .arg(self.conn.public_url())
            .args(extra);
        if let Some(password) = self.conn.password() {
            command.env("PGPASSWORD", password);
        }
        if self.read_only {
            let mut options = std::env::var_os("PGOPTIONS").unwrap_or_default();
            if !options.is_empty() {
                options.push(" ");
            }
            options.push("-c default_transaction_read_only=on");
            command.env("PGOPTIONS", options);
        }
        command
    }
}

/// Resolves `--target` (URL, `env:NAME` or a name in `plan_file`) for `opsrunner psql`.
pub fn shell_session(
    target: &str,
    plan_file: Option<&Path>,
    database: Option<&str>,
    confirm: &[String],
    color: bool,
) -> Result<ShellSession, Failure> {
    let mut b = Builder::new("psql", plan_file)?;
    let name = b.target(target)?;
    for warning in &b.warnings {
        eprintln!("warning: {warning}");
    }
    let generated = b.finish("psql", json!({ "type": "wait_ready", "target": name }));
    let args = crate::commands::PlanArgs {
        file: generated.source.path.clone(),
        confirm: confirm.to_vec(),
        color,
        generated: Some(generated),
        ..Default::default()
    };
    let p = crate::commands::prepare(&args, crate::commands::process_env())?;
    let definition = &p.plan.plan.targets[&name];
    if definition.ephemeral {
        return Err(Failure::Usage(format!(
            "--target {name}: an ephemeral target exists only during a run; there is nothing to connect to"
        )));
    }
    let context = json!({ "env": p.env, "vars": p.vars });
    let url = crate::plan::template::Templates::new()
        .render_str(definition.url_template(), &context)
        .map_err(|e| Failure::Usage(format!("target `{name}`: {e}")))?;
    let mut conn = crate::pg::conn::ConnInfo::parse(&url)
        .map_err(|e| Failure::Usage(format!("target `{name}`: {e}")))?;
    if let Some(database) = database {
        conn = conn.with_database(database);
    }
    let dirs = crate::run::executor::pg_bin_dirs(&p.plan.plan, Some(&name), &p.source.base_dir());
    let program = crate::pg::tools::Search::new(dirs)
        .find("psql", crate::pg::tools::Want::Any)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .path;
    Ok(ShellSession {
        program,
        conn,
        read_only: definition.protected && !confirm.iter().any(|c| c == &name),
        target: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_with_template_braces_is_read_from_the_environment_not_rendered() {
        let mut b = Builder::new("sql", None).unwrap();
        let target = b.target("postgres://u@h/db").unwrap();
        let query = b.text("select '{{ env.HOME }}'");
        let generated = b.finish(
            "sql",
            json!({ "type": "sql", "target": target, "query": query }),
        );
        assert!(
            !generated.source.text.contains("HOME"),
            "{}",
            generated.source.text
        );
        assert_eq!(generated.env["OPSRUNNER_ARG_1"], "select '{{ env.HOME }}'");
        assert_eq!(generated.env["OPSRUNNER_TARGET_URL"], "postgres://u@h/db");
        let (_, valid) = plan::check(generated.source).expect("the generated plan is valid");
        assert_eq!(valid.plan.steps.len(), 1);
    }

    #[test]
    fn a_password_in_a_target_url_is_warned_about() {
        let mut b = Builder::new("sql", None).unwrap();
        b.target("postgres://u:secret@h/db").unwrap();
        assert_eq!(b.warnings.len(), 1);
        assert!(!b.warnings[0].contains("secret"));
    }

    #[test]
    fn a_name_without_a_plan_says_what_to_give() {
        let Err(Failure::Usage(message)) = Builder::new("backup", None).unwrap().target("app")
        else {
            panic!("a bare name without --plan is refused");
        };
        assert!(message.contains("--plan FILE"), "{message}");
        assert!(message.contains("env:DATABASE_URL"), "{message}");
    }
}
