//! `opsrunner apply FILE`: run the plan.

use super::args::{PlanFileArgs, parse_duration};
use opsrunner::commands::{self, ApplyArgs};
use opsrunner::exit::Failure;
use opsrunner::run::log::LogFormat;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const HELP: &str = concat!(
    "Examples:
  opsrunner apply plans/maintenance.yaml --report maintenance.json
  opsrunner apply plans/maintenance.yaml --confirm app --var top_tables=10
  opsrunner apply plans/maintenance.yaml --dry-run
  opsrunner apply plan.json    # a saved plan (opsrunner plan … --out plan.json); exit 3 if stale

",
    exit_codes_help!()
);

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    plan: PlanFileArgs,
    /// Write the JSON run report here (also when steps fail or the run is interrupted).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the run as JUnit XML here, for CI: a test case per step, skipped and failed
    /// ones with the reason, measured numbers (RTO, RPO) as properties.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Only preview, like `opsrunner plan`.
    #[arg(long)]
    dry_run: bool,
    /// Run at most N steps at once (default: number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Allow destructive steps on this protected target (repeatable).
    #[arg(long, value_name = "TARGET")]
    confirm: Vec<String>,
    /// Time child processes get between SIGTERM and SIGKILL on timeout or interruption.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// When another run holds a target or repository this run writes to, wait this long
    /// for it before giving up with exit code 3 (default: do not wait).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    wait_lock: Duration,
    /// Run again only the steps of this earlier run (see `opsrunner runs list`) that did not
    /// succeed, reusing the outputs of those that did; refused when the plan changed in a
    /// way that makes them stale.
    #[arg(long, value_name = "RUN_ID")]
    resume: Option<String>,
    /// Write Prometheus metrics here (atomically, for node_exporter's textfile collector):
    /// the run's status, start and duration, each backup's size and duration, the verify's
    /// restore time, and per repository and database the newest backup and verified restore.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// When the log is not a terminal: how often long transfers (dump, restore) report
    /// their progress. On a terminal, a progress bar shows it continuously.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    progress_every: Duration,
    /// age identity file for restoring and verifying encrypted backups.
    #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
    identity: Option<PathBuf>,
}

pub(crate) async fn run(args: Args, log_format: LogFormat, color: bool) -> Result<String, Failure> {
    let apply = ApplyArgs {
        plan: args.plan.into_plan_args(args.confirm, color),
        report: args.report,
        junit: args.junit,
        dry_run: args.dry_run,
        concurrency: args.concurrency.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        ),
        log_format,
        kill_grace: args.kill_grace,
        wait_lock: args.wait_lock,
        resume: args.resume,
        metrics: args.metrics,
        progress_every: args.progress_every,
        identity: args.identity,
        print_outputs: false,
    };
    commands::apply(apply).await.map(|()| String::new())
}
