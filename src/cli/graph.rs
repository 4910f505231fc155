//! `opsrunner graph FILE`: the step DAG as Graphviz DOT or a Mermaid flowchart.

use super::args::PlanFileArgs;
use opsrunner::commands::{self, GraphFormat};
use opsrunner::exit::Failure;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    plan: PlanFileArgs,
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
}

pub(crate) fn run(args: Args, color: bool) -> Result<String, Failure> {
    commands::graph(&args.plan.into_plan_args(vec![], color), args.format)
}
