//! The streaming pipeline between PostgreSQL's tools and a repository:
//! raw bytes → compression → (age encryption) → SHA-256 → repository file, in fixed-size
//! chunks, so memory does not grow with the size of the database; and back: repository file
//! → (decryption) → decompression. The SHA-256 is of the stored bytes, so files can be
//! checked without the key; age's authenticated chunks protect the plaintext beneath it.

use super::compression::Compression;
use super::crypto::{EncryptingWriter, IDENTITY_ENV, Identities, Recipients};
use super::manifest::{FileEntry, Manifest, SeekIndex};
use super::{BackupStore, Reader};
use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Chunk size of the pipeline: large enough for few system calls, small enough to be
/// irrelevant for memory.
const CHUNK: usize = 1 << 20;

/// A frame is ended at a seam only once it holds this much: a reader starting at a seam
/// decompresses at most this much it does not want, and the frames are too few for their
/// restarts to cost compression (zstd's jobs on several cores are 2 MiB anyway).
const FRAME_MIN: u64 = 8 << 20;

/// Where the original bytes of a file may be cut into independent frames: the positions
/// a reader may later want to start at (a custom archive's data blocks), reported as the
/// bytes pass through the reader that sees them.
pub trait Seams: Send {
    /// The positions seen since the last call, ascending.
    fn take(&mut self) -> Vec<u64>;
    /// `(dump id, start, end)` of every block, once all bytes were read; `None` when the
    /// file was not understood.
    fn blocks(&mut self) -> Option<Vec<(i64, u64, u64)>>;
}

/// Compresses (and with `recipients`, encrypts) `input` into file `name` of backup
/// `backup_id`, hashing what is stored. With `seams` (and no encryption, whose stream
/// cannot be entered in the middle), a new frame starts at a seam once the frame holds
/// [`FRAME_MIN`], and the entry gets the [`SeekIndex`] of where they are.
#[allow(clippy::too_many_arguments)]
pub async fn store(
    store: &impl BackupStore,
    backup_id: &str,
    name: &str,
    input: impl AsyncRead + Send + Unpin,
    compression: Compression,
    threads: u32,
    recipients: Option<&Recipients>,
    seams: Option<&mut dyn Seams>,
) -> io::Result<FileEntry> {
    let sink = store.create(backup_id, name).await?;
    store_into(sink, name, input, compression, threads, recipients, seams).await
}

/// [`store`] into a sink of any store: a file of a backup, or a file of its own (an
/// `export` step's). Committed when complete; dropped (discarded) on any error.
pub async fn store_into(
    sink: Box<dyn super::FileSink>,
    name: &str,
    input: impl AsyncRead + Send + Unpin,
    compression: Compression,
    threads: u32,
    recipients: Option<&Recipients>,
    seams: Option<&mut dyn Seams>,
) -> io::Result<FileEntry> {
    let mut input = BufReader::with_capacity(CHUNK, input);
    let mut compressor = compression.compressor(threads);
    let mut sink = HashingWriter {
        inner: sink,
        hasher: Sha256::new(),
        size: 0,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut index = None;
    match recipients {
        None => {
            let mut frames = vec![(0u64, 0u64)];
            let mut pending = std::collections::VecDeque::new();
            let mut raw_at = 0u64;
            let mut seams = seams;
            loop {
                let n = fill(&mut input, &mut buf).await?;
                if n == 0 {
                    break;
                }
                let mut piece = &buf[..n];
                if let Some(seams) = seams.as_deref_mut() {
                    pending.extend(seams.take());
                }
                while let Some(&seam) = pending.front() {
                    let frame_start = frames.last().expect("the first frame").0;
                    if seam < raw_at || seam - frame_start < FRAME_MIN {
                        pending.pop_front();
                        continue;
                    }
                    let Ok(k) = usize::try_from(seam - raw_at) else {
                        break;
                    };
                    if k >= piece.len() {
                        break;
                    }
                    sink.write_all(&compressor.push(&piece[..k]).await?).await?;
                    sink.write_all(&compressor.end_frame().await?).await?;
                    raw_at = seam;
                    piece = &piece[k..];
                    frames.push((raw_at, sink.size));
                    pending.pop_front();
                }
                sink.write_all(&compressor.push(piece).await?).await?;
                raw_at += piece.len() as u64;
            }
            sink.write_all(&compressor.finish().await?).await?;
            // A file of several frames always says so (its manifest's version tells an
            // older reader it cannot read it), even when where the blocks are is unknown.
            let blocks = seams.and_then(|s| s.blocks()).unwrap_or_default();
            if frames.len() > 1 || !blocks.is_empty() {
                index = Some(SeekIndex { frames, blocks });
            }
        }
        Some(recipients) => {
            let mut writer = EncryptingWriter::new(recipients, &mut sink).await?;
            loop {
                let n = fill(&mut input, &mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.write_all(&compressor.push(&buf[..n]).await?).await?;
            }
            writer.write_all(&compressor.finish().await?).await?;
            writer.finish().await?;
        }
    }
    sink.commit(name, index).await
}

/// Reads until `buf` is full or the input ends: a source that hands over small pieces (a
/// row at a time) still reaches the compressor in large ones.
async fn fill(input: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// How a copy changes a stored file on its way between repositories. Compression is never
/// touched, and the plaintext never reaches a disk: it exists only in memory, a chunk at a
/// time, between decryption and encryption.
pub enum Recode<'a> {
    /// Byte for byte.
    Unchanged,
    /// Encrypted to the recipients (it was not).
    Encrypt(&'a Recipients),
    /// Decrypted with `identities` (it is encrypted to `from`), encrypted to `to`.
    Reencrypt {
        identities: &'a Identities,
        from: &'a [String],
        to: &'a Recipients,
    },
}

/// Writes `input`, the stored bytes of a file described by `source`, as file `name` of
/// backup `backup_id`, recoded; the entry of what was written. `input` must be checked
/// against `source` on the way by whoever made it (a [`load_stored`] reader is: it fails
/// before its end when the bytes differ) — nothing is committed unless it ends cleanly.
/// Bytes copied unchanged are hashed once, there, not again here: they are `source`'s.
pub async fn store_recoded(
    store: &impl BackupStore,
    backup_id: &str,
    name: &str,
    input: Reader,
    recode: &Recode<'_>,
    source: &FileEntry,
) -> io::Result<FileEntry> {
    let mut sink = store.create(backup_id, name).await?;
    if let Recode::Unchanged = recode {
        let mut input = BufReader::with_capacity(CHUNK, input);
        let copied = tokio::io::copy_buf(&mut input, &mut sink).await?;
        if copied != source.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name}: {copied} bytes read, the manifest says {}",
                    source.size
                ),
            ));
        }
        sink.commit().await?;
        return Ok(FileEntry {
            name: name.to_string(),
            ..source.clone()
        });
    }
    let mut sink = HashingWriter {
        inner: sink,
        hasher: Sha256::new(),
        size: 0,
    };
    let plain: Reader = match recode {
        Recode::Reencrypt {
            identities, from, ..
        } => {
            identities
                .decrypt(input, &format!("backup {backup_id}"), from)
                .await?
        }
        _ => input,
    };
    let mut plain = BufReader::with_capacity(CHUNK, plain);
    if let Recode::Encrypt(to) | Recode::Reencrypt { to, .. } = recode {
        let mut writer = EncryptingWriter::new(to, &mut sink).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = plain.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).await?;
        }
        writer.finish().await?;
    }
    // Where frames start is where they start in the stored bytes, which encryption
    // changes: an encrypted file has no index.
    sink.commit(name, None).await
}

/// Hashes and counts the bytes on their way into a repository file: the manifest records
/// what is stored, so that `verify` can check files without decrypting them.
struct HashingWriter {
    inner: Box<dyn super::FileSink>,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    /// Publishes the file written; its entry in a manifest.
    async fn commit(self, name: &str, index: Option<SeekIndex>) -> io::Result<FileEntry> {
        self.inner.commit().await?;
        Ok(FileEntry {
            name: name.to_string(),
            size: self.size,
            sha256: crate::digest::hex(&self.hasher.finalize()),
            index,
        })
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.size += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Re-reads a stored file and compares its size and SHA-256 with the manifest's: the same
/// check a restore makes on the way, with nobody taking the bytes.
pub async fn check(store: &impl BackupStore, backup_id: &str, entry: &FileEntry) -> io::Result<()> {
    let raw = store
        .open(backup_id, &entry.name)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: cannot open: {e}", entry.name)))?;
    let (tx, _) = tokio::sync::mpsc::channel(1);
    hash_on_the_way(
        raw,
        entry.clone(),
        tx,
        Arc::new(AtomicBool::new(true)),
        crate::counting::Counter::new(),
    )
    .await
}

/// Whether an error of [`check`] (or of reading a stored file) says the file is damaged or
/// missing — a verdict on the backup — rather than that it could not be read just now (a
/// network error, a timeout, a permission): only the first may fail a verification.
pub fn is_damage(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
    )
}

/// A stored file on its way out of the repository: `reader` gives the original
/// (decrypted, decompressed) bytes; the stored bytes are hashed as they are read and
/// [`Verdict::wait`] compares their size and SHA-256 with the manifest's. A mismatch also
/// fails the reader, so that what consumes it sees an error, never a clean end.
pub struct Loaded {
    pub reader: Reader,
    pub verdict: Verdict,
    /// Stored bytes read so far, of `size`: for progress reports.
    pub read: crate::counting::Counter,
    pub size: u64,
}

/// The outcome of checking a stored file against its manifest entry. Waiting for it reads
/// the file to its end even when the consumer stopped early; once it is dropped, reading
/// stops when the consumer stops (never earlier: the consumer always gets every byte).
pub struct Verdict {
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    wanted: Arc<AtomicBool>,
}

impl Verdict {
    /// Drop the reader first: the check cannot finish while it holds unread chunks.
    pub async fn wait(mut self) -> io::Result<()> {
        let task = self.task.take().expect("waited once");
        task.await
            .unwrap_or_else(|e| Err(io::Error::other(format!("checking the file: {e}"))))
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        self.wanted.store(false, Ordering::Relaxed);
    }
}

/// Opens file `name` of a backup for reading through decryption (an encrypted backup needs
/// `identities`; without them, or with the wrong ones, this is a clear error) and
/// decompression, checked against the manifest on the way.
pub async fn load(
    store: &impl BackupStore,
    manifest: &Manifest,
    name: &str,
    identities: Option<&Identities>,
) -> io::Result<Loaded> {
    let entry = manifest
        .files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is not listed in the manifest"),
            )
        })?
        .clone();
    let stored = load_stored(store, &manifest.backup_id, entry, Default::default()).await?;
    let plain = match &manifest.encryption {
        None => stored.reader,
        Some(encryption) => {
            let identities = identities.ok_or_else(|| needs_identity(manifest))?;
            identities
                .decrypt(
                    stored.reader,
                    &format!("backup {}", manifest.backup_id),
                    &encryption.recipients,
                )
                .await?
        }
    };
    Ok(Loaded {
        reader: manifest
            .compression
            .decoder(BufReader::with_capacity(CHUNK, plain)),
        ..stored
    })
}

/// Opens a stored file as it is stored (still compressed, still encrypted), checked
/// against `entry` on the way: what [`load`] decodes, and what a copy moves unchanged.
/// `read` counts the stored bytes read.
pub async fn load_stored(
    store: &impl BackupStore,
    backup_id: &str,
    entry: FileEntry,
    read: crate::counting::Counter,
) -> io::Result<Loaded> {
    let raw = store.open(backup_id, &entry.name).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let wanted = Arc::new(AtomicBool::new(true));
    let size = entry.size;
    let task = tokio::spawn(hash_on_the_way(
        raw,
        entry,
        tx,
        wanted.clone(),
        read.clone(),
    ));
    Ok(Loaded {
        reader: Box::pin(ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }),
        verdict: Verdict {
            task: Some(task),
            wanted,
        },
        read,
        size,
    })
}

/// The original bytes of a stored file that is not encrypted, decompressed from the frame
/// that starts at stored offset `frame` (of its [`SeekIndex`]) on. Unchecked: the caller
/// checks the whole file with [`load`] or [`check`] before it trusts what it read here.
pub async fn load_from(
    store: &super::AnyStore,
    manifest: &Manifest,
    name: &str,
    frame: u64,
) -> io::Result<Reader> {
    let key = super::layout::key(&manifest.backup_id, name)?;
    let raw = store.objects().read(&key, frame, None).await?;
    Ok(manifest
        .compression
        .decoder(BufReader::with_capacity(CHUNK, raw)))
}

/// Reads a stored file to its end, hashing it and passing the chunks on while anyone
/// takes them; then compares size and SHA-256 with the manifest entry.
async fn hash_on_the_way(
    mut raw: Reader,
    entry: FileEntry,
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    wanted: Arc<AtomicBool>,
    read: crate::counting::Counter,
) -> io::Result<()> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut listening = true;
    let (kind, problem) = loop {
        if !listening && !wanted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK];
        let n = match raw.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => break (e.kind(), format!("read failed: {e}")),
        };
        read.add(n as u64);
        if n == 0 {
            let sha = crate::digest::hex(&hasher.finalize());
            if size != entry.size {
                break (
                    io::ErrorKind::InvalidData,
                    format!(
                        "size is {size} bytes, the manifest says {} (truncated or damaged)",
                        entry.size
                    ),
                );
            }
            if sha != entry.sha256 {
                break (
                    io::ErrorKind::InvalidData,
                    format!(
                        "SHA-256 is {sha}, the manifest says {} (damaged)",
                        entry.sha256
                    ),
                );
            }
            return Ok(());
        }
        buf.truncate(n);
        hasher.update(&buf);
        size += n as u64;
        if size > entry.size {
            break (
                io::ErrorKind::InvalidData,
                format!(
                    "larger than the {} bytes the manifest says (damaged)",
                    entry.size
                ),
            );
        }
        if listening && tx.send(Ok(buf)).await.is_err() {
            // The consumer has what it needs; keep reading to check the whole file.
            listening = false;
        }
    };
    let message = format!("{}: {problem}", entry.name);
    let _ = tx.send(Err(io::Error::new(kind, message.clone()))).await;
    Err(io::Error::new(kind, message))
}

/// The consumer's end of [`hash_on_the_way`].
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pos == this.chunk.len() {
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
            }
        }
        let n = out.remaining().min(this.chunk.len() - this.pos);
        out.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// The error for an encrypted backup read without an identity.
pub fn needs_identity(manifest: &Manifest) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "backup {} is encrypted (age, to {}); restoring or verifying it needs an identity file: pass --identity FILE or set {}",
            manifest.backup_id,
            manifest
                .encryption
                .as_ref()
                .map(|e| e.recipients.join(", "))
                .unwrap_or_default(),
            IDENTITY_ENV
        ),
    )
}
