//! Restoring a stored backup into a database: the database is created (or, when asked,
//! replaced), and the archive streamed from the repository into pg_restore or psql, which
//! stop at the first error — a restore never "succeeds" with errors.

use super::conn::ConnInfo;
use super::process::PgProcess;
use crate::repo::local::LocalStore;
use crate::repo::manifest::{DumpFormat, Manifest};
use crate::repo::pipeline;
use crate::steps::backup::tool;
use crate::steps::sql::classify;
use crate::steps::{ErrorKind, StepContext, StepError};
use sqlx::PgConnection;
use std::path::Path;

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The major version of the pg_dump that wrote a backup ("pg_dump (PostgreSQL) 15.14 …").
fn dump_major(manifest: &Manifest) -> u32 {
    manifest
        .pg_dump_version
        .split(')')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    store: &LocalStore,
    manifest: &Manifest,
    into: &ConnInfo,
    server_major: u32,
    jobs: Option<u32>,
    no_owner: bool,
) -> Result<(), StepError> {
    let major = server_major.max(dump_major(manifest));
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
            // Parallel restore needs a seekable file, not a pipe.
            let (pg_restore, _) = tool("pg_restore", major)?;
            let dir = spool()?;
            let file = dir.path().join("archive.pgdump");
            unpack(store, manifest, &manifest.files[0].name, &file).await?;
            args.push(format!("--jobs={jobs}"));
            args.push(file.display().to_string());
            PgProcess::spawn(&pg_restore, &args, ctx, configure, false, false)?
                .finish(ctx)
                .await
        }
        DumpFormat::Directory => {
            let (pg_restore, _) = tool("pg_restore", major)?;
            let dir = spool()?;
            let out = unpack_directory(store, manifest, dir.path()).await?;
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
    store: &LocalStore,
    manifest: &Manifest,
    name: &str,
    mut process: PgProcess,
    reads_all: bool,
) -> Result<(), StepError> {
    let mut reader = pipeline::load(store, &manifest.backup_id, name, manifest.compression)
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

/// Decompresses one stored file to a local path.
async fn unpack(
    store: &LocalStore,
    manifest: &Manifest,
    name: &str,
    to: &Path,
) -> Result<(), StepError> {
    let mut reader = pipeline::load(store, &manifest.backup_id, name, manifest.compression)
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
    store: &LocalStore,
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
        let plain = plain.strip_suffix(ext).unwrap_or(plain);
        unpack(store, manifest, &f.name, &out.join(plain)).await?;
    }
    Ok(out)
}
