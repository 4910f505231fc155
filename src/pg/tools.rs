//! Finding PostgreSQL programs of the right version for each operation.
//!
//! Where: the directories the plan names (`pg_bin_dir` on the target, then on the plan),
//! then `OPSRUNNER_PG_BIN_DIR`, then `PATH`, then `/usr/lib/postgresql/*/bin` (newest major
//! first). `OPSRUNNER_PG_SEARCH` replaces the last two (only those directories are searched).
//!
//! Which: a program from a directory the operator named wins whenever its version can do
//! the job: naming a directory is a decision. Among the others the version decides, not
//! the order of `PATH`, because the usual installation (PGDG) puts the newest client tools
//! first in `PATH` next to older servers:
//! - a client that talks to a server (`pg_dump`, `pg_basebackup`, `psql`) must be at least
//!   the server's major, or pg_dump refuses (or misses what is newer); the server's own
//!   major is preferred, then the closest newer one;
//! - `pg_restore` must be at least the major of the pg_dump that wrote the archive (it
//!   cannot read newer archives), and its output must be accepted by the destination: the
//!   destination's own major is preferred, then the closest newer one. What a newer
//!   pg_restore writes that an older server does not know is taken out on the way
//!   ([`super::compat`]);
//! - server programs that start a copy of a cluster's files are of exactly its major.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// What a program is needed for, which decides the versions that will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Any version (the newest found).
    Any,
    /// A client of a server of this major: this major or newer, the closest preferred.
    Client(u32),
    /// Reading an archive written by pg_dump `archive` into a server of major `into`.
    Reader { archive: u32, into: u32 },
    /// Exactly this major: server programs for a cluster's files.
    Exact(u32),
    /// `pg_verifybackup` for a base backup of this major: its own, or a newer one before
    /// 18 (from 18 on it checks `pg_control` by its own version's layout, and calls every
    /// older cluster's control file corrupt).
    Verifier(u32),
}

impl Want {
    fn accepts(self, major: u32) -> bool {
        match self {
            Want::Any => true,
            Want::Client(m) => major >= m,
            Want::Reader { archive, .. } => major >= archive,
            Want::Exact(m) => major == m,
            Want::Verifier(m) => major == m || (major > m && major < 18),
        }
    }

    /// Lower is better among the versions that [`Want::accepts`].
    fn rank(self, major: u32) -> (u32, u32) {
        match self {
            Want::Any => (0, u32::MAX - major),
            Want::Client(m) | Want::Exact(m) | Want::Verifier(m) => (0, major - m),
            Want::Reader { archive, into } => {
                if major >= into {
                    // The destination's own major, then the closest newer one.
                    (0, major - into)
                } else {
                    // Older than the destination but able to read the archive: an older
                    // client's output loads into a newer server; the newest of them.
                    debug_assert!(major >= archive);
                    (1, into - major)
                }
            }
        }
    }

    /// The smallest major that will do, for the message when none does.
    fn min_major(self) -> Option<u32> {
        match self {
            Want::Any => None,
            Want::Client(m) | Want::Exact(m) | Want::Verifier(m) => Some(m),
            Want::Reader { archive, .. } => Some(archive),
        }
    }
}

/// A program found, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub major: u32,
    /// What it says of itself: `pg_dump (PostgreSQL) 18.6`.
    pub version: String,
    /// Whether it came from a directory the operator named.
    pub named: bool,
}

impl Found {
    /// `/usr/lib/postgresql/15/bin/pg_dump (PostgreSQL 15.14)`, for previews and logs.
    pub fn describe(&self) -> String {
        let number = self
            .version
            .split(')')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?");
        format!("{} (PostgreSQL {number})", self.path.display())
    }

    /// A program of the same installation (`psql` beside `pg_restore`), when there is one.
    pub fn sibling(&self, name: &str) -> Option<PathBuf> {
        let path = self.path.with_file_name(name);
        path.is_file().then_some(path)
    }
}

/// Where to look: the directories a plan names for one step (its target's `pg_bin_dir`
/// first, then the plan's), searched before everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    pub named: Vec<PathBuf>,
}

impl Search {
    pub fn new(named: Vec<PathBuf>) -> Search {
        Search { named }
    }

    /// The directories searched, in order, each with whether the operator named it.
    fn dirs(&self) -> Vec<(PathBuf, bool)> {
        let mut dirs: Vec<(PathBuf, bool)> = self.named.iter().map(|d| (d.clone(), true)).collect();
        if let Some(env) = std::env::var_os("OPSRUNNER_PG_BIN_DIR") {
            dirs.extend(std::env::split_paths(&env).map(|d| (d, true)));
        }
        if let Some(custom) = std::env::var_os("OPSRUNNER_PG_SEARCH") {
            dirs.extend(std::env::split_paths(&custom).map(|d| (d, false)));
            return dirs;
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).map(|d| (d, false)));
        }
        dirs.extend(debian_dirs().into_iter().map(|d| (d, false)));
        dirs
    }

    /// Every `name` found, once each, in search order (Debian's wrapper last), with versions.
    pub fn all(&self, name: &str) -> Vec<Found> {
        let mut found: Vec<Found> = Vec::new();
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        for (dir, named) in self.dirs() {
            let path = dir.join(name);
            if path.is_file() && !paths.iter().any(|(f, _)| same_file(f, &path)) {
                paths.push((path, named));
            }
        }
        // Debian's /usr/bin/pg_restore (and the rest) is a Perl script that picks a version
        // and then runs the real program from /usr/lib/postgresql/N/bin: some 35 ms of CPU
        // each time, and a parallel restore runs pg_restore a dozen times. The real programs
        // come first; the wrapper stays as the last resort.
        paths.sort_by_key(|(path, _)| is_debian_wrapper(path));
        for (path, named) in paths {
            if let Some((major, version)) = version_of(&path) {
                found.push(Found {
                    path,
                    major,
                    version,
                    named,
                });
            }
        }
        found
    }

    /// The program `name` that fits `want` best (see the module's documentation).
    pub fn find(&self, name: &str, want: Want) -> Result<Found, ToolMissing> {
        let all = self.all(name);
        let fitting = |f: &&Found| want.accepts(f.major);
        // A directory the operator named wins when its program will do.
        if let Some(named) = all.iter().filter(|f| f.named).find(fitting) {
            return Ok(named.clone());
        }
        if let Some(best) = all
            .iter()
            .filter(fitting)
            .min_by_key(|f| want.rank(f.major))
        {
            return Ok(best.clone());
        }
        Err(ToolMissing {
            name: name.to_string(),
            min_major: want.min_major(),
            exact: matches!(want, Want::Exact(_) | Want::Verifier(_)),
            seen: all
                .iter()
                .map(|f| format!("{} (version {})", f.path.display(), f.major))
                .collect(),
        })
    }

    /// The majors of which `name` is installed, ascending.
    pub fn majors(&self, name: &str) -> Vec<u32> {
        let mut majors: Vec<u32> = self.all(name).iter().map(|f| f.major).collect();
        majors.sort_unstable();
        majors.dedup();
        majors
    }
}

/// `/usr/lib/postgresql/N/bin`, newest major first.
fn debian_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

/// Whether `path` is postgresql-common's `pg_wrapper` (under whatever name it is linked).
fn is_debian_wrapper(path: &Path) -> bool {
    path.canonicalize()
        .is_ok_and(|real| real.file_name().is_some_and(|n| n == "pg_wrapper"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A program's major version and its `--version` line; `None` when it did not answer.
type Version = Option<(u32, String)>;

/// The major version and `--version` line of a program, asked once per path and run.
fn version_of(program: &Path) -> Version {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, Version>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().expect("not poisoned").get(program) {
        return known.clone();
    }
    let answer = Command::new(program)
        .arg("--version")
        .env("LC_MESSAGES", "C")
        .output()
        .ok()
        .and_then(|out| {
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Some((parse_major(&line)?, line))
        });
    seen.lock()
        .expect("not poisoned")
        .insert(program.to_path_buf(), answer.clone());
    answer
}

/// 15 from "pg_dump (PostgreSQL) 15.14 (Debian 15.14-1)": one reading for the tools found
/// here and the versions manifests record.
pub use crate::repo::manifest::parse_major;

/// A PostgreSQL program that is not there (or only in versions that will not do).
#[derive(Debug, thiserror::Error)]
#[error("no `{name}`{} found in pg_bin_dir, OPSRUNNER_PG_BIN_DIR, PATH or /usr/lib/postgresql/*/bin{}; install {} or name its directory with `pg_bin_dir`", wanted(*.min_major, *.exact), found(.seen), package(.name, *.min_major))]
pub struct ToolMissing {
    pub name: String,
    pub min_major: Option<u32>,
    /// Only `min_major` itself will do.
    pub exact: bool,
    /// What was found instead: paths with their versions.
    pub seen: Vec<String>,
}

fn wanted(min_major: Option<u32>, exact: bool) -> String {
    min_major
        .map(|m| format!(" of version {m}{}", if exact { "" } else { " or newer" }))
        .unwrap_or_default()
}

fn found(seen: &[String]) -> String {
    if seen.is_empty() {
        String::new()
    } else {
        format!(" (found only: {})", seen.join(", "))
    }
}

fn package(name: &str, min_major: Option<u32>) -> String {
    if matches!(name, "initdb" | "pg_ctl" | "postgres" | "pg_controldata") {
        return match min_major {
            Some(m) => format!(
                "the PostgreSQL {m} server (Debian/Ubuntu: `apt-get install postgresql-{m}`)"
            ),
            None => {
                "the PostgreSQL server package (Debian/Ubuntu: `apt-get install postgresql`)".into()
            }
        };
    }
    match min_major {
        Some(m) => format!(
            "the PostgreSQL {m} client (Debian/Ubuntu: `apt-get install postgresql-client-{m}`)"
        ),
        None => "the PostgreSQL client (Debian/Ubuntu: `apt-get install postgresql-client`)".into(),
    }
}

/// Finds `name` for `want` with no plan-named directories (the environment's search only).
pub fn find(name: &str, want: Want) -> Result<Found, ToolMissing> {
    Search::default().find(name, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_wrapper_is_recognised_through_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let wrapper = dir.path().join("pg_wrapper");
        std::fs::write(&wrapper, "#!/usr/bin/perl\n").unwrap();
        let linked = dir.path().join("pg_restore");
        std::os::unix::fs::symlink(&wrapper, &linked).unwrap();
        let real = dir.path().join("real_pg_restore");
        std::fs::write(&real, "").unwrap();
        assert!(is_debian_wrapper(&linked));
        assert!(is_debian_wrapper(&wrapper));
        assert!(!is_debian_wrapper(&real));
        assert!(!is_debian_wrapper(&dir.path().join("missing")));
    }

    /// The choice among installed majors 15, 16 and 18, for each kind of need.
    #[test]
    fn versions_are_chosen_by_what_the_operation_needs() {
        let best = |want: Want| {
            [15u32, 18, 16]
                .into_iter()
                .filter(|m| want.accepts(*m))
                .min_by_key(|m| want.rank(*m))
        };
        // A 13 server: the closest newer client; a 16 server: its own; 17: 18.
        assert_eq!(best(Want::Client(13)), Some(15));
        assert_eq!(best(Want::Client(16)), Some(16));
        assert_eq!(best(Want::Client(17)), Some(18));
        assert_eq!(best(Want::Client(19)), None);
        // An 18 archive into a 13 server: only 18 reads it (its output is fixed on the way).
        assert_eq!(
            best(Want::Reader {
                archive: 18,
                into: 13
            }),
            Some(18)
        );
        // A 13 archive into a 16 server: the destination's own.
        assert_eq!(
            best(Want::Reader {
                archive: 13,
                into: 16
            }),
            Some(16)
        );
        // A 15 archive into a 13 server: the closest that reads it.
        assert_eq!(
            best(Want::Reader {
                archive: 15,
                into: 13
            }),
            Some(15)
        );
        // A 15 archive into a 17 server: the closest newer than the destination.
        assert_eq!(
            best(Want::Reader {
                archive: 15,
                into: 17
            }),
            Some(18)
        );
        // A 15 archive into a 19 server, nothing that new installed: the newest reader.
        assert_eq!(
            best(Want::Reader {
                archive: 15,
                into: 19
            }),
            Some(18)
        );
        assert_eq!(best(Want::Exact(16)), Some(16));
        // pg_verifybackup 18 reads only its own major's pg_control.
        assert_eq!(best(Want::Verifier(13)), Some(15));
        assert_eq!(best(Want::Verifier(17)), None);
        assert_eq!(best(Want::Verifier(18)), Some(18));
        assert_eq!(best(Want::Exact(14)), None);
        assert_eq!(best(Want::Any), Some(18));
    }

    #[test]
    fn a_named_directory_wins_when_its_version_will_do() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_dump");
        std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 99.1'\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let search = Search::new(vec![dir.path().to_path_buf()]);
        let found = search.find("pg_dump", Want::Client(15)).unwrap();
        assert_eq!(found.path, fake);
        assert!(found.named);
        assert_eq!(
            found.describe(),
            format!("{} (PostgreSQL 99.1)", fake.display())
        );
        // Too old for the server: not taken, and named among what was found.
        let err = search.find("pg_dump", Want::Client(100)).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
