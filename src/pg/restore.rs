//! Streaming a stored backup into a database: the archive flows from the repository,
//! checked against its manifest on the way, into pg_restore or psql, which stop at the
//! first error — a restore never "succeeds" with errors. Which database it goes into, and
//! how it replaces an existing one, is [`super::swap`]'s business.

use super::conn::ConnInfo;
use super::copy_in;
use super::custom_archive::{
    DataLoading, MAX_HEAD, NotCounted, RowCounter, Toc, TocEntry, toc_of_head,
};
use super::fingerprint::EarlyCounts;
use super::process::PgProcess;
use super::process::Relay;
use super::server::tool;
use super::tools::{Found, Want};
use crate::exec::progress::Meter;
use crate::exec::{StepContext, StepError};
use crate::repo::AnyStore;
use crate::repo::manifest::{DumpFormat, Manifest, SeekIndex};
use crate::repo::pipeline::{self, Loaded, Verdict};
use std::path::Path;

/// Streams backup `manifest` into the database `into` points at. With `counts`, a
/// parallel restore hands it each table as its data is loaded, to be counted meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    into: &ConnInfo,
    server_major: u32,
    jobs: Option<u32>,
    no_owner: bool,
    counts: Option<&EarlyCounts>,
) -> Result<(), StepError> {
    let Some(first) = manifest.files.first().map(|f| f.name.clone()) else {
        return Err(StepError::permanent(format!(
            "backup {} is damaged: the manifest lists no files",
            manifest.backup_id
        )));
    };
    let archive = manifest.pg_dump_major();
    let want = Want::Reader {
        archive,
        into: server_major,
    };
    let jobs = jobs.unwrap_or(1).max(1);
    let id = &manifest.backup_id;
    let configure = |c: &mut tokio::process::Command| {
        into.apply_to(c);
        // A restore commits thousands of times (each table, each index, each piece of
        // the schema), and waiting for each commit to reach the disk is time the restore
        // spends idle. Not waiting risks nothing: what is restored here is a staging or
        // scratch database, and what makes it count is the swap's own commit, which the
        // server flushes (with all the WAL written before it) as it always does.
        super::conn::add_session_settings(c, "-c synchronous_commit=off");
    };
    let dbname = format!("--dbname={}", into.public_url());
    let mut args = vec!["--exit-on-error".to_string(), dbname.clone()];
    if no_owner {
        args.push("--no-owner".into());
        args.push("--no-privileges".into());
    }
    match manifest.format {
        DumpFormat::Plain => {
            let psql = tool(ctx, "psql", want)?;
            say_reader(ctx, &psql, server_major, None);
            let psql = psql.path;
            let args = vec![
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                dbname,
                "-f".into(),
                "-".into(),
            ];
            let process = PgProcess::spawn(&psql, &args, ctx, configure, true, false)?;
            // A plain dump's header is pg_dump's: what it sets, the server must know.
            let unknown = super::compat::unknown_settings(archive, server_major);
            feed_fixed(ctx, store, manifest, &first, process, &unknown).await
        }
        DumpFormat::Custom if jobs == 1 => {
            let (pg_restore, relay) = reader(ctx, want, server_major)?;
            let process =
                PgProcess::spawn_restore(&pg_restore, &args, relay.as_ref(), ctx, &configure, true)?;
            feed(ctx, store, manifest, &first, process, true).await
        }
        DumpFormat::Custom => {
            let (pg_restore, relay) = reader(ctx, want, server_major)?;
            let how = Parallel {
                into,
                pg_restore: &pg_restore,
                relay: relay.as_ref(),
                args: &args,
                jobs,
                configure: &configure,
                counts,
            };
            let indexed = manifest.files[0]
                .index
                .as_ref()
                .is_some_and(|i| !i.blocks.is_empty());
            if indexed && manifest.encryption.is_none() {
                stored_custom(ctx, store, manifest, how).await
            } else {
                parallel_custom(ctx, store, manifest, how).await
            }
        }
        DumpFormat::Base => Err(StepError::permanent(format!(
            "{id} is a base backup (a copy of a whole cluster): it is restored to a point in time with `to:`, not into a database"
        ))),
        DumpFormat::Rows => Err(StepError::permanent(format!(
            "{id} is an export of table rows (CSV or JSON Lines), not a dump: load it into a table with an `import` step"
        ))),
        DumpFormat::Directory => {
            let (pg_restore, relay) = reader(ctx, want, server_major)?;
            let dir = spool_dir()?;
            let out = unpack_directory(ctx, store, manifest, dir.path()).await?;
            args.push("--format=directory".into());
            args.push(format!("--jobs={jobs}"));
            args.push(out.display().to_string());
            PgProcess::spawn_restore(&pg_restore, &args, relay.as_ref(), ctx, &configure, false)?
                .finish(ctx)
                .await
        }
    }
    .map_err(|e| StepError {
        message: format!("restore of {id}: {}", e.message),
        ..e
    })
}

/// The pg_restore for `want`, said in the log, and the relay its script needs when the
/// server is older than it and would refuse what it sends ([`super::compat`]).
fn reader(
    ctx: &StepContext,
    want: Want,
    server_major: u32,
) -> Result<(std::path::PathBuf, Option<Relay>), StepError> {
    let pg_restore = tool(ctx, "pg_restore", want)?;
    let unknown = super::compat::unknown_settings(pg_restore.major, server_major);
    let relay = if unknown.is_empty() {
        None
    } else {
        let psql = match pg_restore.sibling("psql") {
            Some(psql) => psql,
            None => tool(ctx, "psql", Want::Client(pg_restore.major))?.path,
        };
        Some(Relay { psql, unknown })
    };
    say_reader(ctx, &pg_restore, server_major, relay.as_ref());
    Ok((pg_restore.path, relay))
}

/// Says which program loads the backup into which server, and how.
fn say_reader(ctx: &StepContext, found: &Found, server_major: u32, relay: Option<&Relay>) {
    let how = match relay {
        Some(relay) => format!(
            "; its script runs through {} without `SET {}`, which PostgreSQL {server_major} does not know",
            relay.psql.display(),
            relay.unknown.join("`, `SET ")
        ),
        None => String::new(),
    };
    ctx.events.output(
        &ctx.step_id,
        crate::exec::events::Stream::Stdout,
        format!(
            "using {} for server PostgreSQL {server_major}{how}",
            found.describe()
        ),
    );
}

/// [`feed`] for a plain SQL dump whose header may set what the server does not know:
/// those lines are taken out on the way ([`super::compat`]).
async fn feed_fixed(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    process: PgProcess,
    unknown: &[&'static str],
) -> Result<(), StepError> {
    feed_with(ctx, store, manifest, name, process, true, unknown).await
}

/// Streams one stored file, decompressed, into a process's stdin, then waits for it.
/// `reads_all: false` is for `pg_restore --list` and section restores, which stop reading
/// when they have what they need: the broken pipe that follows is expected then, and the
/// file is checked against the manifest by whoever reads all of it. With `reads_all`, the
/// stored bytes must match the manifest's size and SHA-256, or the restore fails.
pub async fn feed(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    process: PgProcess,
    reads_all: bool,
) -> Result<(), StepError> {
    feed_with(ctx, store, manifest, name, process, reads_all, &[]).await
}

async fn feed_with(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    mut process: PgProcess,
    reads_all: bool,
    unknown: &[&'static str],
) -> Result<(), StepError> {
    let Loaded {
        mut reader,
        verdict,
        read,
        size,
    } = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let progress = Meter::start(&ctx.events, &ctx.step_id, "restore", read, Some(size));
    let mut stdin = process.stdin();
    // A whole restore goes in pieces of up to 1 MiB, not tokio::io::copy's 8 KiB: fewer,
    // fuller writes into the enlarged pipe (see crate::pipe). A reader that stops early
    // (`--list`, a section) gets small pieces: it has what it needs before a damaged part
    // further on is read, and the damage is reported by whoever reads all of it.
    let piece = if reads_all { 1 << 20 } else { 8 << 10 };
    let mut pieces = tokio::io::BufReader::with_capacity(piece, &mut reader);
    let copy = async {
        if !unknown.is_empty() {
            let head = super::compat::fixed_header(&mut pieces, unknown).await?;
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &head).await?;
        }
        tokio::io::copy_buf(&mut pieces, &mut stdin).await
    };
    let copied = tokio::select! {
        r = copy => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    drop(stdin);
    drop(pieces);
    drop(reader);
    // Every byte is read; pg_restore still builds the indexes and constraints, which can
    // take as long again. The transfer's bar ends here instead of sitting at 100 %, and
    // the phase is said, with how long it took.
    drop(progress);
    let post_data = std::time::Instant::now();
    if reads_all && copied.is_ok() {
        ctx.events.notice(
            Some(&ctx.step_id),
            format!(
                "all {} read; pg_restore is building the indexes and constraints",
                crate::diag::bytes(size)
            ),
        );
    }
    let finished = process.finish(ctx).await;
    if reads_all && copied.is_ok() && finished.is_ok() {
        ctx.events.notice(
            Some(&ctx.step_id),
            format!(
                "indexes and constraints built in {}",
                crate::plan::duration::format(post_data.elapsed())
            ),
        );
    }
    if reads_all {
        // A damaged file explains a failed pg_restore better than pg_restore does.
        checked(verdict, ctx).await?;
    }
    finished?;
    match copied {
        Err(e) if !reads_all && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        // The reader saw the mismatch itself (it fails rather than end cleanly on a
        // damaged file) before the check was waited for.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(StepError::permanent(
            format!("the backup does not match its manifest: {e}"),
        )),
        Err(e) => Err(StepError::permanent(format!(
            "{name}: reading the backup failed: {e}"
        ))),
        Ok(_) => Ok(()),
    }
}

/// Waits for a file's check against the manifest; a mismatch is a permanent error.
async fn checked(verdict: Verdict, ctx: &StepContext) -> Result<(), StepError> {
    check_outcome(verdict.wait(), ctx).await
}

/// A check of a stored file against its manifest as a step's outcome: a mismatch is
/// permanent, a read that failed is not a verdict.
async fn check_outcome(
    check: impl std::future::Future<Output = std::io::Result<()>>,
    ctx: &StepContext,
) -> Result<(), StepError> {
    tokio::select! {
        r = check => r.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => StepError::permanent(format!("the backup does not match its manifest: {e}")),
            _ => crate::exec::io_error("reading the backup", &e),
        }),
        _ = ctx.cancel.cancelled() => Err(StepError::cancelled()),
    }
}

/// What the spool's writer tells a parallel restore as the archive arrives.
enum Spooled {
    /// The header and table of contents are on disk: this one, and its bytes as they
    /// arrived.
    Head(Toc, std::sync::Arc<[u8]>),
    /// These entries' data blocks have started to arrive, in archive order.
    Started(Vec<i64>),
}

/// What watches the spool being written: the archive reader, whom to tell, and how far
/// the copy on disk reaches (its length; closed once the copy is complete).
#[derive(Clone)]
struct Watch {
    counter: std::sync::Arc<std::sync::Mutex<RowCounter>>,
    notify: tokio::sync::mpsc::UnboundedSender<Spooled>,
    written: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// A parallel restore of a custom archive, which `pg_restore -j` can only read from a
/// file it can seek in: the archive is decompressed to a local copy, and restored from it
/// *while it is being written*, so that decompressing and loading overlap:
///
/// 1. once the table of contents is on disk, `pg_restore --section=pre-data` (which reads
///    nothing else) creates the schema;
/// 2. as each table's data block *starts* to arrive, a `pg_restore --section=data -L`
///    reading a pipe is fed the archive's head and then the block, following the copy as
///    it grows — up to `jobs` of these at once, each taking every table that has started
///    since; a table need not wait for the rest of its data, nor for the tables before
///    it to finish loading;
/// 3. as each load finishes, the indexes and primary keys of its tables are built
///    (`--section=post-data -L`) while other tables still load, as `pg_restore -j` does;
/// 4. once the whole copy is there and matched its manifest (size, SHA-256), the rest of
///    the data section (sequence values, anything not loaded yet) and then
///    `pg_restore -j N --section=post-data` for what was not built yet (foreign keys,
///    triggers, …), in parallel. As each block is on disk, its offset was filled into the
///    copy's table of contents (pg_dump could not write it into a pipe), so these runs
///    find what they need by seeking.
///
/// All of it goes into the staging database, which replaces nothing until everything
/// passed. An archive the reader does not understand is restored after the copy is
/// complete, by `pg_restore -j` alone. A backup whose file has a [`SeekIndex`] needs no
/// copy at all: see [`stored_custom`].
async fn parallel_custom<C: Fn(&mut tokio::process::Command) + Sync>(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    how: Parallel<'_, C>,
) -> Result<(), StepError> {
    // `restore` made sure the manifest lists a file.
    let name = &manifest.files[0].name;
    let dir = spool_dir()?;
    let spool = dir.path().join("archive.pgdump");
    // Where the blocks are, not how many rows they hold: the restored tables are counted
    // in the database.
    let counter = std::sync::Arc::new(std::sync::Mutex::new(RowCounter::layout_only()));
    let (notify, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let (written, on_disk) = tokio::sync::watch::channel(0);
    let watch = Watch {
        counter: counter.clone(),
        notify,
        written: std::sync::Arc::new(written),
    };
    let loading = how.loading(ctx, &spool, dir.path());
    let source = Source::Spool {
        arrivals,
        arrived: Vec::new(),
        open: true,
        counter: counter.clone(),
        on_disk,
        loading: None,
    };
    let damaged = tokio_util::sync::CancellationToken::new();
    let (unpacked, loaded) = tokio::join!(
        async {
            let r = unpack(ctx, store, manifest, name, &spool, Some(&watch)).await;
            // The writer has gone: closing the channel tells the loader the copy ended.
            drop(watch);
            if r.is_err() {
                damaged.cancel();
            }
            r
        },
        async {
            tokio::select! {
                r = loading.while_spooling(source) => r,
                // What is loading stops (its processes are killed): the copy is bad.
                _ = damaged.cancelled() => Ok(None),
            }
        }
    );
    // A damaged archive is what to report, not what pg_restore made of it.
    unpacked?;
    let restored = loaded?;
    // Every block's offset was filled in by the writer as the block arrived; an archive
    // the reader stopped understanding has the rest found by pg_restore's own search.
    let counter = std::mem::take(&mut *counter.lock().expect("the reader is not poisoned"));
    if let Err(NotCounted(why)) = counter.finish() {
        tracing::warn!("restoring without data offsets, which is slower: {why}");
    }
    match restored {
        Some(started) => loading.finish(&started).await,
        None => {
            let mut all = loading.args.to_vec();
            all.push(format!("--jobs={}", loading.jobs));
            all.push(spool.display().to_string());
            PgProcess::spawn_restore(
                loading.pg_restore,
                &all,
                loading.relay,
                ctx,
                loading.configure,
                false,
            )?
            .finish(ctx)
            .await
        }
    }
}

/// A parallel restore of a custom archive whose stored file has a [`SeekIndex`] (the
/// backup started a new compressed frame before each large table): no local copy of the
/// archive is made: from any repository by ranged reads (from S3 the file is downloaded
/// twice, its parts and the whole for the check, in return for loads side by side). Each load
/// reads its tables' part of the stored file, decompressed from the frame before it, and
/// sends each table's rows over a connection of its own with the table's `COPY`
/// ([`copy_in`]; a part holding anything else goes to a `pg_restore --section=data -L`
/// reading a pipe fed the archive's head and then the same bytes) — every table can
/// start loading at once, largest first, as with `pg_restore -j` on an uncompressed
/// file, and each load decompresses its own part on its own core. Only the part of the
/// schema the largest tables need is created before their loads start, the rest beside
/// them ([`Toc::schema_first`]; tables whose schema runs code wait for all of it). The
/// rest is as in [`parallel_custom`]: indexes as their tables are loaded, and the other
/// data and post-data entries at the end, from a file holding only the head (they read
/// no data blocks).
///
/// What the loads read is not checked as they read it: the whole stored file is read
/// beside them and compared with its manifest (size, SHA-256), and nothing is finished
/// before it matched. A wrong index can only make a load fail: each block is read by its
/// header (its type and dump id), and bytes that are not one are refused.
async fn stored_custom<C: Fn(&mut tokio::process::Command) + Sync>(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    how: Parallel<'_, C>,
) -> Result<(), StepError> {
    let file = &manifest.files[0];
    let index = file
        .index
        .as_ref()
        .expect("stored_custom is for indexed files");
    let dir = spool_dir()?;
    let head_file = dir.path().join("archive.pgdump");
    let loading = how.loading(ctx, &head_file, dir.path());
    // Progress is the original bytes fed to the loads, of all the tables' data.
    let fed = crate::counting::Counter::new();
    let total = index.blocks.iter().map(|b| b.2.saturating_sub(b.1)).sum();
    let progress = Meter::start(
        &ctx.events,
        &ctx.step_id,
        "restore",
        fed.clone(),
        Some(total),
    );
    let damaged = tokio_util::sync::CancellationToken::new();
    let (checked, loaded) = tokio::join!(
        async {
            let r = check_outcome(pipeline::check(store, &manifest.backup_id, file), ctx).await;
            if r.is_err() {
                damaged.cancel();
            }
            r
        },
        async {
            tokio::select! {
                r = async {
                    let first = index.blocks.first().map_or(0, |b| b.1);
                    let head: std::sync::Arc<[u8]> =
                        read_part(store, manifest, index, first).await?.into();
                    let (toc, data_loading) = toc_of_head(&head).map_err(|why| {
                        StepError::permanent(format!("{}: the archive's table of contents: {why}", file.name))
                    })?;
                    let data_loading = std::sync::Arc::new(data_loading);
                    std::fs::write(&head_file, &head).map_err(|e| spool_error(&head_file, &e))?;
                    let wanted = loading.entries("data").await?;
                    let (batches, early) = early_first(&toc, batches(&index.blocks, loading.jobs), loading.jobs);
                    tracing::debug!(
                        runs = batches.len(),
                        frames = index.frames.len(),
                        "loading the tables from their parts of the stored file"
                    );
                    let rest_of_schema = match &early {
                        Some((first, n)) => Some(loading.schema_first(&toc, first, *n).await?),
                        None => {
                            loading.schema(&toc).await?;
                            None
                        }
                    };
                    let source = Source::Stored {
                        batches,
                        early: early.map_or(0, |(_, n)| n),
                        from: Stored {
                            store,
                            manifest,
                            fed: fed.clone(),
                            loading: &data_loading,
                        },
                    };
                    loading.overlap(&toc, &head, &wanted, source, rest_of_schema).await
                } => r.map(Some),
                // What is loading stops (its processes are killed): the file is bad.
                _ = damaged.cancelled() => Ok(None),
            }
        }
    );
    // A damaged file is what to report, not what pg_restore made of it.
    checked?;
    // The data is fed: its bar ends, and what follows says what it does (`finish`).
    drop(progress);
    match loaded? {
        Some(started) => loading.finish(&started).await,
        None => unreachable!("the loads stop only when the check failed"),
    }
}

/// The first `len` original bytes of an indexed file (the archive's head).
async fn read_part(
    store: &AnyStore,
    manifest: &Manifest,
    index: &SeekIndex,
    len: u64,
) -> Result<Vec<u8>, StepError> {
    use tokio::io::AsyncReadExt;
    let name = &manifest.files[0].name;
    if len > MAX_HEAD as u64 {
        return Err(StepError::permanent(format!(
            "{name}: the archive's table of contents is larger than {} MiB",
            MAX_HEAD >> 20
        )));
    }
    let reader = pipeline::load_from(store, manifest, name, index.frames[0].1)
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let mut head = Vec::new();
    reader
        .take(len)
        .read_to_end(&mut head)
        .await
        .map_err(|e| StepError::permanent(format!("{name}: reading the archive's head: {e}")))?;
    if (head.len() as u64) < len {
        return Err(StepError::permanent(format!(
            "{name}: the file ends before the first table's data (damaged)"
        )));
    }
    Ok(head)
}

/// The data blocks of an indexed archive in runs of blocks next to each other, largest
/// run first: a block of at least a `4 × jobs`-th of all the data (or 16 MiB) is a run of
/// its own, so that the largest tables load side by side from the start; smaller ones
/// are gathered up to that size, so that thousands of small tables do not each cost a
/// pg_restore and a connection. (A run that starts inside a frame decompresses less
/// than 8 MiB it does not load — a frame ends at the first block that starts once it
/// holds 8 MiB — so even the smallest run wastes little.)
fn batches(blocks: &[(i64, u64, u64)], jobs: u32) -> std::collections::VecDeque<Batch> {
    let total: u64 = blocks.iter().map(|b| b.2.saturating_sub(b.1)).sum();
    let cap = (total / (4 * u64::from(jobs.max(1)))).max(16 << 20);
    let mut out: Vec<Batch> = Vec::new();
    let mut current: Option<Batch> = None;
    for &(id, start, end) in blocks {
        let joins = current.as_ref().is_some_and(|c| {
            c.end == start && end.saturating_sub(c.start) <= cap && end.saturating_sub(start) < cap
        });
        if !joins {
            out.extend(current.take());
        }
        let batch = current.get_or_insert(Batch {
            ids: Vec::new(),
            start,
            end,
        });
        batch.ids.push(id);
        batch.end = end;
    }
    out.extend(current);
    out.sort_by_key(|b| std::cmp::Reverse(b.end.saturating_sub(b.start)));
    out.into()
}

/// The batches with those that can load before all of the schema is created first
/// (of the `jobs` largest, those whose tables' part of the schema can be created on its
/// own: [`Toc::schema_first`]), and, when there are any, that part of the schema and how
/// many they are.
#[allow(clippy::type_complexity)]
fn early_first(
    toc: &Toc,
    batches: std::collections::VecDeque<Batch>,
    jobs: u32,
) -> (
    std::collections::VecDeque<Batch>,
    Option<(std::collections::BTreeSet<i64>, usize)>,
) {
    let mut first = std::collections::BTreeSet::new();
    let mut early = std::collections::VecDeque::new();
    let mut later = std::collections::VecDeque::new();
    for (n, batch) in batches.into_iter().enumerate() {
        match toc.schema_first(&batch.ids) {
            Some(schema) if n < jobs as usize => {
                first.extend(schema);
                early.push_back(batch);
            }
            _ => later.push_back(batch),
        }
    }
    let n = early.len();
    early.extend(later);
    (early, (n > 0).then_some((first, n)))
}

/// Where a stored file's batches come from, and what loading their tables' data over
/// our own connection needs.
struct Stored<'s> {
    store: &'s AnyStore,
    manifest: &'s Manifest,
    /// Original bytes fed to the loads so far, for progress reports.
    fed: crate::counting::Counter,
    loading: &'s std::sync::Arc<DataLoading>,
}

/// Where blocks are in the archive's original bytes: from, to (exclusive).
type Span = (u64, u64);

/// Blocks next to each other in the archive, loaded by one pg_restore run.
#[derive(Debug, PartialEq)]
struct Batch {
    ids: Vec<i64>,
    start: u64,
    end: u64,
}

/// The pg_restore runs of a parallel restore (see [`parallel_custom`]).
struct Loading<'a, C> {
    ctx: &'a StepContext,
    /// The database restored into, for the loads over our own connection.
    into: &'a ConnInfo,
    pg_restore: &'a Path,
    relay: Option<&'a Relay>,
    args: &'a [String],
    /// The archive pg_restore reads (the local copy, or the head of an indexed file).
    spool: &'a Path,
    dir: &'a Path,
    jobs: u32,
    configure: &'a C,
    counts: Option<&'a EarlyCounts>,
}

/// How a parallel restore runs pg_restore, and who counts the tables as they are loaded.
struct Parallel<'a, C> {
    into: &'a ConnInfo,
    pg_restore: &'a Path,
    relay: Option<&'a Relay>,
    args: &'a [String],
    jobs: u32,
    configure: &'a C,
    counts: Option<&'a EarlyCounts>,
}

impl<'a, C> Parallel<'a, C> {
    fn loading(self, ctx: &'a StepContext, spool: &'a Path, dir: &'a Path) -> Loading<'a, C> {
        Loading {
            ctx,
            into: self.into,
            pg_restore: self.pg_restore,
            relay: self.relay,
            args: self.args,
            spool,
            dir,
            jobs: self.jobs,
            configure: self.configure,
            counts: self.counts,
        }
    }
}

/// Where the data of the overlapped part of a parallel restore comes from.
enum Source<'s> {
    /// The local copy as it is written: every table whose data has started to arrive
    /// goes to the next free run, which follows the copy as it grows.
    Spool {
        arrivals: tokio::sync::mpsc::UnboundedReceiver<Spooled>,
        arrived: Vec<i64>,
        /// Whether the writer may still tell of more.
        open: bool,
        counter: std::sync::Arc<std::sync::Mutex<RowCounter>>,
        /// How far the copy on disk reaches; closed once it is complete.
        on_disk: tokio::sync::watch::Receiver<u64>,
        /// What loading table data over our own connection needs, once the head is read.
        loading: Option<std::sync::Arc<DataLoading>>,
    },
    /// The stored file, entered at the frame before each run's blocks: every run can
    /// start at once.
    Stored {
        batches: std::collections::VecDeque<Batch>,
        /// How many batches at the front may load before all of the schema is created
        /// (their tables' part of it is: [`Toc::schema_first`]).
        early: usize,
        from: Stored<'s>,
    },
}

impl Source<'_> {
    /// The next batch to load when one can start now (`schema`: all of the schema is
    /// created): its entries (perhaps none that are wanted), and for a stored file,
    /// where its blocks are.
    fn next(
        &mut self,
        wanted: &std::collections::BTreeSet<i64>,
        loaded: &std::collections::BTreeSet<i64>,
        schema: bool,
    ) -> Option<(Vec<i64>, Option<Span>)> {
        let keep = |id: &i64| wanted.contains(id) && !loaded.contains(id);
        match self {
            Source::Spool { arrived, .. } => {
                arrived.retain(keep);
                (!arrived.is_empty()).then(|| (std::mem::take(arrived), None))
            }
            Source::Stored { batches, early, .. } => {
                if !schema && *early == 0 {
                    return None;
                }
                *early = early.saturating_sub(1);
                let mut batch = batches.pop_front()?;
                batch.ids.retain(keep);
                Some((batch.ids, Some((batch.start, batch.end))))
            }
        }
    }

    /// How many bytes of the archive the data block of entry `id` takes (0 when not known).
    fn size(&self, id: i64) -> u64 {
        match self {
            Source::Spool { counter, .. } => counter
                .lock()
                .expect("the reader is not poisoned")
                .block(id)
                .and_then(|(start, end)| Some(end? - start))
                .unwrap_or(0),
            Source::Stored { from, .. } => from.manifest.files[0]
                .index
                .iter()
                .flat_map(|i| &i.blocks)
                .find(|b| b.0 == id)
                .map_or(0, |b| b.2.saturating_sub(b.1)),
        }
    }

    /// Whether every batch has been handed out, and none will come.
    fn drained(&self) -> bool {
        match self {
            Source::Spool { open, arrived, .. } => !*open && arrived.is_empty(),
            Source::Stored { batches, .. } => batches.is_empty(),
        }
    }

    /// Whether more may become ready later (then [`Source::arrive`] waits for it).
    fn open(&self) -> bool {
        match self {
            Source::Spool { open, .. } => *open,
            Source::Stored { .. } => false,
        }
    }

    async fn arrive(&mut self) {
        if let Source::Spool {
            arrivals,
            arrived,
            open,
            ..
        } = self
        {
            match arrivals.recv().await {
                Some(Spooled::Started(ids)) => arrived.extend(ids),
                Some(Spooled::Head(..)) => {}
                None => *open = false,
            }
        }
    }
}

/// Where the overlapped part of a parallel restore got to: the data-section entries of
/// the archive, those already loaded, and the post-data entries already built.
struct Started {
    data_entries: Vec<i64>,
    loaded: std::collections::BTreeSet<i64>,
    built: std::collections::BTreeSet<i64>,
}

/// What one of the overlapped pg_restore runs did, once it finished.
enum Ran {
    /// Loaded the data of these entries.
    Data(Vec<i64>),
    /// Built indexes and constraints.
    PostData,
}

type Run<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StepError>> + Send + 'a>>;

impl<C: Fn(&mut tokio::process::Command) + Sync> Loading<'_, C> {
    fn run(&self, extra: &[String]) -> Result<PgProcess, StepError> {
        let mut all = self.args.to_vec();
        all.extend_from_slice(extra);
        all.push(self.spool.display().to_string());
        PgProcess::spawn_restore(
            self.pg_restore,
            &all,
            self.relay,
            self.ctx,
            self.configure,
            false,
        )
    }

    /// `-L FILE` naming these entries, for one pg_restore run.
    fn list(&self, entries: &[i64], name: &str) -> Result<String, StepError> {
        let path = self.dir.join(name);
        let text: String = entries.iter().map(|id| format!("{id};\n")).collect();
        std::fs::write(&path, text).map_err(|e| spool_error(&path, &e))?;
        Ok(format!("--use-list={}", path.display()))
    }

    /// A `pg_restore --section=data -L` of `batch` reading a pipe.
    fn data_run(&self, batch: &[i64], run: usize) -> Result<PgProcess, StepError> {
        let list = self.list(batch, &format!("data-{run}"))?;
        let mut all = self.args.to_vec();
        all.extend(["--section=data".to_string(), list]);
        PgProcess::spawn_restore(
            self.pg_restore,
            &all,
            self.relay,
            self.ctx,
            self.configure,
            true,
        )
    }

    /// Loads the data of `batch` (blocks next to each other in the archive, the last
    /// perhaps still arriving) from the copy's bytes, from the first block's start to the
    /// last one's end, as the writer puts them on disk: a table starts loading when its
    /// data starts to arrive, not when all of it has. Tables whose data [`copy_in`] can
    /// load go over a connection of our own, reading a pipe the copy is fed into; a batch
    /// with anything else goes to a pg_restore reading a pipe fed the archive's head and
    /// then the same bytes, which reads a pipe front to back, skipping the blocks it was
    /// not asked for.
    fn load_streaming(
        &self,
        head: &std::sync::Arc<[u8]>,
        batch: Vec<i64>,
        run: usize,
        counter: &std::sync::Arc<std::sync::Mutex<RowCounter>>,
        on_disk: &tokio::sync::watch::Receiver<u64>,
        loading: Option<&std::sync::Arc<DataLoading>>,
    ) -> Result<Run<'_>, StepError> {
        let (first, last) = (batch[0], batch[batch.len() - 1]);
        let from = {
            let counter = counter.lock().expect("the reader is not poisoned");
            counter.block(first).map_or(0, |(start, _)| start)
        };
        let follow = Follow {
            spool: self.spool.to_path_buf(),
            counter: counter.clone(),
            on_disk: on_disk.clone(),
            last,
        };
        let runtime = tokio::runtime::Handle::current();
        if let Some(loading) = loading.filter(|l| copy_in::can_load(l, &batch)) {
            let (reader, writer) = std::io::pipe().map_err(|e| spool_error(self.spool, &e))?;
            crate::pipe::enlarge(&writer);
            let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
            let reader =
                tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))
                    .map_err(|e| spool_error(self.spool, &e))?;
            let reader =
                tokio::io::BufReader::with_capacity(1 << 20, crate::pipe::Batched::new(reader));
            let feeding =
                tokio::task::spawn_blocking(move || follow.feed(&[], from, writer, &runtime));
            let (into, loading, cancel) =
                (self.into.clone(), loading.clone(), self.ctx.cancel.clone());
            let name = self.spool.display().to_string();
            let loads = AbortOnDrop(tokio::spawn(async move {
                let mut conn = copy_in::session(&into, &loading).await?;
                copy_in::load(&cancel, &mut conn, &loading, &batch, reader, None, &name).await
            }));
            return Ok(Box::pin(async move {
                let loaded = loads.join().await.unwrap_or_else(|e| {
                    Err(StepError::permanent(format!("loading table data: {e}")))
                });
                // The load has stopped reading (its pipe is closed): the feed ends.
                let fed = feeding.await.map_err(std::io::Error::other).and_then(|r| r);
                loaded?;
                fed_as_expected(fed).map_err(|e| spool_error(self.spool, &e))
            }));
        }
        let mut process = self.data_run(&batch, run)?;
        let stdin = process
            .blocking_stdin()
            .map_err(|e| StepError::permanent(format!("cannot feed pg_restore: {e}")))?;
        let head = head.clone();
        Ok(Box::pin(async move {
            let feeding =
                tokio::task::spawn_blocking(move || follow.feed(&head, from, stdin, &runtime));
            let (fed, finished) = tokio::join!(feeding, process.finish(self.ctx));
            finished?;
            let fed = fed.map_err(std::io::Error::other).and_then(|r| r);
            fed_as_expected(fed).map_err(|e| spool_error(self.spool, &e))
        }))
    }

    /// Loads the data of `ids` (of a batch, whose blocks span `start..end` of the
    /// archive) from the batch's part of the stored file, decompressed from the frame
    /// before it — in a task of its own, so that runs decompress on different cores.
    /// Tables whose data [`copy_in`] can load go over a connection of our own; a batch
    /// with anything else (large objects, an archive not in UTF-8) goes to a pg_restore
    /// reading a pipe, fed the archive's head and then the same bytes.
    fn load_stored(
        &self,
        head: &std::sync::Arc<[u8]>,
        ids: Vec<i64>,
        (start, end): Span,
        run: usize,
        from: &Stored<'_>,
    ) -> Result<Run<'_>, StepError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (skip, frame) = from.manifest.files[0]
            .index
            .as_ref()
            .map(|i| i.frame_before(start))
            .map(|(raw, stored)| (start - raw, stored))
            .unwrap_or((start, 0));
        let name = from.manifest.files[0].name.clone();
        let (store, manifest, fed) = (from.store.clone(), from.manifest.clone(), from.fed.clone());
        // The batch's part of the archive, original bytes, counted as they are read.
        let part = async move {
            let name = &manifest.files[0].name;
            let mut reader = pipeline::load_from(&store, &manifest, name, frame).await?;
            tokio::io::copy(&mut (&mut reader).take(skip), &mut tokio::io::sink()).await?;
            let part = crate::counting::Counting::new(reader.take(end - start), fed);
            std::io::Result::Ok(tokio::io::BufReader::with_capacity(1 << 20, part))
        };
        let read_failed = {
            let name = name.clone();
            move |e: std::io::Error| {
                StepError::permanent(format!("{name}: reading the backup failed: {e}"))
            }
        };
        if copy_in::can_load(from.loading, &ids) {
            let (into, loading, cancel) = (
                self.into.clone(),
                from.loading.clone(),
                self.ctx.cancel.clone(),
            );
            let loads = AbortOnDrop(tokio::spawn(async move {
                let mut conn = copy_in::session(&into, &loading).await?;
                let part = part.await.map_err(read_failed)?;
                copy_in::load(
                    &cancel,
                    &mut conn,
                    &loading,
                    &ids,
                    part,
                    Some(end - start),
                    &name,
                )
                .await
            }));
            return Ok(Box::pin(async move {
                loads.join().await.unwrap_or_else(|e| {
                    Err(StepError::permanent(format!("loading table data: {e}")))
                })
            }));
        }
        let mut process = self.data_run(&ids, run)?;
        let mut stdin = process.stdin();
        let head = head.clone();
        let feeding = AbortOnDrop(tokio::spawn(async move {
            let mut part = part.await?;
            stdin.write_all(&head).await?;
            let fed = tokio::io::copy_buf(&mut part, &mut stdin).await?;
            if fed < end - start {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ends inside a table's data (damaged)",
                ));
            }
            stdin.shutdown().await
        }));
        Ok(Box::pin(async move {
            let (fed, finished) = tokio::join!(feeding.wait(), process.finish(self.ctx));
            finished?;
            fed_as_expected(fed).map_err(read_failed)
        }))
    }

    /// The entries of a section, from the table of contents on disk, in its order.
    async fn entries(&self, section: &str) -> Result<Vec<i64>, StepError> {
        let mut all = vec!["--list".to_string(), format!("--section={section}")];
        all.push(self.spool.display().to_string());
        let output = tokio::process::Command::new(self.pg_restore)
            .args(&all)
            .env("LC_MESSAGES", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| StepError::permanent(format!("cannot start pg_restore --list: {e}")))?;
        if !output.status.success() {
            return Err(StepError::permanent(format!(
                "pg_restore --list failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim_start().starts_with(';'))
            .filter_map(|l| l.split(';').next()?.trim().parse().ok())
            .collect())
    }

    /// Hands the tables of `entries` (loaded, `TABLE DATA`) to whoever counts them,
    /// largest first, so that the counting sessions finish together.
    fn count(&self, toc: &Toc, entries: &[i64], source: &Source<'_>) {
        if let Some(counts) = self.counts {
            let mut tables: Vec<&TocEntry> = toc
                .0
                .iter()
                .filter(|e| e.desc == "TABLE DATA" && entries.contains(&e.id))
                .collect();
            tables.sort_by_key(|e| std::cmp::Reverse(source.size(e.id)));
            for entry in tables {
                counts.count(&entry.namespace, &entry.tag);
            }
        }
    }

    /// Creates the schema (step 1).
    async fn schema(&self, toc: &Toc) -> Result<(), StepError> {
        tracing::debug!("creating the schema");
        self.run(&["--section=pre-data".into()])?
            .finish(self.ctx)
            .await?;
        self.large_objects(toc).await?;
        tracing::debug!("the schema is created");
        Ok(())
    }

    /// Creates the large objects, empty, before any data run may load their contents:
    /// pg_dump 17 and newer put their metadata (`BLOB METADATA`: lo_create, owner,
    /// grants) in the data section, ahead of the contents (`BLOBS`), which cannot load
    /// before it. The metadata holds no data block: the archive's head is all it reads.
    async fn large_objects(&self, toc: &Toc) -> Result<(), StepError> {
        let metadata = toc.large_object_metadata();
        if metadata.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = metadata.into_iter().collect();
        let list = self.list(&ids, "large-objects")?;
        self.run(&["--section=data".into(), list])?
            .finish(self.ctx)
            .await
    }

    /// Creates the entries `first` of the schema (what the first `runs` loads need), and
    /// starts creating the rest of it: the run that does, to be waited for.
    async fn schema_first(
        &self,
        toc: &Toc,
        first: &std::collections::BTreeSet<i64>,
        runs: usize,
    ) -> Result<PgProcess, StepError> {
        // Lists in archive order, which is the order pg_restore follows with -L; each
        // run takes only what is pre-data of its list.
        let (now, rest): (Vec<i64>, Vec<i64>) = toc
            .0
            .iter()
            .map(|e| e.id)
            .partition(|id| first.contains(id));
        tracing::debug!(
            entries = now.len(),
            runs,
            "creating the schema of the first tables"
        );
        let list = self.list(&now, "pre-data-first")?;
        self.run(&["--section=pre-data".into(), list])?
            .finish(self.ctx)
            .await?;
        self.large_objects(toc).await?;
        tracing::debug!("creating the rest of the schema while the first tables load");
        let list = self.list(&rest, "pre-data-rest")?;
        self.run(&["--section=pre-data".into(), list])
    }

    /// Steps 1 to 3 while the copy is written; `None` when the archive's table of
    /// contents could not be read as it arrived (then nothing was restored yet).
    async fn while_spooling(&self, mut source: Source<'_>) -> Result<Option<Started>, StepError> {
        let Source::Spool {
            arrivals,
            arrived,
            loading,
            ..
        } = &mut source
        else {
            unreachable!("while_spooling follows the spool");
        };
        let (toc, head) = loop {
            match arrivals.recv().await {
                Some(Spooled::Head(toc, head)) => break (toc, head),
                Some(Spooled::Started(ids)) => arrived.extend(ids),
                None => return Ok(None),
            }
        };
        // The reader parsed this head already; what it did not keep is read again here.
        *loading = toc_of_head(&head).ok().map(|(_, l)| std::sync::Arc::new(l));
        let data_entries = self.entries("data").await?;
        self.schema(&toc).await?;
        self.overlap(&toc, &head, &data_entries, source, None)
            .await
            .map(Some)
    }

    /// Steps 2 and 3: loads the data of `data_entries` as `source` makes it ready, up to
    /// `jobs` runs at once, building indexes as their tables are loaded. With
    /// `rest_of_schema` (the run creating it), only the source's early batches start
    /// before it finished.
    async fn overlap(
        &self,
        toc: &Toc,
        head: &std::sync::Arc<[u8]>,
        data_entries: &[i64],
        mut source: Source<'_>,
        rest_of_schema: Option<PgProcess>,
    ) -> Result<Started, StepError> {
        use futures_util::StreamExt;
        let mut schema_done = rest_of_schema.is_none();
        let mut schema = futures_util::future::OptionFuture::from(
            rest_of_schema.map(|run| Box::pin(run.finish(self.ctx))),
        );
        // Large objects' metadata was restored with the schema.
        let metadata = toc.large_object_metadata();
        let data_entries: Vec<i64> = data_entries
            .iter()
            .copied()
            .filter(|id| !metadata.contains(id))
            .collect();
        let data_entries = &data_entries[..];
        let wanted: std::collections::BTreeSet<i64> = data_entries.iter().copied().collect();
        // Data started loading, data loaded (its run finished), post-data entries built.
        let mut loaded = std::collections::BTreeSet::new();
        let mut finished = std::collections::BTreeSet::new();
        let mut built = std::collections::BTreeSet::new();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut runs = 0;
        // Data runs going on, and the tables loaded but not counted yet.
        let mut loading_data = 0;
        let mut uncounted = Vec::new();
        loop {
            if running.len() < self.jobs as usize {
                // The next tables whose data is there to the next free run; failing that,
                // the indexes of the tables loaded so far, as pg_restore -j builds them
                // while other tables still load.
                if let Some((batch, range)) = source.next(&wanted, &loaded, schema_done) {
                    if batch.is_empty() {
                        continue;
                    }
                    runs += 1;
                    let run = match (&source, range) {
                        (Source::Stored { from, .. }, Some(range)) => {
                            self.load_stored(head, batch.clone(), range, runs, from)?
                        }
                        (
                            Source::Spool {
                                counter,
                                on_disk,
                                loading,
                                ..
                            },
                            _,
                        ) => self.load_streaming(
                            head,
                            batch.clone(),
                            runs,
                            counter,
                            on_disk,
                            loading.as_ref(),
                        )?,
                        (Source::Stored { .. }, None) => unreachable!("a stored batch has a range"),
                    };
                    loaded.extend(batch.iter().copied());
                    loading_data += 1;
                    running.push(futures_util::future::Either::Left(async move {
                        run.await.map(|()| Ran::Data(batch))
                    }));
                    continue;
                }
                let ready: Vec<i64> = toc
                    .ready_after_data(&finished)
                    .into_iter()
                    .filter(|id| !built.contains(id))
                    .collect();
                if !ready.is_empty() {
                    runs += 1;
                    tracing::debug!(?ready, "building while other tables load");
                    let list = self.list(&ready, &format!("post-data-{runs}"))?;
                    built.extend(ready.iter().copied());
                    let process = self.run(&["--section=post-data".into(), list])?;
                    running.push(futures_util::future::Either::Right(async move {
                        process.finish(self.ctx).await.map(|()| Ran::PostData)
                    }));
                    continue;
                }
            }
            // Counting a table reads all of it: while other tables still load it would
            // take their cores, so the counts wait until all data is in, and then run
            // beside the index builds of the end, which leave a core idle.
            if loading_data == 0 && source.drained() && !uncounted.is_empty() {
                self.count(toc, &std::mem::take(&mut uncounted), &source);
            }
            if !source.open() && running.is_empty() && schema_done {
                break;
            }
            tokio::select! {
                done = &mut schema, if !schema_done => {
                    done.expect("a run to wait for")?;
                    tracing::debug!("the schema is created");
                    schema_done = true;
                }
                done = running.next(), if !running.is_empty() => {
                    if let Ran::Data(batch) = done.expect("not empty")? {
                        loading_data -= 1;
                        uncounted.extend(batch.iter().copied());
                        finished.extend(batch);
                    }
                }
                () = source.arrive(), if source.open() => {}
            }
        }
        self.count(toc, &uncounted, &source);
        Ok(Started {
            data_entries: data_entries.to_vec(),
            loaded,
            built,
        })
    }

    /// Step 4, once the whole copy matched its manifest.
    async fn finish(&self, started: &Started) -> Result<(), StepError> {
        let rest: Vec<i64> = started
            .data_entries
            .iter()
            .copied()
            .filter(|id| !started.loaded.contains(id))
            .collect();
        if !rest.is_empty() {
            let list = self.list(&rest, "data-rest")?;
            self.run(&["--section=data".into(), list])?
                .finish(self.ctx)
                .await?;
        }
        let mut post_data = vec![
            "--section=post-data".to_string(),
            format!("--jobs={}", self.jobs),
        ];
        if !started.built.is_empty() {
            let rest: Vec<i64> = self
                .entries("post-data")
                .await?
                .into_iter()
                .filter(|id| !started.built.contains(id))
                .collect();
            if rest.is_empty() {
                return Ok(());
            }
            post_data.push(self.list(&rest, "post-data-rest")?);
        }
        // The data is in; what is left (foreign keys, triggers, the indexes not built yet)
        // can take a while, and is said rather than shown as a bar stuck at 100 %.
        let step = Some(self.ctx.step_id.as_str());
        self.ctx.events.notice(
            step,
            "all table data is loaded; building the remaining indexes and constraints".into(),
        );
        let began = std::time::Instant::now();
        self.run(&post_data)?.finish(self.ctx).await?;
        self.ctx.events.notice(
            step,
            format!(
                "indexes and constraints built in {}",
                crate::plan::duration::format(began.elapsed())
            ),
        );
        Ok(())
    }
}

/// A feed's outcome as a run's: pg_restore stops reading once it has its tables, and
/// what was left unread is not its business.
fn fed_as_expected(fed: std::io::Result<()>) -> std::io::Result<()> {
    match fed {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A task that is stopped when whoever waits for it stops waiting (a restore that failed
/// or was cancelled leaves nothing reading the repository).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl AbortOnDrop<std::io::Result<()>> {
    async fn wait(self) -> std::io::Result<()> {
        self.join()
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the copy of the archive as it is written, up to the end of one block.
struct Follow {
    spool: std::path::PathBuf,
    counter: std::sync::Arc<std::sync::Mutex<RowCounter>>,
    on_disk: tokio::sync::watch::Receiver<u64>,
    /// The block whose end ends the feed.
    last: i64,
}

impl Follow {
    /// Writes `head`, then the copy's bytes from `from` to the end of block `last`, into
    /// the pipe `to`, waiting for the writer where the copy does not reach yet. Should
    /// the end of the block never be seen (the reader stopped understanding the archive),
    /// the rest of the copy follows, and pg_restore reads what it needs of it. Blocking:
    /// for a thread of its own.
    fn feed(
        mut self,
        head: &[u8],
        from: u64,
        mut to: std::fs::File,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<()> {
        use std::io::Write;
        const PIECE: usize = 1 << 20;
        to.write_all(head)?;
        let file = std::fs::File::open(&self.spool)?;
        let mut at = from;
        let mut complete = false;
        loop {
            let on_disk = *self.on_disk.borrow_and_update();
            let end = {
                let counter = self.counter.lock().expect("the reader is not poisoned");
                counter.block(self.last).and_then(|(_, end)| end)
            };
            let until = end.map_or(on_disk, |end| end.min(on_disk));
            if at < until {
                let want = PIECE.min((until - at) as usize);
                match crate::pipe::splice_to_pipe(&file, at, want, &mut to)? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => at += n as u64,
                }
                continue;
            }
            if complete || end.is_some_and(|end| at >= end) {
                return Ok(());
            }
            if runtime.block_on(self.on_disk.changed()).is_err() {
                // The writer has gone: the copy is as long as it will be.
                complete = true;
            }
        }
    }
}

/// The temporary directory of one restore (under TMPDIR), removed when dropped.
fn spool_dir() -> Result<tempfile::TempDir, StepError> {
    tempfile::Builder::new()
        .prefix("opsrunner-restore-")
        .tempdir()
        .map_err(|e| spool_error(&std::env::temp_dir(), &e))
}

fn spool_error(path: &Path, e: &std::io::Error) -> StepError {
    StepError::permanent(format!(
        "cannot spool the archive to {} (the temporary directory; point TMPDIR at a disk with room): {e}",
        path.display()
    ))
}

/// Decompresses one stored file of a backup to a local file (an archive for pg_restore).
pub async fn unpack_file(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    to: &Path,
) -> Result<(), StepError> {
    unpack(ctx, store, manifest, name, to, None).await
}

/// Decompresses one stored file to a local path.
async fn unpack(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    to: &Path,
    watch: Option<&Watch>,
) -> Result<(), StepError> {
    let Loaded {
        mut reader,
        verdict,
        read,
        size,
    } = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "restore", read, Some(size));
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| spool_error(to, &e))?;
    let copied = tokio::select! {
        r = copy_to_file(&mut reader, &mut file, watch) => r,
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    };
    drop(reader);
    checked(verdict, ctx).await?;
    copied.map_err(|(writing, e)| {
        if writing {
            spool_error(to, &e)
        } else {
            StepError::permanent(format!("{name}: decompressing failed: {e}"))
        }
    })
}

/// Copies a reader into a file; the error says which side failed (`true`: writing).
///
/// Two stages, so that both cores work: this task reads (which decompresses, and
/// decrypts and hashes what is stored), a blocking thread counts the rows and writes the
/// pieces it is handed. A few pieces in flight, 1 MiB each, bound the memory.
async fn copy_to_file(
    reader: &mut crate::repo::Reader,
    file: &mut tokio::fs::File,
    watch: Option<&Watch>,
) -> Result<(), (bool, std::io::Error)> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    const PIECE: usize = 1 << 20;
    let (full_tx, mut full_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (empty_tx, mut empty_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(6);
    let mut out = file
        .try_clone()
        .await
        .map_err(|e| (true, e))?
        .into_std()
        .await;
    let watch = watch.cloned();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut head_told = false;
        let mut written = 0u64;
        while let Some(piece) = full_rx.blocking_recv() {
            let mut head = None;
            let mut done = Vec::new();
            let mut started = Vec::new();
            if let Some(watch) = &watch {
                let mut counter = watch.counter.lock().expect("the reader is not poisoned");
                counter.feed(&piece);
                if !head_told && counter.head_parsed() {
                    head = Some((counter.toc().clone(), counter.head()));
                }
                done = counter.take_completed();
                started = counter.take_started();
            }
            out.write_all(&piece)?;
            written += piece.len() as u64;
            if let Some(watch) = &watch {
                // The blocks are on disk now; their offsets go into the TOC (written
                // long before) so that a pg_restore started from here finds them.
                for (_, patch) in &done {
                    if let Some((at, bytes)) = patch {
                        out.write_all_at(bytes, *at)?;
                    }
                }
                watch.written.send_replace(written);
                if let Some((toc, bytes)) = head {
                    head_told = true;
                    let _ = watch.notify.send(Spooled::Head(toc, bytes));
                }
                if !started.is_empty() {
                    let _ = watch.notify.send(Spooled::Started(started));
                }
            }
            // Handed back for the next read; when the reader has gone, dropped.
            let _ = empty_tx.try_send(piece);
        }
        out.flush()
    });
    let read = async {
        loop {
            let mut piece = empty_rx.try_recv().unwrap_or_default();
            piece.resize(PIECE, 0);
            let mut filled = 0;
            // Whole pieces: fewer hand-overs than one per decompressed block.
            while filled < PIECE {
                let n = reader.read(&mut piece[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok::<(), std::io::Error>(());
            }
            piece.truncate(filled);
            if full_tx.send(piece).await.is_err() {
                // The writer stopped: its error says why.
                return Ok(());
            }
        }
    };
    let read = read.await;
    drop(full_tx);
    let written = writer
        .await
        .map_err(|e| (true, std::io::Error::other(e.to_string())))?;
    read.map_err(|e| (false, e))?;
    written.map_err(|e| (true, e))
}

/// Rebuilds pg_dump's directory (`dump/…`) from the stored files; returns its path.
pub async fn unpack_directory(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    spool: &Path,
) -> Result<std::path::PathBuf, StepError> {
    let out = spool.join("dump");
    tokio::fs::create_dir_all(&out)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    let ext = manifest.compression.extension();
    for f in &manifest.files {
        let plain = f.name.strip_prefix("dump/").unwrap_or(&f.name);
        let plain = plain
            .strip_suffix(crate::repo::crypto::EXTENSION)
            .unwrap_or(plain);
        let plain = plain.strip_suffix(ext).unwrap_or(plain);
        unpack(ctx, store, manifest, &f.name, &out.join(plain), None).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Batch, batches};

    const MIB: u64 = 1 << 20;

    #[test]
    fn large_tables_load_alone_largest_first_and_small_ones_together() {
        // 300 MiB and 500 MiB tables, then three small ones, then 100 small ones and one
        // of 200 MiB: with two jobs, a run holds up to a quarter of a job's share.
        let mut blocks = vec![(1, 0, 300 * MIB), (2, 300 * MIB, 800 * MIB)];
        let mut at = 800 * MIB;
        for id in 3..106 {
            blocks.push((id, at, at + MIB));
            at += MIB;
        }
        blocks.push((106, at, at + 200 * MIB));
        let runs: Vec<Batch> = batches(&blocks, 2).into();
        let sizes: Vec<u64> = runs.iter().map(|b| (b.end - b.start) / MIB).collect();
        assert_eq!(sizes, [500, 300, 200, 103]);
        assert_eq!(runs[0].ids, [2]);
        assert_eq!(runs[3].ids, (3..106).collect::<Vec<_>>());
        assert_eq!((runs[3].start, runs[3].end), (800 * MIB, 903 * MIB));
        // Every block is in exactly one run.
        let mut ids: Vec<i64> = runs.iter().flat_map(|b| b.ids.clone()).collect();
        ids.sort();
        assert_eq!(ids, (1..107).collect::<Vec<_>>());
    }

    #[test]
    fn small_tables_are_gathered_up_to_the_cap_and_gaps_split_runs() {
        // 2,000 tables of 1 MiB: total 2,000 MiB, cap 250 MiB with two jobs.
        let blocks: Vec<(i64, u64, u64)> = (0..2000)
            .map(|i| (i, i as u64 * MIB, (i as u64 + 1) * MIB))
            .collect();
        let runs = batches(&blocks, 2);
        assert_eq!(runs.len(), 8);
        assert!(runs.iter().all(|b| b.end - b.start <= 250 * MIB));
        // Blocks that are not next to each other are never read as one range.
        let apart = [(1, 0, MIB), (2, 2 * MIB, 3 * MIB)];
        assert_eq!(batches(&apart, 2).len(), 2);
    }
}

/// Why a restore failed when the cause lies with the destination or the tools rather
/// than in the backup: a verify must not call a backup damaged for a missing extension,
/// role or locale, a server or pg_restore of the wrong version, or a full disk. `None`
/// when the message names none of these.
pub fn environment_problem(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    let has = |a: &str| m.contains(a);
    let named = |a: &str, b: &str| m.split(a).skip(1).any(|after| after.contains(b));
    Some(if has("unrecognized configuration parameter") {
        "the destination server does not know a setting the restore sends (client tools newer than the server)"
    } else if has("unsupported version") && has("file header") {
        "pg_restore is older than the pg_dump that wrote the backup"
    } else if has("extension control file") || named("extension \"", "is not available") {
        "an extension the backup uses is not installed on the destination server"
    } else if has("could not access file \"$libdir") || has("could not load library") {
        "a library the backup's functions need is not installed on the destination server"
    } else if named("role \"", "does not exist") {
        "a role the backup names does not exist on the destination server"
    } else if named("tablespace \"", "does not exist") {
        "a tablespace the backup names does not exist on the destination server"
    } else if named("collation \"", "does not exist")
        || has("invalid locale name")
        || has("could not create locale")
    {
        "a collation or locale the backup uses is missing on the destination server"
    } else if has("permission denied") || has("must be owner") || has("must be superuser") {
        "the restoring user lacks a privilege on the destination server"
    } else if has("no space left on device") || has("could not extend file") || has("disk full") {
        "the destination ran out of disk space"
    } else if has("out of memory") || has("too many connections") {
        "the destination server ran out of resources"
    } else if has("could not connect")
        || has("connection to server")
        || has("server closed the connection")
        || has("terminating connection")
        || has("the database system is")
    {
        "the destination server could not be reached or went away"
    } else if has("found in pg_bin_dir") {
        "a PostgreSQL program of a version that fits is not installed"
    } else {
        return None;
    })
}

#[cfg(test)]
mod environment_tests {
    use super::environment_problem;

    #[test]
    fn tools_and_server_problems_are_told_from_damage() {
        for message in [
            "pg_restore failed (exit status: 1): pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter \"transaction_timeout\"",
            "pg_restore: error: could not execute query: ERROR:  could not open extension control file \"/usr/share/postgresql/13/extension/hstore.control\": No such file or directory",
            "ERROR:  extension \"postgis\" is not available",
            "ERROR:  role \"app_owner\" does not exist",
            "pg_restore: error: unsupported version (1.16) in file header",
            "no `pg_restore` of version 18 or newer found in pg_bin_dir, OPSRUNNER_PG_BIN_DIR, PATH or /usr/lib/postgresql/*/bin",
            "ERROR:  could not extend file \"base/16384/16385\": No space left on device",
        ] {
            assert!(environment_problem(message).is_some(), "{message}");
        }
        for message in [
            "pg_restore: error: could not read from input file: end of file",
            "the backup does not match its manifest: SHA-256 differs",
            "pg_restore: error: could not execute query: ERROR:  syntax error at or near \"CRATE\"",
            "ERROR:  duplicate key value violates unique constraint \"t_pkey\"",
        ] {
            assert_eq!(environment_problem(message), None, "{message}");
        }
    }
}
