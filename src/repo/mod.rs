//! Backup repositories: where backup files and their manifests live. [`BackupStore`] is
//! the small interface every backend implements (a local directory now, S3 next); the
//! streaming pipeline in [`pipeline`] writes through it.

pub mod compression;
pub mod local;
pub mod manifest;
pub mod pipeline;
pub mod retention;

use manifest::{Manifest, Verification};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// A file being written into a repository. Nothing is visible until [`FileSink::commit`];
/// dropping an uncommitted sink discards what was written.
pub trait FileSink: AsyncWrite + Send + Unpin {
    fn commit(self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

pub trait BackupStore: Send + Sync {
    /// Human-readable location, e.g. `file:///srv/backups/2026…`.
    fn uri(&self, backup_id: &str) -> String;
    /// Starts writing file `name` of backup `backup_id`.
    fn create(
        &self,
        backup_id: &str,
        name: &str,
    ) -> impl Future<Output = io::Result<Box<dyn FileSink>>> + Send;
    /// Publishes a backup by writing its manifest, last.
    fn publish(&self, manifest: &Manifest) -> impl Future<Output = io::Result<()>> + Send;
    /// Removes whatever an unfinished backup left behind.
    fn discard(&self, backup_id: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// Published backups (those with a manifest), oldest first.
    fn list(&self) -> impl Future<Output = io::Result<Vec<Manifest>>> + Send;
    fn manifest(&self, backup_id: &str) -> impl Future<Output = io::Result<Manifest>> + Send;
    fn open(&self, backup_id: &str, name: &str) -> impl Future<Output = io::Result<Reader>> + Send;
    /// Stores the outcome of a verification next to a published backup.
    fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// The last recorded verification, if any.
    fn verification(
        &self,
        backup_id: &str,
    ) -> impl Future<Output = io::Result<Option<Verification>>> + Send;
    /// Deletes a published backup: its manifest first, so that it stops existing at once,
    /// then its files.
    fn delete(&self, backup_id: &str) -> impl Future<Output = io::Result<()>> + Send;
}

/// Opens the repository a plan names. `file://` paths are relative to the plan's directory.
pub fn open(url: &str, base_dir: &Path) -> Result<local::LocalStore, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base_dir.join(path)
        };
        return Ok(local::LocalStore::new(root));
    }
    if url.starts_with("s3://") {
        return Err("S3 repositories are not supported by this build yet; use file://".into());
    }
    Err(format!("unsupported repository URL `{url}`"))
}

/// Latest published backup, optionally of one database.
pub async fn latest(
    store: &impl BackupStore,
    database: Option<&str>,
) -> io::Result<Option<Manifest>> {
    let all = store.list().await?;
    Ok(all
        .into_iter()
        .rev()
        .find(|m| database.is_none_or(|d| m.database == d)))
}
