//! `sql`: runs SQL text against a target through sqlx. The simple query protocol is used,
//! so a file may hold several statements and every value comes back as text.

use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::pg::conn::ConnInfo;
use crate::pg::server::classify;
use crate::plan::step_params::{CheckScope, Problem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Row, ValueRef};
use std::future::Future;
use std::path::Path;

/// `sql`: runs SQL against a target.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Database on the target's server (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// SQL text to run (give either `query` or `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A file of SQL, relative to the plan file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Run all statements in one transaction: all of them take effect, or none.
    #[serde(default)]
    pub transaction: bool,
    /// The SQL changes data. On a `protected` target, SQL runs in a read-only session
    /// unless the step says it writes; a step that writes is destructive there and needs
    /// `--confirm TARGET`.
    #[serde(default)]
    pub writes: bool,
}

pub struct Sql;

impl StepType for Sql {
    const NAME: &'static str = "sql";
    type Params = SqlParams;
    const OUTPUTS: &'static [&'static str] = &["rows", "value"];

    fn target(p: &SqlParams) -> Option<&str> {
        Some(&p.target)
    }

    /// Only SQL that says it writes: read-only queries beside a running backup are fine.
    fn writes_target(p: &SqlParams) -> bool {
        p.writes
    }

    fn check(p: &SqlParams, scope: &CheckScope<'_>) -> Vec<Problem> {
        if p.query.is_some() != p.file.is_some() {
            return Vec::new();
        }
        let problem = if p.query.is_some() {
            Problem::new(&["file"], "").help("remove `query` or `file`")
        } else {
            Problem::new(&[], "").help("add `query: SQL` or `file: path/to/file.sql`")
        };
        vec![Problem {
            message: format!(
                "step `{}` needs exactly one of `query` and `file`",
                scope.step_id
            ),
            ..problem
        }]
    }

    /// SQL from a file that may not be read counts as destructive.
    fn destructive(p: &SqlParams, base_dir: &Path, read_files: bool) -> bool {
        p.writes || (!read_files && p.file.is_some()) || destructive(p, base_dir)
    }

    fn describe(p: &SqlParams) -> String {
        describe(p)
    }

    fn run(
        p: &SqlParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

pub fn describe(p: &SqlParams) -> String {
    match (&p.query, &p.file) {
        (Some(q), _) => format!(
            "run SQL on target `{}`{}: {}",
            p.target,
            in_tx(p),
            one_line(q)
        ),
        (None, Some(f)) => format!("run SQL file {f} on target `{}`{}", p.target, in_tx(p)),
        (None, None) => format!("run SQL on target `{}`", p.target),
    }
}

fn in_tx(p: &SqlParams) -> &'static str {
    if p.transaction {
        " in one transaction"
    } else {
        ""
    }
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Statements that remove or rewrite data or schema. A heuristic on the text: it errs on
/// the side of asking for confirmation.
pub fn destructive(p: &SqlParams, base_dir: &Path) -> bool {
    let text = match (&p.query, &p.file) {
        (Some(q), _) => q.clone(),
        // Only a regular file is read (a FIFO would block the preview forever), and only so
        // much of it; what cannot be read counts as destructive.
        (None, Some(f)) => {
            let path = base_dir.join(f);
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= 16 << 20) {
                return true;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(_) => return true,
            }
        }
        _ => String::new(),
    };
    let upper = text.to_uppercase();
    upper
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| matches!(w, "DROP" | "TRUNCATE" | "DELETE" | "ALTER" | "UPDATE"))
}

pub async fn run(p: &SqlParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let conn = ConnInfo::parse(ctx.target_url(&p.target)?)?;
    let conn = match &p.database {
        Some(db) => conn.with_database(db),
        None => conn,
    };
    let text = match (&p.query, &p.file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => {
            let path = ctx.resolve(f);
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| StepError::permanent(format!("cannot read {}: {e}", path.display())))?
        }
        (None, None) => return Err(StepError::permanent("no `query` or `file` given")),
    };
    let work = async {
        let mut conn = conn.connect_to(&format!("target `{}`", p.target)).await?;
        let read_only = ctx.protected.contains(&p.target) && !p.writes;
        let rows = if read_only {
            contain(&mut conn, &p.target).await?;
            run_read_only(&mut conn, &text).await?
        } else {
            let sql = sqlx::raw_sql(sqlx::AssertSqlSafe(text));
            if p.transaction {
                // All statements or none: a failure rolls the transaction back when it is
                // dropped.
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| classify(&e, "BEGIN failed"))?;
                let rows = sql
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| classify(&e, "SQL failed (rolled back)"))?;
                tx.commit()
                    .await
                    .map_err(|e| classify(&e, "COMMIT failed"))?;
                rows
            } else {
                sql.fetch_all(&mut conn)
                    .await
                    .map_err(|e| classify(&e, "SQL failed"))?
            }
        };
        let _ = conn.close().await;
        let mut outputs = Outputs::new();
        outputs.insert("rows".into(), rows.len().to_string());
        let value = match rows.first() {
            Some(row) if !row.is_empty() => {
                let raw = row
                    .try_get_raw(0)
                    .map_err(|e| classify(&e, "reading the result failed"))?;
                if raw.is_null() {
                    String::new()
                } else {
                    raw.as_str().map(str::to_string).unwrap_or_default()
                }
            }
            _ => String::new(),
        };
        outputs.insert("value".into(), value);
        Ok(outputs)
    };
    tokio::select! {
        result = work => result.map_err(|e| read_only_refusal(e, &p.target)),
        // Dropping the connection closes the socket; the server then cancels the query.
        _ = ctx.cancel.cancelled() => Err(StepError::cancelled()),
    }
}

/// What a role may do beyond its own tables that a read-only transaction does not stop:
/// write or read the server's files, run programs as the server's user, or open sessions
/// of its own (dblink, a foreign server) that are not read-only. One row of
/// `(what, how it is reached)` for each; none for a role that is contained.
const REACH: &str = r#"
select what from (
  select 'superuser' as what
   where exists (select 1 from pg_catalog.pg_roles r
                  where r.rolsuper and pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'))
  union all
  select 'membership in ' || r.rolname || ' (' || case r.rolname
           when 'pg_write_server_files' then 'COPY … TO a file'
           when 'pg_execute_server_program' then 'COPY … TO PROGRAM'
           else 'pg_read_file, COPY … FROM a file' end || ')'
    from pg_catalog.pg_roles r
   where r.rolname in ('pg_write_server_files', 'pg_execute_server_program', 'pg_read_server_files')
     and pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
  union all
  select 'EXECUTE on ' || p.oid::regprocedure::text || ' (reads or writes a server file)'
    from pg_catalog.pg_proc p
   where p.pronamespace = 'pg_catalog'::regnamespace
     and p.proname in ('lo_export', 'lo_import')
     and pg_catalog.has_function_privilege(session_user, p.oid, 'EXECUTE')
  union all
  select 'the ' || e.extname || ' extension (' || case e.extname
           when 'adminpack' then 'writes server files'
           else 'opens sessions that are not read-only' end || ')'
    from pg_catalog.pg_extension e
   where e.extname in ('dblink', 'adminpack')
     and exists (select 1 from pg_catalog.pg_depend d
                  where d.refclassid = 'pg_catalog.pg_extension'::regclass
                    and d.refobjid = e.oid and d.deptype = 'e'
                    and d.classid = 'pg_catalog.pg_proc'::regclass
                    and pg_catalog.has_function_privilege(session_user, d.objid, 'EXECUTE'))
  union all
  select 'USAGE on foreign server ' || pg_catalog.quote_ident(s.srvname)
         || ' (opens sessions that are not read-only)'
    from pg_catalog.pg_foreign_server s
   where pg_catalog.has_server_privilege(session_user, s.oid, 'USAGE')
) reach
"#;

/// Refuses, before any of the step's SQL is sent, a session whose role could reach past
/// the read-only transaction. The role is the session's login role: `SET ROLE` or `SET
/// SESSION AUTHORIZATION` to a lesser one would not contain anything, since the step's own
/// SQL could `RESET ROLE` first.
async fn contain(conn: &mut sqlx::PgConnection, target: &str) -> Result<(), StepError> {
    let found = sqlx::raw_sql(REACH)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot read what the session's role may do"))?;
    let mut reach: Vec<String> = found
        .iter()
        .filter_map(|row| row.try_get_raw(0).ok()?.as_str().ok().map(str::to_string))
        .collect();
    // A superuser reaches everything else on the list: naming the rest would bury it.
    if reach.first().is_some_and(|r| r == "superuser") {
        reach.truncate(1);
    }
    if reach.is_empty() {
        return Ok(());
    }
    Err(StepError {
        kind: ErrorKind::Refused,
        message: format!(
            "target `{target}` is protected, so SQL runs read-only, but the role it connects as could reach past a read-only transaction: {}; nothing was run. Point the step at a target that connects as a role without these rights (see README, \"Guards\"), or, if the step is meant to change data, declare `writes: true` (it then needs --confirm {target})",
            reach.join("; ")
        ),
    })
}

/// The step's SQL inside one read-only transaction that it cannot leave: the transaction
/// has read a snapshot before the first statement (so `SET TRANSACTION READ WRITE` is
/// refused), each statement is sent alone after the server has parsed it as exactly one
/// statement (so text the cutter got wrong fails instead of running), and after each the
/// transaction is checked to be the same one (so a `COMMIT` ends the step before anything
/// runs outside it). Rolled back at the end: a read-only transaction has nothing to keep.
async fn run_read_only(
    conn: &mut sqlx::PgConnection,
    text: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, StepError> {
    use sqlx::{Executor, SqlSafeStr};
    sqlx::raw_sql("begin transaction read only")
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(&e, "BEGIN failed"))?;
    let ours = transaction_start(conn).await?;
    let mut rows = Vec::new();
    for (n, statement) in crate::pg::statements::split(text).into_iter().enumerate() {
        let n = n + 1;
        if let Err(e) = (&mut *conn)
            .prepare(sqlx::AssertSqlSafe(statement.to_string()).into_sql_str())
            .await
        {
            let e = classify(&e, &format!("statement {n}"));
            if e.message.contains("SQLSTATE 42601") && e.message.contains("multiple commands") {
                return Err(StepError {
                    kind: ErrorKind::Refused,
                    message: format!(
                        "statement {n} is more than one statement as the server reads it, and read-only SQL runs one statement at a time; nothing after statement {} ran",
                        n - 1
                    ),
                });
            }
            return Err(e);
        }
        let more = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| classify(&e, &format!("SQL failed at statement {n}")))?;
        rows.extend(more);
        if transaction_start(conn).await? != ours {
            return Err(StepError {
                kind: ErrorKind::Refused,
                message: format!(
                    "statement {n} ended the read-only transaction (COMMIT, ROLLBACK or the like); nothing after it ran"
                ),
            });
        }
    }
    let _ = sqlx::raw_sql("rollback").execute(&mut *conn).await;
    Ok(rows)
}

/// When the session's transaction started: the same text for as long as it is the same
/// transaction (microseconds; a later one starts later).
async fn transaction_start(conn: &mut sqlx::PgConnection) -> Result<String, StepError> {
    let row = sqlx::raw_sql("select pg_catalog.now()::text")
        .fetch_one(conn)
        .await
        .map_err(|e| classify(&e, "cannot read the transaction's start"))?;
    Ok(row
        .try_get_raw(0)
        .ok()
        .and_then(|v| v.as_str().ok().map(str::to_string))
        .unwrap_or_default())
}

/// A write refused by the read-only session on a protected target, in plain words.
fn read_only_refusal(e: StepError, target: &str) -> StepError {
    let read_write = e.message.contains("SQLSTATE 25001") && e.message.contains("read-write");
    if e.message.contains("SQLSTATE 25006") || read_write {
        StepError {
            kind: ErrorKind::Refused,
            message: format!(
                "{}: target `{target}` is protected, so SQL runs read-only; if the step is meant to change data, declare `writes: true` (it then needs --confirm {target})",
                e.message
            ),
        }
    } else {
        e
    }
}
