//! The command line: one file per verb, each owning its arguments (clap) and calling the
//! library; here the verbs are listed, run on one tokio runtime, and what they return is
//! printed and turned into the exit code (`opsrunner::exit`, the one place codes live).

/// The exit codes, as shown by `--help`; the constants live in `opsrunner::exit`.
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0    success (every step succeeded or was skipped by its condition)
  1    a step failed (or a report could not be written)
  2    invalid plan or command line
  3    refused by a guard: destructive step on a protected target
       without --confirm; nothing was touched. Or a target or repository
       the run writes to is locked by another run (see --wait-lock)
  4    plan --strict: the preview is incomplete, a target or repository
       it needed could not be read
  5    a verify found the backup older than its max_age (none corrupt)
  6    a verify found a backup damaged, not restoring, or restoring
       different content
  130  interrupted (Ctrl-C / SIGTERM): running steps were cancelled,
       the report was still written"
    };
}

mod apply;
mod args;
mod backups;
mod diff;
mod graph;
mod oneshot;
mod plan;
mod repo;
mod runs;
mod schedule;
mod schema;
mod validate;
mod wal;

use args::PlanFileArgs;
use clap::{Parser, Subcommand};
use opsrunner::exit::{self, Failure};
use opsrunner::run::log::{LogFormat, stderr_wants_color};
use std::io::Write;

#[derive(Parser)]
#[command(name = "opsrunner", version, about = "Run PostgreSQL operations declared in a YAML plan: check, preview, apply.", after_help = exit_codes_help!())]
struct Cli {
    /// Format of the live log on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a plan: syntax, keys, references, cycles, templates. Exit 2 with every problem listed.
    Validate(PlanFileArgs),
    /// Preview what `apply` would do, step by step. Changes nothing.
    #[command(after_help = plan::HELP)]
    Plan(plan::Args),
    /// Run the plan: steps in dependency order, concurrently where possible, with retries and timeouts.
    #[command(after_help = apply::HELP)]
    Apply(apply::Args),
    /// What a change to a plan does: steps added, removed and changed, conditions,
    /// retention, schedule, targets and repositories (weakened guards called out).
    Diff(diff::Args),
    /// Print the step DAG as Graphviz DOT or a Mermaid flowchart.
    Graph(graph::Args),
    /// What a backup repository holds.
    Backups {
        #[command(subcommand)]
        command: backups::Command,
    },
    /// The history of runs kept in the state directory ($OPSRUNNER_STATE_DIR,
    /// $XDG_STATE_HOME/opsrunner, ~/.local/state/opsrunner).
    Runs {
        #[command(subcommand)]
        command: runs::Command,
    },
    /// Write what runs a plan on its `schedule:`: systemd units or Kubernetes CronJobs.
    Schedule {
        #[command(subcommand)]
        command: schedule::Command,
    },
    /// A repository itself: `init` (make a location a repository), `unlock` (its lock).
    Repo {
        #[command(subcommand)]
        command: repo::Command,
    },
    /// PostgreSQL's WAL archive: `archive_command` (push) and `restore_command` (fetch).
    Wal {
        #[command(subcommand)]
        command: wal::Command,
    },
    /// Print the JSON Schema of the plan file or of the run report.
    Schema(schema::Args),
    /// One-shot: back up a database (or, with --base, the whole cluster) into a repository.
    #[command(after_help = oneshot::BACKUP_HELP)]
    Backup(oneshot::BackupArgs),
    /// One-shot: restore a backup into a database, or to a point in time into a data directory.
    #[command(after_help = oneshot::RESTORE_HELP)]
    Restore(oneshot::RestoreArgs),
    /// One-shot: prove a backup intact and restorable (a test restore into a throwaway cluster).
    #[command(after_help = oneshot::VERIFY_HELP)]
    Verify(oneshot::VerifyArgs),
    /// One-shot: delete the backups a retention policy does not keep.
    #[command(after_help = oneshot::PRUNE_HELP)]
    Prune(oneshot::PruneArgs),
    /// One-shot: run SQL on a target (-c or -f).
    #[command(after_help = oneshot::SQL_HELP)]
    Sql(oneshot::SqlArgs),
    /// An interactive psql on a target; its password never on a command line.
    #[command(after_help = oneshot::PSQL_HELP)]
    Psql(oneshot::PsqlArgs),
    /// One-shot: apply, list or revert migrations (sqlx-cli's bookkeeping).
    #[command(after_help = oneshot::MIGRATE_HELP)]
    Migrate(oneshot::MigrateArgs),
    /// One-shot: load a seed set into a database.
    #[command(after_help = oneshot::SEED_HELP)]
    Seed(oneshot::SeedArgs),
    /// One-shot: drop and recreate a database, then migrate and seed it.
    #[command(after_help = oneshot::RESET_HELP)]
    Reset(oneshot::ResetArgs),
}

/// Runs the command line; the process's exit code.
pub(crate) fn main() -> i32 {
    let cli = Cli::parse();
    let color = stderr_wants_color();
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate(args) => validate::run(args, color),
            Command::Plan(args) => plan::run(args, color).await,
            Command::Apply(args) => apply::run(args, cli.log_format, color).await,
            Command::Diff(args) => diff::run(args),
            Command::Graph(args) => graph::run(args, color),
            Command::Backups { command } => backups::run(command, cli.log_format, color).await,
            Command::Runs { command } => runs::run(command),
            Command::Schedule { command } => schedule::run(command),
            Command::Repo { command } => repo::run(command).await,
            Command::Wal { command } => wal::run(command).await,
            Command::Schema(args) => schema::run(args),
            Command::Backup(args) => oneshot::backup(args, cli.log_format, color).await,
            Command::Restore(args) => oneshot::restore(args, cli.log_format, color).await,
            Command::Verify(args) => oneshot::verify(args, cli.log_format, color).await,
            Command::Prune(args) => oneshot::prune(args, cli.log_format, color).await,
            Command::Sql(args) => oneshot::sql(args, cli.log_format, color).await,
            Command::Psql(args) => oneshot::psql(args, color).await,
            Command::Migrate(args) => oneshot::migrate(args, cli.log_format, color).await,
            Command::Seed(args) => oneshot::seed(args, cli.log_format, color).await,
            Command::Reset(args) => oneshot::reset(args, cli.log_format, color).await,
        }
    });
    // What a verb left running (a child's output forwarder, a stalled request) must not
    // hold the exit back.
    runtime.shutdown_background();
    print(result, color)
}

/// Prints a verb's output (and a failure's message) and says the exit code.
fn print(result: Result<String, Failure>, color: bool) -> i32 {
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.flush())
                .is_err()
            {
                exit::STEP_FAILED
            } else {
                exit::SUCCESS
            }
        }
        Err(failure) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(failure.output().as_bytes())
                .and_then(|_| stdout.flush());
            eprint!("{}", failure.message(color));
            failure.exit_code()
        }
    }
}

/// Internal diagnostics (`OPSRUNNER_LOG=debug`), separate from the live log of events.
///
/// By default the AWS SDK's own warnings (every `aws_*` target) are left out: each failed
/// credential provider and retried request would print a line with a debug dump of the
/// SDK's structures, and what finally went wrong reaches the step's error anyway, in one
/// line. `OPSRUNNER_LOG` (e.g. `debug` or `warn,aws_config=debug`) shows them.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws=error"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(opsrunner::run::log::LibraryLog::new(format))
        .try_init();
}
