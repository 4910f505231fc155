//! Run history and resume: every apply is kept in the state directory, `runs list|show`
//! read it, and `apply --resume RUN_ID` runs again only what did not succeed — a verify
//! that failed is retried against the backup already taken — against a real PostgreSQL
//! cluster and a local repository.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner};
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
  backups: {{ url: "file://{repo}", create: true }}
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

/// A cluster with a database `app`, a workspace, and the plan (zstd) written into it.
fn setup() -> (Cluster, Workspace, String) {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); insert into t select generate_series(1, 1000)",
    );
    let ws = Workspace::new();
    let repo = ws.path("repo").display().to_string();
    std::fs::write(
        ws.path("plan.yaml"),
        plan(&repo, &cluster.url("postgres"), "zstd"),
    )
    .unwrap();
    let plan_path = ws.path("plan.yaml").display().to_string();
    (cluster, ws, plan_path)
}

#[test]
fn a_failed_verify_is_resumed_with_the_backup_already_taken() {
    let (cluster, ws, plan_path) = setup();
    let (repo, url) = (ws.path("repo"), cluster.url("postgres"));
    // The scratch database exists: the verify refuses to restore into it and fails.
    cluster.psql("postgres", "create database scratch");

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

/// A sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// `--metrics FILE` parsed back by the Prometheus client library's own text parser.
fn parse_metrics(path: &std::path::Path) -> Vec<Sample> {
    let python = crate::common::python_with("prometheus_client", "prometheus-client");
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_say_how_the_run_went_and_how_fresh_the_backups_are() {
    let (cluster, ws, plan_path) = setup();
    let prom = ws.path("opsrunner.prom");
    let report = ws.path("r.json").display().to_string();
    let (code, _, stderr) = run(
        &ws,
        &[
            "apply",
            &plan_path,
            "--metrics",
            &prom.display().to_string(),
            "--report",
            &report,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let first: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let samples = parse_metrics(&prom);
    let plan_label = [("plan", "nightly")];
    assert_eq!(
        metric(&samples, "opsrunner_last_run_success", &plan_label),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &samples,
            "opsrunner_last_run_status",
            &[("plan", "nightly"), ("status", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &samples,
            "opsrunner_last_run_status",
            &[("plan", "nightly"), ("status", "failed")]
        ),
        Some(0.0)
    );
    let started =
        chrono::DateTime::parse_from_rfc3339(first["started_at"].as_str().unwrap()).unwrap();
    let start = metric(
        &samples,
        "opsrunner_last_run_start_timestamp_seconds",
        &plan_label,
    )
    .unwrap();
    assert!(
        (start - started.timestamp_millis() as f64 / 1000.0).abs() < 0.01,
        "{start}"
    );
    let bytes: f64 = first["steps"][0]["outputs"]["bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let backup_labels = [
        ("plan", "nightly"),
        ("step", "backup"),
        ("repository", "backups"),
    ];
    assert_eq!(
        metric(&samples, "opsrunner_backup_bytes", &backup_labels),
        Some(bytes)
    );
    assert!(
        metric(
            &samples,
            "opsrunner_backup_duration_seconds",
            &backup_labels
        )
        .unwrap()
            > 0.0
    );
    let rto = metric(
        &samples,
        "opsrunner_verify_restore_duration_seconds",
        &[("step", "verify"), ("repository", "backups")],
    )
    .unwrap();
    let restore_ms: f64 = first["steps"][1]["outputs"]["restore_duration_ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((rto - restore_ms / 1000.0).abs() < 0.001, "{rto}");
    let db = [("repository", "backups"), ("database", "app")];
    assert_eq!(metric(&samples, "opsrunner_backups", &db), Some(1.0));
    let newest = metric(&samples, "opsrunner_newest_backup_timestamp_seconds", &db).unwrap();
    assert!(
        (newest - chrono::Utc::now().timestamp() as f64).abs() < 120.0,
        "{newest}"
    );
    assert_eq!(
        metric(
            &samples,
            "opsrunner_newest_verified_restore_timestamp_seconds",
            &db
        ),
        Some(newest)
    );

    // A run whose verify fails: the run is failed, a second backup is the newest, but the
    // newest verified restore is still the first one.
    cluster.psql("postgres", "create database scratch");
    let (code, _, stderr) = run(
        &ws,
        &[
            "apply",
            &plan_path,
            "--metrics",
            &prom.display().to_string(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    let samples = parse_metrics(&prom);
    assert_eq!(
        metric(&samples, "opsrunner_last_run_success", &plan_label),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &samples,
            "opsrunner_last_run_status",
            &[("plan", "nightly"), ("status", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&samples, "opsrunner_backups", &db), Some(2.0));
    let newer = metric(&samples, "opsrunner_newest_backup_timestamp_seconds", &db).unwrap();
    assert!(newer > newest);
    assert_eq!(
        metric(
            &samples,
            "opsrunner_newest_verified_restore_timestamp_seconds",
            &db
        ),
        Some(newest)
    );
    assert_eq!(
        metric(
            &samples,
            "opsrunner_verify_restore_duration_seconds",
            &[("step", "verify")]
        ),
        None
    );
    // Nothing half-written was left beside it.
    let names: Vec<String> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("prom"))
        .collect();
    assert_eq!(names, ["opsrunner.prom"]);
}
