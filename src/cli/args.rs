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

/// A retention policy on the command line (`backups prune`, `prune`): restic's `forget`
/// rules, each count at least 1.
#[derive(clap::Args)]
pub(crate) struct KeepArgs {
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_hourly: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_daily: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_weekly: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_monthly: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_yearly: Option<u32>,
    /// Keep everything within this span before the newest backup, e.g. 14d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
}

impl KeepArgs {
    pub(crate) fn keep(&self) -> opsrunner::repo::retention::Keep {
        opsrunner::repo::retention::Keep {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self
                .keep_within
                .map(opsrunner::plan::duration::HumanDuration),
        }
    }
}
