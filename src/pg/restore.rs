//! Streaming a stored backup into a database: the archive flows from the repository,
//! checked against its manifest on the way, into pg_restore or psql, which stop at the
//! first error — a restore never "succeeds" with errors. Which database it goes into, and
//! how it replaces an existing one, is [`super::swap`]'s business.

use super::conn::ConnInfo;
use super::custom_archive::{NotCounted, RowCounter};
use super::process::PgProcess;
use super::server::tool;
use crate::exec::progress::Meter;
use crate::exec::{StepContext, StepError};
use crate::repo::AnyStore;
use crate::repo::manifest::{DumpFormat, Manifest};
use crate::repo::pipeline::{self, Loaded, Verdict};
use std::path::Path;

/// Streams backup `manifest` into the database `into` points at.
pub async fn restore(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    into: &ConnInfo,
    server_major: u32,
    jobs: Option<u32>,
    no_owner: bool,
) -> Result<(), StepError> {
    let Some(first) = manifest.files.first().map(|f| f.name.clone()) else {
        return Err(StepError::permanent(format!(
            "backup {} is damaged: the manifest lists no files",
            manifest.backup_id
        )));
    };
    let major = server_major.max(manifest.pg_dump_major());
    let jobs = jobs.unwrap_or(1).max(1);
    let id = &manifest.backup_id;
    let configure = |c: &mut tokio::process::Command| into.apply_to(c);
    let dbname = format!("--dbname={}", into.public_url());
    let mut args = vec!["--exit-on-error".to_string(), dbname.clone()];
    if no_owner {
        args.push("--no-owner".into());
        args.push("--no-privileges".into());
    }
    let spool = || {
        tempfile::Builder::new()
            .prefix("opsrunner-restore-")
            .tempdir()
            .map_err(|e| spool_error(&std::env::temp_dir(), &e))
    };
    match manifest.format {
        DumpFormat::Plain => {
            let (psql, _) = tool("psql", major)?;
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
            feed(ctx, store, manifest, &first, process, true).await
        }
        DumpFormat::Custom if jobs == 1 => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            let process = PgProcess::spawn(&pg_restore, &args, ctx, configure, true, false)?;
            feed(ctx, store, manifest, &first, process, true).await
        }
        DumpFormat::Custom => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            parallel_custom(ctx, store, manifest, &pg_restore, &args, jobs, &configure).await
        }
        DumpFormat::Base => Err(StepError::permanent(format!(
            "{id} is a base backup (a copy of a whole cluster): it is restored to a point in time with `to:`, not into a database"
        ))),
        DumpFormat::Directory => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            let dir = spool()?;
            let out = unpack_directory(ctx, store, manifest, dir.path()).await?;
            args.push("--format=directory".into());
            args.push(format!("--jobs={jobs}"));
            args.push(out.display().to_string());
            PgProcess::spawn(&pg_restore, &args, ctx, configure, false, false)?
                .finish(ctx)
                .await
        }
    }
    .map_err(|e| StepError {
        message: format!("restore of {id}: {}", e.message),
        ..e
    })
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
    mut process: PgProcess,
    reads_all: bool,
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
    let mut stdin = process.stdin();
    // A whole restore goes in pieces of up to 1 MiB, not tokio::io::copy's 8 KiB: fewer,
    // fuller writes into the enlarged pipe (see crate::pipe). A reader that stops early
    // (`--list`, a section) gets small pieces: it has what it needs before a damaged part
    // further on is read, and the damage is reported by whoever reads all of it.
    let piece = if reads_all { 1 << 20 } else { 8 << 10 };
    let mut pieces = tokio::io::BufReader::with_capacity(piece, &mut reader);
    let copied = tokio::select! {
        r = tokio::io::copy_buf(&mut pieces, &mut stdin) => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    drop(stdin);
    drop(pieces);
    drop(reader);
    let finished = process.finish(ctx).await;
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
    tokio::select! {
        r = verdict.wait() => r.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => StepError::permanent(format!("the backup does not match its manifest: {e}")),
            _ => crate::exec::io_error("reading the backup", &e),
        }),
        _ = ctx.cancel.cancelled() => Err(StepError::cancelled()),
    }
}

/// A parallel restore of a custom archive that pg_dump wrote to a pipe. `pg_restore -j`
/// needs a seekable file with data offsets, and such an archive has none: pg_restore would
/// search the file chunk by chunk for every table (measured at twice the time of a restore
/// from pg_dump's own file). So the archive is decompressed once to a local file, checked
/// in full against the manifest before anything is restored, while the custom archive
/// reader notes where each entry's data block starts; those offsets are written into the
/// copy's table of contents — it is then byte for byte the archive pg_dump writes to a
/// file — and `pg_restore -j` restores it as it would pg_dump's own. An archive the reader
/// does not understand is restored without offsets: slower, the same result.
async fn parallel_custom(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    pg_restore: &Path,
    args: &[String],
    jobs: u32,
    configure: &(impl Fn(&mut tokio::process::Command) + Sync),
) -> Result<(), StepError> {
    // `restore` made sure the manifest lists a file.
    let name = &manifest.files[0].name;
    let dir = tempfile::Builder::new()
        .prefix("opsrunner-restore-")
        .tempdir()
        .map_err(|e| spool_error(&std::env::temp_dir(), &e))?;
    let spool = dir.path().join("archive.pgdump");
    let layout = std::sync::Arc::new(std::sync::Mutex::new(RowCounter::default()));
    unpack(ctx, store, manifest, name, &spool, Some(&layout)).await?;
    let layout = std::mem::take(&mut *layout.lock().expect("the reader is not poisoned"));
    match layout.finish_layout() {
        Ok(layout) => {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&spool)
                .map_err(|e| spool_error(&spool, &e))?;
            for (at, field) in &layout.patches {
                file.write_all_at(field, *at)
                    .map_err(|e| spool_error(&spool, &e))?;
            }
        }
        Err(NotCounted(why)) => {
            tracing::warn!("restoring without data offsets, which is slower: {why}");
        }
    }
    let mut all = args.to_vec();
    all.push(format!("--jobs={jobs}"));
    all.push(spool.display().to_string());
    PgProcess::spawn(pg_restore, &all, ctx, configure, false, false)?
        .finish(ctx)
        .await
}

fn spool_error(path: &Path, e: &std::io::Error) -> StepError {
    StepError::permanent(format!(
        "cannot spool the archive to {} (the temporary directory; point TMPDIR at a disk with room): {e}",
        path.display()
    ))
}

/// Decompresses one stored file to a local path.
async fn unpack(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    to: &Path,
    watch: Option<&std::sync::Arc<std::sync::Mutex<RowCounter>>>,
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
    watch: Option<&std::sync::Arc<std::sync::Mutex<RowCounter>>>,
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
        while let Some(piece) = full_rx.blocking_recv() {
            if let Some(watch) = &watch {
                watch
                    .lock()
                    .expect("the reader is not poisoned")
                    .feed(&piece);
            }
            out.write_all(&piece)?;
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
