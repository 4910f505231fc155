//! `backup`: pg_dump → compression → SHA-256 → repository, with table fingerprints taken in
//! the dump's own snapshot, and a manifest written last. A failed backup leaves nothing
//! that looks like a backup.

use super::probe::{Findings, Probe};
use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::progress::{Counter, Counting, Meter, Tap};
use crate::exec::{StepContext, StepError};
use crate::pg::custom_archive::{NotCounted, RowCounter};
use crate::pg::fingerprint;
use crate::pg::process::PgProcess;
use crate::pg::server::{Server, classify, connect, tool};
use crate::pg::tools::Want;
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::compression::Compression;
use crate::repo::manifest::{
    DumpFormat, DumpOptions, FileEntry, FingerprintMode, MANIFEST_VERSION_INDEXED,
    MANIFEST_VERSION_PLAIN, Manifest,
};
use crate::repo::{BackupStore, pipeline};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::future::Future;
use std::path::Path;
use std::time::Instant;

/// `backup`: pg_dump of a target's database into a repository, compressed and hashed by
/// opsrunner as it streams, published by writing its manifest last.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// Database to dump (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub format: DumpFormat,
    #[serde(default)]
    pub compression: Compression,
    /// Parallel pg_dump workers (directory format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    #[serde(default)]
    pub schema_only: bool,
    #[serde(default)]
    pub data_only: bool,
    /// Only these tables (pg_dump `-t` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Not these tables (pg_dump `-T` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    /// Table fingerprints recorded in the manifest, from the dump's own snapshot.
    #[serde(default)]
    pub fingerprint: FingerprintMode,
}

pub struct Backup;

impl StepType for Backup {
    const NAME: &'static str = "backup";
    type Params = BackupParams;
    const OUTPUTS: &'static [&'static str] = &["backup_id", "uri", "bytes", "sha256"];

    fn target(p: &BackupParams) -> Option<&str> {
        Some(&p.target)
    }

    fn repository(p: &BackupParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn writes_repository(_: &BackupParams) -> bool {
        true
    }

    fn jobs(p: &BackupParams) -> Option<u32> {
        p.jobs
    }

    fn check(p: &BackupParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if matches!(p.format, DumpFormat::Base | DumpFormat::Rows) {
            problems.push(Problem::new(
                &["format"],
                "`format: base` is what a `base_backup` step writes, `format: rows` an `export` step; a `backup` step dumps `custom`, `directory` or `plain`",
            ));
        }
        if p.jobs.is_some() && p.format != DumpFormat::Directory {
            problems.push(Problem::new(
                &["jobs"],
                "`jobs` needs `format: directory` (pg_dump dumps in parallel only into a directory)",
            ));
        }
        if p.schema_only && p.data_only {
            problems.push(Problem::new(
                &["data_only"],
                "`schema_only` and `data_only` exclude each other",
            ));
        }
        problems
    }

    fn describe(p: &BackupParams) -> String {
        describe(p)
    }

    fn reads(_: &BackupParams) -> Option<&'static str> {
        Some("the repository's settings and recipients")
    }

    /// Where the backup goes and how it is protected, with the recipients read now: a
    /// reviewer sees which keys will be able to read the backups.
    async fn probe<'a>(_: &'a BackupParams, scope: Probe<'a>) -> Findings {
        let mut lines = scope
            .repo
            .map_or_else(Vec::new, |r| destination(r, scope.base_dir));
        lines
            .extend(super::probe::programs(&scope, &["pg_dump"], super::probe::Uses::Client).await);
        lines.into()
    }

    fn run(
        p: &BackupParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

pub fn describe(p: &BackupParams) -> String {
    let what = p.database.as_deref().map_or_else(
        || format!("the database of target `{}`", p.target),
        |d| format!("database `{d}` on target `{}`", p.target),
    );
    let mut s = format!(
        "back up {what} to repository `{}` ({} format, {} compression, fingerprints: {})",
        p.repository,
        serde_json::to_value(p.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        p.compression,
        serde_json::to_value(p.fingerprint)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    );
    if p.schema_only {
        s.push_str(", schema only");
    }
    if p.data_only {
        s.push_str(", data only");
    }
    if !p.tables.is_empty() {
        s.push_str(&format!(", tables {}", p.tables.join(" ")));
    }
    if !p.exclude_tables.is_empty() {
        s.push_str(&format!(", excluding {}", p.exclude_tables.join(" ")));
    }
    s
}

pub(crate) fn id_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

pub async fn run(p: &BackupParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    // Before anything else: a bad recipients file should not cost a dump.
    let recipients = ctx.recipients(&p.repository)?;
    let created_at = Utc::now();
    let clock = Instant::now();
    let mut server = connect(
        ctx.target_url(&p.target)?,
        p.database.as_deref(),
        &format!("target `{}`", p.target),
    )
    .await?;
    let pg_dump = tool(ctx, "pg_dump", Want::Client(server.major))?;
    crate::pg::server::say_tool(ctx, &pg_dump, &server);
    let pg_dump_version = pg_dump.version.clone();
    let pg_dump = pg_dump.path;
    let backup_id = format!(
        "{}-{}-{:04x}",
        created_at.format("%Y%m%dT%H%M%SZ"),
        id_safe(&server.database),
        fastrand::u16(..)
    );

    let result = dump(
        p,
        ctx,
        &store,
        &mut server,
        &pg_dump,
        &backup_id,
        recipients.as_ref(),
    )
    .await;
    let (files, fingerprints) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Err(d) = store.discard(&backup_id).await {
                tracing::warn!("cleaning up unfinished backup {backup_id}: {d}");
            }
            return Err(e);
        }
    };
    let _ = server.conn.close().await;
    let mut manifest = Manifest {
        manifest_version: if files.iter().any(|f| f.index.is_some()) {
            MANIFEST_VERSION_INDEXED
        } else {
            MANIFEST_VERSION_PLAIN
        },
        backup_id: backup_id.clone(),
        created_at,
        finished_at: Utc::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        database: server.database.clone(),
        server_version: server.version.clone(),
        pg_dump_version,
        format: p.format,
        compression: p.compression,
        options: DumpOptions {
            schema_only: p.schema_only,
            data_only: p.data_only,
            tables: p.tables.clone(),
            exclude_tables: p.exclude_tables.clone(),
        },
        files,
        fingerprint: effective_fingerprint(p),
        fingerprints,
        opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
        encryption: None,
        sealed: None,
        base: None,
        rows: None,
    };
    seal_and_publish(&store, &mut manifest, recipients.as_ref()).await?;
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), backup_id.clone());
    outputs.insert("uri".into(), store.uri(&backup_id));
    outputs.insert("bytes".into(), manifest.total_bytes().to_string());
    // One data file: its hash. Directory format: the first file is the table of contents.
    outputs.insert(
        "sha256".into(),
        manifest
            .files
            .first()
            .map(|f| f.sha256.clone())
            .unwrap_or_default(),
    );
    Ok(outputs)
}

/// Publishes a backup by writing its manifest, sealed first for an encrypted repository;
/// on failure the unfinished backup is discarded, so nothing half-written is listed.
pub async fn seal_and_publish(
    store: &crate::repo::AnyStore,
    manifest: &mut Manifest,
    recipients: Option<&crate::repo::crypto::Recipients>,
) -> Result<(), StepError> {
    let failed = if let Some(recipients) = recipients
        && let Err(e) = manifest.seal(recipients)
    {
        StepError::permanent(format!("cannot encrypt the manifest: {e}"))
    } else if let Err(e) = store.publish(manifest).await {
        StepError::transient(format!("cannot publish the manifest: {e}"))
    } else {
        return Ok(());
    };
    let _ = store.discard(&manifest.backup_id).await;
    Err(failed)
}

/// Fingerprints describe the rows the dump holds: none for a schema-only dump, and none
/// when table filters are used (pg_dump's pattern rules are not reproduced here).
fn effective_fingerprint(p: &BackupParams) -> FingerprintMode {
    if p.schema_only || !p.tables.is_empty() || !p.exclude_tables.is_empty() {
        FingerprintMode::None
    } else {
        p.fingerprint
    }
}

/// The suffix of a stored file: the compression's, then age's when encrypted.
pub fn stored_extension(compression: Compression, encrypted: bool) -> String {
    let age = if encrypted {
        crate::repo::crypto::EXTENSION
    } else {
        ""
    };
    format!("{}{age}", compression.extension())
}

pub fn compression_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// What the fingerprint side of a dump found: the tables to count from the stream, or
/// fingerprints taken in SQL.
enum Listed {
    Tables(Vec<(String, String, String)>),
    Taken(std::collections::BTreeMap<String, crate::repo::manifest::TableFingerprint>),
}

type DumpResult = (
    Vec<FileEntry>,
    std::collections::BTreeMap<String, crate::repo::manifest::TableFingerprint>,
);

async fn dump(
    p: &BackupParams,
    ctx: &StepContext,
    store: &crate::repo::AnyStore,
    server: &mut Server,
    pg_dump: &std::path::Path,
    backup_id: &str,
    recipients: Option<&crate::repo::crypto::Recipients>,
) -> Result<DumpResult, StepError> {
    // One snapshot for the dump and the fingerprints: they describe the same data.
    sqlx::raw_sql("begin isolation level repeatable read read only")
        .execute(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "cannot start the snapshot transaction"))?;
    let snapshot: String = sqlx::query_scalar("select pg_export_snapshot()")
        .fetch_one(&mut server.conn)
        .await
        .map_err(|e| classify(&e, "cannot export a snapshot"))?;

    let args = pg_dump_args(p, &snapshot, &server.info.public_url());
    let info = server.info.clone();
    let major = server.major;
    let configure = |c: &mut tokio::process::Command| {
        info.apply_to(c);
        // A backend waiting for a lock does not notice its client is gone; after a timeout
        // killed pg_dump it would linger until it got the lock. PG 14+ can check.
        if major >= 14 {
            crate::pg::conn::add_session_settings(c, "-c client_connection_check_interval=1000");
        }
    };
    let ext = stored_extension(p.compression, recipients.is_some());
    let threads = compression_threads();
    let fingerprint_mode = effective_fingerprint(p);
    let rows = std::sync::Arc::new(std::sync::Mutex::new(RowCounter::default()));

    let files_fut = async {
        match p.format {
            DumpFormat::Custom | DumpFormat::Plain => {
                let name = if p.format == DumpFormat::Custom {
                    format!("dump.pgdump{ext}")
                } else {
                    format!("dump.sql{ext}")
                };
                let mut process = PgProcess::spawn(pg_dump, &args, ctx, configure, false, true)?;
                let dumped = Counter::new();
                let stdout = Tap::new(
                    Counting::new(process.stdout(), dumped.clone()),
                    rows.clone(),
                );
                let _progress = Meter::start(&ctx.events, &ctx.step_id, "dump", dumped, None);
                // Where the tables' data starts is where a parallel restore wants to start
                // reading; an encrypted file cannot be entered in the middle.
                let mut blocks = rows.clone();
                let seams = (p.format == DumpFormat::Custom && recipients.is_none())
                    .then_some(&mut blocks as &mut dyn pipeline::Seams);
                let stored = tokio::select! {
                    r = pipeline::store(store, backup_id, &name, stdout, p.compression, threads, recipients, seams) => r,
                    _ = ctx.cancel.cancelled() => {
                        process.stop(ctx).await;
                        return Err(StepError::cancelled());
                    }
                };
                let finished = process.finish(ctx).await;
                // When the repository failed first, pg_dump's broken pipe is only the
                // consequence; the repository's error says what to fix. Otherwise pg_dump's
                // exit status decides.
                match (stored, finished) {
                    (Err(e), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        Err(crate::exec::io_error(&format!("writing {name}"), &e))
                    }
                    (_, Err(e)) => Err(e),
                    (Err(e), Ok(())) => Err(crate::exec::io_error(&format!("writing {name}"), &e)),
                    (Ok(entry), Ok(())) => Ok(vec![entry]),
                }
            }
            DumpFormat::Directory => {
                let spooled = Spooled {
                    pg_dump,
                    args: &args,
                    configure: &configure,
                    ext: &ext,
                    threads,
                    recipients,
                };
                dump_directory(p, ctx, store, backup_id, spooled).await
            }
            DumpFormat::Base => Err(StepError::permanent(
                "`format: base` is written by a `base_backup` step",
            )),
            DumpFormat::Rows => Err(StepError::permanent(
                "`format: rows` is written by an `export` step",
            )),
        }
    };
    let conn = &mut server.conn;
    // Row counts of a custom archive come from the COPY data in the dump's own stream, with
    // the catalogue's table list (read in the same snapshot) proving that none is missing:
    // scanning every table again in SQL cost the server as much again, on the same cores.
    let from_stream = fingerprint_mode == FingerprintMode::Counts && p.format == DumpFormat::Custom;
    let fingerprints_fut = async {
        tokio::select! {
            r = async {
                if from_stream {
                    fingerprint::table_names(conn).await.map(Listed::Tables)
                } else {
                    fingerprint::take(conn, fingerprint_mode, None).await.map(Listed::Taken)
                }
            } => r.map_err(|e| classify(&e, "fingerprinting tables failed")),
            _ = ctx.cancel.cancelled() => Err(StepError::cancelled()),
        }
    };
    let (files, listed) = tokio::join!(files_fut, fingerprints_fut);
    let files = files?;
    let fingerprints = match listed? {
        Listed::Taken(taken) => taken,
        Listed::Tables(tables) => {
            let counter = std::mem::take(&mut *rows.lock().expect("the counter is not poisoned"));
            match counter.finish() {
                Ok(counts) => {
                    fingerprint::from_stream(&tables, &counts).map_err(StepError::permanent)?
                }
                Err(NotCounted(why)) => {
                    // Still inside the dump's snapshot: the same data, counted by the server.
                    tracing::warn!(
                        "counting rows in SQL: the dump's rows could not be counted as it passed ({why})"
                    );
                    fingerprint::take(&mut server.conn, fingerprint_mode, None)
                        .await
                        .map_err(|e| classify(&e, "fingerprinting tables failed"))?
                }
            }
        }
    };
    let _ = sqlx::raw_sql("commit").execute(&mut server.conn).await;
    Ok((files, fingerprints))
}

/// pg_dump's arguments: the format, uncompressed (opsrunner compresses), in the exported
/// snapshot, with the step's filters.
fn pg_dump_args(p: &BackupParams, snapshot: &str, url: &str) -> Vec<String> {
    let mut args = vec![
        p.format.pg_dump_flag().to_string(),
        "--compress=0".into(),
        "--no-sync".into(),
        format!("--snapshot={snapshot}"),
        format!("--dbname={url}"),
    ];
    if p.schema_only {
        args.push("--schema-only".into());
    }
    if p.data_only {
        args.push("--data-only".into());
    }
    for t in &p.tables {
        args.push(format!("--table={t}"));
    }
    for t in &p.exclude_tables {
        args.push(format!("--exclude-table={t}"));
    }
    args
}

/// How a directory-format dump is made and stored.
struct Spooled<'a> {
    pg_dump: &'a std::path::Path,
    args: &'a [String],
    configure: &'a (dyn Fn(&mut tokio::process::Command) + Sync),
    ext: &'a str,
    threads: u32,
    recipients: Option<&'a crate::repo::crypto::Recipients>,
}

/// A directory-format dump: pg_dump writes a directory itself (with `jobs` processes), so
/// it is spooled locally, then each file is stored, `toc.dat` first.
async fn dump_directory(
    p: &BackupParams,
    ctx: &StepContext,
    store: &crate::repo::AnyStore,
    backup_id: &str,
    d: Spooled<'_>,
) -> Result<Vec<FileEntry>, StepError> {
    let spool = tempfile::Builder::new()
        .prefix("opsrunner-dump-")
        .tempdir()
        .map_err(|e| StepError::transient(format!("cannot create a spool directory: {e}")))?;
    let out = spool.path().join("dump");
    let mut dir_args = d.args.to_vec();
    dir_args.push(format!("--jobs={}", p.jobs.unwrap_or(1)));
    dir_args.push(format!("--file={}", out.display()));
    let process = PgProcess::spawn(d.pg_dump, &dir_args, ctx, d.configure, false, false)?;
    process.finish(ctx).await?;
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .map_err(|e| StepError::transient(format!("reading pg_dump's output: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    // toc.dat first: it is the file a reader needs before any other.
    names.sort_by_key(|n| (n != "toc.dat", n.clone()));
    let total: u64 = names
        .iter()
        .filter_map(|n| std::fs::metadata(out.join(n)).ok())
        .map(|m| m.len())
        .sum();
    let stored = Counter::new();
    let _progress = Meter::start(
        &ctx.events,
        &ctx.step_id,
        "store",
        stored.clone(),
        Some(total),
    );
    let mut entries = Vec::new();
    for n in names {
        let file = tokio::fs::File::open(out.join(&n))
            .await
            .map_err(|e| StepError::transient(format!("{n}: {e}")))?;
        let file = Counting::new(file, stored.clone());
        let name = format!("dump/{n}{}", d.ext);
        let entry = tokio::select! {
            r = pipeline::store(store, backup_id, &name, file, p.compression, d.threads, d.recipients, None) => r.map_err(|e| crate::exec::io_error(&format!("writing {name}"), &e))?,
            _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
        };
        entries.push(entry);
    }
    Ok(entries)
}

/// Where a backup goes and how it is protected, with the recipients read now: a reviewer
/// sees which keys will be able to read the backups, and a broken recipients file shows
/// up before the night it is needed.
pub fn destination(repo: &crate::plan::model::Repository, base_dir: &Path) -> Vec<String> {
    let mut lines = vec![format!("destination: {}", repo.url)];
    lines.extend(crate::repo::registry::describe(repo));
    match &repo.encryption {
        None => lines.push("client-side encryption: none".into()),
        Some(config) => match crate::repo::crypto::Recipients::of(config, base_dir) {
            Ok(r) => lines.push(format!(
                "client-side encryption: age, to {}",
                r.texts().join(", ")
            )),
            Err(e) => lines.push(format!("client-side encryption: cannot be set up: {e}")),
        },
    }
    lines
}
