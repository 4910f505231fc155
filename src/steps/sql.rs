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
        let mut conn = conn
            .connect()
            .await
            .map_err(|e| classify(&e, &format!("cannot connect to target `{}`", p.target)))?;
        let read_only = ctx.protected.contains(&p.target) && !p.writes;
        if read_only {
            // The server enforces what a keyword scan cannot: no SQL text, however built
            // (templates, `execute 'dr' || 'op …'`, a file written by an earlier step),
            // writes through this session.
            sqlx::raw_sql("set default_transaction_read_only = on")
                .execute(&mut conn)
                .await
                .map_err(|e| classify(&e, "cannot make the session read-only"))?;
        }
        let sql = sqlx::raw_sql(sqlx::AssertSqlSafe(text));
        let rows = if p.transaction {
            // All statements or none: a failure rolls the transaction back when it is dropped.
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

/// A write refused by the read-only session on a protected target, in plain words.
fn read_only_refusal(e: StepError, target: &str) -> StepError {
    if e.message.contains("SQLSTATE 25006") {
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
