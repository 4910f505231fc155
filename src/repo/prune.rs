//! Deleting what a retention policy does not keep: one path for the `prune` step and for
//! `opsrunner backups prune`, so that both decide and delete the same way.

use super::listing;
use super::retention::{self, Candidate, Decision, Keep};
use super::{AnyStore, BackupStore, wal};
use chrono::Utc;
use std::io;
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
                    parent: m.base.as_ref().and_then(|b| b.parent.clone()),
                    id: entry.id,
                    database: m.series(),
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

/// The WAL that no kept base backup needs: every archived file of a segment before the
/// start of the oldest base backup that stays. Timeline history files always stay (they
/// are tiny, and choosing a timeline needs them). With no base backup left, nothing.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WalVictims {
    /// Oldest first: an interrupted prune leaves the archive without a hole.
    pub names: Vec<String>,
    /// The oldest kept base backup and the segment its recovery starts at.
    pub kept_from: Option<(String, String)>,
}

impl WalVictims {
    /// The deletions as decisions (`id` `.wal/NAME`, database `WAL`), for listings.
    pub fn as_decisions(&self) -> Vec<Decision> {
        let reason = self
            .kept_from
            .as_ref()
            .map(|(backup, segment)| {
                format!("before {segment}, where the oldest kept base backup {backup} starts")
            })
            .unwrap_or_default();
        self.names
            .iter()
            .map(|n| Decision {
                id: format!("{}/{n}", wal::DIR),
                database: "WAL".into(),
                keep: false,
                damaged: false,
                reasons: vec![reason.clone()],
            })
            .collect()
    }

    pub fn describe(&self) -> Option<String> {
        let (backup, segment) = self.kept_from.as_ref()?;
        Some(match (self.names.first(), self.names.last()) {
            (Some(first), Some(last)) => format!(
                "delete WAL {first} … {last} ({} file{}): before {segment}, where the oldest kept base backup {backup} starts",
                self.names.len(),
                if self.names.len() == 1 { "" } else { "s" }
            ),
            _ => format!(
                "keep   WAL from {segment} on, where the oldest kept base backup {backup} starts: nothing older is archived"
            ),
        })
    }
}

/// The WAL the decisions leave without a base backup to need it.
pub async fn wal_victims(store: &AnyStore, decisions: &[Decision]) -> io::Result<WalVictims> {
    let deleted: std::collections::BTreeSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    let kept: Vec<(String, super::manifest::BaseBackup)> = listing::base_backups(store)
        .await?
        .into_iter()
        .filter(|c| !deleted.contains(c.manifest.backup_id.as_str()))
        .filter_map(|c| c.manifest.base.map(|b| (c.manifest.backup_id, b)))
        .collect();
    let Some((backup, base)) = kept
        .iter()
        .min_by_key(|(_, b)| b.start().unwrap_or(0) / b.wal_segment_size)
    else {
        return Ok(WalVictims::default());
    };
    let size = base.wal_segment_size;
    let start = base.start().unwrap_or(0) / size;
    let mut names: Vec<(u64, String)> = wal::list(store)
        .await?
        .into_iter()
        .filter_map(|n| wal::file_position(&n, size).map(|p| (p, n)))
        .filter(|(p, _)| *p < start)
        .collect();
    names.sort();
    Ok(WalVictims {
        names: names.into_iter().map(|(_, n)| n).collect(),
        kept_from: Some((
            backup.clone(),
            wal::segment_name(base.timeline, start, size),
        )),
    })
}

/// Deletes the WAL victims, oldest first, checking `cancelled` before each.
pub async fn delete_wal(
    store: &AnyStore,
    victims: &WalVictims,
    cancelled: impl Fn() -> bool,
) -> Result<usize, Stopped> {
    for name in &victims.names {
        if cancelled() {
            return Err(Stopped::Cancelled);
        }
        wal::delete(store, name)
            .await
            .map_err(|error| Stopped::Delete {
                id: format!("{}/{name}", wal::DIR),
                error,
            })?;
    }
    Ok(victims.names.len())
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
