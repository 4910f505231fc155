//! The copy of a file-level base backup: the listed files read by `jobs` workers at once,
//! each file compressed (and encrypted) on its own into the worker's bundle.
//!
//! Against a parent (an incremental or differential backup), a file whose size and
//! modification time are those the parent recorded — and that had not been touched for
//! a while when the parent was taken, so that a change within the clock's granularity
//! cannot hide — is not read at all: its entry names the parent's copy. Any other file is
//! read; a small one whose bytes are the parent's is not stored again either, and a large
//! one is compared block by block with the parent's block map: only the 8 KiB blocks
//! that differ are stored, with a new map naming where every block is.

use super::contents::{
    BLOCK, BLOCK_MAP_MIN, BlockMap, BlockRef, Data, Entry, File, Kind, Stored, block_hash,
};
use super::walk::{Found, Item};
use crate::counting::Counter;
use crate::repo::AnyStore;
use crate::repo::bundle::{self, BundleWriter, Decoding};
use crate::repo::compression::Compression;
use crate::repo::crypto::Recipients;
use crate::repo::manifest::FileEntry;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

/// A bundle is closed and another begun past this size: an object store takes objects
/// of at most 10,000 parts, and a restore's ranged reads do not care how many there are.
const BUNDLE_MAX: u64 = 4 << 30;
/// What is read from a file at once.
const CHUNK: usize = 1 << 20;
/// A file the parent recorded as modified this close to the parent's start may have
/// changed again within the same tick of the file system's clock: it is read.
const SETTLED_NS: i64 = 2_000_000_000;

/// The parent a backup is taken against: its entries by path, and how to read the
/// segments of every backup its entries name.
pub struct Parent {
    pub files: HashMap<String, File>,
    pub decodings: HashMap<String, Decoding>,
    /// When the parent's copy began (nanoseconds since the epoch, this host's clock).
    pub started_ns: i64,
}

/// What a copy is made with.
pub struct Settings {
    pub store: AnyStore,
    pub backup_id: String,
    pub compression: Compression,
    pub recipients: Option<Recipients>,
    pub jobs: usize,
    pub parent: Option<Parent>,
    /// Bytes read from the data directory so far (for progress).
    pub read: Counter,
    /// With page checksums on the cluster: the WAL position the backup started at (pages
    /// written since are not judged).
    pub checksums: Option<u64>,
}

/// Checks the pages of `bytes`, read from file `item` at `offset`, against their
/// checksums; a page that fails is read again, and one that fails twice is recorded.
fn check_pages(settings: &Settings, item: &Item, bytes: &[u8], offset: u64, tally: &mut Tally) {
    let (Some(start_lsn), Some(first)) =
        (settings.checksums, super::checksum::first_block(&item.path))
    else {
        return;
    };
    for (i, page) in bytes.chunks_exact(BLOCK as usize).enumerate() {
        let at = offset / BLOCK + i as u64;
        let blkno = first.saturating_add(at as u32);
        if !super::checksum::fails(page, blkno, start_lsn) {
            continue;
        }
        let mut again = vec![0u8; BLOCK as usize];
        let reread = std::fs::File::open(&item.disk)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut again, at * BLOCK));
        if reread.is_err() || super::checksum::fails(&again, blkno, start_lsn) {
            tally.damaged.push((item.path.clone(), blkno));
        }
    }
}

/// What the copy made.
#[derive(Debug, Default)]
pub struct Copied {
    pub entries: Vec<Entry>,
    pub bundles: Vec<FileEntry>,
    pub tally: Tally,
}

/// How each file was kept, for the step's report.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Pages that failed their checksum, read twice: (file, block number).
    pub damaged: Vec<(String, u32)>,
    /// Files stored whole, in this backup.
    pub stored: u64,
    /// Files named by reference to the parent's copy, unread.
    pub unread: u64,
    /// Files read and found equal to the parent's copy.
    pub same: u64,
    /// Block-mapped files with blocks stored in this backup, and how many blocks.
    pub mapped: u64,
    pub blocks: u64,
    /// Bytes read from the data directory.
    pub bytes_read: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.damaged.extend(other.damaged);
        self.stored += other.stored;
        self.unread += other.unread;
        self.same += other.same;
        self.mapped += other.mapped;
        self.blocks += other.blocks;
        self.bytes_read += other.bytes_read;
    }
}

/// Copies `items` (as [`super::walk::walk`] listed them) into bundles of backup
/// `settings.backup_id`; the entries in the order of `items`. Files that are gone when
/// their turn comes are left out.
pub async fn copy(settings: Settings, items: Vec<Item>) -> io::Result<Copied> {
    let settings = Arc::new(settings);
    let mut queue: Vec<(usize, Item)> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.found, Found::File { .. }))
        .map(|(n, i)| (n, i.clone()))
        .collect();
    // The largest first: the workers end together.
    queue.sort_by_key(|(_, i)| match i.found {
        Found::File { size, .. } => std::cmp::Reverse(size),
        _ => std::cmp::Reverse(0),
    });
    let queue = Arc::new(Mutex::new(VecDeque::from(queue)));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..settings.jobs.max(1) {
        let settings = settings.clone();
        let queue = queue.clone();
        workers.spawn(async move { work(worker, &settings, &queue).await });
    }
    let mut files: Vec<Option<Entry>> = vec![None; items.len()];
    let mut copied = Copied::default();
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined.map_err(|e| io::Error::other(format!("a copy worker failed: {e}"))) {
            Ok(Ok((done, bundles, tally))) => {
                for (n, entry) in done {
                    files[n] = Some(entry);
                }
                copied.bundles.extend(bundles);
                copied.tally.add(tally);
            }
            Ok(Err(e)) | Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                    // The others stop at their next file.
                    queue.lock().expect("not poisoned").clear();
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    copied.bundles.sort_by(|a, b| a.name.cmp(&b.name));
    for (item, file) in items.into_iter().zip(files) {
        let kind = match item.found {
            Found::Directory => Kind::Directory,
            Found::Link { target } => Kind::Link {
                target: target.display().to_string(),
            },
            Found::File { .. } => match file {
                Some(entry) => {
                    copied.entries.push(entry);
                    continue;
                }
                None => continue,
            },
        };
        copied.entries.push(Entry {
            path: item.path,
            kind,
        });
    }
    Ok(copied)
}

type Done = (Vec<(usize, Entry)>, Vec<FileEntry>, Tally);

async fn work(
    worker: usize,
    settings: &Settings,
    queue: &Mutex<VecDeque<(usize, Item)>>,
) -> io::Result<Done> {
    let mut done = Vec::new();
    let mut finished = Vec::new();
    let mut bundle: Option<BundleWriter> = None;
    let mut sequence = 0;
    let mut tally = Tally::default();
    loop {
        let Some((n, item)) = queue.lock().expect("not poisoned").pop_front() else {
            break;
        };
        if bundle.as_ref().is_some_and(|b| b.written() >= BUNDLE_MAX) {
            finished.push(bundle.take().expect("checked").finish().await?);
        }
        let mut slot = Slot {
            settings,
            bundle: &mut bundle,
            worker,
            sequence: &mut sequence,
        };
        match one(&mut slot, &item, &mut tally).await {
            Ok(Some(file)) => done.push((
                n,
                Entry {
                    path: item.path,
                    kind: Kind::File(file),
                },
            )),
            Ok(None) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", item.disk.display()),
                ));
            }
        }
    }
    if let Some(b) = bundle {
        finished.push(b.finish().await?);
    }
    Ok((done, finished, tally))
}

/// A worker's bundle, begun when the first thing is stored in it.
struct Slot<'a> {
    settings: &'a Settings,
    bundle: &'a mut Option<BundleWriter>,
    worker: usize,
    sequence: &'a mut usize,
}

impl Slot<'_> {
    async fn bundle(&mut self) -> io::Result<&mut BundleWriter> {
        if self.bundle.is_none() {
            let name = format!("files-{:02}-{:04}.bundle", self.worker, self.sequence);
            *self.sequence += 1;
            let s = self.settings;
            *self.bundle = Some(
                BundleWriter::create(
                    &s.store,
                    &s.backup_id,
                    &name,
                    s.compression,
                    s.recipients.clone(),
                )
                .await?,
            );
        }
        Ok(self.bundle.as_mut().expect("just made"))
    }

    async fn store_whole(&mut self, bytes: &[u8]) -> io::Result<Stored> {
        let backup_id = self.settings.backup_id.clone();
        let bundle = self.bundle().await?;
        let name = bundle.name().to_string();
        let mut segment = bundle.begin().await?;
        segment.push(bytes).await?;
        Ok(Stored::new(&backup_id, &name, segment.end().await?))
    }
}

/// Copies one file; `None` when it is gone.
async fn one(slot: &mut Slot<'_>, item: &Item, tally: &mut Tally) -> io::Result<Option<File>> {
    let Found::File { .. } = item.found else {
        return Ok(None);
    };
    // Size and time as the file is now, not as it was listed.
    let meta = match tokio::fs::metadata(&item.disk).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    use std::os::unix::fs::MetadataExt;
    let (size, mtime_ns) = (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
    let parent = slot.settings.parent.as_ref();
    let before = parent.and_then(|p| p.files.get(&item.path));
    if let (Some(parent), Some(before)) = (parent, before)
        && before.size == size
        && before.mtime_ns == mtime_ns
        && before.mtime_ns < parent.started_ns - SETTLED_NS
    {
        tally.unread += 1;
        return Ok(Some(before.clone()));
    }
    let file = match tokio::fs::File::open(&item.disk).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if size >= BLOCK_MAP_MIN && size % BLOCK == 0 {
        return blocks(slot, item, file, mtime_ns, before, tally)
            .await
            .map(Some);
    }
    if size < BLOCK_MAP_MIN {
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(BLOCK_MAP_MIN * 64)
            .read_to_end(&mut bytes)
            .await?;
        slot.settings.read.add(bytes.len() as u64);
        tally.bytes_read += bytes.len() as u64;
        check_pages(slot.settings, item, &bytes, 0, tally);
        let sha256 = crate::digest::hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        if let Some(before) = before.filter(|b| b.sha256 == sha256 && b.size == size) {
            tally.same += 1;
            return Ok(Some(File {
                mtime_ns,
                ..before.clone()
            }));
        }
        let data = if bytes.is_empty() {
            Data::Empty
        } else {
            tally.stored += 1;
            Data::Whole(slot.store_whole(&bytes).await?)
        };
        return Ok(Some(File {
            size,
            mtime_ns,
            sha256,
            data,
        }));
    }
    whole(slot, file, mtime_ns, before, tally).await.map(Some)
}

/// Reads into `buf` until it is full or the file ends; how much it holds.
pub(super) async fn fill(
    file: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// A large file that is not a whole number of pages, stored whole — unless its bytes are
/// the parent's, which is known only once it was read: then what was stored is left as
/// dead bytes in the bundle (such files are rare: a data directory's large files are
/// relation segments).
async fn whole(
    slot: &mut Slot<'_>,
    mut file: tokio::fs::File,
    mtime_ns: i64,
    before: Option<&File>,
    tally: &mut Tally,
) -> io::Result<File> {
    let read = slot.settings.read.clone();
    let backup_id = slot.settings.backup_id.clone();
    let bundle = slot.bundle().await?;
    let name = bundle.name().to_string();
    let mut segment = bundle.begin().await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(&mut file, &mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        segment.push(&buf[..n]).await?;
        size += n as u64;
        read.add(n as u64);
    }
    tally.bytes_read += size;
    let stored = Stored::new(&backup_id, &name, segment.end().await?);
    let sha256 = crate::digest::hex(&hasher.finalize());
    if let Some(before) = before.filter(|b| b.sha256 == sha256 && b.size == size) {
        tally.same += 1;
        return Ok(File {
            mtime_ns,
            ..before.clone()
        });
    }
    tally.stored += 1;
    Ok(File {
        size,
        mtime_ns,
        sha256,
        data: Data::Whole(stored),
    })
}

/// A large file of whole pages, as a block map: the blocks that differ from the parent's
/// (all of them, without one) stored in one segment, the map in another.
async fn blocks(
    slot: &mut Slot<'_>,
    item: &Item,
    mut file: tokio::fs::File,
    mtime_ns: i64,
    before: Option<&File>,
    tally: &mut Tally,
) -> io::Result<File> {
    let settings = slot.settings;
    let old = match (before.map(|b| &b.data), &settings.parent) {
        (Some(Data::Blocks(map)), Some(parent)) => Some(load_map(settings, parent, map).await?),
        _ => None,
    };
    let backup_id = settings.backup_id.clone();
    let read = settings.read.clone();
    let bundle = slot.bundle().await?;
    let name = bundle.name().to_string();
    let mut sources: Vec<Stored> = Vec::new();
    let mut index: HashMap<Stored, u32> = HashMap::new();
    let mut refs: Vec<BlockRef> = Vec::new();
    let mut own = 0u32;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut segment = None;
    loop {
        let n = fill(&mut file, &mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read.add(n as u64);
        check_pages(settings, item, &buf[..n], size, tally);
        for block in buf[..n].chunks(BLOCK as usize) {
            let i = refs.len();
            let hash = block_hash(block);
            let kept = old.as_ref().and_then(|old| {
                old.blocks
                    .get(i)
                    .filter(|b| b.hash == hash)
                    .map(|b| (&old.sources[b.source as usize], b.ordinal))
            });
            match kept {
                Some((source, ordinal)) => {
                    let next = sources.len() as u32;
                    let at = *index.entry(source.clone()).or_insert_with(|| {
                        sources.push(source.clone());
                        next
                    });
                    refs.push(BlockRef {
                        source: at,
                        ordinal,
                        hash,
                    });
                }
                None => {
                    if segment.is_none() {
                        segment = Some(bundle.begin().await?);
                    }
                    segment.as_mut().expect("begun").push(block).await?;
                    refs.push(BlockRef {
                        source: u32::MAX,
                        ordinal: own,
                        hash,
                    });
                    own += 1;
                }
            }
        }
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    tally.bytes_read += size;
    let sha256 = crate::digest::hex(&hasher.finalize());
    if let Some(segment) = segment {
        let stored = Stored::new(&backup_id, &name, segment.end().await?);
        let at = sources.len() as u32;
        sources.push(stored);
        for r in refs.iter_mut().filter(|r| r.source == u32::MAX) {
            r.source = at;
        }
        tally.mapped += 1;
        tally.blocks += u64::from(own);
    } else if let Some(before) = before.filter(|b| b.size == size && b.sha256 == sha256) {
        // Every block is the parent's: its map says it all.
        tally.same += 1;
        return Ok(File {
            mtime_ns,
            ..before.clone()
        });
    }
    let map = BlockMap {
        sources,
        blocks: refs,
    }
    .encode();
    let mut segment = bundle.begin().await?;
    segment.push(&map).await?;
    let map = Stored::new(&backup_id, &name, segment.end().await?);
    Ok(File {
        size,
        mtime_ns,
        sha256,
        data: Data::Blocks(map),
    })
}

/// Reads a stored block map.
pub async fn load_map(
    settings: &Settings,
    parent: &Parent,
    stored: &Stored,
) -> io::Result<BlockMap> {
    let decoding = parent.decodings.get(&stored.backup).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a block map is in backup {}, which is not in the parent's chain",
                stored.backup
            ),
        )
    })?;
    read_map(&settings.store, decoding, stored).await
}

/// Reads the block map stored at `stored`, of the backup `decoding` reads.
pub async fn read_map(
    store: &AnyStore,
    decoding: &Decoding,
    stored: &Stored,
) -> io::Result<BlockMap> {
    let mut bytes = Vec::new();
    bundle::read(store, decoding, &stored.bundle, &stored.segment())
        .await?
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .await?;
    BlockMap::decode(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} of backup {} at {}: {e}",
                stored.bundle, stored.backup, stored.offset
            ),
        )
    })
}
