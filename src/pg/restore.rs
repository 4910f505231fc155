//! Streaming a stored backup into a database: the archive flows from the repository,
//! checked against its manifest on the way, into pg_restore or psql, which stop at the
//! first error — a restore never "succeeds" with errors. Which database it goes into, and
//! how it replaces an existing one, is [`super::swap`]'s business.

use super::conn::ConnInfo;
use super::database::quote_ident;
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
/// needs a seekable file, and such an archive has no data offsets in its table of
/// contents, so every worker would scan the file from the start for its table. Instead:
/// the schema is restored from the stream; then `jobs` pg_restore processes each read the
/// stream and load their share of the tables (balanced by the row counts the manifest
/// recorded), one of them keeping a copy on disk; then the post-data section (indexes,
/// constraints, triggers: no data to look for) runs with `-j` from that copy.
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

    let list_file = dir.path().join("toc.list");
    let list_args = vec![
        "--list".to_string(),
        format!("--file={}", list_file.display()),
    ];
    let lister = PgProcess::spawn(pg_restore, &list_args, ctx, |_| {}, true, false)?;
    feed(ctx, store, manifest, name, lister, false).await?;
    let toc = std::fs::read_to_string(&list_file)
        .map_err(|e| StepError::transient(format!("reading the archive's contents: {e}")))?;

    let mut pre = args.to_vec();
    pre.push("--section=pre-data".into());
    let process = PgProcess::spawn(pg_restore, &pre, ctx, configure, true, false)?;
    feed(ctx, store, manifest, name, process, false).await?;

    // Split the table data between workers, largest tables first, each to the least loaded.
    let entries: Vec<&str> = toc
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    // pg_restore reading a pipe can only take entries in archive order: every list keeps it.
    let mut shares: Vec<(i64, Vec<usize>)> = (0..jobs).map(|_| (0, Vec::new())).collect();
    let mut data: Vec<(i64, usize)> = entries
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" TABLE DATA "))
        .map(|(i, l)| (rows_of(manifest, l), i))
        .collect();
    data.sort_by_key(|(rows, _)| std::cmp::Reverse(*rows));
    for (rows, index) in data {
        let share = shares
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("jobs ≥ 1");
        share.0 += rows.max(1);
        share.1.push(index);
    }
    // Everything else of the data section (sequence values, large objects) goes to the first.
    shares[0]
        .1
        .extend((0..entries.len()).filter(|&i| !entries[i].contains(" TABLE DATA ")));
    let shares: Vec<Vec<&str>> = shares
        .into_iter()
        .map(|(_, mut indexes)| {
            indexes.sort_unstable();
            indexes.into_iter().map(|i| entries[i]).collect()
        })
        .collect();
    let spool = dir.path().join("archive.pgdump");
    let mut workers = Vec::new();
    for (i, lines) in shares.iter().enumerate() {
        let list = dir.path().join(format!("data-{i}.list"));
        std::fs::write(&list, lines.join("\n") + "\n").map_err(|e| spool_error(&list, &e))?;
        let mut worker_args = args.to_vec();
        worker_args.extend([
            "--section=data".to_string(),
            format!("--use-list={}", list.display()),
        ]);
        let process = PgProcess::spawn(pg_restore, &worker_args, ctx, configure, true, false)?;
        let keep = (i == 0).then_some(spool.as_path());
        workers.push(feed_keeping(ctx, store, manifest, name, process, keep));
    }
    for result in futures_util::future::join_all(workers).await {
        result?;
    }

    let mut post = args.to_vec();
    post.extend(["--section=post-data".to_string(), format!("--jobs={jobs}")]);
    post.push(spool.display().to_string());
    PgProcess::spawn(pg_restore, &post, ctx, configure, false, false)?
        .finish(ctx)
        .await
}

/// Rows the manifest recorded for a `TABLE DATA schema table owner` line of the TOC.
fn rows_of(manifest: &Manifest, line: &str) -> i64 {
    let Some(rest) = line.split(" TABLE DATA ").nth(1) else {
        return 0;
    };
    let mut words = rest.split(' ');
    let (Some(schema), Some(table)) = (words.next(), words.next()) else {
        return 0;
    };
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            s.to_string()
        } else {
            quote_ident(s)
        }
    };
    let key = format!("{}.{}", quote(schema), quote(table));
    manifest.fingerprints.get(&key).map_or(0, |f| f.rows)
}

/// Feeds the decompressed file to a process; with `keep`, also writes it to that path, to
/// the end even when the process stops reading early (it may have all it needs), and
/// checks the stored file against the manifest.
async fn feed_keeping(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    mut process: PgProcess,
    keep: Option<&Path>,
) -> Result<(), StepError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Loaded {
        mut reader,
        verdict,
        read,
        size,
    } = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "restore", read, Some(size));
    let mut copy = match keep {
        Some(path) => Some((
            tokio::fs::File::create(path)
                .await
                .map_err(|e| spool_error(path, &e))?,
            path,
        )),
        None => None,
    };
    // The pump owns pg_restore's stdin: whatever way it ends (a full spool disk, a damaged
    // file), stdin closes with it, and pg_restore cannot wait for input forever.
    let mut stdin = Some(process.stdin());
    let pump = async move {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| {
                StepError::permanent(format!("{name}: reading the backup failed: {e}"))
            })?;
            if n == 0 {
                break;
            }
            if let Some((c, path)) = copy.as_mut() {
                c.write_all(&buf[..n])
                    .await
                    .map_err(|e| spool_error(path, &e))?;
            }
            if let Some(s) = stdin.as_mut()
                && s.write_all(&buf[..n]).await.is_err()
            {
                // pg_restore stopped reading; its exit status tells whether that is fine.
                stdin = None;
                if copy.is_none() {
                    break;
                }
            }
        }
        if let Some((c, path)) = copy.as_mut() {
            c.flush().await.map_err(|e| spool_error(path, &e))?;
        }
        Ok::<(), StepError>(())
    };
    let pumped = tokio::select! {
        r = pump => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    if pumped.is_err() {
        // It will not get the rest of its input; do not wait for it to notice.
        process.stop(ctx).await;
    }
    let finished = process.finish(ctx).await;
    if keep.is_some() {
        checked(verdict, ctx).await?;
    }
    pumped?;
    finished
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
        r = copy_to_file(&mut reader, &mut file) => r,
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
async fn copy_to_file(
    reader: &mut crate::repo::Reader,
    file: &mut tokio::fs::File,
) -> Result<(), (bool, std::io::Error)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| (false, e))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await.map_err(|e| (true, e))?;
    }
    file.flush().await.map_err(|e| (true, e))
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
        unpack(ctx, store, manifest, &f.name, &out.join(plain)).await?;
    }
    Ok(out)
}
