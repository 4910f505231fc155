//! A repository in a local directory: `<root>/<backup id>/<files>` and `manifest.json`.
//! Files are written under a temporary name, fsynced and renamed; the manifest likewise,
//! and last, followed by an fsync of the directory so that a crash cannot publish a
//! manifest whose files are not on disk.

use super::manifest::{MANIFEST_NAME, Manifest, VERIFICATION_NAME, Verification};
use super::store::{BackupStore, FileSink, MAX_SMALL_FILE, Reader, Slot, check_id};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one backup. Ids come from opsrunner or from users (`backup: ID`);
    /// anything that could leave the repository is refused.
    pub fn backup_dir(&self, backup_id: &str) -> io::Result<PathBuf> {
        check_id(backup_id)?;
        Ok(self.root.join(backup_id))
    }

    /// The directory of an existing backup; refused when it is a symbolic link (or not a
    /// directory), so that nothing reads or deletes outside the repository through it.
    fn real_backup_dir(&self, backup_id: &str) -> io::Result<PathBuf> {
        let dir = self.backup_dir(backup_id)?;
        let meta = std::fs::symlink_metadata(&dir)?;
        if meta.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{backup_id} is {LINK}"),
            ));
        }
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{backup_id} is not a directory"),
            ));
        }
        Ok(dir)
    }

    /// The path of an existing file inside a backup, with no symbolic link on the way.
    fn existing_file(&self, backup_id: &str, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        let mut path = self.real_backup_dir(backup_id)?;
        let parts: Vec<&str> = name.split('/').collect();
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

    /// Leftovers of backups that never published a manifest (a process killed mid-backup),
    /// with the time anything in them last changed. A backup still being written looks the
    /// same, so callers only remove those untouched for a while. Symbolic links are neither
    /// followed nor reported: they are not something a backup leaves behind.
    pub fn orphans(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if check_id(&name).is_err()
                || !entry.file_type().is_ok_and(|t| t.is_dir())
                || exists_no_follow(&entry.path().join(MANIFEST_NAME))
            {
                continue;
            }
            let mut newest = entry.metadata()?.modified()?;
            walk(&entry.path(), 0, &mut |meta| {
                if let Ok(m) = meta.modified() {
                    newest = newest.max(m);
                }
            });
            out.push((name, newest));
        }
        out.sort();
        Ok(out)
    }

    /// Removes an orphan (never a published backup, never through a symbolic link).
    pub fn remove_orphan(&self, backup_id: &str) -> io::Result<()> {
        let dir = self.real_backup_dir(backup_id)?;
        if exists_no_follow(&dir.join(MANIFEST_NAME)) {
            return Err(io::Error::other(format!(
                "{backup_id} is a published backup, not an orphan"
            )));
        }
        std::fs::remove_dir_all(dir)
    }

    /// Creates the directories of `name` inside backup `backup_id`, refusing any symbolic
    /// link on the way; returns the file's path.
    fn new_file(&self, backup_id: &str, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        std::fs::create_dir_all(&self.root)?;
        let mut path = self.backup_dir(backup_id)?;
        let parts: Vec<&str> = name.split('/').collect();
        // The backup's directory, then each directory of the name below it.
        let (dirs, _) = parts.split_at(parts.len() - 1);
        real_dir(&path)?;
        for part in dirs {
            path.push(part);
            real_dir(&path)?;
        }
        path.push(parts[parts.len() - 1]);
        Ok(path)
    }
}

/// Makes sure `path` is a real directory (created when missing), never a link.
fn real_dir(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a directory ({LINK}?)", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        },
        Err(e) => Err(e),
    }
}

const LINK: &str = "a symbolic link (opsrunner never follows links out of the repository)";

fn check_name(name: &str) -> io::Result<()> {
    if name
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == ".." || p.contains(['\\', '\0']))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid file name `{}`", name.escape_debug()),
        ));
    }
    Ok(())
}

/// Whether anything (a symbolic link included) is at `path`, without following links.
fn exists_no_follow(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

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

/// Visits everything under `dir` without following symbolic links (a link loop is just a
/// link), to a bounded depth.
fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&std::fs::Metadata)) {
    if depth > 32 {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // DirEntry::metadata does not follow symbolic links.
        let Ok(meta) = entry.metadata() else { continue };
        visit(&meta);
        if meta.is_dir() {
            walk(&entry.path(), depth + 1, visit);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

struct LocalSink {
    file: Option<tokio::fs::File>,
    partial: PathBuf,
    final_path: PathBuf,
}

impl AsyncWrite for LocalSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let file = self.file.as_mut().expect("sink is open");
        Pin::new(file).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = self.file.as_mut().expect("sink is open");
        Pin::new(file).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = self.file.as_mut().expect("sink is open");
        Pin::new(file).poll_shutdown(cx)
    }
}

impl FileSink for LocalSink {
    fn commit(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        Box::pin(async move {
            let mut file = self.file.take().expect("sink is open");
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&self.partial, &self.final_path).await?;
            if let Some(dir) = self.final_path.parent() {
                sync_dir(dir)?;
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

impl LocalStore {
    /// A file from byte `offset` on (to its end): what a reader that starts at a frame of
    /// the file's [`super::manifest::SeekIndex`] reads. Nothing it reads is checked: the
    /// whole file is, by whoever reads it with [`BackupStore::open`]. Only a local
    /// repository is read this way: there, reading the file twice (the parts, and the
    /// whole to check it) costs page-cache reads; from S3 it would cost a second download.
    pub fn open_at(&self, backup_id: &str, name: &str, offset: u64) -> io::Result<Reader> {
        use std::io::Seek;
        let mut file = open_regular(&self.existing_file(backup_id, name)?)?;
        file.seek(io::SeekFrom::Start(offset))?;
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }
}

impl BackupStore for LocalStore {
    fn uri(&self, backup_id: &str) -> String {
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}/{backup_id}", root.display())
    }

    async fn create(&self, backup_id: &str, name: &str) -> io::Result<Box<dyn FileSink>> {
        let final_path = self.new_file(backup_id, name)?;
        let dir = final_path
            .parent()
            .expect("inside the backup directory")
            .to_path_buf();
        let file_name = final_path
            .file_name()
            .expect("has a name")
            .to_string_lossy()
            .into_owned();
        let partial = dir.join(format!(".{file_name}.partial"));
        // O_NOFOLLOW: a link planted under the partial name must not redirect the write.
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .await?;
        Ok(Box::new(LocalSink {
            file: Some(file),
            partial,
            final_path,
        }))
    }

    async fn publish(&self, manifest: &Manifest) -> io::Result<()> {
        let mut sink = self.create(&manifest.backup_id, MANIFEST_NAME).await?;
        let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
        tokio::io::AsyncWriteExt::write_all(&mut sink, &json).await?;
        sink.commit().await?;
        sync_dir(&self.root)
    }

    async fn discard(&self, backup_id: &str) -> io::Result<()> {
        let dir = match self.real_backup_dir(backup_id) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        if exists_no_follow(&dir.join(MANIFEST_NAME)) {
            // Never delete a published backup by accident.
            return Err(io::Error::other(format!(
                "backup {backup_id} is published; not discarding it"
            )));
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A repository directory that does not exist is an error, not an empty repository:
    /// an unset variable or a wrong path must not read as "no backups" (and so "nothing to
    /// prune", "nothing to restore"). The first backup creates the directory.
    async fn slots(&self) -> io::Result<Vec<Slot>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "directory {} does not exist (check the repository's URL; the first backup creates it)",
                        self.root.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            if check_id(&id).is_err() {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                out.push(Slot {
                    id,
                    problem: Some(format!("damaged: {LINK}")),
                });
            } else if kind.is_dir() && exists_no_follow(&entry.path().join(MANIFEST_NAME)) {
                out.push(Slot { id, problem: None });
            }
        }
        Ok(out)
    }

    async fn read_small(&self, backup_id: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = match self.existing_file(backup_id, name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        let file = match open_regular(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        read_bounded(file, &path)
    }

    async fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> io::Result<()> {
        let mut sink = self.create(backup_id, VERIFICATION_NAME).await?;
        let json = serde_json::to_vec_pretty(verification).map_err(io::Error::other)?;
        tokio::io::AsyncWriteExt::write_all(&mut sink, &json).await?;
        sink.commit().await
    }

    async fn delete(&self, backup_id: &str) -> io::Result<()> {
        let dir = self.real_backup_dir(backup_id)?;
        tokio::fs::remove_file(dir.join(MANIFEST_NAME)).await?;
        sync_dir(&dir)?;
        // remove_dir_all removes symbolic links inside, never what they point to.
        tokio::fs::remove_dir_all(&dir).await?;
        sync_dir(&self.root)
    }

    async fn open(&self, backup_id: &str, name: &str) -> io::Result<Reader> {
        let file = open_regular(&self.existing_file(backup_id, name)?)?;
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }

    async fn size(&self, backup_id: &str, name: &str) -> io::Result<u64> {
        Ok(open_regular(&self.existing_file(backup_id, name)?)?
            .metadata()?
            .len())
    }
}

fn read_bounded(file: std::fs::File, path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    if file.metadata()?.len() > MAX_SMALL_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {} MiB",
                path.display(),
                MAX_SMALL_FILE >> 20
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}
