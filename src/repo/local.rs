//! A repository in a local directory: `<root>/<backup id>/<files>` and `manifest.json`.
//! Files are written under a temporary name, fsynced and renamed; the manifest likewise,
//! and last, followed by an fsync of the directory so that a crash cannot publish a
//! manifest whose files are not on disk.

use super::store::{
    BoxFuture, Condition, FileSink, Listed, Reader, Small, Stat, Store, check_key, check_prefix,
};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// `file://path`: a directory, relative to the plan's directory unless absolute.
pub const BACKEND: super::store::Backend = super::store::Backend {
    scheme: "file",
    example: "file://path/to/dir",
    url_problem: |_| None,
    open: |definition, base_dir| {
        Box::pin(async move {
            let path = Path::new(definition.url.strip_prefix("file://").unwrap_or_default());
            let root = if path.is_absolute() {
                path.to_path_buf()
            } else {
                base_dir.join(path)
            };
            let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(LocalStore::new(root));
            Ok(store)
        })
    },
    describe: |_| Vec::new(),
};

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The repository's directory must be there for anything but the first write of a
    /// backup: a missing mount or a mistyped path is not an empty repository.
    fn root_must_exist(&self) -> io::Result<()> {
        match std::fs::symlink_metadata(&self.root) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "directory {} does not exist (check the repository's URL; `opsrunner repo init` creates a repository)",
                    self.root.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Makes sure `path` is a real directory (created when missing), never a link; whether
/// it was created.
fn real_dir(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a directory ({LINK}?)", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

const LINK: &str = "a symbolic link (opsrunner never follows links out of the repository)";

/// Opens a regular file for reading, refusing a symbolic link as the last component and
/// anything that is not a regular file (a FIFO would block forever).
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is {LINK}", path.display()),
                )
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

struct LocalSink {
    file: Option<tokio::fs::File>,
    partial: PathBuf,
    final_path: PathBuf,
}

impl LocalSink {
    /// A write error with the file it was for: "No space left on device" alone does not
    /// say which disk.
    fn placed(&self, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("writing {}: {e}", self.final_path.display()),
        )
    }
}

impl AsyncWrite for LocalSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let file = self.file.as_mut().expect("sink is open");
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.placed(e))),
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = self.file.as_mut().expect("sink is open");
        match Pin::new(file).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.placed(e))),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = self.file.as_mut().expect("sink is open");
        match Pin::new(file).poll_shutdown(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.placed(e))),
            other => other,
        }
    }
}

impl FileSink for LocalSink {
    fn commit(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        Box::pin(async move {
            let mut file = self.file.take().expect("sink is open");
            let placed = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("writing {}: {e}", self.final_path.display()),
                )
            };
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(placed)?;
            file.sync_all().await.map_err(placed)?;
            drop(file);
            tokio::fs::rename(&self.partial, &self.final_path)
                .await
                .map_err(placed)?;
            if let Some(dir) = self.final_path.parent() {
                sync_dir(dir).map_err(placed)?;
            }
            Ok(())
        })
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Not committed: the partial file must not linger looking like data.
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A local object's tag: a rename makes a new inode, a rewrite in place a new time.
fn local_tag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:x}.{:x}.{:x}.{:x}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn local_stat(meta: &std::fs::Metadata) -> Stat {
    Stat {
        size: meta.len(),
        modified: meta.modified().ok().map(DateTime::<Utc>::from),
        tag: local_tag(meta),
    }
}

/// Whether a file name is one of ours in progress (a sink's or a small write's), which a
/// listing must not show.
fn is_partial(name: &str) -> bool {
    name.starts_with('.') && (name.ends_with(".partial") || name.contains(".partial-"))
}

impl LocalStore {
    /// The path of an existing object, with no symbolic link on the way.
    fn object_path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        let mut path = self.root.clone();
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            path.push(part);
            if !std::fs::symlink_metadata(&path)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a directory ({LINK}?)", path.display()),
                ));
            }
        }
        path.push(parts[parts.len() - 1]);
        Ok(path)
    }

    /// The path for a new object: its directories created (none of them a link).
    fn new_object_path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        std::fs::create_dir_all(&self.root)?;
        let mut path = self.root.clone();
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            let parent = path.clone();
            path.push(part);
            // A new directory's name is made durable in its parent, so that a crash cannot
            // lose the place of files fsynced inside it.
            if real_dir(&path)? {
                sync_dir(&parent)?;
            }
        }
        path.push(parts[parts.len() - 1]);
        Ok(path)
    }

    /// Writes `bytes` under a temporary name beside `path`, fsynced: renamed or linked into
    /// place by the caller.
    fn temporary(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
        use std::io::Write;
        let name = path.file_name().expect("has a name").to_string_lossy();
        let temp = path.with_file_name(format!(".{name}.partial-{:016x}", fastrand::u64(..)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(temp)
    }

    /// Runs `f` holding the exclusive lock of `path`'s directory: conditional writes and
    /// deletes of one directory happen one at a time.
    fn locked_dir<T>(path: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let dir = std::fs::File::open(path.parent().expect("inside the repository"))?;
        dir.lock()?;
        let result = f();
        let _ = dir.unlock();
        result
    }

    fn put_now(
        &self,
        key: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> io::Result<Option<String>> {
        // The repository record is what makes a directory a repository (`repo init`):
        // writing it may create the directory; nothing else may.
        if key != super::store::RECORD_KEY {
            self.root_must_exist()?;
        }
        let path = self.new_object_path(key)?;
        let temp = Self::temporary(&path, bytes)?;
        let placed = match condition {
            Condition::Always => std::fs::rename(&temp, &path).map(|()| true),
            // link(2) fails when the name exists: create-if-absent in one step.
            Condition::Absent => match std::fs::hard_link(&temp, &path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
            Condition::Matches(tag) => {
                Self::locked_dir(&path, || match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && local_tag(&m) == tag => {
                        std::fs::rename(&temp, &path).map(|()| true)
                    }
                    Ok(_) => Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                })
            }
        };
        let _ = std::fs::remove_file(&temp);
        if !placed? {
            return Ok(None);
        }
        sync_dir(path.parent().expect("inside the repository"))?;
        Ok(Some(local_tag(&std::fs::symlink_metadata(&path)?)))
    }

    /// Every object under `dir` (whose key starts with `key_prefix`), links included and
    /// never followed, partial files left out.
    fn walk_objects(
        dir: &Path,
        key_prefix: &str,
        depth: usize,
        out: &mut Vec<Listed>,
    ) -> io::Result<()> {
        if depth > 32 {
            return Ok(());
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if check_key(&name).is_err() || is_partial(&name) {
                continue;
            }
            // DirEntry::metadata does not follow symbolic links.
            let meta = entry.metadata()?;
            let key = format!("{key_prefix}{name}");
            if meta.is_dir() {
                Self::walk_objects(&entry.path(), &format!("{key}/"), depth + 1, out)?;
            } else if meta.file_type().is_symlink() {
                out.push(Listed {
                    key,
                    stat: local_stat(&meta),
                    problem: Some(LINK.to_string()),
                });
            } else if meta.is_file() {
                out.push(Listed {
                    key,
                    stat: local_stat(&meta),
                    problem: None,
                });
            }
        }
        Ok(())
    }

    /// What [`Store::unfinished`] finds under `dir`: partial files, and directories that
    /// hold no file at all (their key ends with `/`).
    fn walk_unfinished(
        dir: &Path,
        key_prefix: &str,
        depth: usize,
        out: &mut Vec<Listed>,
    ) -> io::Result<bool> {
        let mut holds_files = false;
        if depth > 32 {
            return Ok(true);
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                holds_files = true;
                continue;
            };
            let meta = entry.metadata()?;
            let key = format!("{key_prefix}{name}");
            if meta.is_dir() && check_key(&name).is_ok() {
                let inner =
                    Self::walk_unfinished(&entry.path(), &format!("{key}/"), depth + 1, out)?;
                if !inner {
                    out.push(Listed {
                        key: format!("{key}/"),
                        stat: local_stat(&meta),
                        problem: None,
                    });
                }
                holds_files |= inner;
            } else {
                holds_files = true;
                if meta.is_file() && is_partial(&name) {
                    out.push(Listed {
                        key,
                        stat: local_stat(&meta),
                        problem: None,
                    });
                }
            }
        }
        Ok(holds_files)
    }

    fn list_now(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        check_prefix(prefix)?;
        self.root_must_exist()?;
        // Start at the deepest directory the prefix names whole.
        let dir_key = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut dir = self.root.clone();
        if !dir_key.is_empty() {
            for part in dir_key.split('/') {
                dir.push(part);
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(Vec::new()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                }
            }
        }
        let start = if dir_key.is_empty() {
            String::new()
        } else {
            format!("{dir_key}/")
        };
        let mut out = Vec::new();
        Self::walk_objects(&dir, &start, 0, &mut out)?;
        out.retain(|o| o.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete_now(&self, key: &str, condition: Condition<'_>) -> io::Result<bool> {
        let path = match self.object_path(key) {
            // A directory on the way is missing: so is the object.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(condition == Condition::Always);
            }
            other => other?,
        };
        let remove = || match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(condition == Condition::Always),
            Err(e) => Err(e),
        };
        let removed = match condition {
            Condition::Always => remove()?,
            Condition::Absent => false,
            Condition::Matches(tag) => {
                Self::locked_dir(&path, || match std::fs::symlink_metadata(&path) {
                    Ok(m) if local_tag(&m) == tag => remove(),
                    Ok(_) => Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                })?
            }
        };
        if removed {
            sync_dir(path.parent().expect("inside the repository"))?;
        }
        Ok(removed)
    }
}

impl Store for LocalStore {
    fn location(&self, key: &str) -> String {
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}/{key}", root.display())
    }

    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        Box::pin(async move {
            let final_path = self.new_object_path(key)?;
            let name = final_path
                .file_name()
                .expect("has a name")
                .to_string_lossy();
            let partial = final_path.with_file_name(format!(".{name}.partial"));
            // O_NOFOLLOW: a link planted under the partial name must not redirect the write.
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&partial)
                .await?;
            let sink: Box<dyn FileSink> = Box::new(LocalSink {
                file: Some(file),
                partial,
                final_path,
            });
            Ok(sink)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async move { self.put_now(key, &bytes, condition) })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: Option<u64>,
    ) -> BoxFuture<'a, io::Result<Reader>> {
        Box::pin(async move {
            use std::io::Seek;
            use tokio::io::AsyncReadExt;
            let mut file = open_regular(&self.object_path(key)?)?;
            file.seek(io::SeekFrom::Start(offset))?;
            let file = tokio::fs::File::from_std(file);
            let reader: Reader = match length {
                Some(n) => Box::pin(file.take(n)),
                None => Box::pin(file),
            };
            Ok(reader)
        })
    }

    fn read_small<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, io::Result<Option<Small>>> {
        Box::pin(async move {
            use std::io::Read;
            let file = match self.object_path(key).and_then(|p| open_regular(&p)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                other => other?,
            };
            let meta = file.metadata()?;
            let stat = local_stat(&meta);
            if meta.len() > limit {
                return Ok(Some(Small { bytes: None, stat }));
            }
            let mut bytes = Vec::new();
            file.take(limit + 1).read_to_end(&mut bytes)?;
            // Grown since it was looked at: larger than the limit all the same.
            let bytes = (bytes.len() as u64 <= limit).then_some(bytes);
            Ok(Some(Small { bytes, stat }))
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        Box::pin(async move {
            match self.object_path(key).and_then(|p| open_regular(&p)) {
                Ok(file) => Ok(Some(local_stat(&file.metadata()?))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move { self.list_now(prefix) })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move { self.delete_now(key, condition) })
    }

    /// Partial files (a sink not committed, a small write cut short) and directories with
    /// nothing in them (a backup killed before its first file).
    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let mut out = Vec::new();
            if std::fs::symlink_metadata(&self.root).is_ok() {
                Self::walk_unfinished(&self.root, "", 0, &mut out)?;
            }
            out.retain(|o| o.key.starts_with(prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn lock_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.root.join(name))
    }

    /// A directory removed whole (links inside removed, never followed), partial files
    /// included.
    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let Some(dir_key) = prefix.strip_suffix('/') else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{prefix}` does not name a directory"),
                ));
            };
            let dir = match self.object_path(dir_key) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            };
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a directory ({LINK}?)", dir.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            match tokio::fs::remove_dir_all(&dir).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            sync_dir(dir.parent().expect("inside the repository"))
        })
    }
}
