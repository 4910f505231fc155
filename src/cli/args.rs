//! Arguments several verbs share.

use opsrunner::commands::PlanArgs;
use opsrunner::plan::yaml::Limits;
use std::path::PathBuf;
use std::time::Duration;

/// The plan file and what bounds reading it: the arguments of every verb that reads a plan.
#[derive(clap::Args)]
pub(crate) struct PlanFileArgs {
    /// The plan file (YAML).
    file: PathBuf,
    /// Override a plan variable: `--var keep_daily=7` (repeatable; the variable must be declared in `vars`).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Refuse plan files larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_bytes)]
    max_plan_bytes: u64,
    /// Refuse plans of more than this many YAML nodes (after alias expansion).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_nodes)]
    max_plan_nodes: usize,
}

impl PlanFileArgs {
    pub(crate) fn into_plan_args(self, confirm: Vec<String>, color: bool) -> PlanArgs {
        PlanArgs {
            limits: Limits {
                max_bytes: self.max_plan_bytes,
                max_nodes: self.max_plan_nodes,
                ..Limits::default()
            },
            file: self.file,
            vars: self.vars,
            confirm,
            color,
            untrusted: false,
            base: None,
            generated: None,
        }
    }
}

pub(crate) fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty KEY"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    opsrunner::plan::duration::parse(s)
}
