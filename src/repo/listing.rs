//! What a repository holds, read defensively: every backup is identified by its location,
//! its manifest is checked as a whole before anything trusts it, and a damaged entry (an
//! unreadable or inconsistent manifest, a symbolic link, a verification record that does
//! not belong to it) is reported as damaged while everything else still lists, prunes and
//! restores.

use super::manifest::{MANIFEST_NAME, Manifest, VERIFICATION_NAME, Verification};
use super::{BackupStore, check_id};
use sha2::{Digest, Sha256};
use std::io;

/// A manifest that passed [`Manifest::check`] at its location, with the SHA-256 of the
/// manifest file (what verification records are bound to).
#[derive(Debug, Clone)]
pub struct Checked {
    pub manifest: Manifest,
    pub sha256: String,
}

/// What the last verification of a backup says, if it can be believed.
#[derive(Debug, Clone)]
pub enum Trust {
    Never,
    Recorded(Verification),
    /// A record exists but does not vouch for this backup: unreadable, copied from
    /// another backup, or edited.
    Distrusted(String),
}

impl Trust {
    pub fn verification(&self) -> Option<&Verification> {
        match self {
            Trust::Recorded(v) => Some(v),
            _ => None,
        }
    }
}

/// One entry of a repository.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    /// The checked manifest, or why the backup is damaged.
    pub backup: Result<Checked, String>,
    pub trust: Trust,
}

/// Reads and checks the manifest of the backup at `backup_id`. A missing manifest is
/// `NotFound`; a damaged one `InvalidData` with the reason.
pub async fn manifest(store: &impl BackupStore, backup_id: &str) -> io::Result<Checked> {
    check_id(backup_id)?;
    let bytes = store
        .read_small(backup_id, MANIFEST_NAME)
        .await?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no backup `{backup_id}` in {location} (no manifest); `opsrunner backups list --repository {location}` lists the backups there",
                    location = store.uri("").trim_end_matches('/')
                ),
            )
        })?;
    let damaged = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("backup {backup_id} is damaged: {reason}"),
        )
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("{MANIFEST_NAME} is not a valid manifest ({e})")))?;
    manifest.check(backup_id).map_err(damaged)?;
    Ok(Checked {
        manifest,
        sha256: crate::digest::hex(&Sha256::digest(&bytes)),
    })
}

/// Every file of a checked backup is there with the size its manifest records: checked
/// before a restore touches anything, so that a missing or truncated file fails in
/// seconds rather than at the end of a long restore. (The content is checked as it is read.)
pub async fn files_present(store: &impl BackupStore, checked: &Checked) -> io::Result<()> {
    let m = &checked.manifest;
    for f in &m.files {
        let size = store.size(&m.backup_id, &f.name).await.map_err(|e| {
            io::Error::new(e.kind(), format!("backup {}: {}: {e}", m.backup_id, f.name))
        })?;
        if size != f.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "backup {}: {}: {size} bytes stored, the manifest says {} (truncated or damaged)",
                    m.backup_id, f.name, f.size
                ),
            ));
        }
    }
    Ok(())
}

/// The verification record of a checked backup, believed only when it is bound to this
/// very manifest and unchanged since it was written.
pub async fn trust(store: &impl BackupStore, checked: &Checked) -> Trust {
    let id = &checked.manifest.backup_id;
    let bytes = match store.read_small(id, VERIFICATION_NAME).await {
        Ok(None) => return Trust::Never,
        Ok(Some(bytes)) => bytes,
        Err(e) => return Trust::Distrusted(format!("{VERIFICATION_NAME} cannot be read: {e}")),
    };
    match serde_json::from_slice::<Verification>(&bytes) {
        Err(e) => Trust::Distrusted(format!("{VERIFICATION_NAME} is not a valid record ({e})")),
        Ok(v) => match v.distrust(&checked.sha256) {
            Some(reason) => Trust::Distrusted(reason),
            None => Trust::Recorded(v),
        },
    }
}

/// Records a verification of a checked backup, bound to its manifest.
pub async fn record(
    store: &impl BackupStore,
    checked: &Checked,
    verification: Verification,
) -> io::Result<()> {
    store
        .record_verification(
            &checked.manifest.backup_id,
            &verification.sealed_for(&checked.sha256),
        )
        .await
}

/// Every backup of the repository: the readable ones oldest first, then the damaged ones
/// by id. Only a repository that cannot be listed at all is an error.
pub async fn list(store: &impl BackupStore) -> io::Result<Vec<Listed>> {
    let mut good = Vec::new();
    let mut damaged = Vec::new();
    for slot in store.slots().await? {
        if let Some(problem) = slot.problem {
            damaged.push(Listed {
                id: slot.id,
                backup: Err(problem),
                trust: Trust::Never,
            });
            continue;
        }
        match manifest(store, &slot.id).await {
            Ok(checked) => {
                let trust = trust(store, &checked).await;
                good.push((checked, trust));
            }
            // Gone between listing and reading (pruned concurrently): not an entry.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => damaged.push(Listed {
                id: slot.id,
                backup: Err(e.to_string()),
                trust: Trust::Never,
            }),
        }
    }
    good.sort_by(|(a, _), (b, _)| {
        (a.manifest.created_at, &a.manifest.backup_id)
            .cmp(&(b.manifest.created_at, &b.manifest.backup_id))
    });
    let good = without_broken_chains(good, &mut damaged);
    damaged.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out: Vec<Listed> = good
        .into_iter()
        .map(|(checked, trust)| Listed {
            id: checked.manifest.backup_id.clone(),
            backup: Ok(checked),
            trust,
        })
        .collect();
    out.extend(damaged);
    Ok(out)
}

/// An incremental or differential base backup whose parent is missing or damaged cannot
/// be restored: it is listed as damaged, saying which parent, and so are its own children.
/// `good` is oldest first, so a parent is judged before its children.
fn without_broken_chains(
    good: Vec<(Checked, Trust)>,
    damaged: &mut Vec<Listed>,
) -> Vec<(Checked, Trust)> {
    let mut usable = std::collections::BTreeSet::new();
    let mut kept = Vec::new();
    for (checked, trust) in good {
        let parent = checked
            .manifest
            .base
            .as_ref()
            .and_then(|b| b.parent.clone());
        match parent {
            Some(parent) if !usable.contains(&parent) => damaged.push(Listed {
                id: checked.manifest.backup_id.clone(),
                backup: Err(format!(
                    "its parent {parent} is missing or damaged: it cannot be restored"
                )),
                trust: Trust::Never,
            }),
            _ => {
                usable.insert(checked.manifest.backup_id.clone());
                kept.push((checked, trust));
            }
        }
    }
    kept
}

/// The newest readable logical backup (a dump), optionally of one database. Base backups
/// are left out: they restore only to a point in time ([`base_backups`]).
pub async fn latest(
    store: &impl BackupStore,
    database: Option<&str>,
) -> io::Result<Option<Checked>> {
    Ok(latest_and_skipped(store, database).await?.0)
}

/// [`latest`], with the newer backups it passed over because they are damaged, newest
/// first, each with why: a restore of `latest` must say that it is not restoring the
/// newest backup. A damaged backup's manifest cannot say when it was made, so "newer" is
/// read from its id, which starts with its creation time (`20261206T020001Z-…`) and sorts
/// by it; an entry whose id is not of that form (a planted `00-link`) is never newer. A
/// damaged backup's database cannot be read either, so every damaged one newer than the
/// choice is named.
pub async fn latest_and_skipped(
    store: &impl BackupStore,
    database: Option<&str>,
) -> io::Result<(Option<Checked>, Vec<(String, String)>)> {
    let listed = list(store).await?;
    let chosen = listed
        .iter()
        .rev()
        .filter_map(|l| l.backup.as_ref().ok())
        .filter(|c| {
            !matches!(
                c.manifest.format,
                super::manifest::DumpFormat::Base | super::manifest::DumpFormat::Rows
            )
        })
        .find(|c| database.is_none_or(|d| c.manifest.database == d))
        .cloned();
    let mut skipped: Vec<(String, String)> = listed
        .into_iter()
        .filter_map(|l| l.backup.err().map(|why| (l.id, why)))
        .filter(|(id, _)| {
            chosen.as_ref().is_none_or(|c| {
                // Made in the same second: which came first is unknown, so it is named.
                id_time(id).is_some_and(|t| Some(t) >= id_time(&c.manifest.backup_id))
            })
        })
        .collect();
    skipped.sort_by(|a, b| b.0.cmp(&a.0));
    Ok((chosen, skipped))
}

/// The creation time an id starts with (`20261206T020001Z`), if it is one of ours.
fn id_time(id: &str) -> Option<&str> {
    let stamp = id.get(..16)?;
    let ok = stamp.char_indices().all(|(i, c)| match i {
        8 => c == 'T',
        15 => c == 'Z',
        _ => c.is_ascii_digit(),
    });
    ok.then_some(stamp)
}

/// The newer damaged backups `latest` passed over, in one line: "20261206_…: why; …".
pub fn skipped_text(skipped: &[(String, String)]) -> String {
    skipped
        .iter()
        .map(|(id, why)| format!("{id}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The base backups a restore of `manifest` needs, oldest first: the full one, then each
/// incremental or differential down to `manifest` itself. A missing or damaged parent, or
/// one of another cluster, is an error naming it: the chain cannot be restored.
pub async fn base_chain(
    store: &impl BackupStore,
    manifest: &Manifest,
) -> Result<Vec<Manifest>, String> {
    let mut chain = vec![manifest.clone()];
    loop {
        let newest = chain.last().expect("not empty");
        let Some(base) = &newest.base else {
            return Err(format!("{} is not a base backup", newest.backup_id));
        };
        let Some(parent) = base.parent.clone() else {
            break;
        };
        if chain.len() > 10_000 || chain.iter().any(|m| m.backup_id == parent) {
            return Err(format!("the parents of {} form a loop", manifest.backup_id));
        }
        let found = self::manifest(store, &parent).await.map_err(|e| {
            format!(
                "{} needs its parent {parent}, which cannot be used: {e}",
                newest.backup_id
            )
        })?;
        let same_cluster = found
            .manifest
            .base
            .as_ref()
            .is_some_and(|b| b.system_identifier == base.system_identifier);
        if !same_cluster {
            return Err(format!(
                "{}'s parent {parent} is not a base backup of the same cluster",
                newest.backup_id
            ));
        }
        chain.push(found.manifest);
    }
    chain.reverse();
    Ok(chain)
}

/// The readable base backups, oldest first.
pub async fn base_backups(store: &impl BackupStore) -> io::Result<Vec<Checked>> {
    Ok(list(store)
        .await?
        .into_iter()
        .filter_map(|l| l.backup.ok())
        .filter(|c| c.manifest.base.is_some())
        .collect())
}
