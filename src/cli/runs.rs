//! `opsrunner runs list|show`: the history of runs kept in the state directory.

use opsrunner::exit::Failure;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// The kept runs, newest first: id, plan, status, start, duration, failed steps.
    List {
        /// Only runs of this plan (its `name`).
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value = "50")]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One run: each step's outcome, error and outputs (`--json`: the whole report).
    Show {
        #[arg(value_name = "RUN_ID")]
        id: String,
        /// The run report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(command: Command) -> Result<String, Failure> {
    match command {
        Command::List { plan, limit, json } => opsrunner::runs::list(plan.as_deref(), limit, json),
        Command::Show { id, json } => opsrunner::runs::show(&id, json),
    }
}
