//! The interface every repository backend implements, below the backends and the
//! [`super::AnyStore`] that chooses between them.

use super::manifest::{Manifest, Verification};
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// A file being written into a repository. Nothing is visible until [`FileSink::commit`];
/// dropping an uncommitted sink discards what was written.
pub trait FileSink: AsyncWrite + Send + Unpin {
    fn commit(self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// A backup as the repository's layout shows it: identified by where it lives, whatever
/// its manifest claims. `problem` says why it cannot be read at all (a symbolic link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub id: String,
    pub problem: Option<String>,
}

/// The most a manifest or verification record may hold: a damaged or hostile file must not
/// exhaust memory.
pub const MAX_SMALL_FILE: u64 = 64 << 20;

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
    /// Every place that holds a manifest (a published or a damaged backup), in no order.
    fn slots(&self) -> impl Future<Output = io::Result<Vec<Slot>>> + Send;
    /// A small file of a backup (its manifest or verification record), `None` when absent;
    /// larger than [`MAX_SMALL_FILE`] is an error.
    fn read_small(
        &self,
        backup_id: &str,
        name: &str,
    ) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    fn open(&self, backup_id: &str, name: &str) -> impl Future<Output = io::Result<Reader>> + Send;
    /// The stored size of a file (without reading it).
    fn size(&self, backup_id: &str, name: &str) -> impl Future<Output = io::Result<u64>> + Send;
    /// Stores the outcome of a verification next to a published backup.
    fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Deletes a published backup: its manifest first, so that it stops existing at once,
    /// then its files.
    fn delete(&self, backup_id: &str) -> impl Future<Output = io::Result<()>> + Send;
}

/// Backup ids come from opsrunner, from users (`backup: ID`) and from the repository's
/// listing; anything that could name a place outside one backup is refused.
pub fn check_id(backup_id: &str) -> io::Result<()> {
    if backup_id.is_empty()
        || backup_id.len() > 255
        || backup_id.contains(['/', '\\', '\0'])
        || backup_id.starts_with('.')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid backup id `{}`", backup_id.escape_debug()),
        ));
    }
    Ok(())
}

/// Why a repository could not be opened. Nothing is contacted when opening: these are all
/// mistakes in the repository's definition, which a retry does not mend.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported repository URL `{0}`; use file://path or s3://bucket/prefix")]
    UnsupportedUrl(String),
    /// Not echoed: what precedes the @ is a secret.
    #[error(
        "the S3 URL carries credentials; remove them: they come from the standard AWS chain (environment, profile, web identity, instance role)"
    )]
    CredentialsInUrl,
    #[error("`{0}`: a bucket name has 3 to 63 characters")]
    BadBucket(String),
}
