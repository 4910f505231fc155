//! Backup repositories: where backup files and their manifests live. [`BackupStore`]
//! ([`store`]) is the small interface every backend implements (a local directory, S3);
//! [`AnyStore`] is either; the streaming pipeline in [`pipeline`] writes through it.

pub mod archive;
pub mod compression;
pub mod crypto;
pub mod lease;
pub mod listing;
pub mod local;
pub mod manifest;
pub mod mark;
pub mod pipeline;
pub mod prune;
pub mod retention;
pub mod s3;
pub mod store;
pub mod timeline;
pub mod wal;

pub use store::{BackupStore, FileSink, MAX_SMALL_FILE, OpenError, Reader, Slot, check_id};

use manifest::{Manifest, Verification};
use std::io;
use std::path::Path;

/// A repository of any kind; what steps and the catalog work with.
#[derive(Clone)]
pub enum AnyStore {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

/// Opens a repository: `file://path` (relative to `base_dir`) or `s3://bucket/prefix`.
pub async fn open(
    url: &str,
    base_dir: &Path,
    options: &s3::S3Options,
) -> Result<AnyStore, OpenError> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base_dir.join(path)
        };
        return Ok(AnyStore::Local(local::LocalStore::new(root)));
    }
    if url.starts_with("s3://") {
        return Ok(AnyStore::S3(s3::S3Store::connect(url, options).await?));
    }
    Err(OpenError::UnsupportedUrl(url.to_string()))
}

impl AnyStore {
    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        match self {
            AnyStore::Local(l) => format!("file://{}", l.root().display()),
            AnyStore::S3(s) => s.uri("").trim_end_matches('/').to_string(),
        }
    }

    /// Leftovers of unfinished backups and when they last changed (see `LocalStore::orphans`).
    pub async fn orphans(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        match self {
            AnyStore::Local(l) => l.orphans(),
            AnyStore::S3(s) => s.orphans().await,
        }
    }

    pub async fn remove_orphan(&self, backup_id: &str) -> io::Result<()> {
        match self {
            AnyStore::Local(l) => l.remove_orphan(backup_id),
            AnyStore::S3(s) => s.discard(backup_id).await,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Local($s) => $e,
            AnyStore::S3($s) => $e,
        }
    };
}

impl BackupStore for AnyStore {
    fn uri(&self, backup_id: &str) -> String {
        dispatch!(self, s => s.uri(backup_id))
    }
    async fn create(&self, backup_id: &str, name: &str) -> io::Result<Box<dyn FileSink>> {
        dispatch!(self, s => s.create(backup_id, name).await)
    }
    async fn publish(&self, manifest: &Manifest) -> io::Result<()> {
        dispatch!(self, s => s.publish(manifest).await)
    }
    async fn discard(&self, backup_id: &str) -> io::Result<()> {
        dispatch!(self, s => s.discard(backup_id).await)
    }
    async fn slots(&self) -> io::Result<Vec<Slot>> {
        dispatch!(self, s => s.slots().await)
    }
    async fn read_small(&self, backup_id: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        dispatch!(self, s => s.read_small(backup_id, name).await)
    }
    async fn open(&self, backup_id: &str, name: &str) -> io::Result<Reader> {
        dispatch!(self, s => s.open(backup_id, name).await)
    }
    async fn size(&self, backup_id: &str, name: &str) -> io::Result<u64> {
        dispatch!(self, s => s.size(backup_id, name).await)
    }
    async fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> io::Result<()> {
        dispatch!(self, s => s.record_verification(backup_id, verification).await)
    }
    async fn delete(&self, backup_id: &str) -> io::Result<()> {
        dispatch!(self, s => s.delete(backup_id).await)
    }
}
