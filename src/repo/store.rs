//! The interface every repository backend implements, below the backends and the
//! [`super::AnyStore`] that chooses between them.

use super::manifest::{Manifest, Verification};
use chrono::{DateTime, Utc};
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

/// A future a [`Store`] returns: boxed, so that the trait is object-safe and a repository
/// of any backend is one `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// What a store knows of an object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// When the store last wrote it, by the store's clock (which a writer cannot choose).
    pub modified: Option<DateTime<Utc>>,
    /// Changes whenever the object is written: S3's and Azure's ETag, a local file's inode,
    /// size and modification time. What [`Condition::Matches`] compares.
    pub tag: String,
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub stat: Stat,
    /// Why it cannot be read at all (a local symbolic link, which is never followed).
    pub problem: Option<String>,
}

/// A small object read whole, with what the store knows of it.
#[derive(Debug, Clone)]
pub struct Small {
    /// `None` when the object is larger than the limit asked for (it was not read).
    pub bytes: Option<Vec<u8>>,
    pub stat: Stat,
}

/// Where a repository's record lives, relative to its root (see `repo::record`): the one
/// object whose writing may create a local repository's directory.
pub const RECORD_KEY: &str = "opsrunner-repository.json";

/// When a write or a delete goes ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    Always,
    /// Only when no object has the key (create-if-absent; S3's `If-None-Match: *`).
    Absent,
    /// Only while the object is the one with this tag (replace-if-unchanged; `If-Match`).
    Matches(&'a str),
}

/// The one interface every repository backend implements (restic's `Backend`,
/// pgBackRest's storage drivers): objects under `/`-separated keys, relative to the
/// repository's root. What lives under which key — backups, manifests, verification
/// records, WAL, marks, leases — is decided above the backends, once.
///
/// Keys are checked by [`check_key`] before a backend sees them: no empty part, no `.` or
/// `..`, no backslash or NUL.
pub trait Store: Send + Sync {
    /// Where an object is, for messages: `file:///srv/backups/KEY`, `s3://bucket/prefix/KEY`.
    fn location(&self, key: &str) -> String;

    /// Starts writing `key`, streaming: nothing is visible until [`FileSink::commit`], which
    /// replaces any object of that key at once; dropping the sink discards what was written.
    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>>;

    /// Writes a small object whole if `condition` holds: its new tag, or `None` when the
    /// condition did not hold (nothing was written).
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<Option<String>>>;

    /// Reads `key` from byte `offset`, `length` bytes or to its end. An absent object is an
    /// error of kind [`io::ErrorKind::NotFound`]; a range past the end reads nothing.
    fn read<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: Option<u64>,
    ) -> BoxFuture<'a, io::Result<Reader>>;

    /// Reads a small object whole, with its [`Stat`]; `None` when there is none. Larger than
    /// `limit` is not read (`bytes` is `None`): a damaged or hostile object must not
    /// exhaust memory.
    fn read_small<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, io::Result<Option<Small>>>;

    /// What the store knows of `key`; `None` when there is no such object.
    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>>;

    /// Every object whose key starts with `prefix` (`""`: all), sorted by key. Unfinished
    /// writes are not objects and are not listed.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>>;

    /// Deletes `key` if `condition` holds; `false` when it did not. Deleting an absent
    /// object under [`Condition::Always`] succeeds (`true`), as S3 does.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>>;

    /// Writes under `prefix` that never finished and are not objects (local partial files
    /// and empty directories, S3's open multipart uploads), with when they last changed:
    /// what the orphan sweep finds beside the objects. `key` is where they are.
    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        let _ = prefix;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A file the kernel can lock for a holder, released when the holder's process ends
    /// however it ends (`flock`): offered by backends on a local file system, where it is
    /// a better lease than one kept by conditional writes and a time to live.
    fn lock_file(&self, name: &str) -> Option<std::path::PathBuf> {
        let _ = name;
        None
    }

    /// Deletes everything under `prefix` (which ends with `/`), unfinished writes included
    /// (S3's open multipart uploads): what discarding a backup that never finished needs.
    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            for object in self.list(prefix).await? {
                self.delete(&object.key, Condition::Always).await?;
            }
            Ok(())
        })
    }
}

/// A shared store is a store: what wraps one (the fault injector, a repository) can hold
/// it behind an `Arc`.
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn location(&self, key: &str) -> String {
        (**self).location(key)
    }
    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        (**self).create(key)
    }
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        (**self).put(key, bytes, condition)
    }
    fn read<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: Option<u64>,
    ) -> BoxFuture<'a, io::Result<Reader>> {
        (**self).read(key, offset, length)
    }
    fn read_small<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, io::Result<Option<Small>>> {
        (**self).read_small(key, limit)
    }
    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        (**self).stat(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        (**self).list(prefix)
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>> {
        (**self).delete(key, condition)
    }
    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        (**self).unfinished(prefix)
    }
    fn lock_file(&self, name: &str) -> Option<std::path::PathBuf> {
        (**self).lock_file(name)
    }
    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        (**self).delete_under(prefix)
    }
}

/// The error of reading an object that is not there: [`io::ErrorKind::NotFound`], naming
/// where it was looked for (`location`, from [`Store::location`]).
pub fn not_found(location: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{location} does not exist"),
    )
}

/// Checks a key before any backend sees it (see [`Store`]).
pub fn check_key(key: &str) -> io::Result<()> {
    if key.is_empty()
        || key.len() > 1024
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains(['\\', '\0']))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid object key `{}`", key.escape_debug()),
        ));
    }
    Ok(())
}

/// Checks a listing prefix: empty, or a key followed by an optional `/`.
pub fn check_prefix(prefix: &str) -> io::Result<()> {
    match prefix.strip_suffix('/') {
        _ if prefix.is_empty() => Ok(()),
        Some(key) => check_key(key),
        None => check_key(prefix),
    }
}

/// How a backend opens the repository a plan defines (paths relative to the directory).
pub type Opener = for<'a> fn(
    &'a crate::plan::model::Repository,
    &'a std::path::Path,
) -> BoxFuture<'a, Result<std::sync::Arc<dyn Store>, OpenError>>;

/// What a backend finds wrong with a URL of its scheme, said without echoing the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlProblem {
    /// Credentials in the URL: a secret, now leaked.
    Credentials(String),
    /// A malformed URL (a container name Azure refuses, …).
    Invalid(String),
}

/// What a backend tells the rest of opsrunner about itself.
pub struct Backend {
    /// The URL scheme, without `://`.
    pub scheme: &'static str,
    /// An example URL, for messages.
    pub example: &'static str,
    /// What is wrong with a URL of this scheme that no connection would mend (credentials
    /// in it, a malformed name), said without echoing the URL.
    pub url_problem: fn(&str) -> Option<UrlProblem>,
    /// Opens the repository `definition` describes; paths are relative to `base_dir`.
    pub open: Opener,
    /// Lines for the preview: how a backup is written there (beside the URL itself).
    pub describe: fn(&crate::plan::model::Repository) -> Vec<String>,
}

pub use super::manifest::check_id;

/// Why a repository could not be opened. Nothing is contacted when opening: these are all
/// mistakes in the repository's definition, which a retry does not mend.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported repository URL `{url}`; use {supported}")]
    UnsupportedUrl {
        url: String,
        /// The schemes there are (`registry::supported`).
        supported: String,
    },
    /// Not echoed: what precedes the @ is a secret.
    #[error(
        "the repository URL carries credentials; remove them: they come from the store's standard variables (S3: the AWS chain — environment, profile, web identity, instance role; Azure: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY)"
    )]
    CredentialsInUrl,
    #[error("`{0}`: a bucket name has 3 to 63 characters")]
    BadBucket(String),
    /// What else a backend finds wrong in a definition or its environment, in its own words
    /// (which never echo a secret).
    #[error("{0}")]
    Definition(String),
}
