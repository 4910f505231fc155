//! Run history and resume: every apply is kept in the state directory, `runs list|show`
//! read it, and `apply --resume RUN_ID` runs again only what did not succeed — a verify
//! that failed is retried against the backup already taken — against a real PostgreSQL
//! cluster and a local repository.

mod common;

use common::pg::Cluster;
use common::{Workspace, opsrunner};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn run(ws: &Workspace, args: &[&str]) -> (i32, String, String) {
    let out = opsrunner()
        .args(args)
        .env("OPSRUNNER_STATE_DIR", ws.path("state"))
        .env(
            "DATABASE_URL",
            std::env::var("TEST_DATABASE_URL").unwrap_or_default(),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn plan(repo: &str, url: &str, compression: &str) -> String {
    format!(
        r#"
version: 1
name: nightly
targets:
  db: {{ url: "{url}" }}
repositories:
  backups: {{ url: "file://{repo}" }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: backups, compression: {compression} }}
  - id: verify
    type: verify
    needs: [backup]
    repository: backups
    backup: "{{{{ steps.backup.outputs.backup_id }}}}"
    restore_into: {{ target: db, database: scratch }}
  - {{ id: alert, type: shell, needs: [verify], if: failure(), command: "echo verify failed" }}
"#
    )
}

#[test]
fn a_failed_verify_is_resumed_with_the_backup_already_taken() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); insert into t select generate_series(1, 1000)",
    );
    // The scratch database exists: the verify refuses to restore into it and fails.
    cluster.psql("postgres", "create database scratch");
    let ws = Workspace::new();
    let repo = ws.path("repo");
    let url = cluster.url("postgres");
    std::fs::write(
        ws.path("plan.yaml"),
        plan(&repo.display().to_string(), &url, "zstd"),
    )
    .unwrap();
    let plan_path = ws.path("plan.yaml").display().to_string();

    let (code, _, stderr) = run(&ws, &["apply", &plan_path]);
    assert_eq!(code, 1, "{stderr}");
    let (code, listed, _) = run(&ws, &["runs", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let first = listed[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["status"], "failed");
    assert_eq!(listed[0]["failed_steps"], serde_json::json!(["verify"]));
    // Kept for its owner only.
    let kept = ws.path("state").join("runs").join(format!("{first}.json"));
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, shown, _) = run(&ws, &["runs", "show", &first, "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let backup_id = shown["steps"][0]["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, text, _) = run(&ws, &["runs", "show", &first]);
    assert!(
        text.contains("verify")
            && text.contains("failed")
            && text.contains(&format!("--resume {first}")),
        "{text}"
    );

    // A changed backup step makes its recorded outputs stale: refused, nothing run.
    std::fs::write(
        ws.path("plan.yaml"),
        plan(&repo.display().to_string(), &url, "gzip"),
    )
    .unwrap();
    let (code, _, stderr) = run(&ws, &["apply", &plan_path, "--resume", &first]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("step `backup` changed since run"),
        "{stderr}"
    );
    // An unknown run id is a clear error.
    let (code, _, stderr) = run(
        &ws,
        &["apply", &plan_path, "--resume", "20200101_000000_000000"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no run 20200101_000000_000000"), "{stderr}");
    let (code, _, stderr) = run(&ws, &["apply", &plan_path, "--resume", "../../etc/passwd"]);
    assert_eq!(code, 2, "{stderr}");

    // The plan as it was, the scratch database out of the way: only the verify runs, on
    // the backup the first run took.
    std::fs::write(
        ws.path("plan.yaml"),
        plan(&repo.display().to_string(), &url, "zstd"),
    )
    .unwrap();
    cluster.psql("postgres", "drop database scratch");
    let (code, _, stderr) = run(
        &ws,
        &[
            "apply",
            &plan_path,
            "--resume",
            &first,
            "--report",
            &ws.path("r.json").display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("backup reused from run {first}")),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(ws.path("r.json")).unwrap()).unwrap();
    assert_eq!(report["resumed_from"], first.as_str());
    assert_eq!(report["steps"][0]["reused_from"], first.as_str());
    assert_eq!(report["steps"][1]["status"], "succeeded");
    assert_eq!(
        report["steps"][1]["outputs"]["backup_id"],
        backup_id.as_str()
    );
    assert_eq!(report["steps"][2]["status"], "skipped");
    // Still one backup in the repository.
    let backups = std::fs::read_dir(&repo)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .count();
    assert_eq!(backups, 1);
    // Newest first; a succeeded run has nothing to resume.
    let (_, listed, _) = run(&ws, &["runs", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[0]["resumed_from"], first.as_str());
    assert_eq!(listed[0]["status"], "succeeded");
    let second = listed[0]["run_id"].as_str().unwrap().to_string();
    let (code, _, stderr) = run(&ws, &["apply", &plan_path, "--resume", &second]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing to resume"), "{stderr}");
}
