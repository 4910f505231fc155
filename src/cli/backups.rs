//! `opsrunner backups list|show|check|prune|copy|export|import`: what a backup repository
//! holds, and copies of it elsewhere.

use super::args::parse_duration;
use opsrunner::backups;
use opsrunner::commands;
use opsrunner::exit::Failure;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct RepositoryArgs {
    /// A repository URL (file:///var/backups) or the name of one declared in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// The plan that declares the repository named by --repository.
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

const COPY_HELP: &str = "Examples:
  opsrunner backups copy --from file:///srv/backup --to s3://offsite/db latest
  opsrunner backups copy --plan plans/offsite.yaml --from local --to offsite --keep-daily 7
  opsrunner backups copy --from local --to offsite --plan plans/offsite.yaml 20261207T020000Z-1a2b --dry-run

Each file is checked against its SHA-256 on the way and the manifest written last: a copy
that stops publishes nothing, and the next one resumes it. Backups the destination holds
already are skipped. Base backups bring their parents and the archived WAL from their start
on. A destination that encrypts to other recipients gets the backups encrypted again (give
--identity). Verify the copies there: verification records are not copied.";

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Write one backup as one file (a tar of its manifest and stored files, unchanged and
    /// still encrypted when they are; with the parents and WAL a base backup needs).
    #[command(after_help = "Examples:
  opsrunner backups export 20261207T020000Z-app-1a2b /mnt/usb/app.opsrunner.tar --repository file:///srv/backup
  opsrunner backups import /mnt/usb/app.opsrunner.tar --repository s3://restore-bucket/app")]
    Export {
        /// The backup id, or `latest`.
        id: String,
        /// The file to write (written beside as FILE.partial, renamed when complete).
        file: PathBuf,
        #[command(flatten)]
        repo: RepositoryArgs,
    },
    /// Bring an exported backup into a repository: every file checked against its
    /// manifest before the backup is published; a damaged or truncated export is refused.
    Import {
        /// The file `backups export` wrote.
        file: PathBuf,
        #[command(flatten)]
        repo: RepositoryArgs,
    },
    /// Copy backups to another repository (of any backend): checked, resumable, encrypted
    /// again for the destination when it encrypts to other recipients.
    #[command(after_help = COPY_HELP)]
    Copy(super::oneshot::CopyArgs),
    /// The published backups, newest first: id, database, created, age, size, compression,
    /// last verification.
    List(RepositoryArgs),
    /// One backup's manifest and last verification.
    Show {
        /// The backup id.
        id: String,
        #[command(flatten)]
        repo: RepositoryArgs,
        /// age identity file: shows the encrypted part of an encrypted backup's manifest
        /// (its tables and fingerprints).
        #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
        identity: Option<PathBuf>,
    },
    /// Health for monitoring and CI: exit 0 when the newest backup (and with
    /// --require-verified the newest one verified by a test restore) is younger than
    /// --max-age, else exit 1; one line says why.
    Check {
        #[command(flatten)]
        repo: RepositoryArgs,
        /// The oldest the newest backup may be, e.g. 26h.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Duration,
        /// The newest backup that passed a test restore must be younger than --max-age too.
        #[arg(long)]
        require_verified: bool,
        /// Only backups of this database.
        #[arg(long)]
        database: Option<String>,
    },
    /// Delete the backups a retention policy does not keep (restic's semantics; see README).
    Prune {
        #[command(flatten)]
        repo: RepositoryArgs,
        #[command(flatten)]
        keep: super::args::KeepArgs,
        /// Never delete backups younger than this.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        min_age: Option<Duration>,
        /// Only backups of this database.
        #[arg(long)]
        database: Option<String>,
        /// Also remove leftovers of unfinished backups (no manifest) untouched for
        /// --orphan-age; no --keep-* needed for this alone.
        #[arg(long)]
        orphans: bool,
        /// How long a leftover must be untouched before --orphans removes it (a backup in
        /// progress looks the same).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
        orphan_age: Duration,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(crate) async fn run(
    command: Command,
    log: opsrunner::run::log::LogFormat,
    color: bool,
) -> Result<String, Failure> {
    match command {
        Command::Copy(args) => super::oneshot::copy(args, log, color).await,
        Command::Export { id, file, repo } => {
            let store = backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
            let id = match id.as_str() {
                "latest" => backups::latest_id(&store).await?,
                _ => id,
            };
            backups::export(&store, &id, &file).await
        }
        Command::Import { file, repo } => {
            backups::import(&repo.repository, repo.plan.as_deref(), &file).await
        }
        Command::List(r) => {
            let store = backups::open_store(&r.repository, r.plan.as_deref()).await?;
            backups::list(&store, r.json).await
        }
        Command::Show { id, repo, identity } => {
            let identities = commands::load_identities(identity.as_deref())?;
            let store = backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
            backups::show(&store, &id, repo.json, identities.as_ref()).await
        }
        Command::Check {
            repo,
            max_age,
            require_verified,
            database,
        } => {
            let store = backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
            backups::check(
                &store,
                max_age,
                require_verified,
                database.as_deref(),
                repo.json,
            )
            .await
        }
        Command::Prune {
            repo,
            keep,
            min_age,
            database,
            orphans,
            orphan_age,
            dry_run,
        } => {
            let store = backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
            let keep = keep.keep();
            let orphans = orphans.then_some(orphan_age);
            let request = backups::PruneRequest {
                keep,
                min_age,
                database,
                orphans,
                dry_run,
                json: repo.json,
            };
            backups::prune(&store, request).await
        }
    }
}
