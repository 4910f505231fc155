//! Verification records, `prune` with its two safety rules, and `backups list|show`, on a
//! local repository filled by real backups.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner};

const PLAN: &str = r#"
version: 1
name: retention
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
  scratch: { ephemeral: true }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: app, repository: repo }
"#;

fn backup(ws: &Workspace, url: &str) -> String {
    let run = ws.apply_env(PLAN, &[], &[("DATABASE_URL", url)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn verify(ws: &Workspace, id: &str) -> crate::common::Applied {
    ws.apply(
        &format!(
            "version: 1\nname: v\ntargets:\n  scratch: {{ ephemeral: true }}\nrepositories:\n  repo: {{ url: \"file://./repo\", create: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: repo, backup: {id}, restore_into: {{ target: scratch, database: check }} }}\n"
        ),
        &[],
    )
}

const PRUNE: &str = "version: 1\nname: p\nrepositories:\n  repo: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: prune, type: prune, repository: repo, keep: { last: \"{{ vars.last }}\" } }\nvars: { last: 1 }\n";

fn prune(ws: &Workspace, args: &[&str]) -> crate::common::Applied {
    ws.apply(PRUNE, args)
}

fn listed(ws: &Workspace) -> Vec<serde_json::Value> {
    serde_json::from_str(&ws.backups(&["list", "--json"])).unwrap()
}

#[test]
fn prune_keeps_by_policy_and_never_the_newest_verified_backup() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int); insert into t select generate_series(1, 100)",
    );
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let ids: Vec<String> = (0..4).map(|_| backup(&ws, &url)).collect();
    let verified = verify(&ws, &ids[1]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);

    // The preview names what would go and why the rest stays; nothing is deleted by it.
    let plan = ws.write_plan(PRUNE);
    let preview = opsrunner().arg("plan").arg(&plan).output().unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(text.contains(&format!("delete {}", ids[0])), "{text}");
    assert!(
        text.contains(&format!(
            "keep   {} (app): newest backup that passed a restore verification",
            ids[1]
        )),
        "{text}"
    );
    assert_eq!(listed(&ws).len(), 4);

    let dry = opsrunner()
        .args([
            "backups",
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "--repository",
        ])
        .arg(format!("file://{}", ws.path("repo").display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("2 of 4 backups would be deleted (dry run"),
        "{text}"
    );
    assert_eq!(listed(&ws).len(), 4);

    let run = prune(&ws, &["--var", "last=1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let left: Vec<String> = listed(&ws)
        .iter()
        .map(|e| e["backup_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        [ids[3].clone(), ids[1].clone()],
        "kept, newest first: the last one and the newest verified one"
    );
    assert!(!ws.path("repo").join(&ids[0]).exists());
    let entry = &listed(&ws)[1];
    assert_eq!(entry["verification"]["passed"], true);
    assert_eq!(entry["verification"]["restored"], true);
}

#[test]
fn nothing_is_pruned_after_the_newest_backup_failed_verification() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let ids: Vec<String> = (0..3).map(|_| backup(&ws, &url)).collect();
    let file = ws.path("repo").join(&ids[2]).join("dump.pgdump.zst");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let failed = verify(&ws, &ids[2]);
    assert_eq!(failed.code, opsrunner::exit::BACKUP_CORRUPT);

    let run = prune(&ws, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        listed(&ws).len(),
        3,
        "a failed newest backup stops every deletion"
    );
    assert!(
        run.stderr
            .contains("the newest backup failed its verification"),
        "{}",
        run.stderr
    );

    let show = opsrunner()
        .args(["backups", "show", &ids[2], "--repository"])
        .arg(format!("file://{}", ws.path("repo").display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("verification FAILED"), "{text}");
}

#[test]
fn a_backup_killed_midway_never_appears_and_prune_orphans_removes_it() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int)");
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    // Make pg_dump wait on a lock, then kill opsrunner outright (no cleanup possible).
    let mut locker = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            &cluster.url("app"),
            "-c",
            "begin; lock table t in access exclusive mode; select pg_sleep(30)",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cluster.wait_for_exclusive_lock("app", "t");
    let plan = ws.write_plan(PLAN);
    let mut child = opsrunner()
        .arg("apply")
        .arg(&plan)
        .env("DATABASE_URL", &url)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let repo = ws.path("repo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The backup's own directory, not only the run's lock file (which comes first).
    let started = || {
        std::fs::read_dir(&repo).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name() != ".opsrunner.lock")
                .count()
        })
    };
    while started() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = locker.kill();
    let _ = locker.wait();

    // Besides the lock file the killed run held (free now; the next run takes it over).
    assert_eq!(
        std::fs::read_dir(&repo)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".opsrunner.lock")
            .filter(|e| e.file_name() != "opsrunner-repository.json")
            .count(),
        1,
        "the unfinished backup left a directory"
    );
    assert!(
        listed(&ws).is_empty(),
        "an unfinished backup is never listed"
    );
    let prune = |args: &[&str]| ws.backups(&[&["prune", "--orphans"], args].concat());
    // Fresh leftovers might be a backup still running: kept by default.
    assert!(prune(&[]).contains("may still be running"));
    assert!(prune(&["--orphan-age", "0s", "--dry-run"]).contains("would delete"));
    // Besides the repository's record, which stays.
    let entries = || {
        std::fs::read_dir(&repo)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "opsrunner-repository.json")
            .count()
    };
    assert_eq!(entries(), 1);
    assert!(prune(&["--orphan-age", "0s"]).contains("unfinished backup (no manifest)"));
    assert_eq!(entries(), 0);
    assert!(repo.join("opsrunner-repository.json").exists());
}

/// `backups check` for monitoring: exit 0 with a one-line "ok" when the newest backup (and,
/// if asked, the newest test-restored one) is young enough; exit 1 with the reason
/// otherwise — an empty repository, a stale backup, no verified backup.
#[test]
fn backups_check_says_fresh_stale_and_unverified_in_one_line() {
    let ws = Workspace::new();
    let check = |args: &[&str]| {
        let out = opsrunner()
            .args(["backups", "check", "--repository"])
            .arg(format!("file://{}", ws.path("repo").display()))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        (out.status.code(), stdout)
    };
    // A repository directory that does not exist is an error, never "no backup".
    let missing = opsrunner()
        .args(["backups", "check", "--max-age", "26h", "--repository"])
        .arg(format!("file://{}", ws.path("repo").display()))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");

    std::fs::create_dir_all(ws.path("repo")).unwrap();
    let (code, line) = check(&["--max-age", "26h"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("no backup in"), "{line}");

    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let url = cluster.url("postgres");
    let id = backup(&ws, &url);
    let (code, line) = check(&["--max-age", "26h"]);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with(&format!("ok: newest backup {id}")),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);

    let (code, line) = check(&["--max-age", "26h", "--require-verified"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains("no backup has passed a test restore"),
        "{line}"
    );
    assert_eq!(verify(&ws, &id).code, 0);
    let (code, line) = check(&["--max-age", "26h", "--require-verified", "--json"]);
    assert_eq!(code, Some(0), "{line}");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["healthy"], true);
    assert_eq!(record["newest_verified"]["backup_id"], id.as_str());

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, line) = check(&["--max-age", "1s"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!("the newest backup, {id}, is")) && line.contains("(more than 1s)"),
        "{line}"
    );
    let (code, line) = check(&["--max-age", "26h", "--database", "other"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("no backup of database `other`"), "{line}");
}
