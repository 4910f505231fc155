//! Run history: every `apply` keeps its report in the state directory, for `opsrunner runs
//! list|show` and `apply --resume`. The directory is, in order: `$OPSRUNNER_STATE_DIR`,
//! systemd's `$STATE_DIRECTORY` (a unit with `StateDirectory=opsrunner`),
//! `$XDG_STATE_HOME/opsrunner`, `~/.local/state/opsrunner`. Reports there are the same
//! redacted reports `--report` writes, readable by their owner only.

use super::report::{self, RunReport};
use std::io;
use std::path::{Path, PathBuf};

/// How many runs are kept; older ones are removed as new ones are recorded.
pub const KEEP_RUNS: usize = 1000;

/// The state directory, when one can be named.
pub fn state_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("OPSRUNNER_STATE_DIR") {
        return Some(dir);
    }
    // systemd may list several directories, separated by colons: the first is ours.
    if let Some(dirs) = std::env::var("STATE_DIRECTORY")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return dirs.split(':').next().map(PathBuf::from);
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return Some(dir.join("opsrunner"));
    }
    var("HOME").map(|home| home.join(".local/state/opsrunner"))
}

/// Where run reports are kept.
pub struct History {
    dir: PathBuf,
}

/// Run ids are made by opsrunner (`20261125_020001_4f2a1c`); anything else could name a
/// path outside the history.
fn check_run_id(id: &str) -> io::Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not a run id (see `opsrunner runs list`)",
                id.escape_debug()
            ),
        ));
    }
    Ok(())
}

impl History {
    /// The history in the state directory; `None` when no directory can be named.
    pub fn open() -> Option<History> {
        state_dir().map(|dir| History {
            dir: dir.join("runs"),
        })
    }

    pub fn at(dir: &Path) -> History {
        History {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a run's report, then removes the oldest beyond [`KEEP_RUNS`].
    pub fn record(&self, report: &RunReport) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        check_run_id(&report.run_id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.dir.join(format!("{}.json", report.run_id));
        report::write(report, &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let mut ids = self.ids()?;
        if ids.len() > KEEP_RUNS {
            ids.sort();
            for old in &ids[..ids.len() - KEEP_RUNS] {
                let _ = std::fs::remove_file(self.dir.join(format!("{old}.json")));
            }
        }
        Ok(())
    }

    fn ids(&self) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                check_run_id(id).ok()?;
                Some(id.to_string())
            })
            .collect())
    }

    /// One run's report.
    pub fn load(&self, run_id: &str) -> io::Result<RunReport> {
        check_run_id(run_id)?;
        let path = self.dir.join(format!("{run_id}.json"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no run {run_id} in {} (see `opsrunner runs list`)",
                        self.dir.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a run report: {e}", path.display()),
            )
        })
    }

    /// Every readable report, newest first. Unreadable files are skipped: one damaged
    /// report must not hide the others.
    pub fn list(&self) -> io::Result<Vec<RunReport>> {
        let mut runs: Vec<RunReport> = self
            .ids()?
            .iter()
            .filter_map(|id| self.load(id).ok())
            .collect();
        runs.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| b.run_id.cmp(&a.run_id))
        });
        Ok(runs)
    }
}
