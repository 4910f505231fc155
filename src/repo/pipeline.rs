//! The streaming pipeline between PostgreSQL's tools and a repository:
//! raw bytes → compression → (age encryption) → SHA-256 → repository file, in fixed-size
//! chunks, so memory does not grow with the size of the database; and back: repository file
//! → (decryption) → decompression. The SHA-256 is of the stored bytes, so files can be
//! checked without the key; age's authenticated chunks protect the plaintext beneath it.

use super::compression::Compression;
use super::crypto::{EncryptingWriter, IDENTITY_ENV, Identities, Recipients};
use super::manifest::{FileEntry, Manifest};
use super::{BackupStore, Reader};
use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Chunk size of the pipeline: large enough for few system calls, small enough to be
/// irrelevant for memory.
const CHUNK: usize = 1 << 20;

/// Compresses (and with `recipients`, encrypts) `input` into file `name` of backup
/// `backup_id`, hashing what is stored.
pub async fn store(
    store: &impl BackupStore,
    backup_id: &str,
    name: &str,
    input: impl AsyncRead + Send + Unpin,
    compression: Compression,
    threads: u32,
    recipients: Option<&Recipients>,
) -> io::Result<FileEntry> {
    let buffered = BufReader::with_capacity(CHUNK, input);
    let mut encoded = compression.encoder(buffered, threads);
    let mut sink = HashingWriter {
        inner: store.create(backup_id, name).await?,
        hasher: Sha256::new(),
        size: 0,
    };
    let mut buf = vec![0u8; CHUNK];
    match recipients {
        None => loop {
            let n = encoded.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).await?;
        },
        Some(recipients) => {
            let mut writer = EncryptingWriter::new(recipients, &mut sink).await?;
            loop {
                let n = encoded.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.write_all(&buf[..n]).await?;
            }
            writer.finish().await?;
        }
    }
    let HashingWriter {
        inner,
        hasher,
        size,
    } = sink;
    inner.commit().await?;
    Ok(FileEntry {
        name: name.to_string(),
        size,
        sha256: crate::plan::hex(&hasher.finalize()),
    })
}

/// Hashes and counts the bytes on their way into a repository file: the manifest records
/// what is stored, so that `verify` can check files without decrypting them.
struct HashingWriter {
    inner: Box<dyn super::FileSink>,
    hasher: Sha256,
    size: u64,
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

/// A reader of a stored file's original (decrypted, decompressed) bytes. An encrypted
/// backup needs `identities`; without them, or with the wrong ones, this is a clear error.
pub async fn load(
    store: &impl BackupStore,
    manifest: &Manifest,
    name: &str,
    identities: Option<&Identities>,
) -> io::Result<Reader> {
    let raw = store.open(&manifest.backup_id, name).await?;
    let raw = match &manifest.encryption {
        None => raw,
        Some(encryption) => {
            let identities = identities.ok_or_else(|| needs_identity(manifest))?;
            identities
                .decrypt(
                    raw,
                    &format!("backup {}", manifest.backup_id),
                    &encryption.recipients,
                )
                .await?
        }
    };
    Ok(manifest
        .compression
        .decoder(BufReader::with_capacity(CHUNK, raw)))
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
