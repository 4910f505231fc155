//! Ephemeral targets, `wait_ready` and transactional `sql`, against real clusters that
//! opsrunner creates itself.

use crate::common::Workspace;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A TMPDIR for one run, readable by the `postgres` user (the cluster lives inside it).
fn private_tmp(ws: &Workspace) -> std::path::PathBuf {
    let tmp = ws.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    tmp
}

fn leftover_clusters(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("opsrunner-cluster-"))
        .collect()
}

const EPHEMERAL_PLAN: &str = r#"
version: 1
name: ephemeral
vars: { fail: "true" }
targets:
  scratch: { ephemeral: true }
steps:
  - { id: ready, type: wait_ready, target: scratch, timeout: 30s }
  - id: setup
    type: sql
    target: scratch
    needs: [ready]
    transaction: true
    query: |
      create table t (id int primary key);
      insert into t select generate_series(1, 10);
  - id: half-done
    type: sql
    target: scratch
    needs: [setup]
    transaction: true
    continue_on_error: true
    query: |
      insert into t values (11);
      insert into t values (1);
  - { id: count, type: sql, target: scratch, needs: [half-done], query: "select count(*) from t" }
  - { id: maybe-fail, type: shell, needs: [count], command: "{{ vars.fail }}" }
"#;

#[test]
fn ephemeral_target_is_created_used_and_removed() {
    let ws = Workspace::new();
    let tmp = private_tmp(&ws);
    let tmp_str = tmp.to_str().unwrap();
    let run = ws.apply_env(EPHEMERAL_PLAN, &[], &[("TMPDIR", tmp_str)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.step("ready")["outputs"]["server_version"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );
    // The failed transaction left nothing behind: 10 rows, not 11.
    assert_eq!(run.status("half-done"), "failed");
    assert!(
        run.step("half-done")["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back")
    );
    assert_eq!(run.step("count")["outputs"]["value"], "10");
    assert!(
        leftover_clusters(&tmp).is_empty(),
        "cluster left behind: {:?}",
        leftover_clusters(&tmp)
    );

    // Also removed when the run fails.
    let failed = ws.apply_env(
        EPHEMERAL_PLAN,
        &["--var", "fail=false"],
        &[("TMPDIR", tmp_str)],
    );
    assert_eq!(failed.code, 1);
    assert!(leftover_clusters(&tmp).is_empty());
}

#[test]
fn ephemeral_cluster_is_removed_on_interruption() {
    let ws = Workspace::new();
    let tmp = private_tmp(&ws);
    let plan = ws.write_plan(
        r#"
version: 1
name: interrupted
targets:
  scratch: { ephemeral: true }
steps:
  - { id: ready, type: wait_ready, target: scratch }
  - { id: long, type: sql, target: scratch, needs: [ready], query: "select pg_sleep(60)" }
  - { id: marker, type: shell, needs: [ready], command: "touch started; sleep 60" }
"#,
    );
    let child = ws.spawn_apply(&plan, &["--concurrency", "4"], &[("TMPDIR", &tmp)]);
    // `marker` and `long` start together once the cluster is ready: when the marker file
    // exists, the long query's step is running.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ws.path("started").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let run = ws.interrupt(child, libc::SIGINT);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.status("long"), "cancelled");
    assert_eq!(run.status("marker"), "cancelled");
    assert!(
        leftover_clusters(&tmp).is_empty(),
        "cluster left behind after Ctrl-C"
    );
}

#[test]
fn wait_ready_gives_up_with_the_last_error() {
    let ws = Workspace::new();
    let started = Instant::now();
    let run = ws.apply(
        r#"
version: 1
name: nobody-home
targets:
  gone: { url: "postgres://u:pw@127.0.0.1:1/x" }
steps:
  - { id: ready, type: wait_ready, target: gone, interval: 100ms, timeout: 1s }
"#,
        &[],
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(run.status("ready"), "failed");
    let reason = run.step("ready")["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out after 1s") && reason.contains("refused"),
        "{reason}"
    );
}

#[test]
fn missing_server_binaries_say_what_to_install() {
    let ws = Workspace::new();
    let run = ws.apply_env(
        "version: 1\nname: x\ntargets:\n  s: { ephemeral: true }\nsteps:\n  - { id: q, type: sql, target: s, query: select 1 }\n",
        &[],
        &[("OPSRUNNER_PG_SEARCH", "/nonexistent")],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no `initdb` found"), "{}", run.stderr);
    assert!(
        run.stderr.contains("apt-get install postgresql"),
        "{}",
        run.stderr
    );
    assert_eq!(run.report["status"], "failed");
}

/// An ephemeral target whose server cannot start says why, and the run fails before any
/// step: as root, the server must run as an existing user.
#[test]
fn an_ephemeral_cluster_that_cannot_start_fails_the_run_saying_why() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: ephemeral
targets:
  scratch: { ephemeral: true, run_as: no-such-user-4711 }
steps:
  - { id: ready, type: wait_ready, target: scratch }
"#,
        &[],
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: the server runs as this user and `run_as` does not apply.
        assert_eq!(run.code, 0, "{}", run.stderr);
        return;
    }
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "ephemeral target `scratch`: opsrunner runs as root and PostgreSQL refuses to; the server would run as user `no-such-user-4711`, which does not exist"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(run.report["status"], "failed");
    assert_eq!(run.status("ready"), "skipped");
}
