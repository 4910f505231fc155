//! `opsrunner plan FILE`: preview what `apply` would do, step by step.

use super::args::PlanFileArgs;
use opsrunner::commands::{self, PlanArgs, PreviewFormat};
use opsrunner::exit::Failure;
use std::path::PathBuf;

pub(crate) const HELP: &str = "Examples:
  opsrunner plan plans/maintenance.yaml
  opsrunner plan plans/maintenance.yaml --format markdown --out plan.md   # for a PR comment
  opsrunner plan plans/maintenance.yaml --format json | jq '.steps[].action'
  opsrunner plan plans/nightly.yaml --out plan.json && opsrunner apply plan.json   # saved plan";

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    plan: PlanFileArgs,
    /// Output format: text for terminals, markdown for pull-request comments, json for
    /// machines and saved plans. Default: as --out's extension says (.json, .md), else text.
    #[arg(long, value_enum)]
    format: Option<PreviewFormat>,
    /// Write the preview to this file instead of stdout. `plan.json` is a saved plan:
    /// `opsrunner apply plan.json` runs it only while the plan file, its resolved steps,
    /// each target's identity and each repository's newest backup are as they were.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Preview as if `--confirm TARGET` were given to apply (repeatable).
    #[arg(long, value_name = "TARGET")]
    confirm: Vec<String>,
    /// Review mode for plans from pull requests: no network connection, no process, no
    /// file read beyond the plan; `env.*` shown as placeholders, never their values.
    #[arg(long)]
    untrusted: bool,
    /// The reviewed version of this plan (e.g. from the main branch): probes run only for
    /// steps whose targets and repositories are defined exactly as there; everything else
    /// is previewed as with --untrusted.
    #[arg(long, value_name = "OLD_PLAN", conflicts_with = "untrusted")]
    base: Option<PathBuf>,
    /// Markdown: the longest the preview may be, in characters (GitHub's comment limit by
    /// default); what does not fit is left out with a note, the risk summary never.
    #[arg(long, value_name = "N", default_value_t = opsrunner::run::markdown::GITHUB_COMMENT_LIMIT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2000..))]
    max_chars: usize,
    /// Exit with code 4 when the preview is incomplete: a target or repository it needed
    /// (what a prune would delete, which backup `latest` is) could not be read.
    #[arg(long)]
    strict: bool,
}

pub(crate) async fn run(args: Args, color: bool) -> Result<String, Failure> {
    let plan = PlanArgs {
        untrusted: args.untrusted,
        base: args.base,
        ..args.plan.into_plan_args(args.confirm, color)
    };
    let output = commands::PlanOutput {
        format: PreviewFormat::chosen(args.format, args.out.as_deref()),
        out: args.out.as_deref(),
        max_chars: args.max_chars,
        strict: args.strict,
    };
    commands::plan(&plan, &output).await
}
