//! `opsrunner repo unlock`: a repository itself, its lock.

use opsrunner::exit::Failure;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
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
        Command::Unlock { repository, plan } => {
            opsrunner::backups::unlock(&repository, plan.as_deref()).await
        }
    }
}
