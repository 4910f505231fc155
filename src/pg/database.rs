//! Databases on a server: quoting their names, whether one exists or holds anything,
//! creating, dropping, and ending the sessions on one.

use super::conn::ConnInfo;
use super::server::classify;
use crate::exec::StepError;
use sqlx::{Connection, PgConnection};

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool, StepError> {
    sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(|e| classify(&e, "cannot look up databases"))
}

pub(super) async fn execute(
    conn: &mut PgConnection,
    sql: String,
    what: &str,
) -> Result<(), StepError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| classify(&e, what))
}

/// Drops a database, ending its sessions first.
pub async fn drop(conn: &mut PgConnection, name: &str) -> Result<(), StepError> {
    execute(
        conn,
        format!("drop database if exists {} with (force)", quote_ident(name)),
        &format!("cannot drop database `{name}`"),
    )
    .await
}

/// Creates an empty database; `like` names one whose encoding, locale and owner to copy
/// (the owner only where this role may give it away; otherwise the new database is this
/// role's, with a warning).
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    like: Option<&str>,
) -> Result<(), StepError> {
    let mut sql = format!("create database {} template template0", quote_ident(name));
    let what = format!("cannot create database `{name}`");
    let Some(like) = like else {
        return execute(conn, sql, &what).await;
    };
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "select pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text,
                pg_get_userbyid(datdba)::text
         from pg_database where datname = $1",
    )
    .bind(like)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| classify(&e, "cannot read the database's encoding"))?;
    let Some((encoding, collate, ctype, owner)) = row else {
        return execute(conn, sql, &what).await;
    };
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    sql.push_str(&format!(
        " encoding {} lc_collate {} lc_ctype {}",
        lit(&encoding),
        lit(&collate),
        lit(&ctype)
    ));
    let with_owner = format!("{sql} owner {}", quote_ident(&owner));
    match execute(conn, with_owner, &what).await {
        Err(e) if e.message.contains("SQLSTATE 42501") => {
            tracing::warn!(
                "the restored `{like}` will be owned by this role, not by `{owner}`: {}",
                e.message
            );
            execute(conn, sql, &what).await
        }
        other => other,
    }
}

/// Whether a database holds anything of its own: relations, functions or types outside the
/// system schemas, or schemas besides `public`.
pub async fn is_empty(info: &ConnInfo) -> Result<bool, StepError> {
    let mut conn = info.connect_to("the existing database").await?;
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
    let _ = conn.close().await;
    Ok(objects == 0)
}

/// Ends every other session on a database.
pub(super) async fn terminate_sessions(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(), StepError> {
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(|e| classify(&e, &format!("cannot end the sessions on `{name}`")))
}

/// The session advisory lock key of `purpose` ("restore", "verify") on database `name`:
/// one key per database and purpose, the same in every opsrunner.
pub fn advisory_key(purpose: &str, name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("opsrunner {purpose}\0{name}").as_bytes());
    i64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// Takes session advisory lock `key` unless another session holds it; `false` then. It
/// lasts until unlocked or the connection ends.
pub async fn try_advisory_lock(
    conn: &mut PgConnection,
    key: i64,
    what: &str,
) -> Result<bool, StepError> {
    sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
        .map_err(|e| classify(&e, &format!("cannot take the {what}")))
}

/// A kind of scratch database a step makes and drops (a verify's test restore, a table
/// restore's way through): from its creation until it is dropped its comment starts with
/// `mark` and a session lock of `purpose` is held on its name, so that a later run
/// recognises one a killed run left behind — and never takes one a running step holds.
pub struct Scratch {
    pub mark: &'static str,
    pub purpose: &'static str,
    /// What the comment says ends it: "the verify", "the restore".
    pub ended_by: &'static str,
}

impl Scratch {
    /// Takes the lock of scratch database `name` if no other session holds it.
    pub async fn try_lock(&self, conn: &mut PgConnection, name: &str) -> Result<bool, StepError> {
        try_advisory_lock(
            conn,
            advisory_key(self.purpose, name),
            "scratch database's lock",
        )
        .await
    }

    pub async fn unlock(&self, conn: &mut PgConnection, name: &str) {
        let _ = sqlx::query("select pg_advisory_unlock($1)")
            .bind(advisory_key(self.purpose, name))
            .execute(conn)
            .await;
    }

    /// Marks scratch database `name`, made by run `run_id`.
    pub async fn mark(
        &self,
        conn: &mut PgConnection,
        name: &str,
        run_id: &str,
    ) -> Result<(), StepError> {
        let comment = format!(
            "{} (run {run_id}); dropped when {} ends",
            self.mark, self.ended_by
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "comment on database {} is '{}'",
            quote_ident(name),
            comment.replace('\'', "''")
        )))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| classify(&e, "cannot mark the scratch database"))
    }

    /// Whether database `name` carries the mark.
    pub async fn is_marked(&self, conn: &mut PgConnection, name: &str) -> Result<bool, StepError> {
        sqlx::query_scalar(
            "select coalesce(pg_catalog.shobj_description(oid, 'pg_database') like $2, false)
               from pg_catalog.pg_database where datname = $1",
        )
        .bind(name)
        .bind(format!("{}%", self.mark))
        .fetch_optional(conn)
        .await
        .map(|found| found.unwrap_or(false))
        .map_err(|e| classify(&e, "cannot look up databases"))
    }

    /// Drops every database on the server that carries the mark and whose lock no running
    /// step holds: what killed runs left, whatever they were called. Their names, for the
    /// log.
    pub async fn remove_left(&self, conn: &mut PgConnection) -> Result<Vec<String>, StepError> {
        let marked: Vec<String> = sqlx::query_scalar(
            "select datname::text from pg_catalog.pg_database
              where pg_catalog.shobj_description(oid, 'pg_database') like $1 order by 1",
        )
        .bind(format!("{}%", self.mark))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot look up databases"))?;
        let mut removed = Vec::new();
        for name in marked {
            if !self.try_lock(conn, &name).await? {
                continue;
            }
            let dropped = drop(conn, &name).await;
            self.unlock(conn, &name).await;
            dropped?;
            removed.push(name);
        }
        Ok(removed)
    }
}
