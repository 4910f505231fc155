//! `opsrunner wal push|fetch|status`: PostgreSQL's WAL archive.

use super::args::parse_duration;
use opsrunner::commands;
use opsrunner::exit::Failure;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct WalRepositoryArgs {
    /// A repository URL (file:///var/backups, s3://bucket/prefix) or the name of one declared in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// The plan that declares the repository named by --repository (its encryption too).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Archive one WAL file: `archive_command = 'opsrunner wal push %p --repository NAME --plan FILE'`.
    /// Exit 0 only when it is archived (now, or before with the same content).
    #[command(
        after_help = "Exit codes: 0 archived (or already there with the same content); 1 not archived
(PostgreSQL keeps the file and tries again), among them a file of that name already
archived with different content; 2 invalid command line."
    )]
    Push {
        /// The file (`%p`: relative to the data directory, the command's working directory).
        path: PathBuf,
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// none, gzip[:1-9] or zstd[:1-19].
        #[arg(long, value_name = "ALGORITHM[:LEVEL]", default_value = "zstd", value_parser = parse_compression)]
        compression: opsrunner::repo::compression::Compression,
    },
    /// Restore one WAL file: `restore_command = 'opsrunner wal fetch %f %p --repository NAME --plan FILE'`.
    #[command(
        after_help = "Exit codes: 0 written; 1 proven absent from the archive (PostgreSQL's `end of the
archive`); 255 the archive could not be read for --retry-for, the copy is damaged or the
key is missing: PostgreSQL then aborts recovery instead of ending it early."
    )]
    Fetch {
        /// The file's name (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// age identity file, for an encrypted archive.
        #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        /// How long to keep trying an archive that cannot be read (network, throttling)
        /// before giving up with exit 255.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        retry_for: Duration,
    },
    /// What the archive holds: the newest segment and its age (the RPO), timelines, gaps.
    #[command(
        after_help = "Exit codes: 0 fine; 5 the newest segment is older than --max-age (or there is none);
6 a segment is missing between the first and the last of a timeline; 1 the archive
cannot be read."
    )]
    Status {
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// Fail (exit 5) when the newest archived segment is older than this.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(command: Command) -> Result<String, Failure> {
    match command {
        Command::Push {
            path,
            repo,
            compression,
        } => {
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            opsrunner::wal::push(&path, &at, compression).await
        }
        Command::Fetch {
            name,
            dest,
            repo,
            identity,
            retry_for,
        } => {
            let identities = commands::load_identities(identity.as_deref())
                .map_err(|e| Failure::WalUnreadable(e.message(false).trim().to_string()))?;
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            let options = opsrunner::wal::FetchOptions {
                identities: identities.as_ref(),
                retry_for,
            };
            opsrunner::wal::fetch(&name, &dest, &at, &options).await
        }
        Command::Status {
            repo,
            max_age,
            json,
        } => {
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            opsrunner::wal::status(&at, max_age, json).await
        }
    }
}

fn parse_compression(s: &str) -> Result<opsrunner::repo::compression::Compression, String> {
    opsrunner::repo::compression::Compression::parse(s)
}
