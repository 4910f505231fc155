//! Backup repositories. Every backend (a local directory, S3, memory) implements one
//! object interface, [`Store`] ([`store`]); everything a repository holds — backups and
//! their manifests and verification records ([`layout`]), WAL ([`wal`]), marks, leases —
//! is laid out on it once, above the backends. [`AnyStore`] is a repository of any
//! backend; the streaming pipeline in [`pipeline`] writes through it.

pub mod archive;
pub mod compression;
pub mod crypto;
pub mod faults;
pub mod layout;
pub mod lease;
pub mod listing;
pub mod local;
pub mod manifest;
pub mod mark;
pub mod memory;
pub mod pipeline;
pub mod prune;
pub mod retention;
pub mod s3;
pub mod store;
pub mod timeline;
pub mod wal;

pub use store::{
    BackupStore, Condition, FileSink, Listed, MAX_SMALL_FILE, OpenError, Reader, Slot, Small, Stat,
    Store, check_id,
};

use std::path::Path;
use std::sync::Arc;

/// A repository of any backend; what steps and the catalog work with.
#[derive(Clone)]
pub struct AnyStore {
    objects: Arc<dyn Store>,
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
        return Ok(AnyStore::new(local::LocalStore::new(root)));
    }
    if url.starts_with("s3://") {
        return Ok(AnyStore::new(s3::S3Store::connect(url, options).await?));
    }
    Err(OpenError::UnsupportedUrl(url.to_string()))
}

impl AnyStore {
    pub fn new(store: impl Store + 'static) -> AnyStore {
        AnyStore {
            objects: Arc::new(store),
        }
    }

    /// The repository's objects, for what is laid out on them.
    pub fn objects(&self) -> &dyn Store {
        &*self.objects
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.objects.location("").trim_end_matches('/').to_string()
    }
}
