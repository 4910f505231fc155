//! A repository in a local directory: `<root>/<backup id>/<files>` and `manifest.json`.
//! Files are written under a temporary name, fsynced and renamed; the manifest likewise,
//! and last, followed by an fsync of the directory so that a crash cannot publish a
//! manifest whose files are not on disk.

use super::manifest::{MANIFEST_NAME, Manifest, VERIFICATION_NAME, Verification};
use super::{BackupStore, FileSink, Reader};
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
        if backup_id.is_empty() || backup_id.contains(['/', '\\']) || backup_id.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid backup id `{backup_id}`"),
            ));
        }
        Ok(self.root.join(backup_id))
    }

    /// Leftovers of backups that never published a manifest (a process killed mid-backup),
    /// with the time anything in them last changed. A backup still being written looks the
    /// same, so callers only remove those untouched for a while.
    pub fn orphans(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() || path.join(MANIFEST_NAME).exists() {
                continue;
            }
            let mut newest = entry.metadata()?.modified()?;
            for file in walk(&path) {
                if let Ok(m) = file.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(m);
                }
            }
            out.push((entry.file_name().to_string_lossy().into_owned(), newest));
        }
        out.sort();
        Ok(out)
    }

    /// Removes an orphan (never a published backup).
    pub fn remove_orphan(&self, backup_id: &str) -> io::Result<()> {
        let dir = self.backup_dir(backup_id)?;
        if dir.join(MANIFEST_NAME).exists() {
            return Err(io::Error::other(format!(
                "{backup_id} is a published backup, not an orphan"
            )));
        }
        std::fs::remove_dir_all(dir)
    }

    fn file_path(&self, backup_id: &str, name: &str) -> io::Result<PathBuf> {
        if name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid file name `{name}`"),
            ));
        }
        Ok(self.backup_dir(backup_id)?.join(name))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
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

impl BackupStore for LocalStore {
    fn uri(&self, backup_id: &str) -> String {
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}/{backup_id}", root.display())
    }

    async fn create(&self, backup_id: &str, name: &str) -> io::Result<Box<dyn FileSink>> {
        let final_path = self.file_path(backup_id, name)?;
        let dir = final_path
            .parent()
            .expect("inside the backup directory")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        let file_name = final_path
            .file_name()
            .expect("has a name")
            .to_string_lossy()
            .into_owned();
        let partial = dir.join(format!(".{file_name}.partial"));
        let file = tokio::fs::File::create(&partial).await?;
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
        let dir = self.backup_dir(backup_id)?;
        if dir.join(MANIFEST_NAME).exists() {
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

    async fn list(&self) -> io::Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path().join(MANIFEST_NAME);
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!("ignoring {}: not a valid manifest ({e})", path.display()),
            }
        }
        super::manifest::sort_oldest_first(&mut out);
        Ok(out)
    }

    async fn manifest(&self, backup_id: &str) -> io::Result<Manifest> {
        let path = self.backup_dir(backup_id)?.join(MANIFEST_NAME);
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no backup `{backup_id}` in {} (no manifest)",
                        self.root.display()
                    ),
                )
            } else {
                e
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
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

    async fn verification(&self, backup_id: &str) -> io::Result<Option<Verification>> {
        let path = self.backup_dir(backup_id)?.join(VERIFICATION_NAME);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, backup_id: &str) -> io::Result<()> {
        let dir = self.backup_dir(backup_id)?;
        tokio::fs::remove_file(dir.join(MANIFEST_NAME)).await?;
        sync_dir(&dir)?;
        tokio::fs::remove_dir_all(&dir).await?;
        sync_dir(&self.root)
    }

    async fn open(&self, backup_id: &str, name: &str) -> io::Result<Reader> {
        let file = tokio::fs::File::open(self.file_path(backup_id, name)?).await?;
        Ok(Box::pin(file))
    }
}
