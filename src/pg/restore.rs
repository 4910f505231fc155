//! Restoring a stored backup into a database: the database is created (or, when asked,
//! replaced), and the archive streamed from the repository into pg_restore or psql, which
//! stop at the first error — a restore never "succeeds" with errors.

use super::conn::ConnInfo;
use super::process::PgProcess;
use super::server::{classify, tool};
use crate::repo::AnyStore;
use crate::repo::manifest::{DumpFormat, Manifest};
use crate::repo::pipeline;
use crate::steps::{ErrorKind, StepContext, StepError};
use sqlx::PgConnection;
use std::path::Path;

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub async fn database_exists(conn: &mut PgConnection, name: &str) -> Result<bool, StepError> {
    sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(|e| classify(&e, "cannot look up databases"))
}

/// Whether a database holds anything of its own: relations, functions or types outside the
/// system schemas, or schemas besides `public`.
async fn database_is_empty(info: &ConnInfo) -> Result<bool, StepError> {
    let mut conn = info
        .connect()
        .await
        .map_err(|e| classify(&e, "cannot connect to the existing database"))?;
    let objects: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                 where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%')
              + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where n.nspname not in ('pg_catalog', 'information_schema'))
              + (select count(*) from pg_namespace where nspname not in ('public', 'information_schema') and nspname not like 'pg\\_%')",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| classify(&e, "cannot inspect the existing database"))?;
    Ok(objects == 0)
}

/// Drops a database, ending its sessions first.
pub async fn drop_database(conn: &mut PgConnection, name: &str) -> Result<(), StepError> {
    let sql = format!("drop database if exists {} with (force)", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map_err(|e| classify(&e, &format!("cannot drop database `{name}`")))?;
    Ok(())
}

pub async fn create_database(conn: &mut PgConnection, name: &str) -> Result<(), StepError> {
    let sql = format!("create database {} template template0", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map_err(|e| classify(&e, &format!("cannot create database `{name}`")))?;
    Ok(())
}

/// Makes `database` ready to receive a restore: created when missing, used when empty,
/// replaced when `overwrite`, refused otherwise (nothing is touched then).
pub async fn prepare_database(
    maintenance: &mut PgConnection,
    server: &ConnInfo,
    database: &str,
    overwrite: bool,
    target: &str,
) -> Result<(), StepError> {
    if !database_exists(maintenance, database).await? {
        return create_database(maintenance, database).await;
    }
    if database_is_empty(&server.with_database(database)).await? {
        return Ok(());
    }
    if !overwrite {
        return Err(StepError {
            kind: ErrorKind::Refused,
            message: format!(
                "database `{database}` on target `{target}` exists and is not empty; nothing was touched. Set `overwrite: true` to replace it"
            ),
        });
    }
    drop_database(maintenance, database).await?;
    create_database(maintenance, database).await
}

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
            .map_err(|e| StepError::transient(format!("cannot create a spool directory: {e}")))
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
            feed(ctx, store, manifest, &manifest.files[0].name, process, true).await
        }
        DumpFormat::Custom if jobs == 1 => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            let process = PgProcess::spawn(&pg_restore, &args, ctx, configure, true, false)?;
            feed(ctx, store, manifest, &manifest.files[0].name, process, true).await
        }
        DumpFormat::Custom => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            parallel_custom(ctx, store, manifest, &pg_restore, &args, jobs, &configure).await
        }
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
/// `reads_all: false` is for `pg_restore --list`, which stops reading after the table of
/// contents: the broken pipe that follows is expected then.
pub async fn feed(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    mut process: PgProcess,
    reads_all: bool,
) -> Result<(), StepError> {
    let mut reader = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let mut stdin = process.stdin();
    let copied = tokio::select! {
        r = tokio::io::copy(&mut reader, &mut stdin) => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    drop(stdin);
    // The process's own exit status explains a broken pipe better than the pipe does.
    process.finish(ctx).await?;
    match copied {
        Err(e) if !reads_all && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(StepError::permanent(format!(
            "{name}: reading the backup failed: {e}"
        ))),
        Ok(_) => Ok(()),
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
    let name = &manifest.files[0].name;
    let dir = tempfile::Builder::new()
        .prefix("opsrunner-restore-")
        .tempdir()
        .map_err(|e| StepError::transient(format!("cannot create a spool directory: {e}")))?;

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
        std::fs::write(&list, lines.join("\n") + "\n")
            .map_err(|e| StepError::transient(e.to_string()))?;
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
/// the end even when the process stops reading early (it may have all it needs).
async fn feed_keeping(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    mut process: PgProcess,
    keep: Option<&Path>,
) -> Result<(), StepError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut reader = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let mut copy = match keep {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| StepError::transient(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let mut stdin = Some(process.stdin());
    let pump = async {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| format!("{name}: reading the backup failed: {e}"))?;
            if n == 0 {
                break;
            }
            if let Some(c) = copy.as_mut() {
                c.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
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
        if let Some(c) = copy.as_mut() {
            c.flush().await.map_err(|e| e.to_string())?;
        }
        drop(stdin.take());
        Ok::<(), String>(())
    };
    let pumped = tokio::select! {
        r = pump => r,
        _ = ctx.cancel.cancelled() => {
            process.stop(ctx).await;
            return Err(StepError::cancelled());
        }
    };
    process.finish(ctx).await?;
    pumped.map_err(StepError::permanent)
}

/// Decompresses one stored file to a local path.
async fn unpack(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    name: &str,
    to: &Path,
) -> Result<(), StepError> {
    let mut reader = pipeline::load(store, manifest, name, ctx.identities.as_ref())
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| StepError::transient(format!("{}: {e}", to.display())))?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| StepError::permanent(format!("{name}: decompressing failed: {e}")))?;
    Ok(())
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
