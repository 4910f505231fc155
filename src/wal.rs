//! `opsrunner wal push|fetch`: PostgreSQL's `archive_command` and `restore_command`.
//!
//! ```text
//! archive_command = 'opsrunner wal push %p --repository offsite --plan /etc/opsrunner/pitr.yaml'
//! restore_command = 'opsrunner wal fetch %f %p --repository offsite --plan /etc/opsrunner/pitr.yaml'
//! ```
//!
//! The exit codes are PostgreSQL's contract, not opsrunner's usual ones. `push`: 0 only
//! when the file is in the archive (now or already, with the same content); anything else
//! makes PostgreSQL keep the segment and try again. `fetch`: 0 with the file written, 1
//! ([`crate::exit::WAL_NOT_FOUND`]) only when the store *proved* the file absent — which
//! PostgreSQL reads as "the end of the archive" and acts on (ends recovery, promotes) — and
//! [`crate::exit::WAL_UNREADABLE`] (above 125, which makes PostgreSQL abort recovery
//! instead) when the store could not be read for `--retry-for`, the copy is damaged, or the
//! key is missing: a restore that stops and says why can be run again; one that ended early
//! at the wrong moment has already opened the database to writes.

use crate::exit::Failure;
use crate::repo::compression::Compression;
use crate::repo::crypto::Identities;
use crate::repo::wal::{self, Pushed, WalError};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the archive is, from the command line.
pub struct WalRepository<'a> {
    pub repository: &'a str,
    pub plan: Option<&'a Path>,
}

/// `opsrunner wal push PATH`: archives the file PostgreSQL names (`%p`, relative to its
/// data directory, which is the command's working directory).
pub async fn push(
    path: &Path,
    at: &WalRepository<'_>,
    compression: Compression,
) -> Result<String, Failure> {
    let name = file_name(path)?;
    let (definition, base_dir) = crate::backups::repository_definition(at.repository, at.plan)?;
    let recipients = definition
        .encryption
        .as_ref()
        .map(|e| crate::repo::crypto::Recipients::of(e, &base_dir))
        .transpose()
        .map_err(|e| Failure::Usage(format!("repository `{}`: {e}", at.repository)))?;
    let original = read_bounded(path)
        .map_err(|e| Failure::Io(format!("wal push: cannot read {}: {e}", path.display())))?;
    let store = crate::repo::open(&definition, &base_dir).await?;
    let checked = crate::repo::record::require_for(&store, &definition, &base_dir)
        .await
        .map_err(|e| Failure::Io(format!("wal push {name}: {e}")))?;
    if let Some(said) = crate::repo::record::said(&checked, &store.location()) {
        tracing::warn!("{said}");
    }
    let object = wal::encode(&name, &original, compression, recipients.as_ref())
        .await
        .map_err(|e| Failure::Io(format!("wal push {name}: {e}")))?;
    match wal::store(&store, &name, object).await {
        Ok(Pushed::Archived { stored_size }) => Ok(format!(
            "archived {name} ({} bytes, {stored_size} stored) in {}\n",
            original.len(),
            store.location()
        )),
        Ok(Pushed::AlreadyThere) => Ok(format!(
            "{name} is already archived in {} with the same content\n",
            store.location()
        )),
        Err(e) => Err(Failure::Io(format!("wal push {name}: {e}"))),
    }
}

/// How `wal fetch` behaves.
pub struct FetchOptions<'a> {
    pub identities: Option<&'a Identities>,
    /// How long to keep trying a store that cannot be read before giving up.
    pub retry_for: Duration,
}

/// `opsrunner wal fetch NAME DEST`: writes archived file `NAME` (`%f`) to `DEST` (`%p`).
pub async fn fetch(
    name: &str,
    dest: &Path,
    at: &WalRepository<'_>,
    options: &FetchOptions<'_>,
) -> Result<String, Failure> {
    wal::check_server_name(name).map_err(|e| Failure::WalUnreadable(format!("wal fetch: {e}")))?;
    let (definition, base_dir) = crate::backups::repository_definition(at.repository, at.plan)
        .map_err(|e| {
            Failure::WalUnreadable(format!("wal fetch {name}: {}", e.message(false).trim()))
        })?;
    let store = crate::repo::open(&definition, &base_dir)
        .await
        .map_err(|e| Failure::WalUnreadable(format!("wal fetch {name}: {e}")))?;
    let started = Instant::now();
    // `--retry-for` is a deadline: an attempt still waiting when it passes (a store that
    // accepts connections and never answers, the SDK's own retries) is given up.
    let deadline = started + options.retry_for;
    let mut delay = Duration::from_millis(250);
    let object = loop {
        let attempt = wal::read(&store, name);
        let result = if options.retry_for.is_zero() {
            attempt.await
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, attempt).await {
                Ok(result) => result,
                Err(_) => Err(WalError::Unavailable(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the repository did not answer in time",
                ))),
            }
        };
        match result {
            Ok(object) => break object,
            Err(WalError::NotFound(_)) => {
                return Err(Failure::WalNotFound(format!(
                    "wal fetch: {name} is not in {}",
                    store.location()
                )));
            }
            Err(e @ (WalError::Unavailable(_) | WalError::Damaged(_)))
                if started.elapsed() + delay < options.retry_for =>
            {
                tracing::warn!("wal fetch {name}: {e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                // `damaged` or `unreachable` first: the restore that reads the server's log
                // says which (pg::recovery::wal_problem).
                let (kind, then) = match e {
                    WalError::Damaged(_) => (
                        "damaged",
                        "restore from another copy of the archive, or to a point before this segment",
                    ),
                    _ => ("unreachable", "run it again when the repository answers"),
                };
                return Err(Failure::WalUnreadable(format!(
                    "wal fetch {name}: {kind}: {e} (for {:.1}s); recovery is stopped rather than ended early at the wrong point: {then}",
                    started.elapsed().as_secs_f64()
                )));
            }
        }
    };
    write_new(name, dest, &object, options.identities).await?;
    Ok(String::new())
}

fn file_name(path: &Path) -> Result<String, Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    wal::check_server_name(&name).map_err(|e| Failure::Usage(format!("wal push: {e}")))?;
    Ok(name)
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len().min(wal::MAX_FILE);
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.take(wal::MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > wal::MAX_FILE {
        return Err(std::io::Error::other("larger than any WAL file (1 GiB)"));
    }
    Ok(bytes)
}

/// Writes the original of archived `object` to `DEST` whole or not at all: decompressed
/// straight into a temporary file beside it (memory stays that of the stored bytes),
/// checked, flushed to disk, then renamed into place. PostgreSQL never reads half a
/// segment, nor one whose hash did not match.
async fn write_new(
    name: &str,
    dest: &Path,
    object: &[u8],
    identities: Option<&Identities>,
) -> Result<(), Failure> {
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{file_name}.opsrunner.{}", std::process::id()));
    let cannot_write = |e: std::io::Error| {
        Failure::WalUnreadable(format!(
            "wal fetch {name}: cannot write {}: {e}",
            dest.display()
        ))
    };
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(cannot_write)?;
        wal::decode_to(name, object, identities, &mut file)
            .await
            .map_err(|e| match e {
                WalError::Unavailable(io) => cannot_write(io),
                other => Failure::WalUnreadable(format!("wal fetch {name}: damaged: {other}")),
            })?;
        file.sync_all().await.map_err(cannot_write)?;
        tokio::fs::rename(&tmp, dest).await.map_err(cannot_write)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `opsrunner wal status`: what the archive holds — its newest segment and how old it is
/// (the RPO of point-in-time recovery), the timelines, and any segment missing where
/// recovery would need it (see [`crate::repo::archive`]). Exit 5 when the newest is older
/// than `max_age` (or there is none), 6 when there is a gap.
pub async fn status(
    at: &WalRepository<'_>,
    max_age: Option<Duration>,
    json: bool,
) -> Result<String, Failure> {
    use crate::exec::events::Verdict;
    use crate::repo::archive::{self, Problem};
    let store = crate::backups::open_store(at.repository, at.plan).await?;
    let state = archive::inspect(&store)
        .await
        .map_err(|e| Failure::Io(format!("the WAL archive in {}: {e}", store.location())))?;
    let output = if json { state.json() } else { state.text() };
    match state.problem(max_age) {
        None => Ok(output),
        Some(Problem::Gap(message)) => Err(Failure::Found {
            verdict: Verdict::BackupCorrupt,
            output,
            message,
        }),
        Some(Problem::TooOld(message)) => Err(Failure::Found {
            verdict: Verdict::BackupTooOld,
            output,
            message,
        }),
    }
}
