//! Progress of long transfers and the shape of the log: a plain progress line now and then
//! with timestamps when stderr is not a terminal, bars through a pseudo-terminal, and a JSON
//! log whose every line is one event of the same shape.

use crate::common::Workspace;
use crate::common::opsrunner;
use crate::common::pg::Cluster;
use serde_json::Value;

/// A database big enough that dumping and restoring it lasts a few seconds, also on a fast
/// machine with nothing else running (1.5 M rows dumped in 0.9 s once: no second tick).
fn big() -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key, a text, b text); insert into t select g, md5(g::text), md5((g * 7)::text) from generate_series(1, 4000000) g",
    );
    cluster
}

/// Backs `app` up (with `compression`) and restores it into `copy`.
fn plan(ws: &Workspace, cluster: &Cluster, compression: &str) -> String {
    let path = ws.path("plan.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
version: 1
name: progress
targets:
  db: {{ url: "{}" }}
repositories:
  backups: {{ url: "file://{}", create: true }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: backups, compression: {compression} }}
  - {{ id: restore, type: restore, needs: [backup], repository: backups, into: {{ target: db, database: copy }} }}
"#,
            cluster.url("postgres"),
            ws.path("repo").display(),
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn without_a_terminal_progress_is_a_line_now_and_then_and_every_line_has_a_time() {
    let cluster = big();
    let ws = Workspace::new();
    // gzip: slow enough that the dump lasts longer than the pace of the lines.
    let plan = plan(&ws, &cluster, "gzip");
    let out = opsrunner()
        .args(["apply", &plan, "--progress-every", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    for line in &lines {
        let ts = line.split(' ').next().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "a line without a timestamp: {line:?}"
        );
    }
    let dump: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("backup … dump "))
        .collect();
    assert!(!dump.is_empty(), "{stderr}");
    assert!(dump.iter().all(|l| l.contains("MiB")), "{dump:?}");
    // A restore knows its size: share and ETA.
    let restore: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("restore … restore "))
        .collect();
    assert!(!restore.is_empty(), "{stderr}");
    assert!(
        restore
            .iter()
            .all(|l| l.contains(" of ") && l.contains('%')),
        "{restore:?}"
    );
    // No escape codes in a log that is not a terminal.
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[test]
fn on_a_terminal_progress_is_a_bar() {
    let cluster = big();
    let ws = Workspace::new();
    let plan = plan(&ws, &cluster, "none");
    // `script` runs the command on a pseudo-terminal and copies what it shows.
    let command = format!("{} apply {plan} 2>&1", env!("CARGO_BIN_EXE_opsrunner"));
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("OPSRUNNER_STATE_DIR", ws.path("state"))
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    // The bar: the step, what it does, bytes and a rate, redrawn in place.
    assert!(shown.contains("backup dump"), "{shown}");
    assert!(shown.contains("restore restore"), "{shown}");
    assert!(shown.contains("MiB/s"), "{shown}");
    assert!(shown.contains("ETA"), "{shown}");
    assert!(shown.contains('\x1b'), "{shown}");
    // The lines of the log are there too, without timestamps.
    assert!(shown.contains("backup succeeded in"), "{shown}");
    assert!(!shown.contains("Z ▶"), "{shown}");
    // Each ends in a newline of its own: copied from the terminal, the log keeps its lines
    // (no two of them, nor a line and a bar, run together).
    for line in [
        "backup started",
        "backup succeeded in",
        "restore started",
        "restore succeeded in",
        "run succeeded in",
    ] {
        let at = shown
            .find(line)
            .unwrap_or_else(|| panic!("no `{line}` in {shown}"));
        let rest = &shown[at..];
        let end = rest
            .find('\n')
            .unwrap_or_else(|| panic!("`{line}` ends no line: {shown:?}"));
        let own = &rest[..end];
        for other in ["▶", "✓", "opsrunner:", "ETA", "MiB/s"] {
            assert!(
                !own[line.len()..].contains(other),
                "`{line}` runs into `{other}`: {own:?}"
            );
        }
    }
    // After the data, the restore says what it does instead of a bar stuck at 100 %.
    assert!(
        shown.contains("indexes and constraints built in"),
        "{shown}"
    );
}

#[test]
fn a_json_log_is_one_event_per_line_of_one_shape() {
    let cluster = big();
    let ws = Workspace::new();
    let plan = plan(&ws, &cluster, "none");
    let out = opsrunner()
        .args([
            "--log-format",
            "json",
            "apply",
            &plan,
            "--progress-every",
            "1s",
        ])
        // Library messages too, in the same shape.
        .env("OPSRUNNER_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mut kinds = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        let kind = event["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {line}"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(event["ts"].as_str().unwrap_or("")).is_ok(),
            "no ts: {line}"
        );
        kinds.insert(kind.to_string());
    }
    for kind in [
        "run_started",
        "step_started",
        "progress",
        "step_finished",
        "run_finished",
    ] {
        assert!(kinds.contains(kind), "no {kind} event: {kinds:?}");
    }
}

/// SIGTERM while a backup streams (what systemd sends at `TimeoutStopSec` or shutdown): the
/// backup is cancelled and publishes nothing, the `always()` alert still posts.
#[test]
fn sigterm_mid_backup_still_sends_the_alert() {
    let cluster = big();
    let ws = Workspace::new();
    let (url, seen) = crate::common::receiver(&[200]);
    std::fs::write(
        ws.path("plan.yaml"),
        format!(
            r#"
version: 1
name: nightly
targets:
  db: {{ url: "{}" }}
repositories:
  backups: {{ url: "file://{}", create: true }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: backups, compression: gzip }}
  - id: alert
    type: webhook
    needs: [backup]
    if: always()
    url: "{{{{ env.ALERT_WEBHOOK }}}}"
    body: {{ text: "nightly {{{{ run.status }}}}: backup {{{{ steps.backup.status }}}}" }}
"#,
            cluster.url("postgres"),
            ws.path("repo").display(),
        ),
    )
    .unwrap();
    let child = opsrunner()
        .arg("apply")
        .arg(ws.path("plan.yaml"))
        .args(["--progress-every", "1s"])
        .env("ALERT_WEBHOOK", &url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-backup: its spool of pg_dump output has begun arriving in the repository.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !crate::common::files_under(&ws.path("repo"))
        .iter()
        .any(|f| !f.ends_with(".opsrunner.lock"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let posted = seen.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{posted:?}\n{stderr}");
    assert!(
        posted[0].ends_with(r#"{"text":"nightly cancelled: backup cancelled"}"#),
        "{posted:?}"
    );
    // Nothing was published.
    let published = crate::common::files_under(&ws.path("repo"))
        .iter()
        .filter(|f| f.ends_with("manifest.json"))
        .count();
    assert_eq!(published, 0);
    assert!(stderr.contains("run cancelled after"), "{stderr}");
}
