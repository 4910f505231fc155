//! What of a data directory a base backup copies: everything, but what the server itself
//! leaves out of `pg_basebackup`'s copy (`src/backend/backup/basebackup.c`) — the WAL
//! (the archive holds it), files that describe the running server (`postmaster.pid`),
//! temporary files and relations, the contents of directories the server empties at start,
//! and the data of unlogged relations (their init fork is copied; the server resets them
//! from it). Tablespaces (`pg_tblspc/OID`, links to directories elsewhere) are followed:
//! their files are listed under the link.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What was found at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Directory,
    Link { target: PathBuf },
    File { size: u64, mtime_ns: i64 },
}

/// One entry: its path inside the backup (`/`-separated) and on disk.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: String,
    pub disk: PathBuf,
    pub found: Found,
}

/// Directories whose contents the server does not need (it recreates or empties them at
/// start); the directories themselves are kept.
const EMPTIED: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files never copied, wherever they are (`pg_internal.init` is rebuilt at start).
const SKIPPED_ANYWHERE: &[&str] = &["pg_internal.init"];

/// Files at the top of the data directory never copied: the running server's, a backup's
/// own (an exclusive backup's leftovers would mislead recovery), and temporary ones.
const SKIPPED_AT_TOP: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    super::super::data_directory::INCOMPLETE,
];

/// Lists what a base backup of the data directory at `root` copies, parents before
/// children. A file that goes away while the directory is read is not an error (the server
/// removes files all the time; the WAL replayed over the copy says what became of them).
pub fn walk(root: &Path) -> io::Result<Vec<Item>> {
    let mut items = Vec::new();
    walk_dir(root, "", &mut items, 0)?;
    Ok(items)
}

fn walk_dir(dir: &Path, prefix: &str, items: &mut Vec<Item>, depth: usize) -> io::Result<()> {
    let mut names: Vec<(String, std::fs::DirEntry)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(dir, e)),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a name that is not UTF-8; the data directory holds something PostgreSQL did not put there",
                    entry.path().display()
                ),
            ));
        };
        names.push((name, entry));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let unlogged = unlogged_relations(names.iter().map(|(n, _)| n.as_str()));
    for (name, entry) in names {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if skipped(prefix, &name, &unlogged) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(&entry.path(), e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            // Links are tablespaces (`pg_tblspc/OID`), and, at the top, `pg_wal` on
            // another volume: both are followed.
            let target = std::fs::read_link(entry.path()).map_err(|e| at(&entry.path(), e))?;
            if prefix == "pg_tblspc" {
                items.push(Item {
                    path: path.clone(),
                    disk: entry.path(),
                    found: Found::Link {
                        target: target.clone(),
                    },
                });
                walk_dir(&entry.path(), &path, items, depth + 1)?;
            } else if prefix.is_empty() && name == "pg_wal" {
                items.push(directory(&path, &entry.path()));
                walk_wal(&entry.path(), &path, items)?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: a symbolic link where PostgreSQL keeps none (to {}): not copied blindly; move what it points to into the data directory or a tablespace",
                        entry.path().display(),
                        target.display()
                    ),
                ));
            }
        } else if kind.is_dir() {
            items.push(directory(&path, &entry.path()));
            if prefix.is_empty() && name == "pg_wal" {
                walk_wal(&entry.path(), &path, items)?;
            } else if !(prefix.is_empty() && EMPTIED.contains(&name.as_str())) {
                if depth > 64 {
                    return Err(io::Error::other(format!(
                        "{}: directories nested deeper than a data directory's",
                        entry.path().display()
                    )));
                }
                walk_dir(&entry.path(), &path, items, depth + 1)?;
            }
        } else if kind.is_file() {
            items.push(Item {
                path,
                disk: entry.path(),
                found: Found::File {
                    size: meta.len(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                },
            });
        }
        // Sockets, pipes and devices have no place in a data directory's copy.
    }
    Ok(())
}

/// `pg_wal`'s directories (`archive_status`, `summaries`), none of its files.
fn walk_wal(dir: &Path, prefix: &str, items: &mut Vec<Item>) -> io::Result<()> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let entry = entry.map_err(|e| at(dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| at(&entry.path(), e))?
            .is_dir();
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            dirs.push(name.to_string());
        }
    }
    dirs.sort();
    for name in dirs {
        items.push(directory(&format!("{prefix}/{name}"), &dir.join(&name)));
    }
    Ok(())
}

fn directory(path: &str, disk: &Path) -> Item {
    Item {
        path: path.to_string(),
        disk: disk.to_path_buf(),
        found: Found::Directory,
    }
}

fn skipped(prefix: &str, name: &str, unlogged: &BTreeSet<String>) -> bool {
    if prefix.is_empty() && SKIPPED_AT_TOP.contains(&name) {
        return true;
    }
    if SKIPPED_ANYWHERE.contains(&name) || name.starts_with("pgsql_tmp") {
        return true;
    }
    if in_database(prefix) {
        let relation = name.split(['_', '.']).next().unwrap_or(name);
        // Temporary relations: `t<backend>_<relfilenode>`.
        if name.starts_with('t') && name[1..].split(['_', '.']).next().is_some_and(is_number) {
            return true;
        }
        // Unlogged relations: every fork but the init fork.
        if unlogged.contains(relation) && !name.ends_with("_init") {
            return true;
        }
    }
    false
}

/// Whether `prefix` is a database's directory (`base/OID`, or a tablespace's
/// `pg_tblspc/OID/PG_…/OID`).
fn in_database(prefix: &str) -> bool {
    let parts: Vec<&str> = prefix.split('/').collect();
    matches!(parts.as_slice(), ["base", db] if is_number(db))
        || matches!(parts.as_slice(), ["pg_tblspc", _, _, db] if is_number(db))
}

pub(super) fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The relations of a directory that have an init fork (`N_init`): unlogged ones.
fn unlogged_relations<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    names
        .filter_map(|n| n.strip_suffix("_init"))
        .filter(|r| is_number(r))
        .map(str::to_string)
        .collect()
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_out_what_the_server_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "base/5",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "base/pgsql_tmp",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "base/5/16384",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390_init",
            "base/5/16390_fsm",
            "base/5/t3_16400",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot/state",
            "base/pgsql_tmp/pgsql_tmp123.0",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let paths: Vec<String> = walk(root).unwrap().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "PG_VERSION",
                "base",
                "base/5",
                "base/5/16384",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global",
                "global/pg_control",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_wal",
                "pg_wal/archive_status",
            ]
        );
    }
}
