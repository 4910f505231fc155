//! `pitr_mark`: a restore point on a live cluster with the fingerprints its tables have at
//! exactly that point, archived as a mark ([`crate::repo::mark`]) so that a point-in-time
//! verify can recover to it and compare content, not only replay WAL.
//!
//! "Exactly" is the hard part: a snapshot and a position in the WAL are not the same thing
//! (a transaction's commit record can precede a snapshot that still sees it as running). So
//! one session takes SHARE locks on every fingerprinted table — which waits for the
//! transactions writing to them to end, and holds off new writes — while a second session
//! takes its snapshot and the first makes the restore point; then the locks go. Every write
//! to those tables committed before the restore point is in the snapshot, and none after
//! it: recovery stopped at the restore point holds what the snapshot shows. Writers wait
//! only for the lock, the snapshot and the restore point (milliseconds); the counting runs
//! afterwards in the snapshot, while they write again.

use super::base_parts::await_archived;
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::pg::fingerprint;
use crate::pg::server::{Server, classify, connect};
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::manifest::{FingerprintMode, parse_lsn};
use crate::repo::mark::{self, Mark};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Row};
use std::future::Future;
use std::time::Duration;

/// `pitr_mark`: a restore point with the fingerprints of the target database's tables.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PitrMarkParams {
    /// The primary whose WAL the repository archives (its user must be allowed
    /// `pg_create_restore_point` and `pg_switch_wal`: a superuser, or granted both).
    pub target: String,
    /// The database whose tables are fingerprinted (default: the target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The repository whose WAL archive the server's `archive_command` writes to.
    pub repository: String,
    /// `counts` (row counts, default) or `full` (row counts and a hash of every row: reads
    /// every table).
    #[serde(default)]
    pub fingerprint: FingerprintMode,
    /// How long to wait for the transactions writing to the tables to finish (writers that
    /// start meanwhile queue behind the mark, so keep it short); a busy table makes the
    /// step fail (and be retried), never wait for ever.
    #[serde(default = "default_lock_wait")]
    pub lock_wait: String,
    /// How long to wait for the archive to hold the restore point's segment (the step
    /// switches to a new segment at once, so the server archives it).
    #[serde(default = "default_wal_wait")]
    pub wal_wait: String,
}

fn default_lock_wait() -> String {
    // Writers queue behind the lock request while it waits: a short wait, retried, holds
    // a busy table up less than one long one.
    "2s".into()
}

fn default_wal_wait() -> String {
    "2m".into()
}

pub struct PitrMark;

impl StepType for PitrMark {
    const NAME: &'static str = "pitr_mark";
    type Params = PitrMarkParams;
    const OUTPUTS: &'static [&'static str] = &["name", "lsn", "timeline", "time", "tables"];

    fn target(p: &PitrMarkParams) -> Option<&str> {
        Some(&p.target)
    }

    fn repository(p: &PitrMarkParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn writes_repository(_: &PitrMarkParams) -> bool {
        true
    }

    fn check(p: &PitrMarkParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if p.fingerprint == FingerprintMode::None {
            problems.push(Problem::new(
                &["fingerprint"],
                "a mark is its fingerprints: use `counts` or `full`",
            ));
        }
        for (key, value) in [("lock_wait", &p.lock_wait), ("wal_wait", &p.wal_wait)] {
            if let Err(e) = crate::plan::duration::parse(value) {
                problems.push(Problem::new(&[key], format!("`{key}`: {e}")));
            }
        }
        problems
    }

    fn describe(p: &PitrMarkParams) -> String {
        format!(
            "mark a moment of target `{}` for point-in-time verifies: a restore point, with the {} of every table of {} as of it (writes to those tables wait at most {} while the restore point is made), archived in repository `{}` once its WAL segment is",
            p.target,
            match p.fingerprint {
                FingerprintMode::Full => "row counts and row hashes",
                _ => "row counts",
            },
            p.database
                .as_ref()
                .map_or_else(|| "its database".to_string(), |d| format!("database `{d}`")),
            p.lock_wait,
            p.repository
        )
    }

    fn run(
        p: &PitrMarkParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// What the server says about itself before the mark.
struct Cluster {
    system_identifier: String,
    wal_segment_size: u64,
}

async fn inspect(server: &mut Server, target: &str) -> Result<Cluster, StepError> {
    let row = sqlx::query(
        "select (select system_identifier::text from pg_control_system()),
                (select setting::bigint from pg_settings where name = 'wal_segment_size'),
                pg_is_in_recovery(),
                current_setting('wal_level')",
    )
    .fetch_one(&mut server.conn)
    .await
    .map_err(|e| classify(&e, "cannot read the server's settings"))?;
    let in_recovery: bool = row.get(2);
    let wal_level: String = row.get(3);
    if in_recovery {
        return Err(StepError::permanent(format!(
            "target `{target}` is a standby: restore points are made on the primary"
        )));
    }
    if wal_level == "minimal" {
        return Err(StepError::permanent(format!(
            "target `{target}` runs with wal_level = minimal: its WAL cannot be archived for point-in-time recovery"
        )));
    }
    let size: i64 = row.get(1);
    Ok(Cluster {
        system_identifier: row.get(0),
        wal_segment_size: size as u64,
    })
}

/// Where the restore point was made.
struct Point {
    name: String,
    lsn: String,
    timeline: u32,
    time: DateTime<Utc>,
}

pub async fn run(p: &PitrMarkParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let recipients = ctx.recipients(&p.repository)?;
    let lock_wait = crate::plan::duration::parse(&p.lock_wait).map_err(StepError::permanent)?;
    let wal_wait = crate::plan::duration::parse(&p.wal_wait).map_err(StepError::permanent)?;
    let url = ctx.target_url(&p.target)?;
    let what = format!("target `{}`", p.target);
    let database = p.database.as_deref();
    let mut holder = connect(url, database, &what).await?;
    let mut reader = connect(url, database, &what).await?;
    let cluster = inspect(&mut holder, &p.target).await?;
    let marked = tokio::select! {
        r = mark_and_count(p, &mut holder, &mut reader, lock_wait) => r?,
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    };
    let (point, fingerprints) = marked;
    // The restore point's segment is archived only once it is complete; a switch completes
    // it now (the rest of it is zeros, which compress to almost nothing).
    sqlx::query("select pg_switch_wal()")
        .execute(&mut holder.conn)
        .await
        .map_err(|e| classify(&e, "cannot switch to a new WAL segment (pg_switch_wal)"))?;
    let _ = holder.conn.close().await;
    let _ = reader.conn.close().await;
    let mark = Mark {
        name: point.name,
        lsn: point.lsn,
        timeline: point.timeline,
        time: point.time,
        system_identifier: cluster.system_identifier,
        wal_segment_size: cluster.wal_segment_size,
        database: holder.database.clone(),
        fingerprint: p.fingerprint,
        fingerprints,
        opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let file = mark
        .file_name()
        .ok_or_else(|| StepError::permanent(format!("the server returned {}", mark.lsn)))?;
    let segment = file[..24].to_string();
    if let Some((_, first)) =
        await_archived(&store, std::slice::from_ref(&segment), wal_wait, ctx).await?
    {
        return Err(StepError::permanent(format!(
            "restore point `{}` was made at {}, but after {} the WAL archive of repository `{}` still lacks {first}, which holds it: the server does not archive into this repository, or archiving fails (see pg_stat_archiver). No mark was recorded.",
            mark.name,
            mark.lsn,
            crate::plan::duration::format(wal_wait),
            p.repository
        )));
    }
    mark::store(&store, &mark, recipients.as_ref())
        .await
        .map_err(|e| StepError::transient(format!("cannot archive mark {file}: {e}")))?;
    ctx.events
        .output(&ctx.step_id, Stream::Stdout, mark::describe(&mark));
    let mut outputs = Outputs::new();
    outputs.insert("name".into(), mark.name.clone());
    outputs.insert("lsn".into(), mark.lsn.clone());
    outputs.insert("timeline".into(), mark.timeline.to_string());
    outputs.insert(
        "time".into(),
        mark.time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    outputs.insert("tables".into(), mark.fingerprints.len().to_string());
    Ok(outputs)
}

/// The locks, the snapshot and the restore point (see the module's comment), then the
/// fingerprints in that snapshot.
async fn mark_and_count(
    p: &PitrMarkParams,
    holder: &mut Server,
    reader: &mut Server,
    lock_wait: Duration,
) -> Result<
    (
        Point,
        std::collections::BTreeMap<String, crate::repo::manifest::TableFingerprint>,
    ),
    StepError,
> {
    let tables = fingerprint::tables(&mut holder.conn)
        .await
        .map_err(|e| classify(&e, "cannot list the tables"))?;
    let sql = |e: sqlx::Error, doing: &str| classify(&e, doing);
    sqlx::raw_sql("begin")
        .execute(&mut holder.conn)
        .await
        .map_err(|e| sql(e, "cannot begin"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "set local lock_timeout = {}",
        lock_wait.as_millis().max(1)
    )))
    .execute(&mut holder.conn)
    .await
    .map_err(|e| sql(e, "cannot set lock_timeout"))?;
    if !tables.is_empty() {
        // The names come from format('%I.%I'): quoted where needed, safe to interpolate.
        let lock = format!("lock table {} in share mode", tables.join(", "));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
            .execute(&mut holder.conn)
            .await
        {
            let code = match &e {
                sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
                _ => None,
            };
            return Err(match code.as_deref() {
                // lock_not_available: transactions kept writing for the whole wait.
                Some("55P03") => StepError::transient(format!(
                    "transactions writing to the tables of database `{}` did not finish within lock_wait {}: no restore point was made (a retry may find a quieter moment)",
                    holder.database, p.lock_wait
                )),
                // undefined_table: dropped between the listing and the lock.
                Some("42P01") => StepError::transient(format!(
                    "a table was dropped while the mark was being made: {e}"
                )),
                _ => classify(&e, "cannot lock the tables"),
            });
        }
    }
    // The snapshot is taken by the first query of the repeatable-read transaction: after
    // the locks, before the restore point.
    sqlx::raw_sql("begin isolation level repeatable read read only; select 1")
        .execute(&mut reader.conn)
        .await
        .map_err(|e| sql(e, "cannot take a snapshot"))?;
    let name = format!(
        "opsrunner-mark-{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        fastrand::u16(..)
    );
    let row = sqlx::query(
        "select lsn::text, pg_walfile_name(lsn),
                (extract(epoch from clock_timestamp()) * 1000000)::bigint
         from (select pg_create_restore_point($1) as lsn) p",
    )
    .bind(&name)
    .fetch_one(&mut holder.conn)
    .await
    .map_err(|e| sql(e, "cannot create a restore point (pg_create_restore_point)"))?;
    sqlx::raw_sql("commit")
        .execute(&mut holder.conn)
        .await
        .map_err(|e| sql(e, "cannot release the locks"))?;
    let lsn: String = row.get(0);
    let walfile: String = row.get(1);
    let micros: i64 = row.get(2);
    let timeline = u32::from_str_radix(walfile.get(..8).unwrap_or_default(), 16)
        .map_err(|_| StepError::permanent(format!("pg_walfile_name returned `{walfile}`")))?;
    if parse_lsn(&lsn).is_none() {
        return Err(StepError::permanent(format!(
            "pg_create_restore_point returned `{lsn}`"
        )));
    }
    let time = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StepError::permanent("the server's clock reads an impossible time"))?;
    let fingerprints = fingerprint::take(&mut reader.conn, p.fingerprint, Some(&tables))
        .await
        .map_err(|e| classify(&e, "cannot take the fingerprints"))?;
    sqlx::raw_sql("commit")
        .execute(&mut reader.conn)
        .await
        .map_err(|e| sql(e, "cannot end the snapshot"))?;
    if let Some(missing) = tables.iter().find(|t| !fingerprints.contains_key(*t)) {
        return Err(StepError::permanent(format!(
            "table {missing} was locked but is not in the snapshot taken after the lock"
        )));
    }
    Ok((
        Point {
            name,
            lsn,
            timeline,
            time,
        },
        fingerprints,
    ))
}
