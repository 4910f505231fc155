//! A backup as one file: `opsrunner backups export ID FILE` writes a tar holding the
//! backup's manifest and its stored files exactly as the repository holds them (still
//! compressed, still encrypted when they were), with the parents of an incremental base
//! backup and the archived WAL a base backup needs to become consistent; `opsrunner backups
//! import FILE` checks every file of it against its manifest's SHA-256 before it publishes
//! anything, and publishes each backup's manifest last.
//!
//! The tar, in this order: `opsrunner-export.json` (what it holds), `wal/NAME` (archived
//! objects as `wal push` stored them), then per backup, parents first,
//! `backups/ID/manifest.json` followed by the backup's files under `backups/ID/`.

use super::listing::{self, Checked};
use super::manifest::{MANIFEST_NAME, Manifest};
use super::{AnyStore, BackupStore, wal};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

/// The first member of an export: what the rest holds.
pub const INDEX_NAME: &str = "opsrunner-export.json";
/// What [`Index::format`] says.
const FORMAT: &str = "opsrunner-export";
const VERSION: u32 = 1;
/// The most an index or a manifest in an export may hold.
const MAX_SMALL: u64 = super::MAX_SMALL_FILE;

/// What an export holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Index {
    pub format: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    /// The repository it was exported from, for people.
    pub repository: String,
    /// The backup asked for, last, after the parents it needs.
    pub backups: Vec<String>,
    /// Archived WAL files.
    pub wal: Vec<String>,
}

/// What an export or an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub backups: Vec<String>,
    /// Backups the repository held already (an import).
    pub present: Vec<String>,
    pub wal: usize,
    /// Bytes of the export file, or stored bytes imported.
    pub bytes: u64,
}

/// The WAL a base backup needs to become consistent (its start to its stop segment) and
/// every timeline history file; an error names a segment the archive lacks.
async fn wal_needed(store: &AnyStore, newest: &Manifest) -> Result<Vec<String>, String> {
    let Some(base) = &newest.base else {
        return Ok(Vec::new());
    };
    let size = base.wal_segment_size.max(1);
    let (Some(start), Some(stop)) = (
        super::manifest::parse_lsn(&base.start_lsn),
        super::manifest::parse_lsn(&base.stop_lsn),
    ) else {
        return Err(format!(
            "backup {}: its manifest records no WAL range",
            newest.backup_id
        ));
    };
    let names = wal::list(store)
        .await
        .map_err(|e| format!("listing the WAL archive of {}: {e}", store.location()))?;
    let mut wanted: Vec<String> = names
        .iter()
        .filter(|n| match wal::file_position(n, size) {
            Some(p) => p >= start / size && p <= stop / size,
            None => n.ends_with(".history"),
        })
        .cloned()
        .collect();
    // Every segment of the range, on the backup's timeline, is there.
    for position in start / size..=stop / size {
        let segment = wal::segment_name(base.timeline, position, size);
        if !names.contains(&segment) {
            return Err(format!(
                "backup {} needs WAL segment {segment}, which the archive of {} lacks: the export would not restore",
                newest.backup_id,
                store.location()
            ));
        }
    }
    wanted.sort();
    wanted.dedup();
    Ok(wanted)
}

/// Writes backup `id` of `store` (with its parents and WAL) into the tar `path`, through a
/// temporary file beside it renamed when complete: a stopped export leaves no file that
/// looks whole. Every stored file is checked against its manifest on the way.
pub async fn export(store: &AnyStore, id: &str, path: &Path) -> Result<Summary, String> {
    let backups = super::copy::with_parents(store, &[id.to_string()]).await?;
    for c in &backups {
        listing::files_present(store, c)
            .await
            .map_err(|e| e.to_string())?;
    }
    let newest = &backups.last().expect("the backup asked for").manifest;
    let wal = wal_needed(store, newest).await?;
    let index = Index {
        format: FORMAT.into(),
        version: VERSION,
        created_at: Utc::now(),
        repository: store.location(),
        backups: backups
            .iter()
            .map(|c| c.manifest.backup_id.clone())
            .collect(),
        wal: wal.clone(),
    };
    let partial = partial_path(path);
    let store = store.clone();
    let handle = Handle::current();
    let target = path.to_path_buf();
    let ids = index.backups.clone();
    let written = tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || write_tar(&handle, &store, &index, &backups, &partial, &target)
    })
    .await
    .map_err(|e| format!("the export stopped: {e}"))?;
    match written {
        Ok(bytes) => Ok(Summary {
            backups: ids,
            present: Vec::new(),
            wal: wal.len(),
            bytes,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(format!("{}: {e}", path.display()))
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn write_tar(
    handle: &Handle,
    store: &AnyStore,
    index: &Index,
    backups: &[Checked],
    partial: &Path,
    target: &Path,
) -> Result<u64, String> {
    let file = std::fs::File::create(partial)
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    tar.mode(tar::HeaderMode::Deterministic);
    let append = |tar: &mut tar::Builder<_>, name: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(index.created_at.timestamp().max(0) as u64);
        tar.append_data(&mut header, name, data)
            .map_err(|e| format!("writing {name}: {e}"))
    };
    let json = serde_json::to_vec_pretty(index).expect("an index serializes");
    append(&mut tar, INDEX_NAME, json.len() as u64, &mut &json[..])?;
    for name in &index.wal {
        let object = handle
            .block_on(wal::read(store, name))
            .map_err(|e| e.to_string())?;
        wal::check_stored(name, &object).map_err(|e| e.to_string())?;
        append(
            &mut tar,
            &format!("wal/{name}"),
            object.len() as u64,
            &mut &object[..],
        )?;
    }
    for c in backups {
        let m = &c.manifest;
        let id = &m.backup_id;
        let bytes = handle
            .block_on(store.read_small(id, MANIFEST_NAME))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("backup {id}: its manifest is gone"))?;
        if crate::digest::hex(&Sha256::digest(&bytes)) != c.sha256 {
            return Err(format!(
                "backup {id}: its manifest changed while it was exported"
            ));
        }
        append(
            &mut tar,
            &format!("backups/{id}/{MANIFEST_NAME}"),
            bytes.len() as u64,
            &mut &bytes[..],
        )?;
        for f in &m.files {
            let loaded = handle
                .block_on(super::pipeline::load_stored(
                    store,
                    id,
                    f.clone(),
                    Default::default(),
                ))
                .map_err(|e| format!("{}: {e}", store.uri(id)))?;
            let mut reader =
                tokio_util::io::SyncIoBridge::new_with_handle(loaded.reader, handle.clone());
            append(
                &mut tar,
                &format!("backups/{id}/{}", f.name),
                f.size,
                &mut reader,
            )?;
            drop(reader);
            handle
                .block_on(loaded.verdict.wait())
                .map_err(|e| format!("backup {id} in {}: {e}", store.location()))?;
        }
    }
    let mut out = tar
        .into_inner()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    out.flush()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    file.sync_all()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(partial, target).map_err(|e| {
        format!(
            "renaming {} to {}: {e}",
            partial.display(),
            target.display()
        )
    })?;
    if let Some(dir) = target.parent()
        && let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
    Ok(size)
}

/// Imports the export `path` into `store`: every file checked against its manifest before
/// the manifest is published, a backup the repository holds already skipped. `encrypts`:
/// the repository encrypts, so a backup that is not encrypted is refused (plaintext in an
/// encrypted repository). Anything wrong is an error naming `path`, and no backup of it
/// that was not whole is published.
pub async fn import(path: &Path, store: &AnyStore, encrypts: bool) -> Result<Summary, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let store = store.clone();
    let handle = Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut reader = Reader {
            handle,
            store,
            encrypts,
            summary: Summary::default(),
            index: None,
            current: None,
        };
        let outcome = reader.read_all(file);
        if outcome.is_err()
            && let Some(open) = reader.current.take()
            && !open.present
        {
            // What was written of a backup that did not arrive whole is removed; nothing
            // of it was published.
            let _ = reader
                .handle
                .block_on(reader.store.discard(&open.manifest.backup_id));
        }
        outcome.map(|()| reader.summary)
    })
    .await
    .map_err(|e| format!("the import stopped: {e}"))?;
    result.map_err(|e| format!("{}: {e}", path.display()))
}

/// A backup being imported.
struct Open {
    manifest: Manifest,
    /// The repository holds it already: its files are read and checked, not written.
    present: bool,
    received: BTreeSet<String>,
}

struct Reader {
    handle: Handle,
    store: AnyStore,
    encrypts: bool,
    summary: Summary,
    index: Option<Index>,
    current: Option<Open>,
}

impl Reader {
    fn read_all(&mut self, file: std::fs::File) -> Result<(), String> {
        let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
        let entries = archive
            .entries()
            .map_err(|e| format!("not a readable export ({e})"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("damaged or truncated ({e})"))?;
            let name = entry
                .path()
                .map_err(|e| format!("damaged ({e})"))?
                .to_string_lossy()
                .into_owned();
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(format!(
                    "`{}` is not a file: not an opsrunner export",
                    name.escape_debug()
                ));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            self.entry(&name, size, &mut entry)
                .map_err(|e| format!("{}: {e}", name.escape_debug()))?;
        }
        self.finish_backup()?;
        let index = self
            .index
            .as_ref()
            .ok_or("empty: not an opsrunner export")?;
        let done: BTreeSet<&String> = self
            .summary
            .backups
            .iter()
            .chain(&self.summary.present)
            .collect();
        let missing: Vec<&String> = index.backups.iter().filter(|b| !done.contains(b)).collect();
        if !missing.is_empty() || self.summary.wal < index.wal.len() {
            return Err(format!(
                "truncated: it ends before {} (the export lists {} backups and {} WAL files)",
                missing
                    .first()
                    .map(|b| format!("backup {b}"))
                    .unwrap_or_else(|| "its WAL".into()),
                index.backups.len(),
                index.wal.len()
            ));
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, size: u64, entry: &mut dyn Read) -> Result<(), String> {
        let Some(index) = &self.index else {
            if name != INDEX_NAME {
                return Err(format!(
                    "an export begins with {INDEX_NAME}: not an opsrunner export"
                ));
            }
            let index: Index = serde_json::from_slice(&small(entry)?)
                .map_err(|e| format!("not a valid index ({e})"))?;
            if index.format != FORMAT || index.version > VERSION {
                return Err(format!(
                    "an export of format {} version {}, which this opsrunner cannot read",
                    index.format, index.version
                ));
            }
            self.index = Some(index);
            return Ok(());
        };
        if let Some(wal_name) = name.strip_prefix("wal/") {
            if !index.wal.iter().any(|w| w == wal_name) {
                return Err("not listed in the export's index".into());
            }
            let mut object = Vec::new();
            entry
                .take(wal::MAX_FILE * 2)
                .read_to_end(&mut object)
                .map_err(|e| format!("truncated ({e})"))?;
            wal::check_stored(wal_name, &object).map_err(|e| e.to_string())?;
            self.handle
                .block_on(wal::store(&self.store, wal_name, object))
                .map_err(|e| e.to_string())?;
            self.summary.wal += 1;
            return Ok(());
        }
        let Some((id, file)) = name
            .strip_prefix("backups/")
            .and_then(|rest| rest.split_once('/'))
        else {
            return Err("not a member of an opsrunner export".into());
        };
        if !index.backups.iter().any(|b| b == id) {
            return Err(format!("backup {id} is not listed in the export's index"));
        }
        if file == MANIFEST_NAME {
            self.finish_backup()?;
            return self.begin_backup(id, entry);
        }
        let Some(open) = &mut self.current else {
            return Err("a file before its backup's manifest".into());
        };
        if open.manifest.backup_id != id {
            return Err(format!(
                "a file of backup {id} among those of {}",
                open.manifest.backup_id
            ));
        }
        let expected = open
            .manifest
            .files
            .iter()
            .find(|f| f.name == file)
            .cloned()
            .ok_or("not listed in its backup's manifest")?;
        if !open.received.insert(file.to_string()) {
            return Err("twice in the export".into());
        }
        // Said before a byte is written: a hostile member of any size fills no disk.
        if size != expected.size {
            return Err(format!(
                "{size} bytes in the export, its manifest says {} (damaged); nothing of backup {id} was published",
                expected.size
            ));
        }
        let mut sink = match open.present {
            true => None,
            false => Some(
                self.handle
                    .block_on(self.store.create(id, file))
                    .map_err(|e| format!("writing it to {}: {e}", self.store.location()))?,
            ),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("truncated or damaged ({e})"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Some(sink) = &mut sink {
                self.handle
                    .block_on(sink.write_all(&buf[..n]))
                    .map_err(|e| format!("writing it to {}: {e}", self.store.location()))?;
            }
        }
        let sha = crate::digest::hex(&hasher.finalize());
        if size != expected.size || sha != expected.sha256 {
            return Err(format!(
                "{size} bytes with SHA-256 {sha}, its manifest says {} bytes with {} (damaged or truncated); nothing of backup {id} was published",
                expected.size, expected.sha256
            ));
        }
        if let Some(sink) = sink {
            self.handle
                .block_on(sink.commit())
                .map_err(|e| format!("writing it to {}: {e}", self.store.location()))?;
            self.summary.bytes += size;
        }
        Ok(())
    }

    fn begin_backup(&mut self, id: &str, entry: &mut dyn Read) -> Result<(), String> {
        let manifest: Manifest = serde_json::from_slice(&small(entry)?)
            .map_err(|e| format!("not a valid manifest ({e})"))?;
        manifest
            .check(id)
            .map_err(|e| format!("backup {id}: {e}"))?;
        if self.encrypts && manifest.encryption.is_none() {
            return Err(format!(
                "backup {id} is not encrypted and {} encrypts its backups: importing it would put plaintext there; import it into a repository that does not encrypt, then `opsrunner backups copy` it (which encrypts on the way)",
                self.store.location()
            ));
        }
        let present = match self.handle.block_on(listing::manifest(&self.store, id)) {
            Ok(there)
                if there.manifest.created_at == manifest.created_at
                    && there.manifest.database == manifest.database =>
            {
                true
            }
            Ok(_) => {
                return Err(format!(
                    "{} already holds another backup with id {id}; not replacing it",
                    self.store.location()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("{}: {e}", self.store.location())),
        };
        self.current = Some(Open {
            manifest,
            present,
            received: BTreeSet::new(),
        });
        Ok(())
    }

    /// Publishes the backup being imported once every file of its manifest arrived whole.
    fn finish_backup(&mut self) -> Result<(), String> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let id = open.manifest.backup_id.clone();
        if let Some(missing) = open
            .manifest
            .files
            .iter()
            .find(|f| !open.received.contains(&f.name))
        {
            self.current = Some(open.clone_for_discard());
            return Err(format!(
                "truncated: backup {id} lacks its file {}; nothing of it was published",
                missing.name
            ));
        }
        if open.present {
            self.summary.present.push(id);
            return Ok(());
        }
        self.handle
            .block_on(self.store.publish(&open.manifest))
            .map_err(|e| format!("publishing backup {id} in {}: {e}", self.store.location()))?;
        self.summary.backups.push(id);
        Ok(())
    }
}

impl Open {
    fn clone_for_discard(&self) -> Open {
        Open {
            manifest: self.manifest.clone(),
            present: self.present,
            received: BTreeSet::new(),
        }
    }
}

/// A small member read whole, refused past [`MAX_SMALL`].
fn small(entry: &mut dyn Read) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_SMALL + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("truncated ({e})"))?;
    if bytes.len() as u64 > MAX_SMALL {
        return Err(format!("larger than {} MiB", MAX_SMALL >> 20));
    }
    Ok(bytes)
}
