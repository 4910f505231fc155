//! The repository is a closed box and prune keeps what it must: counts of zero refused
//! everywhere, backups identified by their location (a copied or edited manifest is
//! damaged, never a reason to delete), no symbolic link followed out of the repository,
//! verification records that only count for the manifest they verified, and numbers that
//! would overflow refused with exit 2 instead of a panic.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const BACKUP: &str = r#"
version: 1
name: backup
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: app, repository: repo }
"#;

fn source() -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int); insert into t select generate_series(1, 10)",
    );
    cluster
}

fn backups(ws: &Workspace, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let run = ws.apply_env(BACKUP, &[], &[("DATABASE_URL", url)]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            run.step("backup")["outputs"]["backup_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `opsrunner backups ARGS… --repository file://<ws>/repo`, whatever its exit status.
fn backups_cmd(ws: &Workspace, args: &[&str]) -> Output {
    opsrunner()
        .arg("backups")
        .args(args)
        .arg("--repository")
        .arg(format!("file://{}", ws.path("repo").display()))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ids_in(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The repository's record is no backup.
        .filter(|name| name != "opsrunner-repository.json")
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_count_of_zero_is_refused_in_plans_on_the_command_line_and_from_variables() {
    let cluster = source();
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let ids = backups(&ws, &url, 3);

    let zero = ws.write_plan(
        "version: 1\nname: p\nrepositories:\n  repo: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: prune, type: prune, repository: repo, keep: { weekly: 4, last: 0 } }\n",
    );
    let out = opsrunner().arg("validate").arg(&zero).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("steps[0].keep.last"), "{}", text(&out));
    assert!(
        text(&out).contains("`last: 0` would keep none"),
        "{}",
        text(&out)
    );

    let out = backups_cmd(&ws, &["prune", "--keep-last", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // From a variable: known before anything runs, so a usage error like the others.
    let templated = "version: 1\nname: p\nvars: { k: 7 }\nrepositories:\n  repo: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: prune, type: prune, repository: repo, keep: { daily: \"{{ vars.k }}\" } }\n";
    for command in ["validate", "plan", "apply"] {
        let out = opsrunner()
            .arg(command)
            .arg(ws.write_plan(templated))
            .args(["--var", "k=0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}: {}", text(&out));
        assert!(text(&out).contains("steps[0].keep.daily"), "{}", text(&out));
    }
    // From the environment: known only when the step starts, where it fails the step.
    let from_env = "version: 1\nname: p\nrepositories:\n  repo: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: prune, type: prune, repository: repo, keep: { daily: \"{{ env.KEEP }}\" } }\n";
    let run = ws.apply_env(from_env, &[], &[("KEEP", "0")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = run.step("prune")["reason"].as_str().unwrap();
    assert!(reason.contains("`daily: 0` would keep none"), "{reason}");
    let mut all = ids.clone();
    all.sort();
    assert_eq!(ids_in(&ws.path("repo")), all, "nothing was deleted");
}

#[test]
fn a_copied_or_edited_manifest_is_damaged_and_the_newest_backup_stays() {
    let cluster = source();
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let repo = ws.path("repo");
    let ids = backups(&ws, &url, 3);
    // `cp -a` of the newest backup: its manifest still names the newest.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.join(&ids[2]))
        .arg(repo.join("00000000-copy"))
        .status()
        .unwrap();
    assert!(status.success());
    // A manifest edited to claim the newest backup's id.
    let manifest = repo.join(&ids[0]).join("manifest.json");
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(&ids[0], &ids[2]);
    std::fs::write(&manifest, edited).unwrap();

    let list = text(&backups_cmd(&ws, &["list"]));
    assert!(list.contains("2 damaged"), "{list}");
    assert!(
        list.contains("00000000-copy: backup 00000000-copy is damaged: the manifest names backup"),
        "{list}"
    );

    let preview = backups_cmd(&ws, &["prune", "--keep-last", "1", "--dry-run"]);
    let result = backups_cmd(&ws, &["prune", "--keep-last", "1"]);
    assert!(result.status.success(), "{}", text(&result));
    let decisions = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("keep") || l.starts_with("delete") || l.starts_with("skip"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        decisions(&preview),
        decisions(&result),
        "the preview and the result differ"
    );
    let result = text(&result);
    assert!(
        result.contains(&format!("delete {} (app)", ids[1])),
        "{result}"
    );
    assert!(
        result.contains("skip   00000000-copy (damaged)"),
        "{result}"
    );
    assert!(result.contains("1 of 2 backups deleted"), "{result}");
    let mut expected = vec!["00000000-copy".to_string(), ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(
        ids_in(&repo),
        expected,
        "the newest backup and both damaged entries are still there"
    );
    assert!(repo.join(&ids[2]).join("manifest.json").exists());
}

#[test]
fn symbolic_links_never_lead_out_of_the_repository() {
    let cluster = source();
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let repo = ws.path("repo");
    let ids = backups(&ws, &url, 2);
    // Elsewhere: an old backup and an unfinished one, each reached by a link.
    let elsewhere = ws.path("elsewhere");
    std::fs::create_dir_all(elsewhere.join("unfinished")).unwrap();
    std::fs::write(elsewhere.join("unfinished/data"), "not a backup").unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.join(&ids[0]))
        .arg(elsewhere.join("19990101T000000Z-app-0000"))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = elsewhere.join("19990101T000000Z-app-0000/manifest.json");
    let text_of = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(&ids[0], "19990101T000000Z-app-0000")
        .replace("\"created_at\": \"20", "\"created_at\": \"19");
    std::fs::write(&manifest, text_of).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("19990101T000000Z-app-0000"),
        repo.join("19990101T000000Z-app-0000"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("unfinished"),
        repo.join("20000101-unfinished"),
    )
    .unwrap();
    // An unfinished backup holding link loops.
    let loops = repo.join("20010101-loops");
    std::fs::create_dir_all(loops.join("dump")).unwrap();
    std::os::unix::fs::symlink(".", loops.join("self")).unwrap();
    std::os::unix::fs::symlink("..", loops.join("dump/up")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, loops.join("out")).unwrap();
    let before = crate::common::files_under(&elsewhere);

    let list = text(&backups_cmd(&ws, &["list"]));
    assert!(list.contains("2 backups"), "{list}");
    assert!(
        list.contains("19990101T000000Z-app-0000: damaged: a symbolic link"),
        "{list}"
    );

    let started = Instant::now();
    let pruned = backups_cmd(
        &ws,
        &[
            "prune",
            "--keep-last",
            "1",
            "--orphans",
            "--orphan-age",
            "0s",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "prune ran for {:?}",
        started.elapsed()
    );
    let out = text(&pruned);
    assert!(pruned.status.success(), "{out}");
    assert!(
        out.contains("delete 20010101-loops: unfinished backup"),
        "{out}"
    );
    assert!(out.contains(&format!("delete {} (app)", ids[0])), "{out}");
    assert_eq!(
        crate::common::files_under(&elsewhere),
        before,
        "something outside changed"
    );
    assert!(manifest.exists());
    assert_eq!(
        ids_in(&repo),
        [
            "19990101T000000Z-app-0000".to_string(),
            "20000101-unfinished".to_string(),
            ids[1].clone()
        ]
    );

    // Restoring the linked backup by id is refused before any database is touched.
    let restore = ws.apply_env(
        "version: 1\nname: r\ntargets:\n  db: { url: \"{{ env.DATABASE_URL }}\" }\nrepositories:\n  repo: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: restore, type: restore, repository: repo, backup: 19990101T000000Z-app-0000, into: { target: db, database: copy } }\n",
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(restore.code, 1, "{}", restore.stderr);
    assert!(
        restore.step("restore")["reason"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{}",
        restore.stderr
    );
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname like 'copy%'"
        ),
        "0"
    );
}

#[test]
fn verification_records_count_only_for_the_manifest_they_verified() {
    let cluster = source();
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let repo = ws.path("repo");
    let ids = backups(&ws, &url, 3);
    let verify = ws.apply(
        &format!(
            "version: 1\nname: v\nrepositories:\n  repo: {{ url: \"file://./repo\", create: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: repo, backup: {} }}\n",
            ids[0]
        ),
        &[],
    );
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    let record = repo.join(&ids[0]).join("verification.json");
    // Copied onto another backup.
    std::fs::copy(&record, repo.join(&ids[1]).join("verification.json")).unwrap();
    // Garbage on the third.
    std::fs::write(repo.join(&ids[2]).join("verification.json"), "{ not json").unwrap();

    let mut list: Vec<serde_json::Value> =
        serde_json::from_slice(&backups_cmd(&ws, &["list", "--json"]).stdout).unwrap();
    assert_eq!(list.len(), 3);
    // Newest first, as the text listing; looked at oldest first below.
    assert_eq!(list[0]["backup_id"], ids[2].as_str());
    list.reverse();
    assert_eq!(list[0]["verification"]["passed"], true);
    assert!(list[1]["verification"].is_null());
    assert!(
        list[1]["verification_problem"]
            .as_str()
            .unwrap()
            .contains("for another manifest"),
        "{}",
        list[1]
    );
    assert!(list[2]["verification"].is_null());
    assert!(
        list[2]["verification_problem"]
            .as_str()
            .unwrap()
            .contains("not a valid record")
    );

    // Edited by hand: a failed verification turned into a pass.
    let edited = std::fs::read_to_string(&record)
        .unwrap()
        .replace("\"run_id\": \"", "\"run_id\": \"x");
    std::fs::write(&record, edited).unwrap();
    let show = text(&backups_cmd(&ws, &["show", &ids[0]]));
    assert!(show.contains("not trusted"), "{show}");
    assert!(show.contains("changed after it was written"), "{show}");

    // The catalogue and prune still work around them.
    let pruned = backups_cmd(&ws, &["prune", "--keep-last", "2"]);
    assert!(pruned.status.success(), "{}", text(&pruned));
}

#[test]
fn numbers_that_would_overflow_are_usage_errors() {
    let ws = Workspace::new();
    let plan = ws.write_plan(
        "version: 1\nname: h\nsteps:\n  - { id: a, type: shell, command: \"true\", retry: { attempts: 2, delay: 99999999999999999999h } }\n  - { id: c, type: shell, command: \"true\", timeout: 36501d }\n  - { id: b, type: restore, repository: r, backup: latest, into: { target: t, database: d }, jobs: 100000 }\nrepositories:\n  r: { url: \"file://./repo\", part_size_mib: 4294967295, create: true }\ntargets:\n  t: { url: \"postgres://localhost/x\" }\n",
    );
    let out = opsrunner().arg("validate").arg(&plan).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    for path in [
        "steps[0].retry.delay",
        "steps[1].timeout",
        "steps[2].jobs",
        "repositories.r.part_size_mib",
    ] {
        assert!(all.contains(path), "{path} not named:\n{all}");
    }

    let ok_plan = ws
        .write_plan("version: 1\nname: h\nsteps:\n  - { id: a, type: shell, command: \"true\" }\n");
    let out = opsrunner()
        .arg("apply")
        .arg(&ok_plan)
        .args(["--kill-grace", "99999999999999999999h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for args in [
        ["prune", "--keep-within", "99999999999999999999h"],
        ["prune", "--orphan-age", "99999999999999999999h"],
    ] {
        let out = backups_cmd(&ws, &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("too long"), "{}", text(&out));
    }
}

#[test]
fn damaged_entries_in_an_s3_repository_are_listed_and_kept() {
    let cluster = source();
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let server = crate::s3::S3Server::start(&ws.path("s3"));
    let plan = format!(
        "version: 1\nname: s3\ntargets:\n  db: {{ url: \"{{{{ env.DATABASE_URL }}}}\" }}\nrepositories:\n  repo: {{ url: \"s3://{}/app\", endpoint: \"{}\", force_path_style: true, create: true }}\nsteps:\n  - {{ id: backup, type: backup, target: db, database: app, repository: repo }}\n",
        crate::s3::BUCKET,
        server.endpoint
    );
    let plan_path = ws.write_plan(&plan);
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", url.clone()));
    let run = |args: &[&str]| {
        opsrunner()
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = run(&[
            "apply",
            plan_path.to_str().unwrap(),
            "--report",
            ws.report_path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ws.report_path()).unwrap()).unwrap();
        ids.push(
            report["steps"][0]["outputs"]["backup_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Objects written behind opsrunner's back: a garbage manifest, and the newest backup's
    // manifest under another id.
    let prefix = ws.path("s3").join(crate::s3::BUCKET).join("app");
    std::fs::create_dir_all(prefix.join("0000-garbage")).unwrap();
    std::fs::write(prefix.join("0000-garbage/manifest.json"), "{ not json").unwrap();
    std::fs::create_dir_all(prefix.join("0001-copy")).unwrap();
    std::fs::copy(
        prefix.join(&ids[1]).join("manifest.json"),
        prefix.join("0001-copy/manifest.json"),
    )
    .unwrap();
    let repo_args = [
        "--repository",
        "repo",
        "--plan",
        plan_path.to_str().unwrap(),
    ];
    let list = run(&[&["backups", "list"][..], &repo_args].concat());
    let listed = text(&list);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("\n2 backups\n"), "{listed}");
    assert!(
        listed.contains("0000-garbage: backup 0000-garbage is damaged"),
        "{listed}"
    );
    assert!(
        listed.contains("0001-copy: backup 0001-copy is damaged: the manifest names backup"),
        "{listed}"
    );

    let pruned = run(&[&["backups", "prune", "--keep-last", "1"][..], &repo_args].concat());
    let out = text(&pruned);
    assert!(pruned.status.success(), "{out}");
    assert!(out.contains(&format!("delete {} (app)", ids[0])), "{out}");
    assert!(out.contains(&format!("keep   {} (app)", ids[1])), "{out}");
    assert!(prefix.join("0001-copy/manifest.json").exists());
    assert!(prefix.join("0000-garbage/manifest.json").exists());
    assert!(prefix.join(&ids[1]).join("manifest.json").exists());
}
