//! One-shot commands (issue 33): `backup`, `restore` (by id, and to a point in time into a
//! data directory), `verify`, `prune`, `sql`, `migrate`, `seed`, `reset` and `psql` without
//! a plan file, through the same engine as `apply`: the preview of `--dry-run` changes
//! nothing, guards and `--confirm` hold, the report and the history are written.

use crate::common::pg::{
    Cluster, archive_everything, archive_with, archived_at_least, in_local, server_now,
    server_owner,
};
use crate::common::{Workspace, opsrunner, run};
use std::path::Path;

/// `opsrunner ARGS…` with `env`: (exit code, stdout, stderr).
fn oneshot(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run(opsrunner().args(args).envs(env.iter().copied()))
}

/// The value of `name: value` in a one-shot command's stdout.
fn output<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stdout}"))
}

#[test]
fn a_backup_restored_by_its_id_with_one_command_each_and_the_guards_hold() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t as select g as id from generate_series(1, 500) g",
    );
    let url = cluster.url("app");
    let env = [("APP_URL", url.as_str())];
    let repo = format!("file://{}", ws.path("repo").display());

    // A location that is no repository is refused, with the command that makes one.
    let (code, out, err) = oneshot(
        &["backup", "--target", "env:APP_URL", "--repository", &repo],
        &env,
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("opsrunner repo init {repo}")),
        "{err}"
    );
    assert!(!ws.path("repo").exists());
    let (code, out, err) = oneshot(&["repo", "init", &repo], &env);
    assert_eq!(code, 0, "{out}{err}");

    // The preview writes nothing.
    let (code, out, err) = oneshot(
        &[
            "backup",
            "--target",
            "env:APP_URL",
            "--repository",
            &repo,
            "--dry-run",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("will back up the database of target"), "{out}");
    assert!(!out.contains(super::common::pg::PASSWORD), "{out}");
    assert_eq!(crate::common::files_under(&ws.path("repo")).len(), 1);

    let report = ws.path("backup.json");
    let (code, out, err) = oneshot(
        &[
            "backup",
            "--target",
            "env:APP_URL",
            "--repository",
            &repo,
            "--report",
            report.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let backup_id = output(&out, "backup_id").to_string();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["plan"]["name"], "opsrunner backup");
    assert_eq!(
        report["steps"][0]["outputs"]["backup_id"],
        backup_id.as_str()
    );
    assert!(!err.contains(super::common::pg::PASSWORD), "{err}");

    cluster.psql("app", "delete from t where id > 100");

    // By id, beside the live database.
    let (code, out, err) = oneshot(
        &[
            "restore",
            "--repository",
            &repo,
            "--backup",
            &backup_id,
            "--target",
            "env:APP_URL",
            "--database",
            "app_copy",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "database"), "app_copy");
    assert_eq!(cluster.psql("app_copy", "select count(*) from t"), "500");

    // The SQL one-shot prints its value.
    let (code, out, err) = oneshot(
        &[
            "sql",
            "--target",
            "env:APP_URL",
            "-d",
            "app_copy",
            "-c",
            "select max(id) from t",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "value"), "500");

    // A protected target of a plan: refused without --confirm (exit 3, nothing touched),
    // done with it.
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: prod
targets:
  app: {{ url: "{{{{ env.APP_URL }}}}", protected: true }}
repositories:
  local: {{ url: "{repo}" }}
steps:
  - {{ id: noop, type: wait_ready, target: app }}
"#
    ));
    let plan = plan.to_str().unwrap();
    let restore_over = [
        "restore",
        "--plan",
        plan,
        "--repository",
        "local",
        "--target",
        "app",
        "--database",
        "app",
        "--overwrite",
    ];
    let (code, out, err) = oneshot(&restore_over, &env);
    assert_eq!(code, opsrunner::exit::REFUSED, "{out}{err}");
    assert!(err.contains("--confirm app"), "{err}");
    assert_eq!(cluster.psql("app", "select count(*) from t"), "100");
    // The dry run says the same and changes nothing.
    let (code, out, err) = oneshot(&[&restore_over[..], &["--dry-run"]].concat(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("--confirm app"), "{out}");
    assert_eq!(cluster.psql("app", "select count(*) from t"), "100");
    let (code, out, err) = oneshot(&[&restore_over[..], &["--confirm", "app"]].concat(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "replaced"), "true");
    assert_eq!(cluster.psql("app", "select count(*) from t"), "500");

    // A name the plan does not declare is a usage error with a suggestion.
    let (code, _, err) = oneshot(&["verify", "--plan", plan, "--repository", "locl"], &env);
    assert_eq!(code, opsrunner::exit::INVALID, "{err}");
    assert!(err.contains("did you mean `local`"), "{err}");

    // Verify into a throwaway cluster, then prune to one.
    let (code, out, err) = oneshot(&["verify", "--repository", &repo], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(output(&out, "checks").contains("restore=pass"), "{out}");
    let (code, out, err) = oneshot(
        &["backup", "--target", "env:APP_URL", "--repository", &repo],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let newest = output(&out, "backup_id").to_string();
    let (code, out, err) = oneshot(&["prune", "--repository", &repo], &env);
    assert_eq!(code, opsrunner::exit::INVALID, "{out}{err}");
    assert!(err.contains("retention policy"), "{err}");
    let (code, out, err) = oneshot(
        &[
            "prune",
            "--repository",
            &repo,
            "--keep-last",
            "1",
            "--min-age",
            "0s",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    // The verified one stays too (the newest backup that passed a restore verification).
    assert!(ws.path("repo").join(&newest).exists());
    assert!(ws.path("repo").join(&backup_id).exists());

    // Every one-shot run is in the history, under its command's name.
    let (code, out, err) = run(opsrunner().args(["runs", "list"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("opsrunner restore"), "{out}");
}

#[test]
fn a_point_in_time_restore_into_a_data_directory_with_one_command() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let repo_url = format!("file://{}", repo.display());
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    archive_with(&cluster, &format!("--repository {repo_url}"), &[]);
    archived_at_least(&cluster, 1);
    cluster.psql("app", "insert into t values (1)");
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];

    let (code, out, err) = oneshot(
        &[
            "backup",
            "--base",
            "--target",
            "env:DATABASE_URL",
            "--repository",
            &repo_url,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    cluster.psql("app", "insert into t values (2)");
    let before_the_drop = server_now(&cluster);
    std::thread::sleep(std::time::Duration::from_millis(50));
    cluster.psql("app", "drop table t");
    archive_everything(&cluster, in_local(&repo));

    let parent = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(parent.path(), Some(uid), Some(gid)).unwrap();
    let data = parent.path().join("data");
    let (code, out, err) = oneshot(
        &[
            "restore",
            "--repository",
            &repo_url,
            "--to-time",
            &before_the_drop,
            "--data-directory",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        output(&out, "reached_time") <= before_the_drop.as_str(),
        "{out}"
    );
    let restored = Cluster::adopt(parent);
    restored.wait_promoted();
    assert_eq!(
        restored.psql("app", "select string_agg(id::text, ',' order by id) from t"),
        "1,2"
    );
}

#[test]
fn migrate_seed_reset_and_psql_without_a_plan() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database dev");
    let url = cluster.url("dev");
    let env = [("DEV_URL", url.as_str())];
    let migrations = ws.path("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("1_items.sql"),
        "create table items (id int primary key, name text);",
    )
    .unwrap();
    let seeds = ws.path("seeds/development");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(
        seeds.join("10-items.sql"),
        "insert into items values (1, 'one');",
    )
    .unwrap();
    let dir = |p: &Path| p.to_str().unwrap().to_string();

    // The preview lists the pending migration; nothing is applied.
    let (code, out, err) = oneshot(
        &[
            "migrate",
            "up",
            "--target",
            "env:DEV_URL",
            "--dir",
            &dir(&migrations),
            "--dry-run",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1_items") || out.contains("items"), "{out}");
    assert_eq!(
        cluster.psql(
            "dev",
            "select count(*) from pg_tables where tablename = 'items'"
        ),
        "0"
    );
    let (code, out, err) = oneshot(
        &[
            "migrate",
            "up",
            "--target",
            "env:DEV_URL",
            "--dir",
            &dir(&migrations),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "applied"), "1_items");
    let (code, out, err) = oneshot(
        &[
            "seed",
            "--target",
            "env:DEV_URL",
            "--dir",
            &dir(&ws.path("seeds")),
            "--environment",
            "development",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(cluster.psql("dev", "select name from items"), "one");

    // psql: the password through the environment; a value with template braces stays text.
    let (code, out, err) = oneshot(
        &[
            "psql",
            "--target",
            "env:DEV_URL",
            "--",
            "-XAtc",
            "select '{{ env.HOME }}' || count(*) from items",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "{{ env.HOME }}1");

    // Reset: dropped, created, migrated, seeded again.
    cluster.psql("dev", "insert into items values (2, 'two')");
    let (code, out, err) = oneshot(
        &[
            "reset",
            "--target",
            "env:DEV_URL",
            "-d",
            "dev",
            "--migrations",
            &dir(&migrations),
            "--seeds",
            &dir(&ws.path("seeds")),
            "--environment",
            "development",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(cluster.psql("dev", "select count(*) from items"), "1");

    // On a protected target of a plan, psql is read-only without --confirm.
    let plan = ws.write_plan(
        r#"
version: 1
name: dev
targets:
  dev: { url: "{{ env.DEV_URL }}", protected: true }
steps:
  - { id: noop, type: wait_ready, target: dev }
"#,
    );
    let plan = plan.to_str().unwrap();
    let (code, out, err) = oneshot(
        &[
            "psql",
            "--plan",
            plan,
            "--target",
            "dev",
            "--",
            "-Xc",
            "delete from items",
        ],
        &env,
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(cluster.psql("dev", "select count(*) from items"), "1");
    let (code, out, err) = oneshot(
        &[
            "sql",
            "--plan",
            plan,
            "--target",
            "dev",
            "-c",
            "delete from items",
            "--writes",
        ],
        &env,
    );
    assert_eq!(code, opsrunner::exit::REFUSED, "{out}{err}");
    assert_eq!(cluster.psql("dev", "select count(*) from items"), "1");
}
