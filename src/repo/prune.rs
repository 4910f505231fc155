//! Deleting what a retention policy does not keep: one path for the `prune` step and for
//! `opsrunner backups prune`, so that both decide and delete the same way.

use super::listing;
use super::retention::{self, Candidate, Decision, Keep};
use super::{AnyStore, BackupStore};
use chrono::Utc;
use std::time::Duration;

/// What to keep, and where.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keep: Keep,
    /// Never delete backups younger than this.
    pub min_age: Option<Duration>,
    /// Only backups of this database (default: all, each database on its own).
    pub database: Option<String>,
}

/// Decisions for every backup in scope, identified by location. Damaged backups are
/// listed as such, never deleted and never counted as keepers.
pub async fn decide(store: &AnyStore, p: &Policy) -> Result<Vec<Decision>, String> {
    if let Some(problem) = p.keep.problem() {
        return Err(problem);
    }
    let mut candidates = Vec::new();
    let mut damaged = Vec::new();
    for entry in listing::list(store)
        .await
        .map_err(|e| format!("cannot list the repository: {e}"))?
    {
        match entry.backup {
            Ok(checked) => {
                let m = checked.manifest;
                if p.database.as_ref().is_some_and(|d| *d != m.database) {
                    continue;
                }
                candidates.push(Candidate {
                    id: entry.id,
                    database: m.database,
                    created_at: m.created_at,
                    verification: entry.trust.verification().cloned(),
                });
            }
            Err(reason) => damaged.push(Decision {
                id: entry.id,
                database: "?".into(),
                keep: true,
                damaged: true,
                reasons: vec![format!(
                    "{reason}; never deleted by a policy, not counted as a keeper"
                )],
            }),
        }
    }
    let mut decisions = retention::select(&candidates, &p.keep, p.min_age, Utc::now())?;
    decisions.extend(damaged);
    Ok(decisions)
}

/// One decision in one line: `keep   ID (db): reasons`, `delete …` or `skip … (damaged)`.
pub fn describe(d: &Decision) -> String {
    if d.damaged {
        format!("skip   {} (damaged): {}", d.id, d.reasons.join("; "))
    } else if d.keep {
        format!("keep   {} ({}): {}", d.id, d.database, d.reasons.join("; "))
    } else {
        format!("delete {} ({}): {}", d.id, d.database, d.reasons.join("; "))
    }
}

/// Why deleting stopped before the end.
#[derive(Debug)]
pub enum Stopped {
    Cancelled,
    Delete { id: String, error: std::io::Error },
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Cancelled => f.write_str("cancelled"),
            Stopped::Delete { id, error } => write!(f, "deleting {id}: {error}"),
        }
    }
}

/// Deletes every backup the decisions do not keep (damaged ones are always kept), in
/// order, checking `cancelled` before each; returns the ids deleted.
pub async fn delete(
    store: &AnyStore,
    decisions: &[Decision],
    cancelled: impl Fn() -> bool,
) -> Result<Vec<String>, Stopped> {
    let mut deleted = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        if cancelled() {
            return Err(Stopped::Cancelled);
        }
        store.delete(&d.id).await.map_err(|error| Stopped::Delete {
            id: d.id.clone(),
            error,
        })?;
        deleted.push(d.id.clone());
    }
    Ok(deleted)
}
