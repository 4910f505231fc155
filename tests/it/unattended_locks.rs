//! No overlapping runs: two `apply`s that write to the same repository or target never
//! both go ahead — one waits (`--wait-lock`) or exits 3 naming the holder — against a real
//! PostgreSQL cluster, a local repository and a real S3-compatible server; a killed
//! holder's lock is free at once (local, PostgreSQL) or once its lease lapses (S3).

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Run {
    code: i32,
    stderr: String,
    report: Value,
}

fn spawn(ws: &Workspace, name: &str, args: &[&str], env: &[(&str, String)]) -> Child {
    opsrunner()
        .arg("apply")
        .arg(ws.path("plan.yaml"))
        .arg("--report")
        .arg(ws.path(&format!("{name}.json")))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(ws: &Workspace, name: &str, child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    let report = std::fs::read(ws.path(&format!("{name}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Published backups in a local repository.
fn local_backups(repo: &Path) -> usize {
    std::fs::read_dir(repo).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("manifest.json").exists())
            .count()
    })
}

fn backup_plan(repository: &str, hold: &str) -> String {
    format!(
        r#"
version: 1
name: nightly
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  backups: {repository}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: backups }}
  - {{ id: hold, type: shell, needs: [backup], command: "touch held-$PPID; {hold}" }}
"#
    )
}

fn cluster() -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); insert into t select generate_series(1, 1000)",
    );
    cluster
}

#[test]
fn two_simultaneous_runs_on_one_repository_make_one_backup() {
    let cluster = cluster();
    let ws = Workspace::new();
    let repo = ws.path("repo");
    ws.write_plan(&backup_plan(
        &format!("{{ url: \"file://{}\", create: true }}", repo.display()),
        "sleep 2",
    ));
    let env = [("DATABASE_URL", cluster.url("postgres"))];
    let a = spawn(&ws, "a", &[], &env);
    let b = spawn(&ws, "b", &[], &env);
    let (a, b) = (finish(&ws, "a", a), finish(&ws, "b", b));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 3], "a: {}\nb: {}", a.stderr, b.stderr);
    let loser = if a.code == 3 { &a } else { &b };
    assert!(
        loser
            .stderr
            .contains("repository `backups` is locked by another run: run ")
            && loser.stderr.contains("of plan `nightly` on ")
            && loser.stderr.contains("(pid "),
        "{}",
        loser.stderr
    );
    assert_eq!(loser.report["status"], "refused", "{}", loser.report);
    assert_eq!(local_backups(&repo), 1);
    // The winner removed its lock file when it let go.
    assert!(!repo.join(".opsrunner.lock").exists());
    // The catalog does not see the lock file.
    let list = ws.backups(&["list"]);
    assert_eq!(
        list.lines().filter(|l| l.contains("app")).count(),
        1,
        "{list}"
    );

    // With --wait-lock the second run waits for the first, then makes its own backup.
    let a = spawn(&ws, "a", &[], &env);
    wait_until("the first run to hold the repository", || {
        ws.path(&format!("held-{}", a.id())).exists()
    });
    let b = spawn(&ws, "b", &["--wait-lock", "60s"], &env);
    let (a, b) = (finish(&ws, "a", a), finish(&ws, "b", b));
    assert_eq!((a.code, b.code), (0, 0), "a: {}\nb: {}", a.stderr, b.stderr);
    assert!(
        b.stderr.contains("repository `backups` is locked by run ")
            && b.stderr.contains("waiting up to")
            && b.stderr.contains("is free; locked it"),
        "{}",
        b.stderr
    );
    assert_eq!(local_backups(&repo), 3);
}

#[test]
fn a_killed_holder_frees_a_local_repository_at_once() {
    let cluster = cluster();
    let ws = Workspace::new();
    let repo = ws.path("repo");
    ws.write_plan(&backup_plan(
        &format!("{{ url: \"file://{}\", create: true }}", repo.display()),
        "sleep 60",
    ));
    let env = [("DATABASE_URL", cluster.url("postgres"))];
    let a = spawn(&ws, "a", &[], &env);
    let pid = a.id();
    wait_until("the first run to hold the repository", || {
        ws.path(&format!("held-{pid}")).exists()
    });
    // While it runs, the lock file says who holds it.
    let holder: Value =
        serde_json::from_slice(&std::fs::read(repo.join(".opsrunner.lock")).unwrap()).unwrap();
    assert_eq!(holder["pid"], pid, "{holder}");
    assert_eq!(holder["plan"], "nightly");
    // `backups prune` deletes nothing beside it.
    let prune = opsrunner()
        .args(["backups", "prune", "--keep-last", "1", "--repository"])
        .arg(format!("file://{}", repo.display()))
        .output()
        .unwrap();
    let prune_err = String::from_utf8_lossy(&prune.stderr);
    assert_eq!(prune.status.code(), Some(3), "{prune_err}");
    assert!(
        prune_err.contains(&format!("(pid {pid})")) && prune_err.contains("nothing was deleted"),
        "{prune_err}"
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = finish(&ws, "a", a);
    // The kernel let go of its lock with the process: the next run goes ahead at once.
    ws.write_plan(&backup_plan(
        &format!("{{ url: \"file://{}\", create: true }}", repo.display()),
        "true",
    ));
    let b = finish(&ws, "b", spawn(&ws, "b", &[], &env));
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(local_backups(&repo), 2);
    // And with nobody holding it, prune works.
    let prune = opsrunner()
        .args(["backups", "prune", "--keep-last", "1", "--repository"])
        .arg(format!("file://{}", repo.display()))
        .output()
        .unwrap();
    assert!(
        prune.status.success(),
        "{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    assert_eq!(local_backups(&repo), 1);
}

#[test]
fn two_runs_writing_to_one_target_take_turns() {
    let cluster = cluster();
    let ws = Workspace::new();
    ws.write_plan(
        r#"
version: 1
name: maintenance
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
steps:
  - { id: vacuum, type: sql, target: db, database: app, writes: true, query: "select pg_sleep(3)" }
  - { id: read, type: sql, target: db, database: app, query: "select count(*) from t" }
"#,
    );
    let env = [("DATABASE_URL", cluster.url("app"))];
    let a = spawn(&ws, "a", &[], &env);
    wait_until("the first run to take the target's lock", || {
        cluster
            .psql(
                "app",
                "select count(*) from pg_locks where locktype = 'advisory' and granted",
            )
            .trim()
            == "1"
    });
    let b = spawn(&ws, "b", &[], &env);
    let b = finish(&ws, "b", b);
    assert_eq!(b.code, 3, "{}", b.stderr);
    assert!(
        b.stderr
            .contains("target `db` is locked by another run: `opsrunner run ")
            && b.stderr.contains("plan maintenance on "),
        "{}",
        b.stderr
    );
    // A step that only reads goes ahead beside the holder.
    assert_eq!(b.report["steps"][1]["status"], "succeeded", "{}", b.stderr);
    let a = finish(&ws, "a", a);
    assert_eq!(a.code, 0, "{}", a.stderr);
    // Released at the end: nobody holds it now.
    assert_eq!(
        cluster
            .psql(
                "app",
                "select count(*) from pg_locks where locktype = 'advisory'"
            )
            .trim(),
        "0"
    );
}

#[test]
fn an_s3_lease_of_a_killed_run_is_taken_over_once_it_lapses() {
    let cluster = cluster();
    let ws = Workspace::new();
    let root = ws.path("s3");
    let server = crate::s3::S3Server::start(&root);
    ws.write_plan(&backup_plan(
        &format!(
            "{{ url: \"s3://{}/app\", endpoint: \"{}\", force_path_style: true, create: true }}",
            crate::s3::BUCKET,
            server.endpoint
        ),
        "sleep 60",
    ));
    let lease_file: PathBuf = root
        .join(crate::s3::BUCKET)
        .join("app")
        .join(".opsrunner.lease");
    let mut env: Vec<(&str, String)> = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    env.push(("OPSRUNNER_LEASE_TTL", "4s".into()));
    let a = spawn(&ws, "a", &[], &env);
    let pid = a.id();
    wait_until("the first run to hold the repository", || {
        ws.path(&format!("held-{pid}")).exists()
    });
    let lease: Value = serde_json::from_slice(&std::fs::read(&lease_file).unwrap()).unwrap();
    assert_eq!(lease["pid"], pid, "{lease}");
    assert_eq!(lease["released"], false);
    // Renewed while the run lasts: after two time-to-lives it is still held.
    std::thread::sleep(Duration::from_secs(8));
    let b = finish(&ws, "b", spawn(&ws, "b", &[], &env));
    assert_eq!(b.code, 3, "{}", b.stderr);
    assert!(
        b.stderr.contains(&format!("(pid {pid}), started "))
            && b.stderr.contains("lease valid until"),
        "{}",
        b.stderr
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = finish(&ws, "a", a);
    // On the machine it ran on, a dead holder's lease is taken over at once.
    ws.write_plan(&backup_plan(
        &format!(
            "{{ url: \"s3://{}/app\", endpoint: \"{}\", force_path_style: true, create: true }}",
            crate::s3::BUCKET,
            server.endpoint
        ),
        "true",
    ));
    let b = finish(&ws, "b", spawn(&ws, "b", &[], &env));
    assert_eq!(b.code, 0, "{}", b.stderr);
    // Removed when it let go.
    assert!(!lease_file.exists());

    // A lease held from another machine, whose holder stopped renewing it, is taken over
    // only once it has lapsed. It lapses at the earlier of its `expires_at` and the
    // store's time of its write plus the time to live (4 s); that time has whole seconds
    // (Last-Modified), so `expires_at` is set 3 s ahead to be the earlier one.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let foreign = serde_json::json!({
        "run_id": "20261125_020000_abcdef",
        "plan": "nightly",
        "host": "db-replica-2",
        "pid": 4242,
        "started_at": "2026-11-25T02:00:00Z",
        "expires_at": expires.to_rfc3339(),
        "process_space": "another-machine",
    });
    plant(&root, "app/.opsrunner.lease", &foreign.to_string());
    let b = finish(&ws, "b", spawn(&ws, "b", &[], &env));
    assert_eq!(b.code, 3, "{}", b.stderr);
    assert!(
        b.stderr
            .contains("run 20261125_020000_abcdef of plan `nightly` on db-replica-2 (pid 4242)"),
        "{}",
        b.stderr
    );
    let b = finish(&ws, "b", spawn(&ws, "b", &["--wait-lock", "30s"], &env));
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert!(b.stderr.contains("is free; locked it"), "{}", b.stderr);
    assert!(chrono::Utc::now() >= expires);
    assert!(!lease_file.exists());
    // Released: the next run takes it at once.
    let c = finish(&ws, "c", spawn(&ws, "c", &[], &env));
    assert_eq!(c.code, 0, "{}", c.stderr);
}

/// Puts an object into the S3 server's store behind its back (as another machine's
/// opsrunner would have written it): the file, without the server's cached record of the
/// old one.
fn plant(root: &Path, key: &str, body: &str) {
    fn b64(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
    let path = root.join(crate::s3::BUCKET).join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    let info = root.join(format!(
        ".bucket-{}.object-{}.internal.json",
        b64(crate::s3::BUCKET),
        b64(key)
    ));
    let _ = std::fs::remove_file(info);
}

/// An S3 lease nobody can read (garbage, empty, another shape, 50 MB) or whose expiry is
/// forged (2036) lapses like any other: its time to live after the store last wrote it.
/// `opsrunner repo unlock` breaks a dead holder's lock by hand and refuses a living one's.
#[test]
fn unreadable_and_forged_s3_leases_lapse_and_repo_unlock_refuses_a_living_holder() {
    let cluster = cluster();
    let ws = Workspace::new();
    let root = ws.path("s3");
    let server = crate::s3::S3Server::start(&root);
    let repository = format!(
        "{{ url: \"s3://{}/app\", endpoint: \"{}\", force_path_style: true, create: true }}",
        crate::s3::BUCKET,
        server.endpoint
    );
    ws.write_plan(&backup_plan(&repository, "true"));
    let mut env: Vec<(&str, String)> = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    env.push(("OPSRUNNER_LEASE_TTL", "3s".into()));
    let forged = |ttl: Option<u64>| {
        let mut v = serde_json::json!({
            "run_id": "20261125_020000_abcdef",
            "plan": "nightly",
            "host": "db-replica-2",
            "pid": 4242,
            "started_at": "2026-11-25T02:00:00Z",
            "expires_at": "2036-01-01T00:00:00Z",
            "process_space": "another-machine",
        });
        if let Some(t) = ttl {
            v["ttl_secs"] = t.into();
        }
        v.to_string()
    };
    let bodies = [
        ("garbage", "not a lease at all".to_string()),
        ("empty", String::new()),
        (
            "another shape",
            "{\"run_id\": 7, \"expires_at\": \"soon\"}".to_string(),
        ),
        ("50 MB", "x".repeat(50 << 20)),
        ("a forged expiry", forged(None)),
        ("a forged expiry with a time to live", forged(Some(4))),
    ];
    for (what, body) in bodies {
        plant(&root, "app/.opsrunner.lease", &body);
        let planted = std::time::Instant::now();
        let run = finish(&ws, "b", spawn(&ws, "b", &["--wait-lock", "40s"], &env));
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains("is free; locked it"),
            "{what}: {}",
            run.stderr
        );
        // Not before it lapsed: it was waited for.
        assert!(planted.elapsed() >= Duration::from_secs(2), "{what}");
    }

    // By hand: refused while the lease is being renewed, removed once its holder is gone.
    let run_unlock = || {
        crate::common::run(
            opsrunner()
                .args(["repo", "unlock", "--repository", "backups", "--plan"])
                .arg(ws.path("plan.yaml"))
                .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
        )
    };
    plant(&root, "app/.opsrunner.lease", &forged(Some(3)));
    let (code, out, err) = run_unlock();
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("db-replica-2 (pid 4242)") && err.contains("alive"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(4));
    let (code, out, err) = run_unlock();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("removed the lock of run 20261125_020000_abcdef"),
        "{out}"
    );
    let (code, out, _) = run_unlock();
    assert_eq!(code, 0);
    assert!(out.contains("is not locked"), "{out}");

    // A local repository: the kernel knows whether the holder lives.
    let repo = ws.path("local");
    ws.write_plan(&backup_plan(
        &format!("{{ url: \"file://{}\", create: true }}", repo.display()),
        "sleep 60",
    ));
    let a = spawn(&ws, "a", &[], &env);
    let pid = a.id();
    wait_until("the run to hold the repository", || {
        ws.path(&format!("held-{pid}")).exists()
    });
    let (code, _, err) = run_unlock();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("(pid {pid})")), "{err}");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = finish(&ws, "a", a);
    let (code, out, err) = run_unlock();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("(pid {pid})")), "{out}");
    assert!(!repo.join(".opsrunner.lock").exists());
}
