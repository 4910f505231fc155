//! Talking to a server: connecting with the version learned, picking the client tools
//! that fit it, and judging sqlx errors transient or permanent. Shared by every step that
//! touches PostgreSQL.

use super::conn::ConnInfo;
pub use super::conn::{classify, error_text};
use super::tools;
use crate::exec::{StepContext, StepError};
use sqlx::{PgConnection, Row};

/// Connects to the target (or the database the step names) and learns the server's version.
pub struct Server {
    pub conn: PgConnection,
    pub info: ConnInfo,
    pub major: u32,
    pub version: String,
    pub database: String,
}

pub async fn connect(url: &str, database: Option<&str>, what: &str) -> Result<Server, StepError> {
    let info = ConnInfo::parse(url)?;
    let info = match database {
        Some(db) => info.with_database(db),
        None => info,
    };
    let mut conn = info.connect_to(what).await?;
    let row = sqlx::query("select current_setting('server_version_num')::int, current_setting('server_version'), current_database()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| classify(&e, "cannot read the server version"))?;
    let num: i32 = row.get(0);
    if num >= 140000 {
        // When opsrunner gives up (timeout, Ctrl-C) while a query waits for a lock, the
        // server would otherwise keep the session until the lock is granted.
        sqlx::raw_sql("set client_connection_check_interval = 1000")
            .execute(&mut conn)
            .await
            .map_err(|e| classify(&e, "cannot configure the session"))?;
    }
    Ok(Server {
        conn,
        info,
        major: (num / 10000) as u32,
        version: row.get(1),
        database: row.get(2),
    })
}

/// The program `name` that fits `want`, searched where the step's plan says first; its
/// choice is said in the step's log, since which version ran matters when something fails.
pub fn tool(ctx: &StepContext, name: &str, want: tools::Want) -> Result<tools::Found, StepError> {
    // A missing program will not appear on a retry.
    let found = tools::Search::new(ctx.pg_bin_dirs.clone())
        .find(name, want)
        .map_err(|e| StepError::permanent(e.to_string()))?;
    tracing::debug!(program = %found.describe(), ?want, "chosen");
    Ok(found)
}

/// Says in the step's log which program runs against which server: when versions are
/// mixed, the first thing to know about a failure.
pub fn say_tool(ctx: &StepContext, found: &tools::Found, server: &Server) {
    ctx.events.output(
        &ctx.step_id,
        crate::exec::events::Stream::Stdout,
        format!(
            "using {} for server PostgreSQL {}",
            found.describe(),
            server
                .version
                .split_whitespace()
                .next()
                .unwrap_or(&server.version)
        ),
    );
}
