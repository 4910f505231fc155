//! Copying backups from one repository to another, of any backends: the second and third
//! copies of the 3-2-1 rule. What is copied is what is stored — compressed, and encrypted
//! when it was — checked against the manifest's SHA-256 on the way; when the destination
//! encrypts to other recipients, each file is decrypted and encrypted again in memory, a
//! chunk at a time. The manifest is written last, as by a backup, so that a copy stopped
//! anywhere (a kill, a lost connection) publishes nothing; the next copy resumes it: the
//! files already there are checked by their SHA-256 and kept, the rest copied.
//!
//! A base backup is copied with its parents (an incremental one is useless alone) and with
//! the archived WAL from its start on, so that a point-in-time recovery works from the
//! copy alone. Verification records are not copied: a copy is proven by a verify of its
//! own, in its own repository.

use super::crypto::{Identities, Recipients};
use super::listing::{self, Checked};
use super::manifest::{
    Encryption, FileEntry, MANIFEST_VERSION_INDEXED, MANIFEST_VERSION_PLAIN, Manifest,
};
use super::pipeline::{self, Recode};
use super::{AnyStore, BackupStore, Condition, wal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// Where an unfinished copy records the files it has written: their SHA-256 as stored at
/// the destination, which a re-encrypted file does not share with its source. Deleted once
/// the manifest is published.
pub use super::manifest::COPY_JOURNAL_NAME as JOURNAL_NAME;

/// A file an unfinished copy wrote: the source file it came from and what it is now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Written {
    source_sha256: String,
    entry: FileEntry,
}

/// A copy from one repository to another.
pub struct Copy<'a> {
    pub from: &'a AnyStore,
    pub to: &'a AnyStore,
    /// The recipients the destination encrypts to; `None` when it does not encrypt.
    pub recipients: Option<&'a Recipients>,
    /// What decrypts the source's backups: needed only to encrypt them to other recipients.
    pub identities: Option<&'a Identities>,
    /// Stored bytes read from the source so far, for progress reports.
    pub read: crate::counting::Counter,
}

/// What a copy did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Backups written to the destination by this copy, parents first.
    pub copied: Vec<String>,
    /// Backups the destination already held (the same manifest, every file there).
    pub present: Vec<String>,
    /// Of the copied ones, those encrypted to the destination's recipients on the way.
    pub recoded: Vec<String>,
    /// Files written, and files an earlier copy had written (checked by SHA-256).
    pub files: u64,
    pub files_resumed: u64,
    /// Stored bytes written to the destination.
    pub bytes: u64,
    /// Archived WAL files copied, and those the destination already held.
    pub wal_copied: u64,
    pub wal_present: u64,
}

/// How one backup's files change on their way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Unchanged,
    Encrypt,
    Reencrypt,
}

impl How {
    /// Decided by the recipients the backup is encrypted to and those of the destination. A
    /// backup encrypted to others than a destination that does not encrypt stays
    /// encrypted: a copy never decrypts a backup into a repository of plaintext.
    fn of(manifest: &Manifest, to: Option<&Recipients>) -> How {
        match (&manifest.encryption, to) {
            (_, None) => How::Unchanged,
            (Some(e), Some(to)) if same(&e.recipients, to) => How::Unchanged,
            (None, Some(_)) => How::Encrypt,
            (Some(_), Some(_)) => How::Reencrypt,
        }
    }
}

/// The backups `ids` name with every parent they need, parents first, each once.
pub async fn with_parents(from: &AnyStore, ids: &[String]) -> Result<Vec<Checked>, String> {
    let mut ordered: Vec<Checked> = Vec::new();
    for id in ids {
        let checked = listing::manifest(from, id)
            .await
            .map_err(|e| e.to_string())?;
        let chain = match checked.manifest.base {
            Some(_) => listing::base_chain(from, &checked.manifest).await?,
            None => vec![checked.manifest.clone()],
        };
        for m in chain {
            if ordered.iter().any(|c| c.manifest.backup_id == m.backup_id) {
                continue;
            }
            let c = if m.backup_id == checked.manifest.backup_id {
                checked.clone()
            } else {
                listing::manifest(from, &m.backup_id)
                    .await
                    .map_err(|e| e.to_string())?
            };
            ordered.push(c);
        }
    }
    Ok(ordered)
}

impl Copy<'_> {
    /// What stops the copy of these backups before anything is read or written: an
    /// identity missing for a backup that must be encrypted again, a backup that cannot
    /// be encrypted again.
    pub fn check(&self, backups: &[Checked]) -> Result<(), String> {
        for c in backups {
            self.recode_problem(&c.manifest)?;
        }
        Ok(())
    }

    fn recode_problem(&self, source: &Manifest) -> Result<(), String> {
        let id = &source.backup_id;
        let how = How::of(source, self.recipients);
        if how != How::Unchanged
            && source
                .base
                .as_ref()
                .is_some_and(|b| b.method == super::manifest::BaseMethod::Files)
        {
            return Err(format!(
                "backup {id} is a file-level base backup, whose files are encrypted piece by piece: copying it to a repository that encrypts to other recipients is not supported yet; copy it to a repository with the same `encryption` as {}",
                self.from.location()
            ));
        }
        if how == How::Reencrypt && self.identities.is_none() {
            return Err(format!(
                "backup {id} is encrypted to {}, {} to others: copying it means encrypting it again, which needs an identity that decrypts it (--identity FILE or {})",
                source
                    .encryption
                    .as_ref()
                    .map(|e| e.recipients.join(", "))
                    .unwrap_or_default(),
                self.to.location(),
                super::crypto::IDENTITY_ENV
            ));
        }
        Ok(())
    }

    /// Copies the backups (from [`with_parents`]) in order, the WAL of base backups first.
    /// `say` hears what happens, a line at a time; `cancelled` is asked between files.
    pub async fn backups(
        &self,
        backups: &[Checked],
        say: &(dyn Fn(String) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Summary, String> {
        let mut summary = Summary::default();
        // Before any manifest: a published base backup has the WAL it needs.
        self.wal(backups, &mut summary, say, cancelled).await?;
        for checked in backups {
            self.one(checked, &mut summary, say, cancelled).await?;
        }
        Ok(summary)
    }

    /// Copies one backup, or finds it there already.
    async fn one(
        &self,
        checked: &Checked,
        summary: &mut Summary,
        say: &(dyn Fn(String) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), String> {
        let source = &checked.manifest;
        let id = &source.backup_id;
        let how = How::of(source, self.recipients);
        if let Some(there) = self.published(source, how).await? {
            listing::files_present(self.to, &there).await.map_err(|e| {
                format!(
                    "backup {id} is already in {} but {e}; remove {} by hand (its manifest first) and copy again",
                    self.to.location(),
                    self.to.uri(id)
                )
            })?;
            say(format!("{id}: already in {}", self.to.location()));
            summary.present.push(id.clone());
            return Ok(());
        }
        self.recode_problem(source)?;
        let recipients_from = source
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default();
        let recode = match how {
            How::Unchanged => Recode::Unchanged,
            How::Encrypt => Recode::Encrypt(self.recipients.expect("decided by them")),
            How::Reencrypt => Recode::Reencrypt {
                identities: self.identities.expect("checked by recode_problem"),
                from: &recipients_from,
                to: self.recipients.expect("decided by them"),
            },
        };
        listing::files_present(self.from, checked)
            .await
            .map_err(|e| format!("cannot copy from {}: {e}", self.from.location()))?;
        let mut journal = self.journal(id).await;
        let mut files = Vec::with_capacity(source.files.len());
        for f in &source.files {
            if cancelled() {
                return Err("cancelled".into());
            }
            if let Some(done) = self.resumable(id, f, how, &journal).await {
                summary.files_resumed += 1;
                files.push(done);
                continue;
            }
            let stored = pipeline::load_stored(self.from, id, f.clone(), self.read.clone())
                .await
                .map_err(|e| format!("{}: {e}", self.from.uri(id)))?;
            let name = stored_name(&f.name, how);
            let entry =
                pipeline::store_recoded(self.to, id, &name, stored.reader, &recode, f).await;
            let verdict = stored.verdict.wait().await;
            let entry = match (entry, verdict) {
                (_, Err(e)) => {
                    return Err(format!(
                        "backup {id} in {}: {e}; nothing of it was published in {}",
                        self.from.location(),
                        self.to.location()
                    ));
                }
                (Err(e), Ok(())) => {
                    return Err(format!(
                        "copying {} to {}: {e}",
                        self.from.uri(id),
                        self.to.location()
                    ));
                }
                (Ok(entry), Ok(())) => entry,
            };
            summary.files += 1;
            summary.bytes += entry.size;
            journal.insert(
                f.name.clone(),
                Written {
                    source_sha256: f.sha256.clone(),
                    entry: entry.clone(),
                },
            );
            self.save_journal(id, &journal).await?;
            files.push(entry);
        }
        let manifest = self.manifest_for(source, files, how)?;
        self.to
            .publish(&manifest)
            .await
            .map_err(|e| format!("publishing backup {id} in {}: {e}", self.to.location()))?;
        let _ = self
            .to
            .objects()
            .delete(
                &super::layout::key(id, JOURNAL_NAME).map_err(|e| e.to_string())?,
                Condition::Always,
            )
            .await;
        say(match how {
            How::Unchanged => format!("{id}: copied to {}", self.to.location()),
            _ => format!(
                "{id}: copied to {}, encrypted to its recipients",
                self.to.location()
            ),
        });
        summary.copied.push(id.clone());
        if how != How::Unchanged {
            summary.recoded.push(id.clone());
        }
        Ok(())
    }

    /// The destination's manifest of the backup when it is published there: the same
    /// backup (the same id, database and start), or an error when another one has its id.
    async fn published(&self, source: &Manifest, how: How) -> Result<Option<Checked>, String> {
        let id = &source.backup_id;
        match listing::manifest(self.to, id).await {
            Ok(there) => {
                let m = &there.manifest;
                let names: Vec<String> = m.files.iter().map(|f| f.name.clone()).collect();
                // As a copy names them (an encrypted copy's end in `.age`), or as they are
                // (a copy made while the destination encrypted otherwise).
                let copied: Vec<String> = source
                    .files
                    .iter()
                    .map(|f| stored_name(&f.name, how))
                    .collect();
                let same: Vec<String> = source.files.iter().map(|f| f.name.clone()).collect();
                if m.database != source.database
                    || m.created_at != source.created_at
                    || (names != copied && names != same)
                {
                    return Err(format!(
                        "{} already holds another backup with id {id} (of database `{}`, taken {}); not replacing it",
                        self.to.location(),
                        m.database,
                        m.created_at
                    ));
                }
                Ok(Some(there))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.to.location())),
        }
    }

    /// The journal an unfinished copy of backup `id` left, if any can be read.
    async fn journal(&self, id: &str) -> BTreeMap<String, Written> {
        match self.to.read_small(id, JOURNAL_NAME).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    async fn save_journal(
        &self,
        id: &str,
        journal: &BTreeMap<String, Written>,
    ) -> Result<(), String> {
        let key = super::layout::key(id, JOURNAL_NAME).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec(journal).map_err(|e| e.to_string())?;
        self.to
            .objects()
            .put(&key, bytes, Condition::Always)
            .await
            .map_err(|e| format!("{}: {e}", self.to.objects().location(&key)))?;
        Ok(())
    }

    /// A file an earlier, unfinished copy wrote: kept when it still comes from the same
    /// source file and its stored bytes are whole (read back and hashed).
    async fn resumable(
        &self,
        id: &str,
        f: &FileEntry,
        how: How,
        journal: &BTreeMap<String, Written>,
    ) -> Option<FileEntry> {
        let written = journal.get(&f.name)?;
        if written.source_sha256 != f.sha256 || written.entry.name != stored_name(&f.name, how) {
            return None;
        }
        // A file copied unchanged is the source's bytes: a journal (edited, or of another
        // copy) that says otherwise is not believed.
        if how == How::Unchanged
            && (written.entry.sha256 != f.sha256 || written.entry.size != f.size)
        {
            return None;
        }
        pipeline::check(self.to, id, &written.entry).await.ok()?;
        Some(written.entry.clone())
    }

    /// The destination's manifest: the source's, with the files as written there and, when
    /// they were encrypted on the way, the destination's recipients and the sealed part
    /// sealed to them.
    fn manifest_for(
        &self,
        source: &Manifest,
        files: Vec<FileEntry>,
        how: How,
    ) -> Result<Manifest, String> {
        let mut m = source.clone();
        m.files = files;
        if how == How::Unchanged {
            return Ok(m);
        }
        let to = self.recipients.expect("decided by them");
        if let Some(base) = &mut m.base {
            let rename = |name: &mut String| *name = stored_name(name, how);
            rename(&mut base.server_manifest);
            if let Some(name) = &mut base.backup_manifest {
                rename(name);
            }
            if let Some(name) = &mut base.contents {
                rename(name);
            }
        }
        if m.manifest_version == MANIFEST_VERSION_INDEXED
            && m.files.iter().all(|f| f.index.is_none())
        {
            m.manifest_version = MANIFEST_VERSION_PLAIN;
        }
        if how == How::Reencrypt {
            let identities = self.identities.expect("checked before the files");
            m.unseal(identities)
                .map_err(|e| format!("backup {}: {e}", m.backup_id))?;
            m.sealed = None;
        }
        m.encryption = Some(Encryption {
            scheme: "age".into(),
            recipients: to.texts(),
        });
        m.seal(to)
            .map_err(|e| format!("backup {}: sealing its manifest: {e}", m.backup_id))?;
        Ok(m)
    }

    /// Copies the archived WAL the base backups among `backups` need for a recovery from
    /// the copy alone: every timeline history file, and every file from the oldest one's
    /// start on (to the archive's end, so that any moment after it can be reached). What
    /// the destination holds already is kept: an archived file is never replaced, and a
    /// conflicting one is an error.
    async fn wal(
        &self,
        backups: &[Checked],
        summary: &mut Summary,
        say: &(dyn Fn(String) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), String> {
        let bases: Vec<&Manifest> = backups
            .iter()
            .map(|c| &c.manifest)
            .filter(|m| m.base.is_some())
            .collect();
        let Some(oldest) = bases
            .iter()
            .filter_map(|m| {
                let b = m.base.as_ref()?;
                let start = super::manifest::parse_lsn(&b.start_lsn)?;
                Some((start / b.wal_segment_size.max(1), b.wal_segment_size))
            })
            .min()
        else {
            return Ok(());
        };
        let (first, segment_size) = oldest;
        // The WAL is encrypted (or not) as the newest of the base backups is.
        let newest = bases.last().expect("not empty");
        let encrypted_to = newest.encryption.as_ref().map(|e| e.recipients.clone());
        let wal_error = |e: wal::WalError| e.to_string();
        let there: BTreeSet<String> = wal::list(self.to)
            .await
            .map_err(|e| format!("listing the WAL archive of {}: {e}", self.to.location()))?
            .into_iter()
            .collect();
        let names = wal::list(self.from)
            .await
            .map_err(|e| format!("listing the WAL archive of {}: {e}", self.from.location()))?;
        for name in names {
            let wanted = match wal::file_position(&name, segment_size) {
                Some(position) => position >= first,
                None => name.ends_with(".history"),
            };
            if !wanted {
                continue;
            }
            if there.contains(&name) {
                summary.wal_present += 1;
                continue;
            }
            if cancelled() {
                return Err("cancelled".into());
            }
            let object = wal::read(self.from, &name).await.map_err(wal_error)?;
            self.read.add(object.len() as u64);
            let (header, _) = wal::check_stored(&name, &object).map_err(wal_error)?;
            let object = match self.recipients {
                None => object,
                Some(to)
                    if header.encrypted && encrypted_to.as_ref().is_some_and(|r| same(r, to)) =>
                {
                    object
                }
                Some(to) => {
                    let identities = match (header.encrypted, self.identities) {
                        (false, _) => None,
                        (true, Some(i)) => Some(i),
                        (true, None) => {
                            return Err(format!(
                                "the WAL archive of {} is encrypted to other recipients than {}: copying it means encrypting it again, which needs an identity that decrypts it (--identity FILE or {})",
                                self.from.location(),
                                self.to.location(),
                                super::crypto::IDENTITY_ENV
                            ));
                        }
                    };
                    let original = wal::decode(&name, &object, identities)
                        .await
                        .map_err(wal_error)?;
                    let compression = super::compression::Compression::parse(&header.compression)
                        .map_err(|e| format!("{name}: {e}"))?;
                    wal::encode(&name, &original, compression, Some(to))
                        .await
                        .map_err(|e| format!("{name}: {e}"))?
                }
            };
            match wal::store(self.to, &name, object)
                .await
                .map_err(wal_error)?
            {
                wal::Pushed::Archived { stored_size } => {
                    summary.wal_copied += 1;
                    summary.bytes += stored_size;
                }
                wal::Pushed::AlreadyThere => summary.wal_present += 1,
            }
        }
        if summary.wal_copied > 0 {
            say(format!(
                "WAL: {} archived files copied to {} ({} there already)",
                summary.wal_copied,
                self.to.location(),
                summary.wal_present
            ));
        }
        Ok(())
    }
}

/// A file's name where it is copied: an encrypted file's name ends in `.age`, as a
/// backup names it.
fn stored_name(name: &str, how: How) -> String {
    match how {
        How::Encrypt => format!("{name}{}", super::crypto::EXTENSION),
        How::Unchanged | How::Reencrypt => name.to_string(),
    }
}

fn same(recipients: &[String], to: &Recipients) -> bool {
    let mut a = recipients.to_vec();
    let mut b = to.texts();
    a.sort();
    b.sort();
    a == b
}

/// Which backups a copy takes.
#[derive(Debug, Clone)]
pub enum Which {
    /// The newest readable backup of each database.
    Latest,
    /// Every readable backup.
    All,
    /// These, by id (`latest` among them: the newest of each database).
    Ids(Vec<String>),
    /// Those a retention policy keeps (the `prune` step's language).
    Keep(super::retention::Keep),
}

/// The ids of the backups `which` selects in `from`, of `database` when given, oldest
/// first (parents are added by [`with_parents`]). Damaged backups are never selected.
pub async fn select(
    from: &AnyStore,
    which: &Which,
    database: Option<&str>,
) -> Result<Vec<String>, String> {
    let listed = listing::list(from)
        .await
        .map_err(|e| format!("cannot list {}: {e}", from.location()))?;
    let readable: Vec<&Manifest> = listed
        .iter()
        .filter_map(|l| l.backup.as_ref().ok())
        .map(|c| &c.manifest)
        .filter(|m| database.is_none_or(|d| d == m.database))
        .collect();
    let latest = || {
        let mut newest: BTreeMap<String, &Manifest> = BTreeMap::new();
        for m in &readable {
            let slot = newest.entry(m.series()).or_insert(m);
            if (m.created_at, &m.backup_id) > (slot.created_at, &slot.backup_id) {
                *slot = m;
            }
        }
        newest
            .into_values()
            .map(|m| m.backup_id.clone())
            .collect::<Vec<_>>()
    };
    let mut ids = match which {
        Which::Latest => latest(),
        Which::All => readable.iter().map(|m| m.backup_id.clone()).collect(),
        Which::Ids(ids) => {
            let mut out = Vec::new();
            for id in ids {
                if id == "latest" {
                    out.extend(latest());
                } else {
                    out.push(id.clone());
                }
            }
            out
        }
        Which::Keep(keep) => super::prune::decide(
            from,
            &super::prune::Policy {
                keep: keep.clone(),
                min_age: None,
                database: database.map(str::to_string),
            },
        )
        .await?
        .into_iter()
        .filter(|d| d.keep && !d.damaged)
        .map(|d| d.id)
        .collect(),
    };
    let order: BTreeMap<&str, (chrono::DateTime<chrono::Utc>, usize)> = readable
        .iter()
        .enumerate()
        .map(|(i, m)| (m.backup_id.as_str(), (m.created_at, i)))
        .collect();
    ids.sort_by_key(|id| order.get(id.as_str()).copied());
    ids.dedup();
    Ok(ids)
}
