//! Where a repository keeps each backup, on any [`Store`]: `<backup id>/<file>`, with
//! `manifest.json` written last (what makes a backup exist) and `verification.json`
//! beside it. Everything else at the root starts with a dot (`.wal/`, the lease), which no
//! backup id does.

use super::manifest::{MANIFEST_NAME, Manifest, VERIFICATION_NAME, Verification};
use super::store::{BackupStore, Condition, FileSink, MAX_SMALL_FILE, Reader, Slot, check_id};
use super::{AnyStore, Store};
use std::collections::BTreeMap;
use std::io;

/// The key of file `name` of backup `backup_id`; the id is checked.
pub fn key(backup_id: &str, name: &str) -> io::Result<String> {
    check_id(backup_id)?;
    Ok(format!("{backup_id}/{name}"))
}

fn prefix(backup_id: &str) -> io::Result<String> {
    check_id(backup_id)?;
    Ok(format!("{backup_id}/"))
}

async fn put_json(store: &dyn Store, key: &str, value: &impl serde::Serialize) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    store.put(key, json, Condition::Always).await?;
    Ok(())
}

impl BackupStore for AnyStore {
    fn uri(&self, backup_id: &str) -> String {
        self.objects().location(backup_id)
    }

    async fn create(&self, backup_id: &str, name: &str) -> io::Result<Box<dyn FileSink>> {
        self.objects().create(&key(backup_id, name)?).await
    }

    async fn publish(&self, manifest: &Manifest) -> io::Result<()> {
        put_json(
            self.objects(),
            &key(&manifest.backup_id, MANIFEST_NAME)?,
            manifest,
        )
        .await
    }

    async fn discard(&self, backup_id: &str) -> io::Result<()> {
        let store = self.objects();
        if store.stat(&key(backup_id, MANIFEST_NAME)?).await?.is_some() {
            // Never delete a published backup by accident.
            return Err(io::Error::other(format!(
                "backup {backup_id} is published; not discarding it"
            )));
        }
        store.delete_under(&prefix(backup_id)?).await
    }

    async fn slots(&self) -> io::Result<Vec<Slot>> {
        let mut slots: BTreeMap<String, Option<String>> = BTreeMap::new();
        for object in self.objects().list("").await? {
            let (id, rest) = object.key.split_once('/').unwrap_or((&object.key, ""));
            if check_id(id).is_err() {
                continue;
            }
            let problem = object.problem.map(|p| format!("damaged: {p}"));
            // A backup's place that cannot be read at all (a local symbolic link), or its
            // manifest: either makes a slot.
            if rest.is_empty() && problem.is_some() || rest == MANIFEST_NAME {
                slots.insert(id.to_string(), problem);
            }
        }
        Ok(slots
            .into_iter()
            .map(|(id, problem)| Slot { id, problem })
            .collect())
    }

    async fn read_small(&self, backup_id: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let key = key(backup_id, name)?;
        let store = self.objects();
        match store.read_small(&key, MAX_SMALL_FILE).await? {
            None => Ok(None),
            Some(small) => small.bytes.map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is larger than {} MiB",
                        store.location(&key),
                        MAX_SMALL_FILE >> 20
                    ),
                )
            }),
        }
    }

    async fn open(&self, backup_id: &str, name: &str) -> io::Result<Reader> {
        self.objects().read(&key(backup_id, name)?, 0, None).await
    }

    async fn size(&self, backup_id: &str, name: &str) -> io::Result<u64> {
        let key = key(backup_id, name)?;
        match self.objects().stat(&key).await? {
            Some(stat) => Ok(stat.size),
            None => Err(super::store::not_found(self.objects().location(&key))),
        }
    }

    async fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> io::Result<()> {
        put_json(
            self.objects(),
            &key(backup_id, VERIFICATION_NAME)?,
            verification,
        )
        .await
    }

    async fn delete(&self, backup_id: &str) -> io::Result<()> {
        let store = self.objects();
        // The manifest first: from then on the backup does not exist.
        store
            .delete(&key(backup_id, MANIFEST_NAME)?, Condition::Always)
            .await?;
        store.delete_under(&prefix(backup_id)?).await
    }
}

impl AnyStore {
    /// Leftovers of backups that never published a manifest (a process killed mid-backup),
    /// with the time anything in them last changed. A backup still being written looks the
    /// same, so callers only remove those untouched for a while.
    pub async fn orphans(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let store = self.objects();
        let mut groups: BTreeMap<String, (bool, std::time::SystemTime)> = BTreeMap::new();
        let objects = store.list("").await?;
        let unfinished = store.unfinished("").await?;
        for object in objects.iter().chain(&unfinished) {
            // Only what is inside a backup's place: a link in the backup's own place is
            // not something a backup leaves behind.
            let Some((id, rest)) = object.key.split_once('/') else {
                continue;
            };
            if check_id(id).is_err() {
                continue;
            }
            let modified = object
                .stat
                .modified
                .map_or(std::time::UNIX_EPOCH, std::time::SystemTime::from);
            let group = groups
                .entry(id.to_string())
                .or_insert((false, std::time::UNIX_EPOCH));
            group.0 |= rest == MANIFEST_NAME;
            group.1 = group.1.max(modified);
        }
        Ok(groups
            .into_iter()
            .filter(|(_, (published, _))| !published)
            .map(|(id, (_, t))| (id, t))
            .collect())
    }

    /// Removes an orphan: never a published backup.
    pub async fn remove_orphan(&self, backup_id: &str) -> io::Result<()> {
        self.discard(backup_id).await
    }
}
