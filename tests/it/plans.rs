//! The plans shipped in `plans/` and `examples/`, run end to end against real clusters.

use crate::common::pg::{Cluster, PASSWORD};
use crate::common::{Workspace, opsrunner};
use std::path::Path;

fn shipped(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(plan: &Path, ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> crate::common::Applied {
    let output = opsrunner()
        .arg("apply")
        .arg(plan)
        .arg("--report")
        .arg(ws.report_path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    crate::common::Applied::from(output, &ws.report_path())
}

#[test]
fn nightly_then_drill_then_reset_seed() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let ws = Workspace::new();
    let backups = ws.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let dev_url = cluster.url("postgres");
    let app_url = cluster.url("app");

    // A development database from the shipped migrations and seeds...
    let seeded = run(
        &shipped("plans/reset-seed.yaml"),
        &ws,
        &["--var", "database=app"],
        &[("DEV_DATABASE_URL", &dev_url)],
    );
    assert_eq!(seeded.code, 0, "{}", seeded.stderr);
    assert_eq!(seeded.step("status")["outputs"]["pending"], "");
    assert_eq!(
        cluster.psql("app", "select count(*) from customers"),
        "5003"
    );

    // ...backed up and verified by the nightly plan...
    // Every variable its header lists: the alert's hook too (it runs only on failure,
    // but a run does not start without what any of its steps needs).
    let (hook, posted) = crate::common::receiver(&[200]);
    let env = [
        ("DATABASE_URL", app_url.as_str()),
        ("BACKUP_DIR", backups.to_str().unwrap()),
        ("ALERT_WEBHOOK", hook.as_str()),
    ];
    // A mistyped BACKUP_DIR is refused, and nothing appears there.
    let typo = ws.path("backup");
    let mistyped = [env[0], ("BACKUP_DIR", typo.to_str().unwrap()), env[2]];
    let refused = run(&shipped("plans/nightly.yaml"), &ws, &[], &mistyped);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .everything()
            .contains("is not an opsrunner repository"),
        "{}",
        refused.everything()
    );
    assert!(refused.everything().contains("opsrunner repo init"));
    assert!(!typo.exists());
    // ...and the failure alert, whose variable was checked before the run, went out.
    assert_eq!(posted.lock().unwrap().len(), 1);
    // The repository is made once, on purpose, as the README says.
    let (code, out, err) = crate::common::run(
        opsrunner()
            .args(["repo", "init", "local", "--plan"])
            .arg(shipped("plans/nightly.yaml"))
            .envs(env.iter().copied()),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created repository"), "{out}");
    let nightly = run(&shipped("plans/nightly.yaml"), &ws, &[], &env);
    assert_eq!(nightly.code, 0, "{}", nightly.stderr);
    assert_eq!(nightly.status("notify-on-failure"), "skipped");
    assert_eq!(posted.lock().unwrap().len(), 1);
    assert!(!nightly.everything().contains(PASSWORD));

    // The drill's preview says which backup `latest` is, without touching anything.
    let preview = opsrunner()
        .arg("plan")
        .arg(shipped("plans/drill.yaml"))
        .env("BACKUP_DIR", &backups)
        .output()
        .unwrap();
    let backup_id = nightly.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(text.contains(&format!("latest is {backup_id}")), "{text}");

    // ...and restored by the drill.
    let drill = run(
        &shipped("plans/drill.yaml"),
        &ws,
        &[],
        &[("BACKUP_DIR", backups.to_str().unwrap())],
    );
    assert_eq!(drill.code, 0, "{}", drill.stderr);
    let backup_id = nightly.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    assert_eq!(
        drill.step("verify-latest")["outputs"]["backup_id"],
        backup_id
    );
    assert!(
        drill.step("report")["outputs"]["stdout"]
            .as_str()
            .unwrap()
            .contains("RTO: restore took")
    );
}

#[test]
fn quickstart_runs_on_ephemeral_clusters_only() {
    // The README's first command, as a test: no server, no configuration.
    let ws = Workspace::new();
    let dir = ws.path("checkout");
    // The quickstart writes its backups next to the checkout (../backups from examples/).
    copy_dir(&shipped("examples"), &dir.join("examples"));
    copy_dir(&shipped("migrations"), &dir.join("migrations"));
    let run = run(&dir.join("examples/quickstart.yaml"), &ws, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("check")["outputs"]["value"], "5003");
    assert!(dir.join("backups").is_dir());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
