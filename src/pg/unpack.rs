//! A base backup back into a data directory: the stored tar read through the pipeline
//! (decryption, decompression, size and SHA-256 checked against the manifest on the way),
//! extracted by the `tar` crate, then the server's own `backup_manifest` checked by
//! `pg_verifybackup` against every extracted file.
//!
//! The repository is not trusted to be friendly: only regular files and directories are
//! extracted, each strictly inside the destination (no absolute paths, no `..`, nothing
//! through a link), and a damaged or foreign stream fails before the directory is used.

use crate::exec::events::Stream;
use crate::exec::progress::Meter;
use crate::exec::{StepContext, StepError};
use crate::pg::process::PgProcess;
use crate::repo::manifest::{BaseMethod, DumpFormat, Manifest};
use crate::repo::{AnyStore, pipeline};
use std::io::Read;
use std::path::{Component, Path};

/// Restores the base backup `chain` (oldest first: a full backup, then the incremental
/// and differential backups down to the one wanted, as `repo::listing::base_chain` gives
/// it) into `dest`, an empty directory, and checks the result with `pg_verifybackup`
/// (`ignore`: files the caller put there itself). A full backup alone is extracted into
/// `dest`; a chain is extracted part by part beside it and combined by the server's own
/// `pg_combinebackup` (PostgreSQL 17+). Returns how many files the directory holds.
pub async fn restore_base(
    ctx: &StepContext,
    store: &AnyStore,
    chain: &[Manifest],
    dest: &Path,
    owner: Option<(u32, u32)>,
    ignore: &[&str],
) -> Result<u64, StepError> {
    let Some(wanted) = chain.last() else {
        return Err(StepError::permanent("no base backup to restore"));
    };
    let major = wanted.server_major();
    if wanted
        .base
        .as_ref()
        .is_some_and(|b| b.method == BaseMethod::Files)
    {
        // A throwaway copy's tablespaces stay inside it: where they were is production's.
        let into = Into {
            tablespaces_within: Some(dest.join(TABLESPACES_WITHIN)),
            ..Into::default()
        };
        let restored = restore_files(ctx, store, chain, dest, owner, into).await?;
        return Ok(restored.files);
    }
    if chain.len() == 1 {
        let files = unpack(ctx, store, wanted, dest, owner).await?;
        verify_files(ctx, dest, major, ignore).await?;
        return Ok(files);
    }
    let beside = dest.parent().unwrap_or(Path::new("/"));
    let parts = tempfile::Builder::new()
        .prefix(".opsrunner-chain-")
        .tempdir_in(beside)
        .map_err(|e| {
            StepError::transient(format!("cannot make room beside {}: {e}", dest.display()))
        })?;
    let mut dirs = Vec::new();
    for (i, manifest) in chain.iter().enumerate() {
        let dir = parts.path().join(format!("{i:04}"));
        std::fs::create_dir(&dir)
            .map_err(|e| StepError::transient(format!("{}: {e}", dir.display())))?;
        unpack(ctx, store, manifest, &dir, None).await?;
        dirs.push(dir);
    }
    let combiner = super::server::tool(ctx, "pg_combinebackup", super::tools::Want::Exact(major))?;
    let out = parts.path().join("combined");
    let mut args: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    args.push(format!("--output={}", out.display()));
    args.push("--manifest-checksums=SHA256".into());
    ctx.events.output(
        &ctx.step_id,
        Stream::Stdout,
        format!(
            "combining {} backups with {}: {}",
            chain.len(),
            combiner.describe(),
            chain
                .iter()
                .map(|m| m.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
    );
    PgProcess::spawn(&combiner.path, &args, ctx, |_| {}, false, false)?
        .finish(ctx)
        .await
        .map_err(|e| {
            StepError::permanent(format!(
                "pg_combinebackup could not combine {}: {}",
                wanted.backup_id, e.message
            ))
        })?;
    let files = move_into(&out, dest, owner).map_err(|e| {
        StepError::transient(format!(
            "moving the combined backup into {}: {e}",
            dest.display()
        ))
    })?;
    verify_files(ctx, dest, major, ignore).await?;
    Ok(files)
}

/// Where, inside a throwaway cluster's data directory, its tablespaces are put.
pub const TABLESPACES_WITHIN: &str = "opsrunner_tablespaces";

/// How a file-level backup is written into its directory.
#[derive(Debug, Default, Clone)]
pub struct Into {
    /// Into a directory that holds a stopped copy of the cluster: only what differs.
    pub delta: bool,
    /// With `delta`: files of the backup's size and modification time are not read.
    pub trust_timestamps: bool,
    /// Tablespace directories to put elsewhere: the backed-up path → the new one.
    pub tablespaces: std::collections::BTreeMap<String, String>,
    /// Where the tablespaces `tablespaces` does not name go instead of where they were.
    pub tablespaces_within: Option<std::path::PathBuf>,
}

/// Writes the file-level base backup `chain` (oldest first, the wanted one last) into
/// `dest`: an empty directory, or with `into.delta` one that holds a stopped copy of the
/// same cluster. Every file is checked against its SHA-256 as written.
pub async fn restore_files(
    ctx: &StepContext,
    store: &AnyStore,
    chain: &[Manifest],
    dest: &Path,
    owner: Option<(u32, u32)>,
    into: Into,
) -> Result<crate::pg::files::restore::Restored, StepError> {
    let written = crate::counting::Counter::new();
    let total = None;
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "write", written.clone(), total);
    let restore = crate::pg::files::restore::Restore {
        store: store.clone(),
        chain: chain.to_vec(),
        identities: ctx.identities.clone(),
        dest: dest.to_path_buf(),
        owner,
        delta: into.delta,
        trust_timestamps: into.trust_timestamps,
        tablespaces: into.tablespaces,
        tablespaces_within: into.tablespaces_within,
        // Files are written and synced one by one: the syncs wait on the disk more than
        // the copies on the processor.
        jobs: 4,
        written,
    };
    let restored = tokio::select! {
        r = crate::pg::files::restore::restore(restore) => r,
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidData => {
            StepError::permanent(format!(
                "restoring {}: {e}",
                chain.last().map(|m| m.backup_id.as_str()).unwrap_or("")
            ))
        }
        _ => crate::exec::io_error("writing the data directory", &e),
    })?;
    ctx.events.output(
        &ctx.step_id,
        Stream::Stdout,
        format!(
            "{} files of {}{}: {} written ({} bytes){}, every one checked against its SHA-256",
            restored.files,
            chain
                .iter()
                .map(|m| m.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            if into.delta { " (delta)" } else { "" },
            restored.written,
            restored.bytes,
            if into.delta {
                format!(
                    ", {} already as in the backup, {} block(s) rewritten in place, {} removed",
                    restored.unchanged, restored.blocks, restored.removed
                )
            } else {
                String::new()
            }
        ),
    );
    Ok(restored)
}

/// Moves everything in `from` into `dest` (the same file system), handing each file and
/// directory to `owner` with the modes a data directory wants; how many files it moved.
fn move_into(from: &Path, dest: &Path, owner: Option<(u32, u32)>) -> std::io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), dest.join(entry.file_name()))?;
    }
    let mut files = 0;
    let mut pending = vec![dest.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path.clone());
            } else if kind.is_file() {
                files += 1;
            }
            let mode = if kind.is_dir() { 0o700 } else { 0o600 };
            if !kind.is_symlink() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            }
        }
    }
    Ok(files)
}

/// Extracts base backup `manifest` into `dest` (an empty directory), returning how many
/// files it wrote. With `owner`, everything extracted is handed to that uid/gid (the user
/// the server will run as).
pub async fn unpack(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<u64, StepError> {
    let base = match (&manifest.format, &manifest.base) {
        (DumpFormat::Base, Some(base)) => base,
        _ => {
            return Err(StepError::permanent(format!(
                "{} is not a base backup (it is a logical dump of database `{}`)",
                manifest.backup_id, manifest.database
            )));
        }
    };
    let name = base.server_manifest.clone();
    let pipeline::Loaded {
        reader,
        verdict,
        read,
        size,
    } = pipeline::load(store, manifest, &name, ctx.identities.as_ref())
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => StepError::permanent(e.to_string()),
            _ => crate::exec::io_error(&format!("opening {name}"), &e),
        })?;
    let _progress = Meter::start(&ctx.events, &ctx.step_id, "extract", read, Some(size));
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let dest_owned = dest.to_path_buf();
    let extract = tokio::task::spawn_blocking(move || extract(bridge, &dest_owned, owner));
    let extracted = tokio::select! {
        r = extract => r.unwrap_or_else(|e| Err(format!("extraction stopped: {e}"))),
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    };
    // A damaged file explains a failed extraction better than tar does.
    let checked = verdict.wait().await;
    if let Err(e) = checked {
        return Err(if pipeline::is_damage(&e) {
            StepError::permanent(format!("the backup does not match its manifest: {e}"))
        } else {
            crate::exec::io_error("reading the backup", &e)
        });
    }
    let files = extracted.map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    Ok(files)
}

fn extract(reader: impl Read, dest: &Path, owner: Option<(u32, u32)>) -> Result<u64, String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    let mut files = 0u64;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("not a readable tar: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a member with an unreadable name: {e}"))?
            .into_owned();
        let shown = path.display().to_string();
        if path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "member `{}` would land outside the data directory; nothing of this backup is used",
                shown.escape_debug()
            ));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(format!(
                "member `{}` is a {:?}, not a file or directory (tablespaces and links are not supported in a base backup); nothing of this backup is used",
                shown.escape_debug(),
                kind
            ));
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| format!("extracting `{}`: {e}", shown.escape_debug()))?;
        if !unpacked {
            return Err(format!(
                "member `{}` would land outside the data directory",
                shown.escape_debug()
            ));
        }
        let target = dest.join(&path);
        use std::os::unix::fs::PermissionsExt;
        let mode = if kind.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", target.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
        if kind.is_file() {
            files += 1;
        }
    }
    // Read to the end, past the end-of-archive blocks: the check of the stored file needs
    // every byte of it.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(files)
}

/// `pg_verifybackup` of an extracted data directory against its own `backup_manifest`:
/// every file's size and checksum as the server recorded them. WAL is not parsed here (it
/// is in the archive, and replaying it is the test that matters).
/// `ignore`: files the caller put there itself (relative to `dir`).
pub async fn verify_files(
    ctx: &StepContext,
    dir: &Path,
    major: u32,
    ignore: &[&str],
) -> Result<String, StepError> {
    let search = super::tools::Search::new(ctx.pg_bin_dirs.clone());
    let program = match search.find("pg_verifybackup", super::tools::Want::Verifier(major)) {
        Ok(found) => found.path,
        // Not a verdict on the backup: recovery, which follows, still proves it.
        Err(missing) => {
            let message = format!(
                "pg_verifybackup skipped: {missing}; (pg_verifybackup 18 and newer check only their own major's pg_control)"
            );
            ctx.events
                .output(&ctx.step_id, Stream::Stdout, message.clone());
            return Ok(message);
        }
    };
    let mut args = vec!["--no-parse-wal".to_string(), "--quiet".into()];
    for name in ignore {
        args.push(format!("--ignore={name}"));
    }
    args.push(dir.display().to_string());
    PgProcess::spawn(&program, &args, ctx, |_| {}, false, false)?
        .finish(ctx)
        .await
        .map_err(|e| {
            StepError::permanent(format!("the server's backup manifest: {}", e.message))
        })?;
    let message = "pg_verifybackup: every file matches the server's backup_manifest".to_string();
    ctx.events
        .output(&ctx.step_id, Stream::Stdout, message.clone());
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of one member with `name` written into the header as is (the tar crate's own
    /// builder refuses such names, as a hostile repository would not).
    fn tar_with(name: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        if kind.is_symlink() {
            header.set_link_name("/etc").unwrap();
        }
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    #[test]
    fn members_outside_the_directory_or_links_are_refused() {
        for (name, kind) in [
            ("../escaped", tar::EntryType::Regular),
            ("/etc/escaped", tar::EntryType::Regular),
            ("base/../../escaped", tar::EntryType::Regular),
            ("pg_tblspc/16384", tar::EntryType::Symlink),
            ("global/hard", tar::EntryType::Link),
        ] {
            let parent = tempfile::tempdir().unwrap();
            let dest = parent.path().join("data");
            std::fs::create_dir(&dest).unwrap();
            let tar = tar_with(name, kind, b"x");
            let err = extract(&tar[..], &dest, None).unwrap_err();
            assert!(
                err.contains("nothing of this backup is used"),
                "{name}: {err}"
            );
            assert!(!parent.path().join("escaped").exists());
            assert!(std::fs::read_dir(&dest).unwrap().next().is_none(), "{name}");
        }
    }

    #[test]
    fn regular_members_are_extracted_private() {
        let parent = tempfile::tempdir().unwrap();
        let tar = tar_with("PG_VERSION", tar::EntryType::Regular, b"15\n");
        assert_eq!(extract(&tar[..], parent.path(), None).unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(parent.path().join("PG_VERSION")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read(parent.path().join("PG_VERSION")).unwrap(),
            b"15\n"
        );
    }
}
