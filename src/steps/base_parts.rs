//! What both ways of taking a base backup share — `pg_basebackup`'s
//! ([`super::base_backup`]) and the file-level copy ([`super::base_files`]): the step's
//! parameters, what the server says about itself, the choice of a parent, and the wait
//! for the archive to hold the WAL a copy needs.

use crate::exec::{StepContext, StepError};
use crate::pg::server::{Server, classify};
use crate::repo::compression::Compression;
use crate::repo::manifest::{BaseKind, BaseMethod, Manifest};
use crate::repo::{AnyStore, wal};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::time::{Duration, Instant};

/// How the server's checkpoint at the start of the copy is taken.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// At once, as fast as the disks allow (the copy starts sooner).
    #[default]
    Fast,
    /// Spread over `checkpoint_completion_target` (gentler on a busy server).
    Spread,
}

/// `base_backup`: the whole cluster of a target, for point-in-time recovery.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseBackupParams {
    /// Name of a target declared under `targets` (its user needs the REPLICATION attribute).
    pub target: String,
    /// Name of a repository declared under `repositories`; the server must archive its WAL
    /// into the same repository (`opsrunner wal push %p --repository NAME`).
    pub repository: String,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    /// `full` (default), `differential` (what changed since the newest full backup) or
    /// `incremental` (since the newest base backup of any kind): PostgreSQL 17+ with
    /// `summarize_wal = on`, by the server's own `pg_basebackup --incremental`. Without a
    /// usable parent (none yet, an older server, summaries off) a full backup is taken and
    /// the step says why.
    #[serde(default)]
    pub kind: BaseKind,
    /// How long to wait, after the copy, for the archive to hold the WAL it needs.
    #[serde(default = "default_wal_wait")]
    pub wal_wait: String,
    /// File-level copies (a target with `data_directory`): how many files are read,
    /// compressed and stored at once.
    #[serde(default = "default_jobs")]
    pub jobs: u32,
}

fn default_wal_wait() -> String {
    "2m".into()
}

fn default_jobs() -> u32 {
    2
}

/// How a base backup of a target is taken: file by file when opsrunner may read the
/// cluster's data directory, by `pg_basebackup` otherwise.
pub fn method(data_directory: Option<&std::path::Path>) -> BaseMethod {
    match data_directory {
        Some(_) => BaseMethod::Files,
        None => BaseMethod::Tar,
    }
}

/// What the server says about itself before the copy.
pub struct Cluster {
    /// A standby: its WAL reaches the archive from its primary, at the primary's pace.
    pub standby: bool,
    pub system_identifier: String,
    pub wal_segment_size: u64,
    pub archive_command: String,
}

pub async fn inspect(server: &mut Server, target: &str) -> Result<Cluster, StepError> {
    let row = sqlx::query(
        "select (select system_identifier::text from pg_control_system()),
                (select setting::bigint from pg_settings where name = 'wal_segment_size'),
                current_setting('archive_mode'),
                current_setting('archive_command'),
                coalesce(current_setting('archive_library', true), ''),
                pg_is_in_recovery(),
                (select coalesce(last_failed_wal, '') from pg_stat_archiver
                  where last_failed_time is not null
                    and (last_archived_time is null or last_failed_time > last_archived_time))",
    )
    .fetch_one(&mut server.conn)
    .await
    .map_err(|e| classify(&e, "cannot read the server's settings"))?;
    let archive_mode: String = row.get(2);
    let archive_command: String = row.get(3);
    let archive_library: String = row.get(4);
    let in_recovery: bool = row.get(5);
    let archives = archive_mode != "off"
        && (!archive_command.trim().is_empty() && archive_command != "(disabled)"
            || !archive_library.is_empty());
    // A standby's WAL is archived by its primary (or by itself with archive_mode =
    // always), which it cannot see: the wait for the archive after the copy is the check.
    if !archives && !in_recovery {
        return Err(StepError::permanent(format!(
            "target `{target}` does not archive its WAL (archive_mode = {archive_mode}, archive_command = '{archive_command}'): a base backup without its WAL cannot be restored. Set archive_mode = on and archive_command = 'opsrunner wal push %p --repository …' (README, \"Point-in-time recovery\")"
        )));
    }
    // pg_basebackup waits for the WAL it needs to be archived, forever: with archiving
    // failing, it would hang until the step's timeout.
    let failing: Option<String> = row.get(6);
    if let Some(wal) = failing.filter(|w| !w.is_empty()) {
        return Err(StepError::transient(format!(
            "target `{target}` is failing to archive its WAL (the last attempt, for {wal}, failed; see pg_stat_archiver and the server log): a base backup would wait for it forever. Fix archiving first"
        )));
    }
    let wal_segment_size: i64 = row.get(1);
    Ok(Cluster {
        standby: in_recovery,
        system_identifier: row.get(0),
        wal_segment_size: wal_segment_size as u64,
        archive_command: if in_recovery {
            "primary's archiving (this target is a standby; its primary must archive into this repository, and with archive_timeout set a backup ends promptly)".to_string()
        } else if archive_command.is_empty() {
            format!("archive_library = {archive_library}")
        } else {
            format!("archive_command = '{archive_command}'")
        },
    })
}

pub async fn server_clock(server: &mut Server) -> Result<DateTime<Utc>, StepError> {
    let micros: i64 =
        sqlx::query_scalar("select (extract(epoch from clock_timestamp()) * 1000000)::bigint")
            .fetch_one(&mut server.conn)
            .await
            .map_err(|e| classify(&e, "cannot read the server's clock"))?;
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StepError::permanent("the server's clock reads an impossible time"))
}

/// The newest base backup a backup of `kind` can be taken against (of the cluster
/// `system_identifier`, when known): the newest full one for a differential, the newest
/// of any kind for an incremental; one with its `backup_manifest` stored.
pub fn newest_parent(
    backups: Vec<crate::repo::listing::Checked>,
    kind: BaseKind,
    system_identifier: Option<&str>,
    method: BaseMethod,
) -> Option<Manifest> {
    backups.into_iter().rev().map(|c| c.manifest).find(|m| {
        m.base.as_ref().is_some_and(|b| {
            system_identifier.is_none_or(|id| b.system_identifier == id)
                && b.method == method
                && match method {
                    BaseMethod::Tar => b.backup_manifest.is_some(),
                    BaseMethod::Files => b.contents.is_some(),
                }
                && (kind == BaseKind::Incremental || b.kind == BaseKind::Full)
        })
    })
}

/// Waits for the archive to hold the WAL a copy from `start` to `stop` needs: the segments
/// from the one holding the start to the one holding the last byte before the end, which
/// recovery reads before the copy is consistent. A copy without them is not published.
#[allow(clippy::too_many_arguments)]
pub async fn wait_for_wal(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    cluster: &Cluster,
    timeline: u32,
    start: u64,
    stop: u64,
    wal_wait: Duration,
) -> Result<(), StepError> {
    let segment = cluster.wal_segment_size;
    let first = start / segment;
    let last = stop.saturating_sub(1).max(start) / segment;
    let needed: Vec<String> = (first..=last)
        .map(|pos| wal::segment_name(timeline, pos, segment))
        .collect();
    if let Some((missing, first_missing)) = await_archived(store, &needed, wal_wait, ctx).await? {
        return Err(StepError::permanent(format!(
            "the copy is complete, but after {} the WAL archive of repository `{}` still lacks {missing} of the {} segment(s) it needs, the first {first_missing}: the server's {} does not archive into this repository, or archiving fails (see pg_stat_archiver). The copy was not published.",
            crate::plan::duration::format(wal_wait),
            p.repository,
            needed.len(),
            cluster.archive_command
        )));
    }
    Ok(())
}

/// Waits up to `wait` for the WAL archive to hold every one of `needed`: `None` once it
/// does, or how many are still missing and the first of them.
pub async fn await_archived(
    store: &AnyStore,
    needed: &[String],
    wait: Duration,
    ctx: &StepContext,
) -> Result<Option<(usize, String)>, StepError> {
    let deadline = Instant::now() + wait;
    loop {
        let names = wal::list(store)
            .await
            .map_err(|e| crate::exec::io_error("listing the WAL archive", &e))?;
        let missing: Vec<&String> = needed
            .iter()
            .filter(|n| names.binary_search(n).is_err())
            .collect();
        let Some(first_missing) = missing.first() else {
            return Ok(None);
        };
        if Instant::now() >= deadline {
            return Ok(Some((missing.len(), first_missing.to_string())));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
        }
    }
}

/// The newest backup of this cluster in the repository that a backup of `kind`, taken
/// by `method`, can be relative to — or why there is none (then a full is taken).
/// `needs` says what of the parent the copy reads (for the message when it is encrypted
/// and no identity was given).
pub async fn find_parent(
    ctx: &StepContext,
    store: &AnyStore,
    cluster: &Cluster,
    kind: BaseKind,
    method: BaseMethod,
    needs: &str,
) -> Result<Result<Manifest, String>, StepError> {
    let backups = crate::repo::listing::base_backups(store)
        .await
        .map_err(|e| crate::exec::io_error("listing the repository", &e))?;
    let Some(manifest) = newest_parent(backups, kind, Some(&cluster.system_identifier), method)
    else {
        let which = if kind == BaseKind::Differential {
            "full base backup"
        } else {
            "base backup"
        };
        return Ok(Err(match method {
            BaseMethod::Tar => format!(
                "the repository holds no {which} of this cluster with its backup_manifest stored beside it"
            ),
            BaseMethod::Files => {
                format!("the repository holds no file-level {which} of this cluster")
            }
        }));
    };
    if manifest.encryption.is_some() && ctx.identities.is_none() {
        return Ok(Err(format!(
            "the parent {} is encrypted, and reading its {needs} needs the identity (--identity)",
            manifest.backup_id
        )));
    }
    Ok(Ok(manifest))
}

/// The step's outputs for a published base backup.
pub fn outputs(
    store: &AnyStore,
    manifest: &Manifest,
    base: &crate::repo::manifest::BaseBackup,
    sha256: &str,
) -> crate::exec::events::Outputs {
    let id = &manifest.backup_id;
    let mut outputs = crate::exec::events::Outputs::new();
    outputs.insert("backup_id".into(), id.clone());
    outputs.insert("kind".into(), base.kind.as_str().into());
    outputs.insert("method".into(), base.method.as_str().into());
    outputs.insert("parent".into(), base.parent.clone().unwrap_or_default());
    outputs.insert("uri".into(), crate::repo::BackupStore::uri(store, id));
    outputs.insert("bytes".into(), manifest.total_bytes().to_string());
    outputs.insert("sha256".into(), sha256.to_string());
    outputs.insert("start_lsn".into(), base.start_lsn.clone());
    outputs.insert("stop_lsn".into(), base.stop_lsn.clone());
    outputs.insert("timeline".into(), base.timeline.to_string());
    outputs
}

/// Stores `bytes` as file `stem` (plus the compression's and encryption's extensions) of
/// backup `backup_id`: the small files a base backup keeps beside its copy.
pub async fn store_small(
    p: &BaseBackupParams,
    store: &AnyStore,
    backup_id: &str,
    stem: &str,
    bytes: Vec<u8>,
    recipients: Option<&crate::repo::crypto::Recipients>,
) -> Result<crate::repo::manifest::FileEntry, StepError> {
    let ext = super::backup::stored_extension(p.compression, recipients.is_some());
    let name = format!("{stem}{ext}");
    crate::repo::pipeline::store(
        store,
        backup_id,
        &name,
        std::io::Cursor::new(bytes),
        p.compression,
        1,
        recipients,
        None,
    )
    .await
    .map_err(|e| crate::exec::io_error(&format!("writing {name}"), &e))
}
