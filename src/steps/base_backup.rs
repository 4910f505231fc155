//! `base_backup`: a copy of a whole cluster's files by `pg_basebackup`, for point-in-time
//! recovery, through the same pipeline as logical backups (compression, age, SHA-256,
//! manifest written last).
//!
//! The copy carries no WAL (`-X none`): the WAL archive under `.wal/` of the same
//! repository (`opsrunner wal push` as the server's `archive_command`) holds it, and a base
//! backup is of use only with the WAL from its start to its end. So the step refuses to
//! start on a server that does not archive, and publishes the backup only once the archive
//! holds every segment from its start to its end — a backup that could never be restored
//! is not published.

pub use super::base_parts::{BaseBackupParams, Checkpoint};
use super::base_parts::{
    Cluster, find_parent, inspect, method, newest_parent, server_clock, wait_for_wal,
};
use super::probe::{Findings, Probe};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::progress::{Counter, Counting, Meter};
use crate::exec::{StepContext, StepError};
use crate::pg::basebackup::{self, Seen};
use crate::pg::process::PgProcess;
use crate::pg::server::{Server, classify, connect, tool};
use crate::pg::tools::Want;
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::manifest::{
    BaseBackup, BaseKind, BaseMethod, DumpFormat, DumpOptions, FingerprintMode,
    MANIFEST_VERSION_PLAIN, Manifest, format_lsn, parse_lsn,
};
use crate::repo::{AnyStore, BackupStore, pipeline};
use chrono::Utc;
use sqlx::Connection;
use std::future::Future;
use std::time::{Duration, Instant};

pub struct BaseBackupStep;

impl StepType for BaseBackupStep {
    const NAME: &'static str = "base_backup";
    type Params = BaseBackupParams;
    const OUTPUTS: &'static [&'static str] = &[
        "backup_id",
        "kind",
        "method",
        "parent",
        "uri",
        "bytes",
        "sha256",
        "start_lsn",
        "stop_lsn",
        "timeline",
    ];

    fn target(p: &BaseBackupParams) -> Option<&str> {
        Some(&p.target)
    }

    fn repository(p: &BaseBackupParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn writes_repository(_: &BaseBackupParams) -> bool {
        true
    }

    fn check(p: &BaseBackupParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = crate::plan::duration::parse(&p.wal_wait) {
            problems.push(Problem::new(&["wal_wait"], format!("`wal_wait`: {e}")));
        }
        if !(1..=64).contains(&p.jobs) {
            problems.push(Problem::new(
                &["jobs"],
                format!(
                    "`jobs` is {}; between 1 and 64 files are copied at once",
                    p.jobs
                ),
            ));
        }
        problems
    }

    fn describe(p: &BaseBackupParams) -> String {
        format!(
            "{} base backup of the whole cluster of target `{}` (pg_basebackup, tar, {} checkpoint, no WAL in the copy) to repository `{}` ({} compression); published only when the repository's WAL archive holds the WAL from its start to its end",
            match p.kind {
                BaseKind::Full => "full",
                BaseKind::Differential =>
                    "differential (what changed since the newest full; a full when there is none, or the server is older than 17 or has summarize_wal off)",
                BaseKind::Incremental =>
                    "incremental (what changed since the newest base backup; a full when there is none, or the server is older than 17 or has summarize_wal off)",
            },
            p.target,
            match p.checkpoint {
                Checkpoint::Fast => "fast",
                Checkpoint::Spread => "spread",
            },
            p.repository,
            p.compression
        )
    }

    fn reads(_: &BaseBackupParams) -> Option<&'static str> {
        Some("the repository's settings and recipients")
    }

    async fn probe<'a>(p: &'a BaseBackupParams, scope: Probe<'a>) -> Findings {
        let mut lines = scope
            .repo
            .map_or_else(Vec::new, |r| super::backup::destination(r, scope.base_dir));
        match scope.data_directory {
            Some(dir) => lines.push(format!(
                "file-level copy of {} ({}), {} job(s), between pg_backup_start and pg_backup_stop; unchanged files and blocks are not stored again",
                dir.display(),
                match crate::pg::files::restore::system_identifier(dir) {
                    Some(id) => format!("cluster {id}"),
                    None => "no readable global/pg_control there now".into(),
                },
                p.jobs
            )),
            None => lines.push(
                "pg_basebackup (the target names no data_directory)".into(),
            ),
        }
        if p.kind != BaseKind::Full {
            lines.push(parent_preview(p, &scope).await);
        }
        if scope.data_directory.is_none() {
            lines.extend(
                super::probe::programs(&scope, &["pg_basebackup"], super::probe::Uses::Client)
                    .await,
            );
        }
        lines.into()
    }

    fn run(
        p: &BaseBackupParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// What a differential or incremental would be taken against, as the repository holds it
/// now (the server's side — 17+, `summarize_wal` — is checked when the step runs).
async fn parent_preview(p: &BaseBackupParams, scope: &Probe<'_>) -> String {
    let store = match scope.open(&p.repository, "the parent unknown").await {
        Ok(store) => store,
        Err(unread) => {
            return format!(
                "{}: cannot tell the parent: {}",
                p.kind.as_str(),
                unread.error
            );
        }
    };
    match crate::repo::listing::base_backups(&store).await {
        Ok(backups) => match newest_parent(backups, p.kind, None, method(scope.data_directory)) {
            Some(parent) => format!(
                "{} against {} (taken {}){}",
                p.kind.as_str(),
                parent.backup_id,
                parent.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                if scope.data_directory.is_some() {
                    ""
                } else {
                    ", if the server is PostgreSQL 17+ with summarize_wal = on; otherwise a full backup"
                }
            ),
            None => format!(
                "{}: the repository holds no base backup to build on yet: a full backup will be taken",
                p.kind.as_str()
            ),
        },
        Err(e) => format!("{}: cannot tell the parent: {e}", p.kind.as_str()),
    }
}

pub async fn run(p: &BaseBackupParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let recipients = ctx.recipients(&p.repository)?;
    let wal_wait = crate::plan::duration::parse(&p.wal_wait)
        .map_err(|e| StepError::permanent(format!("wal_wait: {e}")))?;
    let clock = Instant::now();
    let created_at = Utc::now();
    let what = format!("target `{}`", p.target);
    let mut server = connect(ctx.target_url(&p.target)?, None, &what).await?;
    let cluster = inspect(&mut server, &p.target).await?;
    if cluster.standby {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!(
                "target `{}` is a standby: the copy is taken from it, and the WAL it needs comes from the primary's archive (published once repository `{}` holds it)",
                p.target, p.repository
            ),
        );
    }
    if let Some(dir) = &ctx.data_directory {
        return super::base_files::run(super::base_files::Start {
            p,
            ctx,
            store,
            recipients,
            server,
            cluster,
            data_directory: dir,
            wal_wait,
        })
        .await;
    }
    let pg_basebackup = tool(ctx, "pg_basebackup", Want::Client(server.major))?;
    crate::pg::server::say_tool(ctx, &pg_basebackup, &server);
    let version = pg_basebackup.version.clone();
    let pg_basebackup = pg_basebackup.path;
    let backup_id = format!(
        "{}-cluster-{:04x}",
        created_at.format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    );
    let parent = match p.kind {
        BaseKind::Full => None,
        kind => {
            let major = server
                .major
                .min(crate::pg::tools::parse_major(&version).unwrap_or(0));
            match parent_for(ctx, &store, &mut server, &cluster, kind, major).await? {
                Ok(parent) => Some(parent),
                Err(why) => {
                    ctx.events.output(
                        &ctx.step_id,
                        Stream::Stdout,
                        format!(
                            "taking a full base backup instead of {}: {why}",
                            kind.as_str()
                        ),
                    );
                    None
                }
            }
        }
    };
    let start_time = server_clock(&mut server).await?;
    let copied = copy(
        p,
        ctx,
        &store,
        &server,
        &pg_basebackup,
        &backup_id,
        &recipients,
        parent.as_ref().map(|p| p.manifest_file.path()),
    )
    .await;
    let result = match copied {
        Ok((file, mut seen)) => {
            let whole = seen.manifest.take();
            match finish(p, ctx, &store, &mut server, &cluster, file, seen, wal_wait).await {
                Ok((file, base)) => {
                    store_backup_manifest(p, ctx, &store, &backup_id, whole, &recipients)
                        .await
                        .map(|entry| (file, base, entry))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let (file, base, manifest_file) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Err(d) = store.discard(&backup_id).await {
                tracing::warn!("cleaning up unfinished base backup {backup_id}: {d}");
            }
            return Err(e);
        }
    };
    let _ = server.conn.close().await;
    let (kind, parent_id) = match &parent {
        Some(parent) => (p.kind, Some(parent.manifest.backup_id.clone())),
        None => (BaseKind::Full, None),
    };
    let base = BaseBackup {
        start_time,
        kind,
        parent: parent_id.clone(),
        backup_manifest: manifest_file.as_ref().map(|f| f.name.clone()),
        ..base
    };
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION_PLAIN,
        backup_id: backup_id.clone(),
        created_at,
        finished_at: Utc::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        database: format!("cluster {}", cluster.system_identifier),
        server_version: server.version.clone(),
        pg_dump_version: version,
        format: DumpFormat::Base,
        compression: p.compression,
        options: DumpOptions::default(),
        files: std::iter::once(file).chain(manifest_file).collect(),
        fingerprint: FingerprintMode::None,
        fingerprints: Default::default(),
        opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
        encryption: None,
        sealed: None,
        base: Some(base.clone()),
        rows: None,
    };
    super::backup::seal_and_publish(&store, &mut manifest, recipients.as_ref()).await?;
    ctx.events.output(
        &ctx.step_id,
        Stream::Stdout,
        format!(
            "{} base backup {backup_id}{}: WAL {} to {} on timeline {}, {} bytes stored",
            kind.as_str(),
            parent_id
                .as_ref()
                .map(|p| format!(" (relative to {p})"))
                .unwrap_or_default(),
            base.start_lsn,
            base.stop_lsn,
            base.timeline,
            manifest.total_bytes()
        ),
    );
    Ok(super::base_parts::outputs(
        &store,
        &manifest,
        &base,
        &manifest.files[0].sha256,
    ))
}

/// Streams `pg_basebackup`'s tar into the repository, watching it for the label and the
/// server's manifest; with `incremental`, only what changed since that parent manifest.
#[allow(clippy::too_many_arguments)]
async fn copy(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    server: &Server,
    pg_basebackup: &std::path::Path,
    backup_id: &str,
    recipients: &Option<crate::repo::crypto::Recipients>,
    incremental: Option<&std::path::Path>,
) -> Result<(crate::repo::manifest::FileEntry, Seen), StepError> {
    let mut args = vec![
        "--pgdata=-".to_string(),
        "--format=tar".into(),
        "--wal-method=none".into(),
        format!(
            "--checkpoint={}",
            match p.checkpoint {
                Checkpoint::Fast => "fast",
                Checkpoint::Spread => "spread",
            }
        ),
        "--manifest-checksums=SHA256".into(),
        format!("--label=opsrunner {backup_id}"),
        format!("--dbname={}", server.info.public_url()),
    ];
    if let Some(parent) = incremental {
        args.push(format!("--incremental={}", parent.display()));
    }
    let info = server.info.clone();
    let mut process =
        PgProcess::spawn(pg_basebackup, &args, ctx, |c| info.apply_to(c), false, true)?;
    let ext = super::backup::stored_extension(p.compression, recipients.is_some());
    let name = format!("base.tar{ext}");
    let copied = Counter::new();
    let (watched_stream, watched) = basebackup::watch(process.stdout());
    let stdout = Counting::new(watched_stream, copied.clone());
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "copy", copied, None);
    let threads = super::backup::compression_threads();
    let stored = tokio::select! {
        r = pipeline::store(store, backup_id, &name, stdout, p.compression, threads, recipients.as_ref(), None) => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    let finished = process.finish(ctx).await;
    let entry = match (stored, finished) {
        (Err(e), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(crate::exec::io_error(&format!("writing {name}"), &e));
        }
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(crate::exec::io_error(&format!("writing {name}"), &e)),
        (Ok(entry), Ok(())) => entry,
    };
    Ok((entry, watched.take()))
}

/// The parent an incremental or differential backup is taken against, with its
/// `backup_manifest` in a local file for `pg_basebackup --incremental`.
struct Parent {
    manifest: Manifest,
    manifest_file: tempfile::NamedTempFile,
}

/// The parent for a backup of `kind`, or why there is none (then a full is taken).
async fn parent_for(
    ctx: &StepContext,
    store: &AnyStore,
    server: &mut Server,
    cluster: &Cluster,
    kind: BaseKind,
    major: u32,
) -> Result<Result<Parent, String>, StepError> {
    if major < 17 {
        return Ok(Err(format!(
            "incremental base backups need PostgreSQL 17 or later on the server and pg_basebackup (here {major})"
        )));
    }
    let summarize: String = sqlx::query_scalar("select current_setting('summarize_wal')")
        .fetch_one(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "cannot read summarize_wal"))?;
    if summarize != "on" {
        return Ok(Err(
            "the server does not summarize its WAL (set summarize_wal = on, then take a full backup to start from)".into(),
        ));
    }
    let manifest = match find_parent(
        ctx,
        store,
        cluster,
        kind,
        BaseMethod::Tar,
        "backup_manifest",
    )
    .await?
    {
        Ok(manifest) => manifest,
        Err(why) => return Ok(Err(why)),
    };
    let name = manifest
        .base
        .as_ref()
        .and_then(|b| b.backup_manifest.clone())
        .expect("chosen for having one");
    let pipeline::Loaded {
        mut reader,
        verdict,
        ..
    } = pipeline::load(store, &manifest, &name, ctx.identities.as_ref())
        .await
        .map_err(|e| {
            crate::exec::io_error(&format!("opening {name} of {}", manifest.backup_id), &e)
        })?;
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(&mut reader, basebackup::MAX_MANIFEST as u64 + 1),
        &mut bytes,
    )
    .await
    .map_err(|e| crate::exec::io_error(&format!("reading {name} of {}", manifest.backup_id), &e))?;
    drop(reader);
    verdict.wait().await.map_err(|e| {
        StepError::permanent(format!(
            "the parent {}'s {name} does not match its manifest: {e}",
            manifest.backup_id
        ))
    })?;
    let mut manifest_file = tempfile::NamedTempFile::new()
        .map_err(|e| StepError::transient(format!("cannot write the parent's manifest: {e}")))?;
    std::io::Write::write_all(&mut manifest_file, &bytes)
        .map_err(|e| StepError::transient(format!("cannot write the parent's manifest: {e}")))?;
    Ok(Ok(Parent {
        manifest,
        manifest_file,
    }))
}

/// Stores the server's `backup_manifest` beside the copy, for the next incremental. One
/// too large to keep (a cluster of some hundred thousand files) is left out, and said:
/// the backup is whole without it, only no incremental can be taken against it.
async fn store_backup_manifest(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    backup_id: &str,
    whole: Option<Vec<u8>>,
    recipients: &Option<crate::repo::crypto::Recipients>,
) -> Result<Option<crate::repo::manifest::FileEntry>, StepError> {
    let Some(bytes) = whole else {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!(
                "the server's backup_manifest is larger than {} MiB: not kept beside the copy (it stays inside it), so no incremental backup can be taken against this one",
                basebackup::MAX_MANIFEST >> 20
            ),
        );
        return Ok(None);
    };
    super::base_parts::store_small(
        p,
        store,
        backup_id,
        "backup_manifest",
        bytes,
        recipients.as_ref(),
    )
    .await
    .map(Some)
}

/// Reads where the copy starts and ends from what the stream showed, and waits for the
/// archive to hold the WAL in between.
#[allow(clippy::too_many_arguments)]
async fn finish(
    p: &BaseBackupParams,
    ctx: &StepContext,
    store: &AnyStore,
    server: &mut Server,
    cluster: &Cluster,
    file: crate::repo::manifest::FileEntry,
    seen: Seen,
    wal_wait: Duration,
) -> Result<(crate::repo::manifest::FileEntry, BaseBackup), StepError> {
    let unusable = |why: String| {
        StepError::permanent(format!(
            "pg_basebackup's output is not a base backup this opsrunner can use: {why}"
        ))
    };
    if let Some(broken) = seen.broken {
        return Err(unusable(broken));
    }
    let label = seen
        .backup_label
        .ok_or_else(|| unusable("it holds no backup_label".into()))?;
    let label = basebackup::parse_label(&String::from_utf8_lossy(&label)).map_err(unusable)?;
    let tail = seen.manifest_tail.ok_or_else(|| {
        unusable("it holds no backup_manifest (PostgreSQL 13 or later writes one)".into())
    })?;
    let ranges = basebackup::parse_wal_ranges(&String::from_utf8_lossy(&tail)).map_err(unusable)?;
    let stop = ranges
        .iter()
        .filter_map(|r| parse_lsn(&r.end_lsn))
        .max()
        .expect("ranges were checked");
    let start = parse_lsn(&label.start_lsn).expect("the label was checked");
    let stop_time = server_clock(server).await?;
    let segment = cluster.wal_segment_size;
    wait_for_wal(
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
    let base = BaseBackup {
        system_identifier: cluster.system_identifier.clone(),
        timeline: label.timeline,
        start_lsn: format_lsn(start),
        stop_lsn: format_lsn(stop),
        start_time: stop_time,
        stop_time,
        wal_segment_size: segment,
        server_manifest: file.name.clone(),
        kind: BaseKind::Full,
        parent: None,
        backup_manifest: None,
        method: crate::repo::manifest::BaseMethod::Tar,
        contents: None,
    };
    Ok((file, base))
}
