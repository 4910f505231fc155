//! `opsrunner validate FILE`: check a plan, every problem listed.

use super::args::PlanFileArgs;
use opsrunner::commands;
use opsrunner::exit::Failure;

pub(crate) fn run(args: PlanFileArgs, color: bool) -> Result<String, Failure> {
    commands::validate(&args.into_plan_args(vec![], color))
}
