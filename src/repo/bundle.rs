//! Bundles: many stored pieces in one repository object. A file-level base backup holds
//! thousands of files, most of them small; one object each would cost a request each on
//! an object store, so several are written one after the other into a bundle, each
//! compressed (and encrypted) on its own — a *segment* — so that any one of them can be
//! read back alone, by a ranged read, without the rest.
//!
//! The bundle as a whole is a file of the backup like any other (its size and SHA-256 in
//! the manifest, checked by `verify`); each segment's own size and SHA-256 are checked when
//! it is read.

use super::compression::{Compression, Compressor};
use super::crypto::{EncryptingWriter, Identities, Recipients};
use super::manifest::FileEntry;
use super::{AnyStore, BackupStore, FileSink, Reader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};

/// Where one segment is in its bundle, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub length: u64,
    /// SHA-256 of the stored bytes of the segment, hex.
    pub sha256: String,
}

/// A bundle being written.
pub struct BundleWriter {
    name: String,
    sink: Box<dyn FileSink>,
    whole: Sha256,
    written: u64,
    compression: Compression,
    recipients: Option<Recipients>,
}

impl BundleWriter {
    pub async fn create(
        store: &impl BackupStore,
        backup_id: &str,
        name: &str,
        compression: Compression,
        recipients: Option<Recipients>,
    ) -> io::Result<BundleWriter> {
        Ok(BundleWriter {
            name: name.to_string(),
            sink: store.create(backup_id, name).await?,
            whole: Sha256::new(),
            written: 0,
            compression,
            recipients,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stored bytes so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts a segment; what is pushed into it is compressed (and encrypted) apart from
    /// every other segment.
    pub async fn begin(&mut self) -> io::Result<SegmentWriter<'_>> {
        let out = Shared::default();
        let encrypt = match &self.recipients {
            Some(r) => Some(EncryptingWriter::new(r, out.clone()).await?),
            None => None,
        };
        let start = self.written;
        let mut segment = SegmentWriter {
            compressor: self.compression.compressor(1),
            encrypt,
            out,
            hasher: Sha256::new(),
            start,
            bundle: self,
        };
        segment.drain().await?;
        Ok(segment)
    }

    async fn write(&mut self, bytes: &[u8], segment: &mut Sha256) -> io::Result<()> {
        self.sink.write_all(bytes).await?;
        self.whole.update(bytes);
        segment.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Commits the bundle; its entry for the manifest.
    pub async fn finish(mut self) -> io::Result<FileEntry> {
        self.sink.flush().await?;
        self.sink.commit().await?;
        Ok(FileEntry {
            name: self.name,
            size: self.written,
            sha256: crate::digest::hex(&self.whole.finalize()),
            index: None,
        })
    }
}

/// One segment being written into its bundle.
pub struct SegmentWriter<'a> {
    bundle: &'a mut BundleWriter,
    compressor: Compressor,
    encrypt: Option<EncryptingWriter<Shared>>,
    out: Shared,
    hasher: Sha256,
    start: u64,
}

impl SegmentWriter<'_> {
    pub async fn push(&mut self, raw: &[u8]) -> io::Result<()> {
        let compressed = self.compressor.push(raw).await?;
        self.emit(&compressed).await
    }

    async fn emit(&mut self, compressed: &[u8]) -> io::Result<()> {
        if compressed.is_empty() {
            return Ok(());
        }
        match &mut self.encrypt {
            Some(e) => {
                e.write_all(compressed).await?;
                self.drain().await
            }
            None => self.bundle.write(compressed, &mut self.hasher).await,
        }
    }

    /// Moves what the encryption produced into the bundle.
    async fn drain(&mut self) -> io::Result<()> {
        let bytes = self.out.take();
        if bytes.is_empty() {
            return Ok(());
        }
        self.bundle.write(&bytes, &mut self.hasher).await
    }

    /// Ends the segment; where it is.
    pub async fn end(mut self) -> io::Result<Segment> {
        let compressor = std::mem::replace(
            &mut self.compressor,
            Compression {
                algorithm: super::compression::Algorithm::None,
                level: None,
            }
            .compressor(1),
        );
        let rest = compressor.finish().await?;
        self.emit(&rest).await?;
        if let Some(e) = self.encrypt.take() {
            e.finish().await?;
            self.drain().await?;
        }
        Ok(Segment {
            offset: self.start,
            length: self.bundle.written - self.start,
            sha256: crate::digest::hex(&self.hasher.finalize()),
        })
    }
}

/// A writer whose bytes the segment takes out after each write (the age writer owns its
/// sink, and the bundle must see the bytes as they come).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How to read the segments of one backup: its compression, and for an encrypted backup
/// the identities and the recipients it names (for the error when none of them fits).
#[derive(Clone)]
pub struct Decoding {
    pub backup_id: String,
    pub compression: Compression,
    pub encryption: Option<(Identities, Vec<String>)>,
}

/// Reads one segment of bundle `bundle` of backup `decoding.backup_id`: the raw bytes it
/// holds. The stored bytes are checked against `segment` (size and SHA-256) as they pass;
/// a difference is an error at the end of the stream, before the reader says it is done,
/// so a consumer that reads to the end never takes damaged bytes as whole.
pub async fn read(
    store: &AnyStore,
    decoding: &Decoding,
    bundle: &str,
    segment: &Segment,
) -> io::Result<Reader> {
    let key = super::layout::key(&decoding.backup_id, bundle)?;
    let raw = store
        .objects()
        .read(&key, segment.offset, Some(segment.length))
        .await?;
    let checked = Checked {
        inner: raw,
        hasher: Some(Sha256::new()),
        read: 0,
        want: segment.clone(),
        what: format!(
            "{bundle} of backup {} (at {})",
            decoding.backup_id, segment.offset
        ),
    };
    let plain: Reader = match &decoding.encryption {
        None => Box::pin(checked),
        Some((identities, recipients)) => {
            identities
                .decrypt(
                    checked,
                    &format!("backup {}", decoding.backup_id),
                    recipients,
                )
                .await?
        }
    };
    let what = format!(
        "{bundle} of backup {} (at {})",
        decoding.backup_id, segment.offset
    );
    Ok(Box::pin(Named {
        inner: decoding.compression.decoder(BufReader::with_capacity(
            segment.length.clamp(512, 1 << 16) as usize,
            plain,
        )),
        what,
        pending: None,
    }))
}

/// Names the segment in every error reading it: a decompression or decryption error of
/// a damaged segment says which stored file is damaged. A decoder may fail after it put
/// bytes into the buffer (the check at the end of the stored bytes comes when it looks
/// for another frame); those bytes are passed on and the error comes with the next read.
struct Named {
    inner: Reader,
    what: String,
    pending: Option<io::Error>,
}

impl AsyncRead for Named {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.pending.take() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Err(e)) => {
                let e = if e.to_string().contains(&this.what) {
                    e
                } else {
                    let kind = match e.kind() {
                        // A stream that cannot be decoded is a damaged one.
                        io::ErrorKind::Other | io::ErrorKind::UnexpectedEof => {
                            io::ErrorKind::InvalidData
                        }
                        kind => kind,
                    };
                    io::Error::new(kind, format!("{}: {e}", this.what))
                };
                if buf.filled().len() > before {
                    this.pending = Some(e);
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
            other => other,
        }
    }
}

/// The stored bytes of a segment, checked at their end.
struct Checked {
    inner: Reader,
    hasher: Option<Sha256>,
    read: u64,
    want: Segment,
    what: String,
}

impl AsyncRead for Checked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let fresh = &buf.filled()[before..];
        if let Some(hasher) = &mut this.hasher {
            hasher.update(fresh);
        }
        this.read += fresh.len() as u64;
        let damaged = |why: String| {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why} (damaged)", this.what),
            )))
        };
        if this.read > this.want.length {
            return damaged(format!("longer than its {} bytes", this.want.length));
        }
        if fresh.is_empty()
            && let Some(hasher) = this.hasher.take()
        {
            if this.read != this.want.length {
                return damaged(format!(
                    "{} bytes where the backup says {}",
                    this.read, this.want.length
                ));
            }
            let sha = crate::digest::hex(&hasher.finalize());
            if sha != this.want.sha256 {
                return damaged(format!(
                    "SHA-256 is {sha}, the backup says {}",
                    this.want.sha256
                ));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn round_trip(
        store_name: &str,
        recipients: Option<Recipients>,
        identities: Option<Identities>,
    ) {
        let store = AnyStore::new(crate::repo::memory::MemoryStore::named(store_name));
        let compression = Compression::parse("zstd").unwrap();
        let mut bundle = BundleWriter::create(&store, "b1", "bundle-0", compression, recipients)
            .await
            .unwrap();
        let pieces: Vec<Vec<u8>> = vec![
            b"first".to_vec(),
            Vec::new(),
            (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect(),
        ];
        let mut segments = Vec::new();
        for piece in &pieces {
            let mut s = bundle.begin().await.unwrap();
            for chunk in piece.chunks(70_000) {
                s.push(chunk).await.unwrap();
            }
            segments.push(s.end().await.unwrap());
        }
        let entry = bundle.finish().await.unwrap();
        assert_eq!(entry.size, segments.iter().map(|s| s.length).sum::<u64>());
        let decoding = Decoding {
            backup_id: "b1".into(),
            compression,
            encryption: identities.map(|i| (i, Vec::new())),
        };
        // Read in another order than written: each segment stands alone.
        for (piece, segment) in pieces.iter().zip(&segments).rev() {
            let mut out = Vec::new();
            read(&store, &decoding, "bundle-0", segment)
                .await
                .unwrap()
                .read_to_end(&mut out)
                .await
                .unwrap();
            assert_eq!(&out, piece);
        }
        // A segment said to be elsewhere than it is fails, naming the bundle.
        let mut wrong = segments[2].clone();
        wrong.sha256 = "0".repeat(64);
        let mut out = Vec::new();
        let err = read(&store, &decoding, "bundle-0", &wrong)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bundle-0 of backup b1"), "{err}");
    }

    #[tokio::test]
    async fn segments_read_back_alone() {
        round_trip("bundle-plain", None, None).await;
    }

    #[tokio::test]
    async fn encrypted_segments_read_back_alone() {
        let identity = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(
            &path,
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string()),
        )
        .unwrap();
        let recipients = Recipients::load(&[identity.to_public().to_string()], None).unwrap();
        let identities = Identities::load(&path).unwrap();
        round_trip("bundle-encrypted", Some(recipients), Some(identities)).await;
    }
}
