//! A new data directory as the destination of a point-in-time restore: an absent or empty
//! directory is claimed (a marker file says a restore is filling it, so a second restore or
//! a careless look sees it is not finished), filled from a base backup by the step, then
//! recovered to the target by a server started here only for that — on a private socket,
//! with none of production's configuration but the copied `postgresql.auto.conf`, paused at
//! the target (hot standby, so the moment reached can be read), and stopped there without
//! promoting. The server's next start, with the operator's own configuration, replays the
//! few records since the last restartpoint and promotes.
//!
//! Why not promote here: a recovered cluster's new timeline must reach the archive (a later
//! restore cannot cross it otherwise), and whether that archive is production's is for the
//! operator's configuration to say, not for a throwaway one started with `archive_mode = off`.

use super::conn::ConnInfo;
use crate::exec::{StepContext, StepError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The marker a restore writes first into the directory it fills and removes last.
pub const INCOMPLETE: &str = "opsrunner-restore-incomplete";

/// What is at the path a restore would fill.
#[derive(Debug, PartialEq)]
pub enum State {
    Absent,
    Empty,
    /// Holds files; the first one found (by name) for the message.
    NotEmpty(String),
    NotDirectory,
    /// Cannot be looked at (permissions, a dangling link): why.
    Unreadable(String),
}

impl State {
    pub fn of(path: &Path) -> State {
        // Through symbolic links: a link to an empty volume is a fine place to restore.
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    State::Unreadable("a symbolic link to nothing".into())
                } else {
                    State::Absent
                }
            }
            Err(e) => State::Unreadable(e.to_string()),
            Ok(m) if !m.is_dir() => State::NotDirectory,
            Ok(_) => match std::fs::read_dir(path) {
                Err(e) => State::Unreadable(e.to_string()),
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    match names.into_iter().next() {
                        None => State::Empty,
                        Some(first) => State::NotEmpty(first),
                    }
                }
            },
        }
    }

    /// Why a restore cannot go there, or `None` when it can.
    pub fn refusal(&self, path: &Path) -> Option<String> {
        let at = path.display();
        match self {
            State::Absent | State::Empty => None,
            State::NotEmpty(first) if first == INCOMPLETE => Some(format!(
                "{at} holds a restore that did not finish ({INCOMPLETE}); remove the directory to restore there again"
            )),
            State::NotEmpty(first) => Some(format!(
                "{at} is not empty (it holds `{first}`); a restore never writes over files: name an absent or empty directory"
            )),
            State::NotDirectory => Some(format!("{at} exists and is not a directory")),
            State::Unreadable(why) => Some(format!("{at} cannot be examined: {why}")),
        }
    }

    /// For the preview.
    pub fn describe(&self, path: &Path) -> String {
        match self {
            State::Absent => format!("data directory {}: absent, will be created", path.display()),
            State::Empty => format!("data directory {}: empty", path.display()),
            other => format!(
                "apply would stop here: {}",
                other.refusal(path).unwrap_or_default()
            ),
        }
    }
}

/// The uid and gid that own the directory and run its server: as root, `run_as`'s; otherwise
/// the current user's own (`None`).
pub fn owner(run_as: &str) -> Result<Option<(u32, u32)>, StepError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    super::cluster::user_ids(run_as)
        .map(Some)
        .map_err(|e| StepError::permanent(e.to_string()))
}

/// A directory being filled by a restore.
pub struct Claim {
    pub path: PathBuf,
    created: bool,
    /// A delta restore: the directory held a cluster, which is being rewritten in place.
    delta: bool,
}

/// Why a delta restore of a backup of cluster `system_identifier` cannot write into
/// `path`, or `None` when it can: the directory must hold a stopped cluster — of the same
/// system identifier, unless `force`.
pub fn delta_refusal(path: &Path, system_identifier: &str, force: bool) -> Option<String> {
    let at = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Some(format!("{at} exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{at} does not exist: a delta restore rewrites an existing data directory (leave out `delta` to restore into a new one)"
            ));
        }
        Err(e) => return Some(format!("{at} cannot be examined: {e}")),
    }
    if let Some(pid) = live_postmaster(path) {
        return Some(format!(
            "a server is running on {at} (postmaster.pid names process {pid}, which is alive): stop it first; a delta restore never writes under a running server"
        ));
    }
    if force {
        return None;
    }
    match super::files::restore::system_identifier(path) {
        Some(id) if id.to_string() == system_identifier => None,
        Some(id) => Some(format!(
            "{at} holds cluster {id}, and the backup is of cluster {system_identifier}: a delta restore keeps what is equal, and another cluster's files are not (`force: true` to rewrite it anyway)"
        )),
        None => Some(format!(
            "{at} holds no global/pg_control: it is not a data directory (`force: true` to restore into it anyway, or leave out `delta` for an empty directory)"
        )),
    }
}

/// The process `postmaster.pid` in `dir` names, when it is alive.
fn live_postmaster(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: kill with signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid as u32)
}

impl Claim {
    /// Creates the directory (its parent must exist) or takes an empty one, and marks it.
    pub fn take(path: &Path, owner: Option<(u32, u32)>) -> Result<Claim, StepError> {
        use std::os::unix::fs::PermissionsExt;
        let refused = |why: String| StepError::permanent(format!("{why}; nothing was touched"));
        if let Some(why) = State::of(path).refusal(path) {
            return Err(refused(why));
        }
        let created = match std::fs::create_dir(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(refused(format!(
                    "the parent of {} does not exist: create it (owned by the server's user) first",
                    path.display()
                )));
            }
            Err(e) => return Err(refused(format!("cannot create {}: {e}", path.display()))),
        };
        let claim = Claim {
            path: path.to_path_buf(),
            created,
            delta: false,
        };
        // The marker is created exclusively: of two restores racing for one empty
        // directory, one wins and the other finds it not empty.
        let marked = (|| -> std::io::Result<()> {
            if let Some(why) = State::of(path).refusal(path) {
                return Err(std::io::Error::other(why));
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path.join(INCOMPLETE))?;
            // PostgreSQL starts only from a directory its user alone can enter.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
            Ok(())
        })();
        if let Err(e) = marked {
            if created {
                let _ = std::fs::remove_dir(path);
            }
            return Err(refused(format!("cannot prepare {}: {e}", path.display())));
        }
        Ok(claim)
    }

    /// A directory holding a stopped cluster ([`delta_refusal`] said yes), to rewrite in
    /// place: marked until the restore is complete, so that a half-rewritten cluster says
    /// what it is (and the next delta restore finishes it).
    pub fn take_delta(path: &Path, owner: Option<(u32, u32)>) -> Result<Claim, StepError> {
        let marker = path.join(INCOMPLETE);
        std::fs::write(&marker, b"")
            .and_then(|()| match owner {
                Some((uid, gid)) => std::os::unix::fs::chown(&marker, Some(uid), Some(gid)),
                None => Ok(()),
            })
            .map_err(|e| {
                StepError::permanent(format!(
                    "cannot mark {}: {e}; nothing was touched",
                    path.display()
                ))
            })?;
        Ok(Claim {
            path: path.to_path_buf(),
            created: false,
            delta: true,
        })
    }

    /// The restore is complete: the marker goes.
    pub fn complete(self) -> std::io::Result<()> {
        std::fs::remove_file(self.path.join(INCOMPLETE))
    }

    /// The restore failed: everything it wrote goes, and the directory is as it was (absent
    /// or empty). Returns what the message should say about it.
    pub fn abandon(self) -> String {
        if self.delta {
            return format!(
                "{} is partly rewritten and marked {INCOMPLETE}: do not start it; run the delta restore again to finish it",
                self.path.display()
            );
        }
        let removed = if self.created {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::read_dir(&self.path).and_then(|entries| {
                for entry in entries {
                    let entry = entry?;
                    // Not through links: the extraction writes none, and a link placed
                    // here by someone else must not lead the removal elsewhere.
                    if entry.file_type()?.is_dir() {
                        std::fs::remove_dir_all(entry.path())?;
                    } else {
                        std::fs::remove_file(entry.path())?;
                    }
                }
                Ok(())
            })
        };
        match removed {
            Ok(()) if self.created => format!("{} was removed again", self.path.display()),
            Ok(()) => format!("{} was emptied again", self.path.display()),
            Err(e) => format!(
                "{} could not be cleaned up ({e}); it is marked {INCOMPLETE}: remove it",
                self.path.display()
            ),
        }
    }
}

/// `pg_controldata`'s fields, by name.
pub async fn control_data(bin: &Path, data: &Path) -> Result<BTreeMap<String, String>, StepError> {
    let program = bin.join("pg_controldata");
    let out = tokio::process::Command::new(&program)
        .arg("-D")
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| StepError::permanent(format!("cannot run {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(StepError::permanent(format!(
            "pg_controldata: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_control_data(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_control_data(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The settings a hot standby must have at least as high as the server that wrote the WAL
/// (PostgreSQL pauses recovery otherwise), as the backup's control file records them.
const STANDBY_MINIMUMS: &[(&str, &str)] = &[
    ("max_connections", "max_connections setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
];

/// A private directory for the recovering server's socket, configuration and log (and
/// the caller's key copy), owned by the server's user, removed when dropped.
pub struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    pub fn new(owner: Option<(u32, u32)>) -> Result<RunDir, StepError> {
        let io = |e: std::io::Error| StepError::transient(format!("a directory for recovery: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("opsrunner-recovery-")
            .tempdir()
            .map_err(io)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io)?;
        }
        Ok(RunDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How the recovering server is started.
pub struct Start<'a> {
    /// The directory of the backup's major version's server programs.
    pub bin: &'a Path,
    pub data: &'a Path,
    pub owner: Option<(u32, u32)>,
    /// The role to connect as (trust, over the private socket); `postgres` is tried next.
    pub user: &'a str,
    pub major: u32,
    /// `restore_command` for this run (its key copy lives in the [`RunDir`]).
    pub restore_command: String,
}

/// Where recovery stopped.
#[derive(Debug)]
pub struct Stopped {
    pub lsn: String,
    /// The commit time of the last transaction replayed, when one was.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    pub system_identifier: String,
    /// The server's own line on where it stopped (`recovery stopping before commit …`).
    pub said: Option<String>,
}

/// A running postmaster, stopped (fast shutdown) if it is still running when dropped.
struct Postmaster {
    child: tokio::process::Child,
}

impl Postmaster {
    fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child's.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Fast shutdown, waited for (a checkpoint: the restartpoint the next start resumes
    /// from), then immediate after a minute.
    async fn stop(mut self) -> Result<(), StepError> {
        self.signal(libc::SIGINT);
        let waited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        if waited.is_err() {
            self.signal(libc::SIGQUIT);
            let _ = self.child.wait().await;
            return Err(StepError::transient(
                "the recovering server did not stop within a minute of a fast shutdown",
            ));
        }
        Ok(())
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGINT);
        }
    }
}

/// Recovers the data directory (already configured for its first start) to its target,
/// reads where it stopped, and shuts the server down still in recovery.
pub async fn recover_to_target(
    ctx: &StepContext,
    run_dir: &RunDir,
    start: &Start<'_>,
) -> Result<Stopped, StepError> {
    let control = control_data(start.bin, start.data).await?;
    let dir = run_dir.path();
    let io = |e: std::io::Error| StepError::transient(format!("preparing recovery: {e}"));
    let write = |name: &str, text: &str| -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        super::recovery::write_owned(&path, text, start.owner)?;
        Ok(path)
    };
    // Production's postgresql.conf (ports, certificates, preload libraries, include files)
    // is not read: an empty one, and the settings below on the command line, which
    // override the copied postgresql.auto.conf — whose recovery target this run obeys.
    let config = write("postgresql.conf", "# recovery run by opsrunner\n").map_err(io)?;
    let hba = write("pg_hba.conf", "local all all trust\n").map_err(io)?;
    let ident = write("pg_ident.conf", "").map_err(io)?;
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).map_err(io)?;
    if let Some((uid, gid)) = start.owner {
        std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).map_err(io)?;
    }
    let mut settings: Vec<(String, String)> = super::recovery::copy_settings()
        .into_iter()
        .chain([
            ("config_file", config.display().to_string()),
            ("hba_file", hba.display().to_string()),
            ("ident_file", ident.display().to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", dir.display().to_string()),
            ("port", "5432".into()),
            ("hot_standby", "on".into()),
            ("recovery_target_action", "pause".into()),
            ("restore_command", start.restore_command.clone()),
            ("log_destination", "stderr".into()),
            ("log_min_messages", "warning".into()),
            ("lc_messages", "C".into()),
            ("log_timezone", "UTC".into()),
        ])
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (setting, field) in STANDBY_MINIMUMS {
        if let Some(value) = control.get(*field) {
            settings.push((setting.to_string(), value.clone()));
        }
    }
    let mut command = tokio::process::Command::new(start.bin.join("postgres"));
    command.arg("-D").arg(start.data);
    for (key, value) in &settings {
        command.arg("-c").arg(format!("{key}={value}"));
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log)
        .env("LC_ALL", "C")
        .current_dir(dir);
    if let Some((uid, gid)) = start.owner {
        command.uid(uid).gid(gid);
    }
    let child = command
        .spawn()
        .map_err(|e| StepError::permanent(format!("cannot start the recovering server: {e}")))?;
    let mut server = Postmaster { child };
    let urls: Vec<String> = [start.user, "postgres"]
        .iter()
        .map(|user| {
            let host = percent_encoding::utf8_percent_encode(
                &dir.to_string_lossy(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            format!("postgres://{user}@localhost:5432/postgres?host={host}")
        })
        .collect();
    // PostgreSQL 14 tells a requested pause from one that has happened.
    let query = if start.major >= 14 {
        WHERE_PAUSED.replace("$paused", "pg_get_wal_replay_pause_state() = 'paused'")
    } else {
        WHERE_PAUSED.replace("$paused", "pg_is_wal_replay_paused()")
    };
    let started = Instant::now();
    let mut last_error = String::new();
    let stopped = loop {
        if ctx.cancel.is_cancelled() {
            server.stop().await?;
            return Err(StepError::cancelled());
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(StepError::permanent(format!(
                "recovery stopped ({status}): {}",
                super::recovery::last_words(&log_path, 0)
            )));
        }
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log_text.contains("insufficient parameter settings") {
            let _ = server.stop().await;
            return Err(StepError::permanent(format!(
                "recovery paused: the WAL raises a setting above what the backup's control file recorded: {}",
                super::recovery::last_lines(&log_text)
            )));
        }
        match probe(&urls, &query).await {
            Ok(Some(found)) => break found,
            Ok(None) => {}
            Err(e) => last_error = e,
        }
        if started.elapsed() > Duration::from_secs(10) && last_error.contains("role") {
            let _ = server.stop().await;
            return Err(StepError::permanent(format!(
                "the recovering server accepts no connection as `{}` or `postgres` ({last_error}): name its superuser's operating-system user in `run_as`",
                start.user
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    };
    server.stop().await?;
    let state = control_data(start.bin, start.data).await?;
    let cluster_state = state
        .get("Database cluster state")
        .cloned()
        .unwrap_or_default();
    if cluster_state != "shut down in recovery" {
        return Err(StepError::permanent(format!(
            "after recovery the control file says `{cluster_state}`, not `shut down in recovery`"
        )));
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    Ok(Stopped {
        said: log_text
            .lines()
            .rev()
            .find(|l| l.contains("recovery stopping"))
            .map(|l| {
                l.split_once("LOG:")
                    .map_or(l, |(_, said)| said)
                    .trim()
                    .to_string()
            }),
        ..stopped
    })
}

const WHERE_PAUSED: &str = "select pg_is_in_recovery(), $paused,
        pg_last_wal_replay_lsn()::text,
        (extract(epoch from pg_last_xact_replay_timestamp()) * 1000000)::bigint,
        (select system_identifier::text from pg_control_system())";

/// Where a paused server stands, `None` while it is not there yet (not accepting
/// connections, or still replaying).
async fn probe(urls: &[String], query: &str) -> Result<Option<Stopped>, String> {
    use sqlx::{Connection, Row};
    let mut last = String::new();
    for url in urls {
        let info = ConnInfo::parse(url).map_err(|e| e.to_string())?;
        let mut conn = match info.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&mut conn)
            .await;
        let _ = conn.close().await;
        let row = row.map_err(|e| e.to_string())?;
        let in_recovery: bool = row.get(0);
        if !in_recovery {
            return Err(
                "the server left recovery (promoted) instead of pausing at the target".into(),
            );
        }
        let paused: bool = row.get(1);
        if !paused {
            return Ok(None);
        }
        let micros: Option<i64> = row.get(3);
        return Ok(Some(Stopped {
            lsn: row.get::<Option<String>, _>(2).unwrap_or_default(),
            time: micros.and_then(chrono::DateTime::from_timestamp_micros),
            system_identifier: row.get(4),
            said: None,
        }));
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_absent_or_empty_directory_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restored");
        assert_eq!(State::of(&path), State::Absent);
        let claim = Claim::take(&path, None).unwrap();
        assert_eq!(State::of(&path), State::NotEmpty(INCOMPLETE.into()));
        // A second restore into it is refused, naming the unfinished one.
        let second = Claim::take(&path, None).err().unwrap();
        assert!(
            second.message.contains("did not finish"),
            "{}",
            second.message
        );
        std::fs::write(path.join("PG_VERSION"), "15\n").unwrap();
        assert!(claim.abandon().contains("removed again"));
        assert_eq!(State::of(&path), State::Absent);

        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "precious").unwrap();
        let refused = Claim::take(&path, None).err().unwrap();
        assert!(refused.message.contains("not empty"), "{}", refused.message);
        assert_eq!(
            std::fs::read_to_string(path.join("keep")).unwrap(),
            "precious"
        );

        std::fs::remove_file(path.join("keep")).unwrap();
        let claim = Claim::take(&path, None).unwrap();
        std::fs::create_dir(path.join("base")).unwrap();
        assert!(claim.abandon().contains("emptied again"));
        assert_eq!(State::of(&path), State::Empty);

        let taken = Claim::take(&path, None).unwrap();
        taken.complete().unwrap();
        assert_eq!(State::of(&path), State::Empty);
        assert!(
            Claim::take(&dir.path().join("no/such/parent"), None)
                .err()
                .unwrap()
                .message
                .contains("does not exist")
        );
    }

    #[test]
    fn control_data_is_read_by_field_name() {
        let fields = parse_control_data(
            "pg_control version number:            1300\nDatabase cluster state:               shut down in recovery\nmax_connections setting:              100\n",
        );
        assert_eq!(fields["Database cluster state"], "shut down in recovery");
        assert_eq!(fields["max_connections setting"], "100");
    }
}
