//! `opsrunner schema plan|report`: the JSON Schema of the plan file or of the run report.

use opsrunner::commands::{self, SchemaKind};
use opsrunner::exit::Failure;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(value_enum)]
    which: SchemaKind,
}

pub(crate) fn run(args: Args) -> Result<String, Failure> {
    Ok(commands::schema(args.which))
}
