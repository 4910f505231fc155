//! Where opsrunner runs (issue 12): systemd units and Kubernetes CronJobs checked by the
//! real validators, pull-request previews that fit a comment and say loudly what they
//! could not read, and CI output (JUnit, verdict exit codes, numbers in the report).

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner, python_with, run};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shipped(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn systemd_verify(files: &[PathBuf]) {
    let (code, out, err) = run(Command::new("systemd-analyze").arg("verify").args(files));
    assert_eq!(code, 0, "systemd-analyze verify failed:\n{out}{err}");
    assert!(
        !err.contains("Unknown key") && !err.contains("Failed to parse"),
        "{err}"
    );
}

#[test]
fn systemd_units_of_the_shipped_plans_pass_systemd_analyze_verify() {
    let ws = Workspace::new();
    let out = ws.path("units");
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "systemd"])
        .arg(shipped("plans/nightly.yaml"))
        .args([
            "--plan-path",
            "/etc/opsrunner/nightly.yaml",
            "--writable",
            "/var/backups/app",
            "--credential",
            "DATABASE_URL",
            "--metrics-dir",
            "/var/lib/node_exporter",
            "--out",
        ])
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let service = std::fs::read_to_string(out.join("opsrunner-nightly.service")).unwrap();
    let timer = std::fs::read_to_string(out.join("opsrunner-nightly.timer")).unwrap();
    for line in [
        "Type=oneshot",
        "OnFailure=opsrunner-failure@%n.service",
        "LogsDirectory=opsrunner",
        "StateDirectory=opsrunner",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/backups/app",
        "ReadWritePaths=/var/lib/node_exporter",
        "LoadCredential=DATABASE_URL",
        "EnvironmentFile=/etc/opsrunner/nightly.env",
        "--report /var/log/opsrunner/nightly.json",
    ] {
        assert!(service.contains(line), "{line} missing:\n{service}");
    }
    // The credential is not expected in the environment file as well.
    let env_comment = service
        .lines()
        .find(|l| l.starts_with("# /etc/opsrunner/nightly.env"))
        .unwrap();
    assert!(!env_comment.contains("DATABASE_URL"), "{env_comment}");
    for line in [
        "OnCalendar=*-*-* 02:00:00",
        "Persistent=true",
        "RandomizedDelaySec=10min",
        "Unit=opsrunner-nightly.service",
    ] {
        assert!(timer.contains(line), "{line} missing:\n{timer}");
    }
    systemd_verify(&[
        out.join("opsrunner-nightly.service"),
        out.join("opsrunner-nightly.timer"),
    ]);
    // The OnFailure= template, verified as the instance the service starts.
    let instance = ws.path("opsrunner-failure@opsrunner-nightly.service.service");
    std::fs::copy(out.join("opsrunner-failure@.service"), &instance).unwrap();
    systemd_verify(&[instance]);

    // A cron schedule is converted: the drill runs at 04:30.
    let drill = ws.path("drill-units");
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "systemd"])
        .arg(shipped("plans/drill.yaml"))
        .args(["--writable", "/var/backups/app", "--out"])
        .arg(&drill));
    assert_eq!(code, 0, "{err}");
    let timer = std::fs::read_to_string(drill.join("opsrunner-drill.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 04:30:00"), "{timer}");
    systemd_verify(&[
        drill.join("opsrunner-drill.service"),
        drill.join("opsrunner-drill.timer"),
    ]);
    let (code, out, err) = run(Command::new("systemd-analyze")
        .args(["calendar", "--iterations=2"])
        .arg("*-*-* 04:30:00"));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_unit_that_could_not_write_its_repository_is_refused() {
    // nightly.yaml takes its backup directory from the environment: the unit would be
    // read-only there, so the directory must be named.
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "systemd"])
        .arg(shipped("plans/nightly.yaml")));
    assert_eq!(code, 2);
    assert!(err.contains("--writable DIR"), "{err}");
    // A plan without a schedule says how to add one.
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "systemd"])
        .arg(shipped("examples/hello.yaml")));
    assert_eq!(code, 2);
    assert!(err.contains("has no `schedule:`"), "{err}");
    // A schedule that cron and systemd would read differently is a plan error with its place.
    let ws = Workspace::new();
    let plan = ws.write_plan(
        "version: 1\nname: x\nschedule: \"0 2 1 * mon\"\nsteps:\n  - { id: a, type: shell, command: \"true\" }\n",
    );
    let (code, _, err) = run(opsrunner().arg("validate").arg(&plan));
    assert_eq!(code, 2);
    assert!(err.contains("plan.yaml:3:"), "{err}");
    assert!(err.contains("not both"), "{err}");
}

const S3_PLAN: &str = r#"version: 1
name: offsite
schedule: "Mon..Fri *-*-* 03:15 UTC"
targets:
  app: { url: "{{ env.DATABASE_URL }}" }
repositories:
  offsite: { url: "s3://acme-backups/app", region: eu-west-1, create: true }
steps:
  - { id: backup, type: backup, target: app, repository: offsite }
  - { id: prune, type: prune, needs: [backup], repository: offsite, keep: { daily: 14 } }
"#;

#[test]
fn kubernetes_cronjobs_validate_against_the_kubernetes_schemas() {
    let python = python_with("kubernetes_validate", "kubernetes-validate");
    let validate = python.parent().unwrap().join("kubernetes-validate");
    let ws = Workspace::new();
    let offsite = ws.path("offsite.yaml");
    std::fs::write(&offsite, S3_PLAN).unwrap();
    let second = ws.path("second.yaml");
    std::fs::write(
        &second,
        S3_PLAN
            .replace("name: offsite", "name: second")
            .replace("Mon..Fri *-*-* 03:15 UTC", "*/30 * * * *"),
    )
    .unwrap();
    let out = ws.path("k8s");
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "k8s"])
        .arg(&offsite)
        .arg(&second)
        .args([
            "--namespace",
            "backups",
            "--state-claim",
            "opsrunner-state",
            "--out",
        ])
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let file = out.join("opsrunner-cronjobs.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    for expected in [
        "concurrencyPolicy: \"Forbid\"",
        "backoffLimit: 0",
        "startingDeadlineSeconds: 3600",
        "schedule: \"15 3 * * 1,2,3,4,5\"",
        "timeZone: \"Etc/UTC\"",
        "schedule: \"*/30 * * * *\"",
        "claimName: \"opsrunner-state\"",
        "secretKeyRef:",
        "runAsNonRoot: true",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    assert_eq!(text.matches("kind: \"CronJob\"").count(), 2, "{text}");
    let (code, stdout, stderr) = run(Command::new(&validate).arg("--strict").arg(&file));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches("passed").count() + stderr.matches("passed").count(),
        4,
        "{stdout}{stderr}"
    );

    // A local repository needs its volume.
    let (code, _, err) = run(opsrunner()
        .args(["schedule", "k8s"])
        .arg(shipped("plans/nightly.yaml")));
    assert_eq!(code, 2);
    assert!(err.contains("local repository"), "{err}");
}

/// A realistic large plan: 200 steps, commands with pipes, a prune on a missing repository.
fn big_plan(dir: &Path) -> String {
    let mut plan = format!(
        "version: 1\nname: big\nrepositories:\n  local: {{ url: \"file://{}\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: local, keep: {{ last: 3 }} }}\n",
        dir.join("missing").display()
    );
    for i in 0..200 {
        plan.push_str(&format!(
            "  - id: step-{i}\n    type: shell\n    command: \"printf '%s' {} | curl -s -X POST --data-binary @- https://hooks.example/{i}\"\n",
            "x".repeat(20)
        ));
    }
    plan
}

#[test]
fn the_markdown_preview_fits_a_comment_and_says_what_it_could_not_read() {
    let ws = Workspace::new();
    let plan = ws.write_plan(&big_plan(&ws.path("")));
    let (code, md, err) = run(opsrunner()
        .arg("plan")
        .arg(&plan)
        .args(["--format", "markdown"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        md.chars().count() <= 65_535,
        "{} characters",
        md.chars().count()
    );
    // The risk summary leads, with what could not be read.
    let summary_at = md.find("Risk summary").unwrap();
    assert!(summary_at < 2000, "{}", &md[..2000]);
    assert!(
        md.contains("could not read repository `local`"),
        "{}",
        &md[..3000]
    );
    assert!(md.contains("prune victims unknown"));
    assert!(md.contains("**deletes unknown backups**"));
    assert!(md.contains("Shortened to fit 65535 characters"));
    // Pipes in table cells are entities inside <code>, never a backslash in the output.
    assert!(md.contains("&#124; curl"), "table code");
    assert!(!md.contains("\\|"), "a backslash-escaped pipe");

    let (code, md, _) = run(opsrunner().arg("plan").arg(&plan).args([
        "--format",
        "markdown",
        "--max-chars",
        "5000",
    ]));
    assert_eq!(code, 0);
    assert!(md.chars().count() <= 5000, "{}", md.chars().count());
    assert!(md.contains("Risk summary") && md.contains("Shortened to fit 5000"));

    // --strict: the same preview, and exit 4.
    let (code, text, err) = run(opsrunner().arg("plan").arg(&plan).arg("--strict"));
    assert_eq!(code, opsrunner::exit::INCOMPLETE, "{err}");
    assert!(text.contains("!! INCOMPLETE PREVIEW"), "{text}");
    assert!(err.contains("incomplete preview (--strict)"), "{err}");
    let (code, json, _) = run(opsrunner()
        .arg("plan")
        .arg(&plan)
        .args(["--format", "json", "--strict"]));
    assert_eq!(code, 4);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["unread"][0]["name"], "local");
    assert_eq!(value["unread"][0]["unknown"], "prune victims unknown");

    // backups list of a missing directory is an error, not "no published backups".
    let (code, out, err) = run(opsrunner()
        .args(["backups", "list", "--repository"])
        .arg(format!("file://{}", ws.path("missing").display())));
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn the_mermaid_graph_marks_conditions_and_destructive_steps() {
    let (code, graph, err) = run(opsrunner()
        .arg("graph")
        .arg(shipped("plans/nightly.yaml"))
        .args(["--format", "mermaid"]));
    assert_eq!(code, 0, "{err}");
    assert!(graph.contains("-. \"failure()\" .->"), "{graph}");
    assert!(graph.contains("class s2 destructive"), "{graph}");
}

const BACKUP: &str = r#"
version: 1
name: b
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: app, repository: repo }
"#;

const DRILL: &str = r#"
version: 1
name: drill
targets:
  scratch: { ephemeral: true }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - id: verify
    type: verify
    repository: repo
    restore_into: { target: scratch, database: check }
    max_age: "{{ vars.max_age }}"
    record: false
  - { id: after, type: shell, needs: [verify], command: "echo restored" }
vars: { max_age: 1h }
"#;

#[test]
fn a_drill_reports_junit_rto_rpo_and_tells_stale_from_corrupt_read_only() {
    let junit_python = python_with("junitparser", "junitparser");
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int); insert into t select generate_series(1, 50)",
    );
    let ws = Workspace::new();
    let made = ws.apply_env(BACKUP, &[], &[("DATABASE_URL", &cluster.url("postgres"))]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let id = made.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = ws.path("repo");
    // The drill writes nothing into the repository: make it read-only to prove it.
    let listing_before = crate::common::files_under(&repo);

    let junit = ws.path("drill.xml");
    let fresh = ws.apply(DRILL, &["--junit", junit.to_str().unwrap()]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let measured = &fresh.step("verify")["measurements"];
    assert!(measured["restore_duration_ms"].is_u64(), "{measured}");
    assert!(measured["backup_age_s"].is_u64(), "{measured}");
    assert_eq!(
        crate::common::files_under(&repo),
        listing_before,
        "record: false wrote"
    );

    std::thread::sleep(std::time::Duration::from_secs(2));
    let stale = ws.apply(
        DRILL,
        &["--junit", junit.to_str().unwrap(), "--var", "max_age=1s"],
    );
    assert_eq!(
        stale.code,
        opsrunner::exit::BACKUP_TOO_OLD,
        "{}",
        stale.stderr
    );
    let verify = stale.step("verify");
    assert_eq!(verify["verdict"], "backup_too_old", "{verify}");
    assert!(
        verify["measurements"]["backup_age_s"].as_u64().unwrap() >= 2,
        "{verify}"
    );
    assert!(
        verify["reason"]
            .as_str()
            .unwrap()
            .contains("older than max_age 1s"),
        "{verify}"
    );
    assert_eq!(stale.status("after"), "skipped");

    // JUnit, read by a JUnit library: a case per step, the failure typed, the skip explained.
    let script = r#"
import sys, junitparser
xml = junitparser.JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    for case in suite:
        kind = [type(r).__name__ + ":" + (r.type or "") + ":" + (r.message or "") for r in case.result]
        print(case.name, "|", ";".join(kind))
"#;
    let (code, cases, err) = run(Command::new(&junit_python).args(["-c", script]).arg(&junit));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = cases.lines().collect();
    assert_eq!(lines.len(), 2, "{cases}");
    assert!(
        lines[0].starts_with("verify (verify) | Failure:backup_too_old:verify of"),
        "{cases}"
    );
    assert!(lines[1].starts_with("after (shell) | Skipped:"), "{cases}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<property name=\"backup_age_s\""), "{xml}");

    // A damaged file: corrupt outranks stale, exit 6.
    let dump = std::fs::read_dir(repo.join(&id))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("dump"))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&dump).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    let corrupt = ws.apply(DRILL, &["--var", "max_age=1s"]);
    assert_eq!(
        corrupt.code,
        opsrunner::exit::BACKUP_CORRUPT,
        "{}",
        corrupt.stderr
    );
    assert_eq!(corrupt.step("verify")["verdict"], "backup_corrupt");
}

#[test]
fn diff_shows_what_a_change_does() {
    let ws = Workspace::new();
    let old = ws.path("old.yaml");
    std::fs::copy(shipped("plans/nightly.yaml"), &old).unwrap();
    let text = std::fs::read_to_string(&old).unwrap();
    let changed = text
        .replace("    protected: true\n", "")
        .replace("keep_daily: 14", "keep_daily: 3")
        .replace("*-*-* 02:00", "*-*-* 03:00")
        + "  - { id: extra, type: shell, needs: [prune], if: always(), command: \"echo done\" }\n";
    let new = ws.path("new.yaml");
    std::fs::write(&new, changed).unwrap();
    let (code, out, err) = run(opsrunner().arg("diff").arg(&old).arg(&new));
    assert_eq!(code, 0, "{err}");
    for expected in [
        "~ schedule",
        "*-*-* 02:00 → *-*-* 03:00",
        "~ vars",
        "keep_daily: 14 → 3",
        "~ target `app`",
        "!! no longer protected",
        "+ step `extra` (shell)",
        "if: always()",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    let (code, md, _) = run(opsrunner()
        .arg("diff")
        .arg(&old)
        .arg(&new)
        .args(["--format", "markdown"]));
    assert_eq!(code, 0);
    assert!(md.contains("⚠️ **no longer protected"), "{md}");
    let (_, same, _) = run(opsrunner().arg("diff").arg(&old).arg(&old));
    assert!(same.contains("no change in behaviour"), "{same}");
}
