//! The streaming pipeline between PostgreSQL's tools and a repository:
//! raw bytes → compression → SHA-256 → repository file, in fixed-size chunks, so memory does
//! not grow with the size of the database; and back: repository file → SHA-256 check →
//! decompression.

use super::compression::Compression;
use super::manifest::FileEntry;
use super::{BackupStore, Reader};
use sha2::{Digest, Sha256};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

/// Chunk size of the pipeline: large enough for few system calls, small enough to be
/// irrelevant for memory.
const CHUNK: usize = 1 << 20;

/// Compresses `input` into file `name` of backup `backup_id`, hashing what is stored.
pub async fn store(
    store: &impl BackupStore,
    backup_id: &str,
    name: &str,
    input: impl AsyncRead + Send + Unpin,
    compression: Compression,
    threads: u32,
) -> io::Result<FileEntry> {
    let buffered = BufReader::with_capacity(CHUNK, input);
    let mut encoded = compression.encoder(buffered, threads);
    let mut sink = store.create(backup_id, name).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = encoded.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        sink.write_all(&buf[..n]).await?;
    }
    sink.commit().await?;
    Ok(FileEntry {
        name: name.to_string(),
        size,
        sha256: crate::plan::hex(&hasher.finalize()),
    })
}

/// Re-reads a stored file and compares its size and SHA-256 with the manifest's.
pub async fn check(
    store: &impl BackupStore,
    backup_id: &str,
    entry: &FileEntry,
) -> Result<(), String> {
    let mut reader = store
        .open(backup_id, &entry.name)
        .await
        .map_err(|e| format!("{}: cannot open: {e}", entry.name))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| format!("{}: read failed: {e}", entry.name))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha = crate::plan::hex(&hasher.finalize());
    if size != entry.size {
        return Err(format!(
            "{}: size is {size} bytes, the manifest says {}",
            entry.name, entry.size
        ));
    }
    if sha != entry.sha256 {
        return Err(format!(
            "{}: SHA-256 is {sha}, the manifest says {}",
            entry.name, entry.sha256
        ));
    }
    Ok(())
}

/// A reader of a stored file's original (decompressed) bytes.
pub async fn load(
    store: &impl BackupStore,
    backup_id: &str,
    name: &str,
    compression: Compression,
) -> io::Result<Reader> {
    let raw = store.open(backup_id, name).await?;
    Ok(compression.decoder(BufReader::with_capacity(CHUNK, raw)))
}
