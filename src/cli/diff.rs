//! `opsrunner diff OLD NEW`: what a change to a plan does.

use opsrunner::commands::{self, PreviewFormat};
use opsrunner::exit::Failure;
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The plan before the change (e.g. `git show main:plans/nightly.yaml > old.yaml`).
    old: PathBuf,
    /// The plan after it.
    new: PathBuf,
    /// text or markdown (for a pull-request comment).
    #[arg(long, value_enum, default_value = "text")]
    format: PreviewFormat,
}

pub(crate) fn run(args: Args) -> Result<String, Failure> {
    commands::diff(&args.old, &args.new, args.format)
}
