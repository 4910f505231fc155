//! `opsrunner repo init|unlock`: a repository itself — its record, its lock.

use opsrunner::exit::Failure;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Make a location a repository: write its record (format, creation time, and for an
    /// encrypted repository the fingerprints of its recipients). Backups, `wal push` and
    /// prune refuse a location without one, so a mistyped path or bucket fails instead of
    /// becoming a new, empty repository. A location that already holds backups is adopted.
    #[command(after_help = "Examples:
  opsrunner repo init file:///var/backups/app
  opsrunner repo init offsite --plan plans/offsite.yaml      # records the plan's encryption
  opsrunner repo init offsite --plan plans/offsite.yaml --force   # after changing its keys

Exit codes: 0 created, adopted or already a repository that agrees; 2 invalid command
line; 3 a repository whose record disagrees (without --force); 1 the store could not be
written.")]
    Init {
        /// A repository URL (file:///var/backups, s3://bucket/prefix) or the name of one
        /// declared in --plan.
        #[arg(value_name = "URL|NAME")]
        repository: String,
        /// The plan that declares the repository named (its encryption is recorded).
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// Replace a record whose encryption differs (after changing the repository's keys).
        #[arg(long)]
        force: bool,
    },
    /// Remove the lock (local) or lease (S3, Azure) a run holds on the repository, when
    /// that run is not running any more; refused (exit 3) while its holder is alive.
    Unlock {
        /// A repository URL (file:///var/backups) or the name of one declared in --plan.
        #[arg(long, value_name = "URL|NAME")]
        repository: String,
        /// The plan that declares the repository named by --repository.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
    },
}

pub(crate) async fn run(command: Command) -> Result<String, Failure> {
    match command {
        Command::Init {
            repository,
            plan,
            force,
        } => opsrunner::backups::init(&repository, plan.as_deref(), force).await,
        Command::Unlock { repository, plan } => {
            opsrunner::backups::unlock(&repository, plan.as_deref()).await
        }
    }
}
