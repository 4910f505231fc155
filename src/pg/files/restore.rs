//! A file-level base backup (or a chain of them) back into a data directory: the list of
//! the wanted backup says where every file's bytes are — in it or in a backup it is
//! relative to — so a chain is restored in one pass, each file written once. Every file
//! is checked against its SHA-256 as written; a block-mapped file is assembled from the
//! runs its map names and then read back whole to check it.
//!
//! A *delta* restore writes into a data directory that already holds a version of the
//! cluster (a stopped one): a file whose bytes already are the backup's is left alone, a
//! block-mapped file gets only the blocks that differ, and what the backup does not hold is
//! removed. The caller refuses a directory with a server running on it.

use super::contents::{BLOCK, BlockMap, Contents, Data, Entry, File, Kind, Stored, block_hash};
use crate::counting::Counter;
use crate::repo::bundle::{self, Decoding};
use crate::repo::crypto::Identities;
use crate::repo::manifest::Manifest;
use crate::repo::{AnyStore, pipeline};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The most a stored list of files may decompress to.
const MAX_CONTENTS: u64 = 4 << 30;

/// What a restore works with.
pub struct Restore {
    pub store: AnyStore,
    /// Oldest first, the wanted backup last.
    pub chain: Vec<Manifest>,
    pub identities: Option<Identities>,
    pub dest: PathBuf,
    pub owner: Option<(u32, u32)>,
    pub delta: bool,
    /// With `delta`: a file of the backup's size and modification time is not read.
    pub trust_timestamps: bool,
    /// Tablespace directories to put elsewhere: the backed-up path → the new one.
    pub tablespaces: BTreeMap<String, String>,
    /// Where the tablespaces `tablespaces` does not name go (each in a directory named by
    /// its OID), instead of where they were: a throwaway cluster's must not land in
    /// production's tablespace directories.
    pub tablespaces_within: Option<PathBuf>,
    pub jobs: usize,
    /// Bytes written so far (for progress).
    pub written: Counter,
}

/// What a restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Files the backup holds.
    pub files: u64,
    /// Files written (whole or some of their blocks).
    pub written: u64,
    /// Files already as the backup has them (delta).
    pub unchanged: u64,
    /// Blocks written into block-mapped files that were there (delta).
    pub blocks: u64,
    /// Files and directories removed because the backup does not hold them (delta).
    pub removed: u64,
    pub bytes: u64,
}

/// Reads the list of files of a file-level base backup.
pub async fn contents(
    store: &AnyStore,
    manifest: &Manifest,
    identities: Option<&Identities>,
) -> io::Result<Contents> {
    let name = manifest
        .base
        .as_ref()
        .and_then(|b| b.contents.clone())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "backup {} is not a file-level base backup",
                    manifest.backup_id
                ),
            )
        })?;
    let pipeline::Loaded {
        reader, verdict, ..
    } = pipeline::load(store, manifest, &name, identities).await?;
    let mut bytes = Vec::new();
    reader.take(MAX_CONTENTS).read_to_end(&mut bytes).await?;
    verdict.wait().await?;
    let contents: Contents = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} of backup {}: {e}", manifest.backup_id),
        )
    })?;
    if contents.version != super::contents::CONTENTS_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "backup {} lists its files in version {} of the format; this opsrunner reads version {}: restore with a newer opsrunner",
                manifest.backup_id,
                contents.version,
                super::contents::CONTENTS_VERSION
            ),
        ));
    }
    for entry in &contents.entries {
        relative(&entry.path)?;
        in_place(entry)?;
    }
    Ok(contents)
}

/// How to read the segments of each backup of `chain`, by id.
pub fn decodings(
    chain: &[Manifest],
    identities: Option<&Identities>,
) -> io::Result<HashMap<String, Decoding>> {
    chain
        .iter()
        .map(|m| {
            let encryption = match &m.encryption {
                None => None,
                Some(e) => Some((
                    identities
                        .cloned()
                        .ok_or_else(|| pipeline::needs_identity(m))?,
                    e.recipients.clone(),
                )),
            };
            Ok((
                m.backup_id.clone(),
                Decoding {
                    backup_id: m.backup_id.clone(),
                    compression: m.compression,
                    encryption,
                },
            ))
        })
        .collect()
}

/// A list from a repository is not trusted to be friendly: a link is only a tablespace's
/// (`pg_tblspc/OID`, to an absolute path), and what is written through one is only inside
/// the server's version directory there (`PG_…`) — never a link elsewhere in the data
/// directory, or files straight into whatever directory a hand-edited link names.
fn in_place(entry: &Entry) -> io::Result<()> {
    let parts: Vec<&str> = entry.path.split('/').collect();
    let is_oid = |s: &str| super::walk::is_number(s);
    let fine = match (&entry.kind, parts.as_slice()) {
        (Kind::Link { target }, ["pg_tblspc", oid]) => is_oid(oid) && target.starts_with('/'),
        (Kind::Link { .. }, _) => false,
        (_, ["pg_tblspc", oid, version, ..]) if is_oid(oid) => version.starts_with("PG_"),
        _ => true,
    };
    if fine {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the backup lists `{}` where a data directory has no such link or tablespace file (damaged or not written by opsrunner); nothing of it is used",
                entry.path
            ),
        ))
    }
}

/// A path from a backup's list as a relative path that stays inside the directory.
fn relative(path: &str) -> io::Result<&Path> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the backup lists `{path}`, which is not a path inside a data directory (damaged or not written by opsrunner)"
            ),
        ));
    }
    Ok(p)
}

pub async fn restore(r: Restore) -> io::Result<Restored> {
    let wanted = r
        .chain
        .last()
        .ok_or_else(|| io::Error::other("no base backup to restore"))?;
    let contents = contents(&r.store, wanted, r.identities.as_ref()).await?;
    let decodings = decodings(&r.chain, r.identities.as_ref())?;
    let mut restored = Restored::default();
    let mut files = Vec::new();
    let mut kept: BTreeSet<PathBuf> = BTreeSet::new();
    // Every directory written into: synced at the end, so that the files' names are on
    // the disk with their bytes.
    let mut directories = vec![r.dest.clone()];
    for entry in contents.entries {
        let path = r.dest.join(relative(&entry.path)?);
        kept.insert(path.clone());
        match entry.kind {
            Kind::Directory => {
                make_dir(&path, r.owner)?;
                directories.push(path);
            }
            Kind::Link { target } => {
                let target = match (r.tablespaces.get(&target), &r.tablespaces_within) {
                    (Some(new), _) => PathBuf::from(new),
                    (None, Some(within)) => {
                        within.join(path.file_name().expect("a relative path has a name"))
                    }
                    (None, None) => PathBuf::from(target),
                };
                link(&path, &target, r.owner, r.delta)?;
                directories.push(target);
            }
            Kind::File(file) => files.push((path, file)),
        }
    }
    restored.files = files.len() as u64;
    if r.delta {
        restored.removed = remove_others(&r.dest, &kept)?;
    }
    let shared = Arc::new((r, decodings));
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shared.0.jobs.max(1) {
        let shared = shared.clone();
        let queue = queue.clone();
        workers.spawn(async move {
            let mut tally = Restored::default();
            loop {
                let Some((path, file)) = queue.lock().expect("not poisoned").pop_front() else {
                    return Ok(tally);
                };
                let (r, decodings) = &*shared;
                write_file(r, decodings, &path, &file, &mut tally)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            }
        });
    }
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined.map_err(|e| io::Error::other(format!("a restore worker failed: {e}"))) {
            Ok(Ok(tally)) => {
                restored.written += tally.written;
                restored.unchanged += tally.unchanged;
                restored.blocks += tally.blocks;
                restored.bytes += tally.bytes;
            }
            Ok(Err(e)) | Err(e) => {
                if failure.is_none() {
                    queue.lock().expect("not poisoned").clear();
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Each file was synced as it was written (as PostgreSQL syncs its own files: a sync
    // of the whole file system would also wait for everything else on it, a live
    // database's writes included); the directories that name them follow.
    tokio::task::spawn_blocking(move || {
        for dir in &directories {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| at(dir, e))?;
        }
        Ok::<(), io::Error>(())
    })
    .await
    .map_err(|e| io::Error::other(format!("syncing the directories: {e}")))??;
    Ok(restored)
}

fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| at(path, e))?;
            std::fs::create_dir(path).map_err(|e| at(path, e))?;
        }
        Err(_) => std::fs::create_dir_all(path).map_err(|e| at(path, e))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| at(path, e))?;
    chown(path, owner)
}

/// A tablespace: its directory (made, or in a delta restore kept) and the link to it.
fn link(path: &Path, target: &Path, owner: Option<(u32, u32)>, delta: bool) -> io::Result<()> {
    if !target.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the tablespace at {} is to go to `{}`, which is not an absolute path",
                path.display(),
                target.display()
            ),
        ));
    }
    if let Ok(existing) = std::fs::read_link(path) {
        if existing == target && delta {
            return Ok(());
        }
        std::fs::remove_file(path).map_err(|e| at(path, e))?;
    }
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if !delta && entries.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "the tablespace directory {} is not empty: restore it elsewhere (`tablespaces: {{OLD: NEW}}`) or empty it",
                        target.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| at(target, e))?;
        }
        Err(e) => return Err(at(target, e)),
    }
    make_dir(target, owner)?;
    std::os::unix::fs::symlink(target, path).map_err(|e| at(path, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))?;
    }
    Ok(())
}

/// Removes what is under `dest` (through tablespace links) and not in `kept`; how many.
fn remove_others(dest: &Path, kept: &BTreeSet<PathBuf>) -> io::Result<u64> {
    let mut removed = 0;
    let mut pending = vec![dest.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| at(&dir, e))? {
            let entry = entry.map_err(|e| at(&dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| at(&path, e))?;
            if kept.contains(&path) {
                if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
                    pending.push(path);
                }
                continue;
            }
            if path.file_name()
                == Some(std::ffi::OsStr::new(
                    super::super::data_directory::INCOMPLETE,
                ))
                && dir == dest
            {
                continue;
            }
            if kind.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|e| at(&path, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| at(&path, e))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

async fn write_file(
    r: &Restore,
    decodings: &HashMap<String, Decoding>,
    path: &Path,
    file: &File,
    tally: &mut Restored,
) -> io::Result<()> {
    let meta = if r.delta {
        tokio::fs::symlink_metadata(path)
            .await
            .ok()
            .filter(|m| m.is_file())
    } else {
        None
    };
    let present = meta.is_some();
    // Trusting timestamps: a file of the backup's size and modification time (a restore
    // sets them) is taken as it is, unread.
    if r.trust_timestamps
        && let Some(meta) = &meta
    {
        use std::os::unix::fs::MetadataExt;
        if meta.len() == file.size
            && meta.mtime() * 1_000_000_000 + meta.mtime_nsec() == file.mtime_ns
        {
            tally.unchanged += 1;
            return finish_file(path, r.owner, file.mtime_ns);
        }
    }
    match &file.data {
        Data::Empty | Data::Whole(_) => {
            if present && same_file(path, file).await? {
                tally.unchanged += 1;
            } else {
                write_whole(r, decodings, path, file, tally).await?;
            }
        }
        Data::Blocks(stored) => {
            let map = super::copy::read_map(&r.store, decoding(decodings, stored)?, stored).await?;
            if map.blocks.len() as u64 != file.size.div_ceil(BLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "its block map has {} blocks for {} bytes (damaged)",
                        map.blocks.len(),
                        file.size
                    ),
                ));
            }
            let written = write_blocks(r, decodings, path, file, &map, present).await?;
            if present && written == 0 {
                tally.unchanged += 1;
            } else {
                tally.written += 1;
                if present {
                    tally.blocks += written;
                }
                tally.bytes += written * BLOCK;
            }
        }
    }
    finish_file(path, r.owner, file.mtime_ns)
}

fn decoding<'a>(
    decodings: &'a HashMap<String, Decoding>,
    stored: &Stored,
) -> io::Result<&'a Decoding> {
    decodings.get(&stored.backup).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "its bytes are in backup {}, which is not in the chain being restored",
                stored.backup
            ),
        )
    })
}

/// Whether the file at `path` already holds exactly the backup's bytes: one blocking
/// task for the whole look (a delta restore looks at thousands of files, and a hop to
/// the blocking pool for each system call was most of its time).
async fn same_file(path: &Path, file: &File) -> io::Result<bool> {
    let (path, size, sha256) = (path.to_path_buf(), file.size, file.sha256.clone());
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(at(&path, e)),
        };
        if f.metadata().map_err(|e| at(&path, e))?.len() != size {
            return Ok(false);
        }
        let mut hasher = Sha256::new();
        let mut buf = buffer_for(size);
        loop {
            let n = f.read(&mut buf).map_err(|e| at(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(crate::digest::hex(&hasher.finalize()) == sha256)
    })
    .await
    .map_err(|e| io::Error::other(format!("comparing a file: {e}")))?
}

/// A buffer for a file of `size` bytes: a restore handles thousands of small files, and a
/// megabyte zeroed for each is most of its time.
fn buffer_for(size: u64) -> Vec<u8> {
    vec![0u8; size.clamp(1, 1 << 20) as usize]
}

async fn write_whole(
    r: &Restore,
    decodings: &HashMap<String, Decoding>,
    path: &Path,
    file: &File,
    tally: &mut Restored,
) -> io::Result<()> {
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| at(path, e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    if let Data::Whole(stored) = &file.data {
        let mut input = bundle::read(
            &r.store,
            decoding(decodings, stored)?,
            &stored.bundle,
            &stored.segment(),
        )
        .await?;
        let mut buf = buffer_for(file.size);
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await?;
            size += n as u64;
            r.written.add(n as u64);
        }
    }
    // On the disk before the restore says it is done (this also waits for the write tokio
    // finishes in the background, which the times set next must follow).
    out.sync_data().await?;
    let sha256 = crate::digest::hex(&hasher.finalize());
    if size != file.size || sha256 != file.sha256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "restored {size} bytes of SHA-256 {sha256}; the backup recorded {} bytes of {} (damaged)",
                file.size, file.sha256
            ),
        ));
    }
    tally.written += 1;
    tally.bytes += size;
    Ok(())
}

/// Writes a block-mapped file block after block: into a new file every block, into an
/// existing one (a delta restore) only the blocks whose bytes differ from the backup's.
/// Each run the map names is read once, forward (a backup stored its blocks of the file
/// in order, so the places a map takes from one run grow with the block number), and the
/// file is hashed, as it ends up, on the way. How many blocks it wrote.
async fn write_blocks(
    r: &Restore,
    decodings: &HashMap<String, Decoding>,
    path: &Path,
    file: &File,
    map: &BlockMap,
    present: bool,
) -> io::Result<u64> {
    const BATCH: usize = 1 << 20;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!present)
        .open(path)
        .await
        .map_err(|e| at(path, e))?;
    let mut existing = if present {
        Some(tokio::io::BufReader::with_capacity(
            BATCH,
            tokio::fs::File::open(path).await.map_err(|e| at(path, e))?,
        ))
    } else {
        None
    };
    let mut runs: Vec<Option<(crate::repo::Reader, u32)>> =
        (0..map.sources.len()).map(|_| None).collect();
    let mut hasher = Sha256::new();
    // Blocks to write, from block `pending_at` on, one after the other.
    let mut pending: Vec<u8> = Vec::with_capacity(BATCH);
    let mut pending_at = 0usize;
    let mut block = vec![0u8; BLOCK as usize];
    let mut written = 0u64;
    for (i, b) in map.blocks.iter().enumerate() {
        let len = (file.size - i as u64 * BLOCK).min(BLOCK) as usize;
        if let Some(existing) = &mut existing
            && super::copy::fill(existing, &mut block[..len]).await? == len
            && block_hash(&block[..len]) == b.hash
        {
            hasher.update(&block[..len]);
            continue;
        }
        if !pending.is_empty()
            && (pending_at + pending.len() / BLOCK as usize != i || pending.len() >= BATCH)
        {
            flush(&mut out, pending_at, &mut pending, &r.written).await?;
        }
        if pending.is_empty() {
            pending_at = i;
        }
        let stored = &map.sources[b.source as usize];
        let run = &mut runs[b.source as usize];
        if run.is_none() {
            let reader = bundle::read(
                &r.store,
                decoding(decodings, stored)?,
                &stored.bundle,
                &stored.segment(),
            )
            .await?;
            *run = Some((reader, 0));
        }
        let (reader, next) = run.as_mut().expect("opened");
        if b.ordinal < *next {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "its block map takes block {} of a run out of order (damaged)",
                    b.ordinal
                ),
            ));
        }
        while *next < b.ordinal {
            reader.read_exact(&mut block).await?;
            *next += 1;
        }
        reader.read_exact(&mut block[..len]).await?;
        *next += 1;
        // The whole file's SHA-256 is checked at the end; a block's own hash says which
        // block is wrong, and only a delta restore (which compares blocks anyway) pays for it.
        if present && block_hash(&block[..len]) != b.hash {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "block {i} from {} of backup {} is not the block the map names (damaged)",
                    stored.bundle, stored.backup
                ),
            ));
        }
        hasher.update(&block[..len]);
        pending.extend_from_slice(&block[..len]);
        written += 1;
    }
    flush(&mut out, pending_at, &mut pending, &r.written).await?;
    out.set_len(file.size).await?;
    out.sync_data().await?;
    let sha256 = crate::digest::hex(&hasher.finalize());
    if sha256 != file.sha256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "assembled from its block map, its SHA-256 is {sha256}; the backup recorded {} (damaged)",
                file.sha256
            ),
        ));
    }
    Ok(written)
}

/// Writes the blocks gathered in `pending` at block `at`.
async fn flush(
    out: &mut tokio::fs::File,
    at: usize,
    pending: &mut Vec<u8>,
    written: &Counter,
) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    out.seek(io::SeekFrom::Start(at as u64 * BLOCK)).await?;
    out.write_all(pending).await?;
    written.add(pending.len() as u64);
    pending.clear();
    Ok(())
}

/// Makes a written file private to the server's user and gives it the modification
/// time it had when it was backed up (so that a later delta restore trusting timestamps
/// can tell it unchanged).
fn finish_file(path: &Path, owner: Option<(u32, u32)>, mtime_ns: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| at(path, e))?;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| at(path, io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs, as utimensat takes them.
    if unsafe { libc::utimensat(libc::AT_FDCWD, name.as_ptr(), times.as_ptr(), 0) } != 0 {
        return Err(at(path, io::Error::last_os_error()));
    }
    chown(path, owner)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))?;
    }
    Ok(())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The system identifier a data directory's `global/pg_control` records (its first eight
/// bytes, in the machine's byte order), `None` without one.
pub fn system_identifier(dir: &Path) -> Option<u64> {
    let mut bytes = [0u8; 8];
    let mut f = std::fs::File::open(dir.join("global/pg_control")).ok()?;
    std::io::Read::read_exact(&mut f, &mut bytes).ok()?;
    Some(u64::from_ne_bytes(bytes))
}

/// Entries by path, for the next backup taken against this one.
pub fn files_by_path(entries: Vec<Entry>) -> HashMap<String, File> {
    entries
        .into_iter()
        .filter_map(|e| match e.kind {
            Kind::File(f) => Some((e.path, f)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
        }
    }

    #[test]
    fn links_and_tablespace_files_only_where_postgresql_puts_them() {
        let link = |t: &str| Kind::Link { target: t.into() };
        assert!(in_place(&entry("pg_tblspc/16390", link("/srv/space"))).is_ok());
        assert!(in_place(&entry("pg_tblspc/16390/PG_15_202209061/5", Kind::Directory)).is_ok());
        assert!(in_place(&entry("base/5", Kind::Directory)).is_ok());
        for hostile in [
            entry("base", link("/etc")),
            entry("pg_tblspc/16390", link("relative")),
            entry("pg_tblspc/x", link("/srv")),
            entry("pg_tblspc/16390/authorized_keys", Kind::Directory),
        ] {
            let e = in_place(&hostile).unwrap_err();
            assert!(e.to_string().contains("nothing of it is used"), "{e}");
        }
        assert!(relative("../x").is_err() && relative("/etc/x").is_err());
    }
}
