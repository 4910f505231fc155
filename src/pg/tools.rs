//! Finding PostgreSQL programs: `PATH` first, then `/usr/lib/postgresql/*/bin` (newest
//! major first). Client tools must be at least the server's major version, or pg_dump
//! refuses (or worse, silently misses newer features).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories searched after `PATH`. `OPSRUNNER_PG_SEARCH` (colon-separated) replaces the
/// default `/usr/lib/postgresql/*/bin`.
fn extra_dirs() -> Vec<PathBuf> {
    if let Some(custom) = std::env::var_os("OPSRUNNER_PG_SEARCH") {
        return std::env::split_paths(&custom).collect();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

fn candidates(name: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = if std::env::var_os("OPSRUNNER_PG_SEARCH").is_some() {
        Vec::new()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default()
    };
    dirs.extend(extra_dirs());
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let path = dir.join(name);
        if path.is_file() && !found.iter().any(|f| same_file(f, &path)) {
            found.push(path);
        }
    }
    // Debian's /usr/bin/pg_restore (and the rest) is a Perl script that picks a version
    // and then runs the real program from /usr/lib/postgresql/N/bin: some 35 ms of CPU
    // each time, and a parallel restore runs pg_restore a dozen times. The real programs
    // come first; the wrapper stays as the last resort.
    found.sort_by_key(|path| is_debian_wrapper(path));
    found
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

/// The major version a PostgreSQL program reports, e.g. 15 for "pg_dump (PostgreSQL) 15.14".
pub fn major_version(program: &Path) -> Option<u32> {
    let out = Command::new(program).arg("--version").output().ok()?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

/// 15 from "pg_dump (PostgreSQL) 15.14 (Debian 15.14-1)".
pub fn parse_major(version_line: &str) -> Option<u32> {
    let version = version_line.split(')').nth(1)?.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

/// A PostgreSQL program that is not there (or only in versions too old).
#[derive(Debug, thiserror::Error)]
#[error("no `{name}`{} found in PATH or /usr/lib/postgresql/*/bin{}; install {}", wanted(*.min_major, *.exact), found(.seen), package(.name, *.min_major))]
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

/// Finds `name` with major version at least `min_major` (when given).
pub fn find(name: &str, min_major: Option<u32>) -> Result<(PathBuf, u32), ToolMissing> {
    let mut seen = Vec::new();
    for path in candidates(name) {
        let Some(major) = major_version(&path) else {
            continue;
        };
        if min_major.is_none_or(|m| major >= m) {
            return Ok((path, major));
        }
        seen.push(format!("{} (version {major})", path.display()));
    }
    Err(ToolMissing {
        name: name.to_string(),
        min_major,
        exact: false,
        seen,
    })
}

/// Finds `name` of exactly major version `major`: the server programs that start a copy of a
/// cluster's files must be of the version that wrote them.
pub fn find_exact(name: &str, major: u32) -> Result<PathBuf, ToolMissing> {
    let mut seen = Vec::new();
    for path in candidates(name) {
        match major_version(&path) {
            Some(m) if m == major => return Ok(path),
            Some(m) => seen.push(format!("{} (version {m})", path.display())),
            None => {}
        }
    }
    Err(ToolMissing {
        name: name.to_string(),
        min_major: Some(major),
        exact: true,
        seen,
    })
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
}
