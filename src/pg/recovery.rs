//! Recovery of a base backup in a throwaway cluster: the extracted data directory is told
//! to recover (`recovery.signal`, `restore_command`, the target and the timeline, written
//! into `postgresql.auto.conf`, which is read last and so overrides whatever the copied
//! configuration says), started, and watched until the server has promoted itself at the
//! target — or has stopped, with its own words on why.
//!
//! What the copied configuration must never do here is overridden: the recovered cluster
//! does not archive (it would push its new timeline into the production archive, where a
//! later recovery to `latest` could follow it), listens only on its private socket, and
//! does not check for hot-standby settings (it accepts no connection before promotion).

use crate::exec::{EphemeralDir, StepContext, StepError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What recovery is asked to do.
pub struct Recovery {
    pub restore_command: String,
    /// `recovery_target_*` settings (none: to the end of the archive).
    pub target: Vec<(&'static str, String)>,
    /// `recovery_target_timeline`, always explicit.
    pub timeline: u32,
}

impl Recovery {
    /// Every kind of target, those not asked for empty: a target set in the copied
    /// configuration (an `ALTER SYSTEM` on production) must not add itself to this one.
    fn targets(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = [
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_time",
            "recovery_target_xid",
        ]
        .into_iter()
        .filter(|k| !self.target.iter().any(|(set, _)| set == k))
        .map(|k| (k, String::new()))
        .collect();
        out.extend(self.target.iter().cloned());
        out
    }
}

/// Where recovery ended.
#[derive(Debug, Clone)]
pub struct Reached {
    pub lsn: String,
    /// The commit time of the last transaction replayed, when one was.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// The timeline the promoted cluster writes on (a new one).
    pub timeline: u32,
    pub system_identifier: String,
}

fn run_as(command: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

pub fn data_dir(cluster: &EphemeralDir) -> PathBuf {
    cluster.dir.join("data")
}

/// Stops the cluster's server (it may already be stopped) and empties its data directory.
pub async fn empty(cluster: &EphemeralDir) -> Result<PathBuf, StepError> {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let data = data_dir(&cluster);
        let mut ctl = Command::new(cluster.bin.join("pg_ctl"));
        ctl.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
        run_as(&mut ctl, cluster.owner);
        // "not running" is fine; a server that is still there shows up below.
        let _ = ctl.output();
        if data.join("postmaster.pid").exists() {
            return Err(StepError::transient(format!(
                "the throwaway cluster in {} did not stop",
                cluster.dir.display()
            )));
        }
        let io =
            |e: std::io::Error| StepError::transient(format!("emptying {}: {e}", data.display()));
        std::fs::remove_dir_all(&data).map_err(io)?;
        std::fs::create_dir(&data).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        if let Some((uid, gid)) = cluster.owner {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(io)?;
        }
        Ok(data)
    })
    .await
    .map_err(|e| StepError::transient(format!("emptying the throwaway cluster: {e}")))?
}

/// A setting's value as `postgresql.conf` quotes it.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Writes `text` into a new file at `path` (replacing one that is there), readable by its
/// owner alone from the moment it exists — it may hold a key — and handed to the server's
/// user when given.
pub fn write_owned(path: &Path, text: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Makes the copy start in archive recovery: `recovery.signal`, and no `standby.signal` —
/// a copy of a standby would otherwise start as one, following a primary it cannot reach.
fn signal_recovery(data: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(data.join("standby.signal"));
    write_owned(&data.join("recovery.signal"), "", owner)
}

/// Appends `settings` under a `# heading` to `postgresql.auto.conf`, which the server reads
/// last: they override whatever the copied configuration says.
fn append_settings(
    data: &Path,
    owner: Option<(u32, u32)>,
    heading: &str,
    settings: Vec<(&str, String)>,
) -> std::io::Result<()> {
    let path = data.join("postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&path).unwrap_or_default();
    if !auto.is_empty() && !auto.ends_with('\n') {
        auto.push('\n');
    }
    auto.push_str(&format!("# {heading}\n"));
    for (key, value) in settings {
        auto.push_str(&format!("{key} = {}\n", quoted(&value)));
    }
    write_owned(&path, &auto, owner)
}

/// Writes what recovery needs into an extracted data directory.
pub fn configure(
    data: &Path,
    owner: Option<(u32, u32)>,
    recovery: &Recovery,
) -> std::io::Result<()> {
    let write = |name: &str, text: &str| write_owned(&data.join(name), text, owner);
    signal_recovery(data, owner)?;
    // Debian-style clusters keep their configuration outside the data directory; the copy
    // then has none, and the server needs a file to start.
    if !data.join("postgresql.conf").exists() {
        write(
            "postgresql.conf",
            "# written by opsrunner: the base backup held no postgresql.conf\n",
        )?;
    }
    // Only the private socket reaches this cluster: whoever can reach it may connect.
    if data.join("pg_hba.conf").exists() {
        std::fs::rename(
            data.join("pg_hba.conf"),
            data.join("pg_hba.conf.from-backup"),
        )?;
    }
    write("pg_hba.conf", "local all all trust\n")?;
    if !data.join("pg_ident.conf").exists() {
        write("pg_ident.conf", "")?;
    }
    let mut settings: Vec<(&str, String)> = copy_settings();
    settings.extend([
        ("hot_standby", "off".into()),
        ("hba_file", data.join("pg_hba.conf").display().to_string()),
        (
            "ident_file",
            data.join("pg_ident.conf").display().to_string(),
        ),
        ("restore_command", recovery.restore_command.clone()),
        ("recovery_target_timeline", recovery.timeline.to_string()),
        ("recovery_target_action", "promote".into()),
    ]);
    settings.extend(recovery.targets());
    append_settings(
        data,
        owner,
        "point-in-time recovery by opsrunner; these lines override the ones above",
        settings,
    )
}

/// What a copy of a production cluster that opsrunner starts (a recovery to a point, a
/// mark's verification) must not take from the configuration it was copied with; one
/// list for every such start.
pub fn copy_settings() -> Vec<(&'static str, String)> {
    vec![
        // It archives nothing into production's archive, follows no primary and runs
        // none of production's hooks.
        ("archive_mode", "off".into()),
        ("primary_conninfo", String::new()),
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
        // Copied from a server with other extensions installed, the list would stop this
        // one from starting; a restore test needs the data, not the extensions' workers.
        ("shared_preload_libraries", String::new()),
        // A drill machine is often smaller than production, and has none of its huge pages,
        // certificates (the socket is private: no TLS), pid file place or log directory;
        // the log must stay where opsrunner reads why recovery stopped.
        ("shared_buffers", "256MB".into()),
        ("huge_pages", "off".into()),
        ("ssl", "off".into()),
        ("external_pid_file", String::new()),
        ("logging_collector", "off".into()),
    ]
}

/// Prepares an extracted data directory for its first start by the operator: it recovers
/// to the target on the explicit timeline with `restore_command`, then promotes. Nothing
/// else of the copied configuration is changed: that start uses the operator's.
pub fn prepare_first_start(
    data: &Path,
    owner: Option<(u32, u32)>,
    recovery: &Recovery,
) -> std::io::Result<()> {
    signal_recovery(data, owner)?;
    let mut settings: Vec<(&str, String)> = vec![
        ("restore_command", recovery.restore_command.clone()),
        ("recovery_target_timeline", recovery.timeline.to_string()),
        ("recovery_target_action", "promote".into()),
    ];
    settings.extend(recovery.targets());
    append_settings(
        data,
        owner,
        "point-in-time recovery prepared by opsrunner: the first start recovers to this target and promotes",
        settings,
    )
}

/// The server's status from `postmaster.pid`: its pid and the status word of line 8
/// (`starting`, `ready`, `standby`, `stopping`).
fn postmaster(data: &Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    Some((pid, lines.get(7).map_or("", |s| s.trim()).to_string()))
}

/// Whether the log says the server has stopped or is stopping for good.
fn stopped(log: &str) -> bool {
    log.contains("FATAL") || log.contains("PANIC") || log.contains("database system is shut down")
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The server log from byte `from` on.
fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

/// The server log's last lines that say why it stopped, with what to do about the usual
/// reason.
pub fn last_words(log: &Path, from: u64) -> String {
    let text = log_since(log, from);
    let ended = text.contains("recovery ended before configured recovery target was reached");
    let hint = if ended {
        " — the archive ends before the target: the WAL that reaches it is not archived yet (the server archives a segment when it is full, or after archive_timeout), or the target is on another timeline"
    } else {
        ""
    };
    // What `wal fetch` (the restore_command) said of the segment recovery stopped at comes
    // first: "child process exited with exit code 255" names no segment and no reason.
    match wal_problem(&text, ended) {
        Some(problem) => format!("{problem}; the server said: {}{hint}", last_lines(&text)),
        None => last_lines(&text) + hint,
    }
}

/// The segment `wal fetch` could not give the server, and why — damaged, unreachable, or
/// (when recovery ended early) absent — from its lines in the server's log.
pub fn wal_problem(text: &str, ended_early: bool) -> Option<String> {
    for line in text.lines().rev() {
        let Some(at) = line.find("wal fetch ") else {
            continue;
        };
        let rest = &line[at + "wal fetch ".len()..];
        let Some((name, what)) = rest.split_once(": ") else {
            continue;
        };
        if let Some(detail) = what.strip_prefix("damaged: ") {
            return Some(format!(
                "WAL segment {name} is damaged in the archive ({detail})"
            ));
        }
        if let Some(detail) = what.strip_prefix("unreachable: ") {
            return Some(format!(
                "WAL segment {name} could not be read: the archive is unreachable ({detail})"
            ));
        }
    }
    if ended_early {
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("wal fetch: ") && l.contains(" is not in "))?;
        let rest = &line[line.find("wal fetch: ")? + "wal fetch: ".len()..];
        let (name, place) = rest.split_once(" is not in ")?;
        return Some(format!(
            "WAL segment {name} is absent from the archive ({})",
            place.trim()
        ));
    }
    None
}

pub fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FATAL") || l.contains("PANIC") || l.contains("LOG:  recovery"))
        .collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    if tail.is_empty() {
        text.lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ")
    } else {
        tail.join(" | ")
    }
}

/// Starts the configured cluster and waits for it to finish recovery and promote.
pub async fn start_and_wait(
    ctx: &StepContext,
    cluster: &EphemeralDir,
    url: &str,
) -> Result<Reached, StepError> {
    let data = data_dir(cluster);
    let log = cluster.dir.join("server.log");
    let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let mut ctl = Command::new(cluster.bin.join("pg_ctl"));
    ctl.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-W", "-o", &cluster.options, "start"]);
    run_as(&mut ctl, cluster.owner);
    let out = tokio::task::spawn_blocking(move || ctl.output())
        .await
        .map_err(|e| StepError::transient(format!("pg_ctl start: {e}")))?
        .map_err(|e| StepError::permanent(format!("cannot run pg_ctl: {e}")))?;
    if !out.status.success() {
        return Err(StepError::permanent(format!(
            "the recovered cluster did not start: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            last_words(&log, log_start)
        )));
    }
    let started = Instant::now();
    let mut seen_pid = None;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        match postmaster(&data) {
            Some((pid, status)) if alive(pid) => {
                seen_pid = Some(pid);
                if status == "ready" {
                    break;
                }
            }
            // Not started yet (no pid file, or one being written), unless the log says it
            // has already stopped.
            _ if seen_pid.is_none()
                && started.elapsed() < Duration::from_secs(30)
                && !stopped(&log_since(&log, log_start)) => {}
            _ => {
                return Err(StepError::permanent(format!(
                    "recovery stopped: {}",
                    last_words(&log, log_start)
                )));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
        }
    }
    reached(url).await
}

async fn reached(url: &str) -> Result<Reached, StepError> {
    use sqlx::{Connection, Row};
    let info = crate::pg::conn::ConnInfo::parse(url)?;
    let mut conn = None;
    let mut last = String::new();
    // "ready" is written a moment before the first connection is accepted.
    for _ in 0..50 {
        match info.connect().await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = conn.ok_or_else(|| {
        StepError::permanent(format!(
            "the recovered cluster does not accept connections as `postgres` ({last}); its superuser may have another name"
        ))
    })?;
    let row = sqlx::query(
        "select pg_is_in_recovery(),
                pg_last_wal_replay_lsn()::text,
                (extract(epoch from pg_last_xact_replay_timestamp()) * 1000000)::bigint,
                ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
                (select system_identifier::text from pg_control_system())",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| crate::pg::server::classify(&e, "reading where recovery ended"))?;
    let _ = conn.close().await;
    let in_recovery: bool = row.get(0);
    if in_recovery {
        return Err(StepError::permanent(
            "the recovered cluster is still in recovery after it reported ready",
        ));
    }
    let micros: Option<i64> = row.get(2);
    Ok(Reached {
        lsn: row.get::<Option<String>, _>(1).unwrap_or_default(),
        time: micros.and_then(chrono::DateTime::from_timestamp_micros),
        timeline: row.get::<i32, _>(3) as u32,
        system_identifier: row.get(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_wal_fetch_could_not_give_is_named_with_why() {
        let log = "LOG:  starting point-in-time recovery\nerror: wal fetch 00000001000000000000000A: damaged: its SHA-256 differs (for 0.3s); recovery is stopped\nLOG:  restore_command \"…\" failed: child process exited with exit code 255\nFATAL:  could not restore file";
        let problem = wal_problem(log, false).unwrap();
        assert!(
            problem.starts_with("WAL segment 00000001000000000000000A is damaged"),
            "{problem}"
        );
        let log = "wal fetch: 00000001000000000000000B is not in file:///r\nLOG:  recovery ended before configured recovery target was reached";
        assert_eq!(
            wal_problem(log, true).unwrap(),
            "WAL segment 00000001000000000000000B is absent from the archive (file:///r)"
        );
        assert_eq!(wal_problem(log, false), None);
    }

    #[test]
    fn settings_are_quoted_as_postgresql_conf_reads_them() {
        assert_eq!(quoted("it's"), "'it''s'");
        assert_eq!(quoted(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn the_configuration_overrides_archiving_and_sets_an_explicit_timeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "archive_command = 'push it'",
        )
        .unwrap();
        std::fs::write(dir.path().join("standby.signal"), "").unwrap();
        configure(
            dir.path(),
            None,
            &Recovery {
                restore_command: "fetch %f %p".into(),
                target: vec![("recovery_target_lsn", "0/3000000".into())],
                timeline: 2,
            },
        )
        .unwrap();
        let auto = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(auto.starts_with("archive_command = 'push it'\n"));
        assert!(auto.contains("archive_mode = 'off'"));
        assert!(auto.contains("recovery_end_command = ''"));
        assert!(auto.contains("huge_pages = 'off'"));
        assert!(auto.contains("recovery_target_timeline = '2'"));
        assert!(auto.contains("recovery_target_lsn = '0/3000000'"));
        assert!(dir.path().join("recovery.signal").exists());
        assert!(!dir.path().join("standby.signal").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pg_hba.conf")).unwrap(),
            "local all all trust\n"
        );
    }
}
