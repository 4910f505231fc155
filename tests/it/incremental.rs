//! Incremental and differential base backups (issue 32), the server's own way: PostgreSQL
//! 18 with `summarize_wal = on`, `pg_basebackup --incremental` against the parent's stored
//! `backup_manifest`, and a restore of a chain by `pg_combinebackup` — full → change →
//! incremental → change → differential → change → incremental, a point-in-time restore to
//! a moment after each, content checked; retention that never deletes a parent of a kept
//! backup; a full taken (and said) where no incremental can be.

use crate::common::Workspace;
use crate::common::pg::{
    Cluster, archive_everything, archive_with, client_bin_of, in_local, server_bin_of, server_now,
    server_owner,
};
use std::time::Duration;

/// PostgreSQL 18's tools first in `PATH`: the client tools and the server programs the
/// throwaway clusters and `pg_combinebackup` come from.
fn path_18() -> String {
    let mut dirs = vec![client_bin_of(18).expect("PostgreSQL 18's tools (.ci/install-postgres)")];
    dirs.push(server_bin_of(18));
    let mut path = std::env::join_paths(dirs).unwrap().into_string().unwrap();
    path.push(':');
    path.push_str(&std::env::var("PATH").unwrap_or_default());
    path
}

fn base_plan(repo_url: &str, app_url: &str, kind: &str) -> String {
    format!(
        "version: 1\nname: base\ntargets:\n  app: {{ url: \"{app_url}\" }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: base, type: base_backup, target: app, repository: local, kind: {kind}, wal_wait: 30s }}\n"
    )
}

fn restore_plan(repo_url: &str, at: &str) -> String {
    format!(
        "version: 1\nname: drill\ntargets:\n  drill: {{ ephemeral: true }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: restore, type: restore, repository: local, to: {{ time: \"{at}\" }}, into: {{ target: drill }} }}\n  - {{ id: rows, type: sql, needs: [restore], target: drill, database: app, query: \"select string_agg(id::text, ',' order by id) from t\" }}\n"
    )
}

#[test]
fn a_chain_of_incremental_and_differential_backups_restores_to_a_moment_after_each() {
    let ws = Workspace::new();
    let cluster = Cluster::start_major(18);
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); create table filler (v text); insert into filler select repeat(md5(g::text), 20) from generate_series(1, 20000) g",
    );
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let repo_url = format!("file://{}", repo.display());
    archive_with(&cluster, &format!("--repository {repo_url}"), &[]);
    let path = path_18();
    let env = [("PATH", path.as_str())];
    let app_url = cluster.url("app");

    // Without WAL summaries there is nothing to be incremental against: a full, said so.
    let first = ws.apply_env(&base_plan(&repo_url, &app_url, "incremental"), &[], &env);
    assert_eq!(first.code, 0, "{}", first.everything());
    assert_eq!(first.step("base")["outputs"]["kind"], "full");
    assert!(
        first
            .everything()
            .contains("taking a full base backup instead of incremental: the server does not summarize its WAL"),
        "{}",
        first.everything()
    );
    cluster.psql("postgres", "alter system set summarize_wal = on");
    cluster.psql("postgres", "select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));

    // full → 1 → incremental → 2 → differential → 3 → incremental → 4
    let mut taken: Vec<(String, String, String, u64)> = Vec::new(); // id, kind, parent, bytes
    let mut moments: Vec<(String, &str)> = Vec::new();
    let steps = [
        ("full", "1", "1"),
        ("incremental", "2", "1,2"),
        ("differential", "3", "1,2,3"),
        ("incremental", "4", "1,2,3,4"),
    ];
    for (kind, row, rows) in steps {
        let run = ws.apply_env(&base_plan(&repo_url, &app_url, kind), &[], &env);
        assert_eq!(run.code, 0, "{kind}: {}", run.everything());
        let out = &run.step("base")["outputs"];
        taken.push((
            out["backup_id"].as_str().unwrap().into(),
            out["kind"].as_str().unwrap().into(),
            out["parent"].as_str().unwrap().into(),
            out["bytes"].as_str().unwrap().parse().unwrap(),
        ));
        cluster.psql("app", &format!("insert into t values ({row})"));
        moments.push((server_now(&cluster), rows));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The preview says what the next one would be taken against.
    let (code, out, err) = crate::common::run(
        crate::common::opsrunner()
            .arg("plan")
            .arg(ws.write_plan(&base_plan(&repo_url, &app_url, "differential")))
            .env("PATH", &path),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("differential against {} (taken ", taken[0].0)),
        "{out}"
    );
    let kinds: Vec<&str> = taken.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(
        kinds,
        ["full", "incremental", "differential", "incremental"]
    );
    // An incremental is relative to the newest backup, a differential to the newest full.
    assert_eq!(taken[1].2, taken[0].0);
    assert_eq!(taken[2].2, taken[0].0);
    assert_eq!(taken[3].2, taken[2].0);
    // After a small change an incremental stores a small part of a full.
    assert!(
        taken[1].3 * 3 < taken[0].3,
        "incremental {} bytes, full {} bytes",
        taken[1].3,
        taken[0].3
    );

    // A commit after the last moment (recovery to a time stops at the first commit past
    // it), and everything written so far archived.
    cluster.psql("app", "insert into t values (99)");
    archive_everything(&cluster, in_local(&repo));

    // A restore to a moment after each: the chain is combined, the WAL replayed on top.
    let mut last_log = String::new();
    for (i, (at, rows)) in moments.iter().enumerate() {
        let run = ws.apply_env(&restore_plan(&repo_url, at), &[], &env);
        assert_eq!(run.code, 0, "restore {i}: {}", run.everything());
        assert_eq!(run.step("rows")["outputs"]["value"], *rows, "restore {i}");
        let combined = run.everything().contains("combining ");
        assert_eq!(combined, i > 0, "restore {i}: {}", run.everything());
        last_log = run.everything();
    }
    // The last: the full, the differential and the incremental on top of it.
    assert!(
        last_log.contains("combining 3 backups with ")
            && last_log.contains("pg_combinebackup (PostgreSQL 18")
            && last_log.contains(&format!("{} + {} + {}", taken[0].0, taken[2].0, taken[3].0)),
        "{last_log}"
    );

    // A verify of the newest proves the whole chain by using it: combined, recovered to the
    // end of the archive, every table and index checked; and its files by extraction.
    let verify = ws.apply_env(
        &format!(
            "version: 1\nname: proof\ntargets:\n  drill: {{ ephemeral: true }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: recovered, type: verify, repository: local, to: {{ latest: true }}, restore_into: {{ target: drill }} }}\n  - {{ id: files, type: verify, repository: local, backup: \"{}\" }}\n",
            taken[3].0
        ),
        &[],
        &env,
    );
    assert_eq!(verify.code, 0, "{}", verify.everything());
    let checks = verify.step("recovered")["outputs"]["checks"]
        .as_str()
        .unwrap();
    assert!(checks.contains("recovery=pass"), "{checks}");
    assert!(
        verify.step("files")["outputs"]["checks"]
            .as_str()
            .unwrap()
            .contains("archive=pass"),
        "{}",
        verify.everything()
    );

    // A flipped byte in the differential: the restore that needs it fails naming it, before
    // anything is combined; undone, it restores again.
    let stored = std::fs::read_dir(repo.join(&taken[2].0))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("base.tar")
        })
        .unwrap();
    crate::common::damage(&stored, 100);
    let broken = ws.apply_env(&restore_plan(&repo_url, &moments[3].0), &[], &env);
    assert_eq!(broken.code, 1, "{}", broken.everything());
    let reason = broken.step("restore")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("does not match its manifest") && reason.contains("base.tar"),
        "{reason}"
    );
    assert!(
        !broken.everything().contains("combining "),
        "{}",
        broken.everything()
    );
    crate::common::damage(&stored, 100);

    // The listing says what each is built on.
    let (code, out, err) = crate::common::run(
        crate::common::opsrunner()
            .args(["backups", "list", "--repository", &repo_url])
            .env("PATH", &path),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("(incremental of {})", taken[2].0))
            && out.contains(&format!("(differential of {})", taken[0].0)),
        "{out}"
    );

    // A parent gone: its children are listed as damaged, naming it.
    let manifest = repo.join(&taken[2].0).join("manifest.json");
    let kept_aside = ws.path("manifest.json");
    std::fs::rename(&manifest, &kept_aside).unwrap();
    let (code, out, err) = crate::common::run(
        crate::common::opsrunner()
            .args(["backups", "list", "--repository", &repo_url])
            .env("PATH", &path),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&taken[3].0)
            && out.contains(&format!("its parent {} is missing or damaged", taken[2].0)),
        "{out}"
    );
    std::fs::rename(&kept_aside, &manifest).unwrap();

    // Keeping only the newest keeps the differential and the full it is built on.
    let prune = ws.apply_env(
        &format!(
            "version: 1\nname: prune\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: local, keep: {{ last: 1 }} }}\n"
        ),
        &[],
        &env,
    );
    assert_eq!(prune.code, 0, "{}", prune.everything());
    let left: Vec<String> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    for (id, kind, _, _) in &taken {
        let kept = [&taken[0].0, &taken[2].0, &taken[3].0].contains(&id);
        assert_eq!(left.contains(id), kept, "{kind} {id}: {left:?}");
    }
    assert!(
        prune
            .everything()
            .contains(&format!("parent of {}, which is kept", taken[2].0)),
        "{}",
        prune.everything()
    );
}
