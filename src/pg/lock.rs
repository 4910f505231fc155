//! A run's exclusive hold on a database server it writes to: a session-level advisory lock
//! (no table, no write), held on a connection of its own for as long as the run lasts.
//! The server releases it when that connection ends, however the process ends. Advisory
//! locks are per database: the lock is taken in the database of the target's URL.

use super::conn::ConnInfo;
use sqlx::{Connection, PgConnection, Row};

/// The two-key form of the advisory lock: "opsr", "unnr". Fixed, so every opsrunner run
/// against the same database contends for the same lock.
pub const KEY: (i32, i32) = (0x6f70_7372, 0x756e_6e72);

/// An advisory lock held by this process.
pub struct TargetLock {
    conn: PgConnection,
}

/// The outcome of one attempt.
pub enum Attempt {
    Held(TargetLock),
    /// Another session holds it: its `application_name` (which an opsrunner holder fills
    /// with its run, plan, host and pid) or, when the server does not show it, its pid.
    Busy(String),
}

/// One attempt to take the lock, never waiting. `label` names this holder to others; the
/// server keeps at most 63 bytes of it.
pub async fn try_lock(info: &ConnInfo, label: &str) -> Result<Attempt, sqlx::Error> {
    let options = info
        .options()
        .map_err(|e| sqlx::Error::Configuration(e.into()))?
        .application_name(&truncate(label, 63));
    let mut conn = PgConnection::connect_with(&options).await?;
    let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
        .bind(KEY.0)
        .bind(KEY.1)
        .fetch_one(&mut conn)
        .await?;
    if held {
        return Ok(Attempt::Held(TargetLock { conn }));
    }
    // Who holds it, as far as this role may see (other roles' sessions may be hidden).
    let row = sqlx::query(
        "select a.pid, coalesce(a.application_name, '') as app, \
                coalesce(a.client_addr::text, 'local') as addr, \
                to_char(a.backend_start at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as since \
         from pg_locks l left join pg_stat_activity a on a.pid = l.pid \
         where l.locktype = 'advisory' and l.granted and l.classid = $1::oid \
           and l.objid = $2::oid and l.objsubid = 2 \
           and l.database = (select oid from pg_database where datname = current_database()) \
         limit 1",
    )
    .bind(i64::from(KEY.0))
    .bind(i64::from(KEY.1))
    .fetch_optional(&mut conn)
    .await?;
    let _ = conn.close().await;
    let holder = match row {
        Some(row) => {
            let pid: Option<i32> = row.try_get("pid").ok();
            let app: String = row.try_get("app").unwrap_or_default();
            let addr: String = row.try_get("addr").unwrap_or_default();
            let since: Option<String> = row.try_get("since").ok();
            let mut s = if app.is_empty() {
                "a session".to_string()
            } else {
                format!("`{app}`")
            };
            if let Some(pid) = pid {
                s.push_str(&format!(" (server pid {pid}, from {addr}"));
                if let Some(since) = since {
                    s.push_str(&format!(", connected since {since} UTC"));
                }
                s.push(')');
            }
            s
        }
        None => "another session (it let go a moment ago; try again)".to_string(),
    };
    Ok(Attempt::Busy(holder))
}

impl TargetLock {
    /// Unlocks and closes the connection.
    pub async fn release(mut self) {
        let _ = sqlx::query("select pg_advisory_unlock($1, $2)")
            .bind(KEY.0)
            .bind(KEY.1)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
