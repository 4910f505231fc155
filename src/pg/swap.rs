//! Replacing a database without ever destroying it first: a restore goes into a staging
//! database beside the target, and only a restore that completed and passed its checks
//! takes the target's name.
//!
//! Names: for a database `D`, the staging database is `D_opsrunner_new_<h>` and the
//! replaced one, for the moment between the swap and its drop, `D_opsrunner_old_<h>`,
//! where `<h>` is 8 hex digits of a hash of `D` (so the names stay unique when a long `D`
//! is shortened to PostgreSQL's 63 bytes). One restore into `D` runs at a time (a session
//! advisory lock per `D` on the maintenance connection), so the names are fixed per `D`,
//! and whatever a killed run left behind is found and removed by the next restore into
//! `D` before it starts.
//!
//! The swap: sessions on `D` are terminated, then one transaction renames `D` to the old
//! name and the staging database to `D`. Renaming a database takes an exclusive lock on
//! it, which new connections to `D` wait for; they fail once ("database does not exist …
//! just been renamed") when it commits, and the next attempt reaches the new `D`. So the
//! window in which `D` is unavailable is the two catalog updates, plus up to 5 s in which
//! PostgreSQL waits for terminated sessions to exit. The old database is dropped after
//! the commit.

use super::database::{drop, execute, exists, quote_ident, terminate_sessions};
use super::server::classify;
use crate::exec::StepError;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

const NEW: &str = "_opsrunner_new_";
const OLD: &str = "_opsrunner_old_";
/// PostgreSQL's longest identifier in bytes (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The staging (`new`) or replaced (`old`) name for `database`.
fn name(database: &str, mark: &str) -> String {
    let hash = Sha256::digest(database.as_bytes());
    let suffix = format!("{mark}{}", crate::digest::hex(&hash[..4]));
    let mut room = MAX_NAME - suffix.len();
    while !database.is_char_boundary(room.min(database.len())) {
        room -= 1;
    }
    format!("{}{suffix}", &database[..room.min(database.len())])
}

pub fn staging_name(database: &str) -> String {
    name(database, NEW)
}

pub fn replaced_name(database: &str) -> String {
    name(database, OLD)
}

/// Takes the lock that lets one restore into `database` run at a time. It lasts as long as
/// the connection.
pub async fn lock(conn: &mut PgConnection, database: &str, target: &str) -> Result<(), StepError> {
    let key = super::database::advisory_key("restore", database);
    let locked = super::database::try_advisory_lock(conn, key, "restore lock").await?;
    if locked {
        Ok(())
    } else {
        Err(StepError::transient(format!(
            "another restore into database `{database}` on target `{target}` is running; nothing was touched"
        )))
    }
}

/// Removes what an interrupted restore into `database` left: its staging database, and a
/// replaced database whose drop did not happen after a completed swap. Needs the lock.
/// Returns what it removed, for the log.
pub async fn clean_leftovers(
    conn: &mut PgConnection,
    database: &str,
) -> Result<Vec<String>, StepError> {
    let mut removed = Vec::new();
    let staging = staging_name(database);
    if exists(conn, &staging).await? {
        drop(conn, &staging).await?;
        removed.push(staging);
    }
    let old = replaced_name(database);
    if exists(conn, &old).await? {
        if exists(conn, database).await? {
            drop(conn, &old).await?;
            removed.push(old);
        } else {
            // Cannot come from a swap (it renames both in one transaction): someone dropped
            // the new database by hand. The old one may be all there is; keep it.
            tracing::warn!(
                "database `{old}` is left from a replaced `{database}`, and `{database}` does not exist; not touching it"
            );
        }
    }
    Ok(removed)
}

/// Gives the staging database the name `database`; when `database` exists, swaps them in
/// one transaction and drops the replaced one afterwards.
pub async fn promote(conn: &mut PgConnection, database: &str) -> Result<(), StepError> {
    let staging = staging_name(database);
    let old = replaced_name(database);
    let replacing = exists(conn, database).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if replacing {
            terminate_sessions(conn, database).await?;
        }
        let result = async {
            let mut tx = conn
                .begin()
                .await
                .map_err(|e| classify(&e, "cannot begin the swap"))?;
            if replacing {
                execute(
                    &mut tx,
                    format!(
                        "alter database {} rename to {}",
                        quote_ident(database),
                        quote_ident(&old)
                    ),
                    &format!("cannot rename `{database}` aside"),
                )
                .await?;
            }
            execute(
                &mut tx,
                format!(
                    "alter database {} rename to {}",
                    quote_ident(&staging),
                    quote_ident(database)
                ),
                &format!("cannot rename the restored database to `{database}`"),
            )
            .await?;
            tx.commit()
                .await
                .map_err(|e| classify(&e, "cannot commit the swap"))
        }
        .await;
        match result {
            Ok(()) => break,
            // 55006: a session reconnected between termination and rename; try again.
            Err(e) if attempt < 5 && e.message.contains("SQLSTATE 55006") => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) if e.message.contains("SQLSTATE 55006") => {
                return Err(StepError {
                    message: format!(
                        "{}; other sessions kept reconnecting to `{database}` or could not be ended (ending them needs superuser or membership in pg_signal_backend)",
                        e.message
                    ),
                    ..e
                });
            }
            Err(e) => return Err(e),
        }
    }
    if replacing && let Err(e) = drop(conn, &old).await {
        // The new database is in place; the old one is a named leftover the next restore
        // into `database` removes.
        tracing::warn!("{e}; the next restore into `{database}` removes `{old}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ() {
        assert!(staging_name("app").starts_with("app_opsrunner_new_"));
        assert!(replaced_name("app").starts_with("app_opsrunner_old_"));
        let long = "é".repeat(40);
        let a = staging_name(&long);
        assert!(a.len() <= MAX_NAME, "{a}");
        let b = staging_name(&format!("{long}x"));
        assert_ne!(a, b);
        assert_ne!(staging_name("app"), staging_name("app2"));
    }
}
