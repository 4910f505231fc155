//! `base_backup` file by file, when the target names its `data_directory`: the server is
//! told a backup starts (`pg_backup_start`, on one session held until the end: if
//! opsrunner dies, the session ends and the server forgets the backup), the directory is
//! copied by `jobs` workers ([`crate::pg::files`]), the server is told it ended
//! (`pg_backup_stop`), and its `backup_label` is stored with the files. The WAL in between
//! comes from the archive, as for `pg_basebackup`'s copies.

use super::base_parts::{BaseBackupParams, Checkpoint, Cluster, server_clock};
use crate::exec::events::{Outputs, Stream};
use crate::exec::progress::{Counter, Meter};
use crate::exec::{StepContext, StepError};
use crate::pg::files::contents::{CONTENTS_VERSION, Contents, Data, Entry, File, Kind, Stored};
use crate::pg::files::copy::{self, Copied, Parent, Settings};
use crate::pg::server::{Server, classify};
use crate::repo::bundle::BundleWriter;
use crate::repo::crypto::Recipients;
use crate::repo::manifest::{
    BaseBackup, BaseKind, BaseMethod, DumpFormat, DumpOptions, FingerprintMode,
    MANIFEST_VERSION_FILES, Manifest, format_lsn, parse_lsn,
};
use crate::repo::{AnyStore, BackupStore};
use chrono::{DateTime, Utc};
use sha2::Digest;
use sqlx::{Connection, Row};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the step knows when it comes here.
pub(super) struct Start<'a> {
    pub p: &'a BaseBackupParams,
    pub ctx: &'a StepContext,
    pub store: AnyStore,
    pub recipients: Option<Recipients>,
    pub server: Server,
    pub cluster: Cluster,
    pub data_directory: &'a Path,
    pub wal_wait: Duration,
}

pub(super) async fn run(start: Start<'_>) -> Result<Outputs, StepError> {
    let Start {
        p,
        ctx,
        store,
        recipients,
        mut server,
        cluster,
        data_directory,
        wal_wait,
    } = start;
    let clock = Instant::now();
    let created_at = Utc::now();
    same_cluster(data_directory, &cluster, &p.target)?;
    let backup_id = format!(
        "{}-cluster-{:04x}",
        created_at.format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    );
    let parent = match p.kind {
        BaseKind::Full => None,
        kind => match parent_for(ctx, &store, &cluster, kind).await? {
            Ok(parent) => Some(parent),
            Err(why) => {
                say(
                    ctx,
                    format!(
                        "taking a full base backup instead of {}: {why}",
                        kind.as_str()
                    ),
                );
                None
            }
        },
    };
    let (parent_manifest, parent) = parent.unzip();
    let jobs = p.jobs.max(1);
    say(
        ctx,
        format!(
            "copying {} file by file with {jobs} job(s){}",
            data_directory.display(),
            parent_manifest
                .as_ref()
                .map(|m| format!(", {} against {}", p.kind.as_str(), m.backup_id))
                .unwrap_or_default()
        ),
    );
    let result = copy_between_start_and_stop(
        p,
        ctx,
        &store,
        &mut server,
        &backup_id,
        recipients.clone(),
        parent,
        data_directory,
    )
    .await;
    let published = match result {
        Ok(copied) => {
            publish(
                p,
                ctx,
                &store,
                &mut server,
                &cluster,
                &backup_id,
                &recipients,
                copied,
                parent_manifest.as_ref(),
                created_at,
                clock,
                wal_wait,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let _ = server.conn.close().await;
    match published {
        Ok(outputs) => Ok(outputs),
        Err(e) => {
            if let Err(d) = store.discard(&backup_id).await {
                tracing::warn!("cleaning up unfinished base backup {backup_id}: {d}");
            }
            Err(e)
        }
    }
}

fn say(ctx: &StepContext, line: String) {
    ctx.events.output(&ctx.step_id, Stream::Stdout, line);
}

/// The directory must be the target's own: a copy of another cluster's files, labelled
/// with this one's WAL positions, would restore into nonsense.
fn same_cluster(dir: &Path, cluster: &Cluster, target: &str) -> Result<(), StepError> {
    let found = crate::pg::files::restore::system_identifier(dir);
    match found {
        Some(id) if id.to_string() == cluster.system_identifier => Ok(()),
        Some(id) => Err(StepError::permanent(format!(
            "the data directory {} holds cluster {id}, but target `{target}` is cluster {}: `data_directory` names another cluster's directory",
            dir.display(),
            cluster.system_identifier
        ))),
        None => Err(StepError::permanent(format!(
            "{} holds no readable global/pg_control: `data_directory` of target `{target}` must be the cluster's data directory, readable by the user opsrunner runs as",
            dir.display()
        ))),
    }
}

/// Starts the backup on the server, copies, stops it; the stop's label and end position.
#[allow(clippy::too_many_arguments)]
async fn copy_between_start_and_stop(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    server: &mut Server,
    backup_id: &str,
    recipients: Option<Recipients>,
    parent: Option<Parent>,
    dir: &Path,
) -> Result<(Copied, Stopped, DateTime<Utc>), StepError> {
    let start_time = server_clock(server).await?;
    let fast = p.checkpoint == Checkpoint::Fast;
    let label = format!("opsrunner {backup_id}");
    let start_sql = if server.major >= 15 {
        "select pg_backup_start($1, $2)::text"
    } else {
        "select pg_start_backup($1, $2, false)::text"
    };
    let checksums: String = sqlx::query_scalar("select current_setting('data_checksums')")
        .fetch_one(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "cannot read data_checksums"))?;
    let started = sqlx::query_scalar::<_, String>(start_sql)
        .bind(&label)
        .bind(fast)
        .fetch_one(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "the server refused to start a backup"))?;
    let start_lsn = parse_lsn(&started).ok_or_else(|| {
        StepError::permanent(format!(
            "the server started the backup at `{started}`, not a WAL position"
        ))
    })?;
    let root = dir.to_path_buf();
    let items = tokio::task::spawn_blocking(move || crate::pg::files::walk::walk(&root))
        .await
        .map_err(|e| StepError::transient(format!("listing the data directory: {e}")))?
        .map_err(|e| crate::exec::io_error("listing the data directory", &e))?;
    let read = Counter::new();
    let total: u64 = items
        .iter()
        .map(|i| match i.found {
            crate::pg::files::walk::Found::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "copy", read.clone(), Some(total));
    let settings = Settings {
        store: store.clone(),
        backup_id: backup_id.to_string(),
        compression: p.compression,
        recipients: recipients.clone(),
        jobs: p.jobs.max(1) as usize,
        parent,
        read,
        checksums: (checksums == "on").then_some(start_lsn),
    };
    let copied = tokio::select! {
        r = copy::copy(settings, items) => r.map_err(|e| crate::exec::io_error("copying the data directory", &e))?,
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    };
    let stop_sql = if server.major >= 15 {
        "select lsn::text, labelfile from pg_backup_stop(false)"
    } else {
        "select lsn::text, labelfile from pg_stop_backup(false, false)"
    };
    let row = sqlx::query(stop_sql)
        .fetch_one(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "the server could not end the backup"))?;
    let stopped = Stopped {
        lsn: row.get(0),
        label: row.get(1),
    };
    Ok((copied, stopped, start_time))
}

/// What `pg_backup_stop` says.
struct Stopped {
    lsn: String,
    label: String,
}

/// Stores the label and the list of files, waits for the WAL, writes the manifest.
#[allow(clippy::too_many_arguments)]
async fn publish(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    server: &mut Server,
    cluster: &Cluster,
    backup_id: &str,
    recipients: &Option<Recipients>,
    (copied, stopped, start_time): (Copied, Stopped, DateTime<Utc>),
    parent: Option<&Manifest>,
    created_at: DateTime<Utc>,
    clock: Instant,
    wal_wait: Duration,
) -> Result<Outputs, StepError> {
    let unusable = |why: String| {
        StepError::permanent(format!(
            "the server's backup label is not one this opsrunner understands: {why}"
        ))
    };
    let label = crate::pg::basebackup::parse_label(&stopped.label).map_err(unusable)?;
    let start = parse_lsn(&label.start_lsn).expect("the label was checked");
    let stop = parse_lsn(&stopped.lsn)
        .ok_or_else(|| unusable(format!("end position `{}`", stopped.lsn)))?;
    let Copied {
        mut entries,
        mut bundles,
        tally,
    } = copied;
    // The label goes with the files: recovery starts from it.
    let mut bundle = BundleWriter::create(
        store,
        backup_id,
        "files-label.bundle",
        p.compression,
        recipients.clone(),
    )
    .await
    .map_err(|e| crate::exec::io_error("writing the backup label", &e))?;
    let bytes = stopped.label.as_bytes();
    let mut segment = bundle
        .begin()
        .await
        .map_err(|e| crate::exec::io_error("writing the backup label", &e))?;
    segment
        .push(bytes)
        .await
        .map_err(|e| crate::exec::io_error("writing the backup label", &e))?;
    let stored = segment
        .end()
        .await
        .map_err(|e| crate::exec::io_error("writing the backup label", &e))?;
    bundles.push(
        bundle
            .finish()
            .await
            .map_err(|e| crate::exec::io_error("writing the backup label", &e))?,
    );
    entries.push(Entry {
        path: "backup_label".into(),
        kind: Kind::File(File {
            size: bytes.len() as u64,
            mtime_ns: Utc::now().timestamp_nanos_opt().unwrap_or(0),
            sha256: crate::digest::hex(&sha2::Sha256::digest(bytes)),
            data: Data::Whole(Stored::new(backup_id, "files-label.bundle", stored)),
        }),
    });
    super::base_parts::wait_for_wal(
        p,
        ctx,
        store,
        cluster,
        label.timeline,
        start,
        stop,
        wal_wait,
    )
    .await?;
    let stop_time = server_clock(server).await?;
    let contents = Contents {
        version: CONTENTS_VERSION,
        entries,
    };
    let json = serde_json::to_vec(&contents).expect("serializable");
    let contents_file = super::base_parts::store_small(
        p,
        store,
        backup_id,
        "contents.json",
        json,
        recipients.as_ref(),
    )
    .await?;
    let name = contents_file.name.clone();
    let (kind, parent_id) = match parent {
        Some(m) => (p.kind, Some(m.backup_id.clone())),
        None => (BaseKind::Full, None),
    };
    let base = BaseBackup {
        system_identifier: cluster.system_identifier.clone(),
        timeline: label.timeline,
        start_lsn: format_lsn(start),
        stop_lsn: format_lsn(stop),
        start_time,
        stop_time,
        wal_segment_size: cluster.wal_segment_size,
        server_manifest: name.clone(),
        kind,
        parent: parent_id.clone(),
        backup_manifest: None,
        method: BaseMethod::Files,
        contents: Some(name),
    };
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION_FILES,
        backup_id: backup_id.to_string(),
        created_at,
        finished_at: Utc::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        database: format!("cluster {}", cluster.system_identifier),
        server_version: server.version.clone(),
        pg_dump_version: format!("opsrunner {} (file-level copy)", env!("CARGO_PKG_VERSION")),
        format: DumpFormat::Base,
        compression: p.compression,
        options: DumpOptions::default(),
        files: bundles
            .into_iter()
            .chain(std::iter::once(contents_file))
            .collect(),
        fingerprint: FingerprintMode::None,
        fingerprints: Default::default(),
        opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
        encryption: None,
        sealed: None,
        base: Some(base.clone()),
        rows: None,
    };
    super::backup::seal_and_publish(store, &mut manifest, recipients.as_ref()).await?;
    if !tally.damaged.is_empty() {
        // As pg_basebackup does: the copy is kept (it is what the server holds), and the
        // step fails, for someone to look at the server's disk.
        let shown: Vec<String> = tally
            .damaged
            .iter()
            .take(10)
            .map(|(file, block)| format!("{file} block {block}"))
            .collect();
        return Err(StepError::permanent(format!(
            "base backup {backup_id} was published, but {} page(s) of the cluster failed their checksum when read twice: {}{} — the server's files are damaged there (see the server log; pg_checksums and amcheck tell more)",
            tally.damaged.len(),
            shown.join(", "),
            if tally.damaged.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    say(
        ctx,
        format!(
            "{} file-level base backup {backup_id}{}: WAL {} to {} on timeline {}; {} files stored whole, {} unchanged and not read, {} read and unchanged, {} with {} changed block(s) stored; {} bytes read, {} bytes stored",
            kind.as_str(),
            parent_id
                .as_ref()
                .map(|p| format!(" (relative to {p})"))
                .unwrap_or_default(),
            base.start_lsn,
            base.stop_lsn,
            base.timeline,
            tally.stored,
            tally.unread,
            tally.same,
            tally.mapped,
            tally.blocks,
            tally.bytes_read,
            manifest.total_bytes()
        ),
    );
    let sha256 = manifest
        .files
        .last()
        .map(|f| f.sha256.clone())
        .unwrap_or_default();
    Ok(super::base_parts::outputs(store, &manifest, &base, &sha256))
}

/// The parent a file-level incremental or differential is taken against, or why there is
/// none (then a full is taken).
async fn parent_for(
    ctx: &StepContext,
    store: &AnyStore,
    cluster: &Cluster,
    kind: BaseKind,
) -> Result<Result<(Manifest, Parent), String>, StepError> {
    let manifest = match super::base_parts::find_parent(
        ctx,
        store,
        cluster,
        kind,
        BaseMethod::Files,
        "list of files",
    )
    .await?
    {
        Ok(manifest) => manifest,
        Err(why) => return Ok(Err(why)),
    };
    let chain = crate::repo::listing::base_chain(store, &manifest)
        .await
        .map_err(|e| StepError::permanent(format!("the parent {}: {e}", manifest.backup_id)))?;
    let contents = crate::pg::files::restore::contents(store, &manifest, ctx.identities.as_ref())
        .await
        .map_err(|e| {
            crate::exec::io_error(&format!("reading the files of {}", manifest.backup_id), &e)
        })?;
    let decodings = crate::pg::files::restore::decodings(&chain, ctx.identities.as_ref())
        .map_err(|e| crate::exec::io_error(&format!("the parent {}", manifest.backup_id), &e))?;
    let started_ns = manifest
        .base
        .as_ref()
        .and_then(|b| b.start_time.timestamp_nanos_opt())
        .unwrap_or(0);
    let parent = Parent {
        files: crate::pg::files::restore::files_by_path(contents.entries),
        decodings,
        started_ns,
    };
    Ok(Ok((manifest, parent)))
}
