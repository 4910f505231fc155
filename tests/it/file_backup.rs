//! File-level base backups (issue 32): a target with `data_directory` is copied file by
//! file between `pg_backup_start` and `pg_backup_stop` on PostgreSQL 15 — full → change →
//! incremental → change → differential → incremental, a point-in-time restore to a moment
//! after each, content checked; random updates across a large table store only the
//! changed blocks; a damaged parent fails the restore naming the file; a delta restore of
//! a directory one change behind equals a fresh restore.

use crate::common::Workspace;
use crate::common::pg::{
    Cluster, archive_everything, archive_with, in_local, server_now, server_owner,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn base_plan(repo_url: &str, cluster: &Cluster, kind: &str) -> String {
    format!(
        "version: 1\nname: base\ntargets:\n  app: {{ url: \"{}\", data_directory: \"{}\" }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: base, type: base_backup, target: app, repository: local, kind: {kind}, wal_wait: 30s }}\n",
        cluster.url("app"),
        cluster.dir.path().join("data").display()
    )
}

fn restore_plan(repo_url: &str, at: &str) -> String {
    format!(
        "version: 1\nname: drill\ntargets:\n  drill: {{ ephemeral: true }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: restore, type: restore, repository: local, to: {{ time: \"{at}\" }}, into: {{ target: drill }} }}\n  - {{ id: rows, type: sql, needs: [restore], target: drill, database: app, query: \"select string_agg(id::text, ',' order by id) || ' ' || (select sum(v) from big) from t\" }}\n"
    )
}

/// Every file of a data directory with its SHA-256 (the recovery settings with the
/// directory's own name taken out: they name where the archive's settings are).
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                let mut bytes = std::fs::read(&path).unwrap();
                if rel == "postgresql.auto.conf" {
                    bytes = String::from_utf8(bytes)
                        .unwrap()
                        .replace(&dir.display().to_string(), "DIR")
                        .into_bytes();
                }
                out.insert(rel, opsrunner::digest::hex(&sha2::Sha256::digest(&bytes)));
            }
        }
    }
    out
}

#[test]
fn a_file_level_chain_restores_to_a_moment_after_each_and_stores_only_changed_blocks() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); create table big (id int primary key, v int, pad text) with (fillfactor = 100); insert into big select g, 0, repeat('x', 200) from generate_series(1, 120000) g",
    );
    // Hint bits and the visibility map set now, as on a table that has been read: else the
    // first scan after the full backup rewrites every page.
    cluster.psql("app", "vacuum (freeze) big");
    cluster.psql("app", "checkpoint");
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let repo_url = format!("file://{}", repo.display());
    archive_with(&cluster, &format!("--repository {repo_url}"), &[]);

    // full → 1 → incremental → 2 → differential → 3 → incremental → 4
    let mut taken: Vec<(String, String, String, u64)> = Vec::new(); // id, kind, parent, bytes
    let mut moments: Vec<(String, String)> = Vec::new();
    let mut logs = Vec::new();
    let steps = ["full", "incremental", "differential", "incremental"];
    for (i, kind) in steps.iter().enumerate() {
        let run = ws.apply(&base_plan(&repo_url, &cluster, kind), &[]);
        assert_eq!(run.code, 0, "{kind}: {}", run.everything());
        let out = &run.step("base")["outputs"];
        logs.push(run.everything());
        assert_eq!(out["method"], "file-level", "{}", run.everything());
        assert_eq!(out["kind"], *kind, "{}", run.everything());
        taken.push((
            out["backup_id"].as_str().unwrap().into(),
            out["kind"].as_str().unwrap().into(),
            out["parent"].as_str().unwrap().into(),
            out["bytes"].as_str().unwrap().parse().unwrap(),
        ));
        // A change after each: a row, and ~1% of the big table's pages updated at random.
        let row = i + 1;
        cluster.psql(
            "app",
            &format!(
                "insert into t values ({row}); update big set v = v + 1 where id % 3000 = {}; checkpoint",
                row * 7
            ),
        );
        let rows: Vec<String> = (1..=row).map(|r| r.to_string()).collect();
        let sum = cluster.psql("app", "select sum(v) from big");
        moments.push((server_now(&cluster), format!("{} {sum}", rows.join(","))));
        std::thread::sleep(Duration::from_millis(50));
    }
    let kinds: Vec<&str> = taken.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(kinds, steps);
    assert_eq!(taken[1].2, taken[0].0);
    assert_eq!(taken[2].2, taken[0].0);
    assert_eq!(taken[3].2, taken[2].0);
    // Random updates on ~1% of the rows of the big table: an incremental stores the pages
    // they touched, far less than a tenth of a full.
    assert!(
        taken[1].3 * 10 < taken[0].3,
        "incremental {} bytes, full {} bytes:\n{}",
        taken[1].3,
        taken[0].3,
        logs[1]
    );

    cluster.psql("app", "insert into t values (99)");
    archive_everything(&cluster, in_local(&repo));
    for (i, (at, rows)) in moments.iter().enumerate() {
        let run = ws.apply(&restore_plan(&repo_url, at), &[]);
        assert_eq!(run.code, 0, "restore {i}: {}", run.everything());
        assert_eq!(run.step("rows")["outputs"]["value"], *rows, "restore {i}");
        assert!(
            run.everything()
                .contains("every one checked against its SHA-256"),
            "{}",
            run.everything()
        );
    }

    // Delta: a directory restored from the differential, then rewritten to the newest
    // incremental, holds exactly what a fresh restore of the incremental holds.
    let behind = ws.path("behind");
    let fresh = ws.path("fresh");
    let run = ws.apply(&directory_plan(&repo_url, &taken[2].0, &behind, ""), &[]);
    assert_eq!(run.code, 0, "{}", run.everything());
    let run = ws.apply(&directory_plan(&repo_url, &taken[3].0, &fresh, ""), &[]);
    assert_eq!(run.code, 0, "{}", run.everything());
    let delta = ws.apply(
        &directory_plan(&repo_url, &taken[3].0, &behind, "delta: true"),
        &[],
    );
    assert_eq!(delta.code, 0, "{}", delta.everything());
    let want = hashes(&fresh);
    assert_same_files(&behind, &want);
    let said = delta.everything();
    let unchanged: u64 = said
        .split(" already as in the backup")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(unchanged > 1000, "{said}");
    // Trusting timestamps (a restore gives each file its backed-up modification time), the
    // same result without reading the files that did not change.
    let behind = ws.path("behind-timestamps");
    let run = ws.apply(&directory_plan(&repo_url, &taken[2].0, &behind, ""), &[]);
    assert_eq!(run.code, 0, "{}", run.everything());
    let delta = ws.apply(
        &directory_plan(
            &repo_url,
            &taken[3].0,
            &behind,
            "delta: true, delta_compare: timestamp",
        ),
        &[],
    );
    assert_eq!(delta.code, 0, "{}", delta.everything());
    assert_same_files(&behind, &want);

    // Delta is refused on a running server, and on another cluster's directory.
    let live = cluster.dir.path().join("data");
    let refused = ws.apply(
        &directory_plan(&repo_url, &taken[3].0, &live, "delta: true"),
        &[],
    );
    assert_eq!(refused.code, 1, "{}", refused.everything());
    assert!(
        refused.everything().contains("a server is running on"),
        "{}",
        refused.everything()
    );
    let other = ws.path("other");
    std::fs::create_dir_all(other.join("global")).unwrap();
    std::fs::write(other.join("global/pg_control"), 42u64.to_ne_bytes()).unwrap();
    std::fs::write(other.join("keep-me"), b"x").unwrap();
    let refused = ws.apply(
        &directory_plan(&repo_url, &taken[3].0, &other, "delta: true"),
        &[],
    );
    assert_eq!(refused.code, 1, "{}", refused.everything());
    assert!(
        refused
            .everything()
            .contains("holds cluster 42, and the backup is of cluster"),
        "{}",
        refused.everything()
    );
    assert!(other.join("keep-me").exists());

    // A verify of the newest proves the chain by recovering it.
    assert_recovers(
        &ws,
        &repo_url,
        &format!(
            "  - {{ id: files, type: verify, repository: local, backup: \"{}\" }}\n",
            taken[3].0
        ),
    );

    // A flipped byte in the full: the restore of the newest, which reads files from it,
    // fails naming the stored file, and the new directory is left as it was (absent).
    let bundle = repo.join(&taken[0].0).join("files-00-0000.bundle");
    crate::common::damage(&bundle, 100);
    let broken_dir = ws.path("broken");
    let broken = ws.apply(
        &directory_plan(&repo_url, &taken[3].0, &broken_dir, ""),
        &[],
    );
    assert_eq!(broken.code, 1, "{}", broken.everything());
    let reason = broken.step("restore")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains(&format!("files-00-0000.bundle of backup {}", taken[0].0)),
        "{reason}"
    );
    assert!(!broken_dir.exists(), "{reason}");
    // A verify of the full finds it too, and the listing says its children may not restore.
    let verify_full = |expect: i32| {
        let run = ws.apply(
            &format!(
                "version: 1\nname: proof\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: files, type: verify, repository: local, backup: \"{}\" }}\n",
                taken[0].0
            ),
            &[],
        );
        assert_eq!(run.code, expect, "{}", run.everything());
    };
    verify_full(6);
    let listed = ws.backups(&["list"]);
    assert!(
        listed.contains(&format!(
            "(differential of {}, which failed its last verification",
            taken[0].0
        )),
        "{listed}"
    );
    crate::common::damage(&bundle, 100);
    verify_full(0);

    // Keeping only the newest keeps the differential and the full it is built on.
    let prune = ws.apply(
        &format!(
            "version: 1\nname: prune\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: local, keep: {{ last: 1 }} }}\n"
        ),
        &[],
    );
    assert_eq!(prune.code, 0, "{}", prune.everything());
    for (i, (id, kind, _, _)) in taken.iter().enumerate() {
        assert_eq!(repo.join(id).exists(), i != 1, "{kind} {id}");
    }
}

/// A verify of the newest backup, recovered in a drill to the end of the archive, passes;
/// `more` adds steps to the plan.
fn assert_recovers(ws: &Workspace, repo_url: &str, more: &str) {
    let verify = ws.apply(
        &format!(
            "version: 1\nname: proof\ntargets:\n  drill: {{ ephemeral: true }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: recovered, type: verify, repository: local, to: {{ latest: true }}, restore_into: {{ target: drill }} }}\n{more}"
        ),
        &[],
    );
    assert_eq!(verify.code, 0, "{}", verify.everything());
    assert!(
        verify.step("recovered")["outputs"]["checks"]
            .as_str()
            .unwrap()
            .contains("recovery=pass"),
        "{}",
        verify.everything()
    );
}

/// The data directory `dir` holds exactly the files `want` lists, with their contents.
fn assert_same_files(dir: &Path, want: &BTreeMap<String, String>) {
    let got = hashes(dir);
    let differ: Vec<&String> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    assert!(differ.is_empty(), "{} differs in {differ:?}", dir.display());
}

/// A restore of backup `id` to the end of the archive into data directory `dir`
/// (prepared, not recovered: the files as the backup has them, and the recovery settings).
fn directory_plan(repo_url: &str, id: &str, dir: &Path, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "version: 1\nname: dir\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: restore, type: restore, repository: local, backup: \"{id}\", to: {{ latest: true }}, into: {{ data_directory: \"{}\"{extra} }} }}\n",
        dir.display()
    )
}

/// A cluster archiving into a new local repository: (cluster, repository, its URL).
fn archiving(ws: &Workspace, cluster: &Cluster) -> (std::path::PathBuf, String) {
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let repo_url = format!("file://{}", repo.display());
    archive_with(cluster, &format!("--repository {repo_url}"), &[]);
    (repo, repo_url)
}

/// A restore of backup `id` to the end of the archive into a throwaway cluster, and the
/// query's answer there.
fn restored_value(ws: &Workspace, repo_url: &str, id: &str, query: &str) -> String {
    let run = ws.apply(
        &format!(
            "version: 1\nname: drill\ntargets:\n  drill: {{ ephemeral: true }}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: restore, type: restore, repository: local, backup: \"{id}\", to: {{ latest: true }}, into: {{ target: drill }} }}\n  - {{ id: q, type: sql, needs: [restore], target: drill, database: app, query: \"{query}\" }}\n"
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.everything());
    run.step("q")["outputs"]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_standby_is_backed_up_file_by_file_and_by_pg_basebackup_and_both_recover() {
    let ws = Workspace::new();
    let primary = Cluster::start();
    primary.psql("postgres", "create database app");
    primary.psql(
        "app",
        "create table t (id int primary key); create table tick (at timestamptz default now()); insert into t values (1)",
    );
    let (repo, repo_url) = archiving(&ws, &primary);
    let standby = primary.standby();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while standby.psql("app", "select count(*) from t") != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not catch up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A standby cannot switch WAL segments: the primary does, as archive_timeout would.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ids = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                primary.psql(
                    "app",
                    "insert into tick default values; select pg_switch_wal()",
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let mut ids = Vec::new();
        for data_directory in [true, false] {
            let target = if data_directory {
                format!(
                    "{{ url: \"{}\", data_directory: \"{}\" }}",
                    standby.url("app"),
                    standby.dir.path().join("data").display()
                )
            } else {
                format!("{{ url: \"{}\" }}", standby.url("app"))
            };
            let run = ws.apply(
                &format!(
                    "version: 1\nname: base\ntargets:\n  replica: {target}\nrepositories:\n  local: {{ url: \"{repo_url}\", create: true }}\nsteps:\n  - {{ id: base, type: base_backup, target: replica, repository: local, wal_wait: 60s }}\n"
                ),
                &[],
            );
            assert_eq!(run.code, 0, "{}", run.everything());
            assert!(
                run.everything()
                    .contains("is a standby: the copy is taken from it"),
                "{}",
                run.everything()
            );
            let out = &run.step("base")["outputs"];
            assert_eq!(
                out["method"],
                if data_directory {
                    "file-level"
                } else {
                    "pg_basebackup"
                }
            );
            ids.push(out["backup_id"].as_str().unwrap().to_string());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ids
    });
    primary.psql("app", "insert into t values (2)");
    archive_everything(&primary, in_local(&repo));
    for id in &ids {
        assert_eq!(
            restored_value(
                &ws,
                &repo_url,
                id,
                "select string_agg(id::text, ',' order by id) from t"
            ),
            "1,2",
            "{id}"
        );
    }
}

#[test]
fn a_tablespace_is_backed_up_and_restored_inside_a_drill_or_where_it_is_told() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let (uid, gid) = server_owner(&cluster);
    let space = ws.path("space");
    std::fs::create_dir(&space).unwrap();
    std::os::unix::fs::chown(&space, Some(uid), Some(gid)).unwrap();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        &format!("create tablespace extra location '{}'", space.display()),
    );
    cluster.psql(
        "app",
        "create table t (id int primary key) tablespace extra; insert into t select generate_series(1, 5000)",
    );
    let (repo, repo_url) = archiving(&ws, &cluster);
    let mut ids = Vec::new();
    for (kind, rows) in [("full", "5001, 5100"), ("incremental", "5101, 5200")] {
        let run = ws.apply(&base_plan(&repo_url, &cluster, kind), &[]);
        assert_eq!(run.code, 0, "{}", run.everything());
        ids.push(
            run.step("base")["outputs"]["backup_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        cluster.psql(
            "app",
            &format!("insert into t select generate_series({rows})"),
        );
    }
    archive_everything(&cluster, in_local(&repo));
    // A drill: the tablespace goes inside the throwaway cluster, not over the live one.
    let live_before = crate::common::files_under(&space).len();
    assert_eq!(
        restored_value(&ws, &repo_url, &ids[1], "select count(*) from t"),
        "5200"
    );
    assert_eq!(crate::common::files_under(&space).len(), live_before);
    // And verified: recovered in a drill, every table and index checked.
    assert_recovers(&ws, &repo_url, "");
    assert_eq!(crate::common::files_under(&space).len(), live_before);

    // Into a data directory: where it was is in use, so the restore says so and stops …
    let dir = ws.path("restored");
    let refused = ws.apply(&directory_plan(&repo_url, &ids[1], &dir, ""), &[]);
    assert_eq!(refused.code, 1, "{}", refused.everything());
    assert!(
        refused.everything().contains(&format!(
            "the tablespace directory {} is not empty",
            space.display()
        )),
        "{}",
        refused.everything()
    );
    assert!(!dir.exists());
    // … and with `tablespaces: {OLD: NEW}` it goes where it is told.
    let moved = ws.path("moved");
    let run = ws.apply(
        &directory_plan(
            &repo_url,
            &ids[1],
            &dir,
            &format!(
                "tablespaces: {{ \"{}\": \"{}\" }}",
                space.display(),
                moved.display()
            ),
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.everything());
    let links: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(links, std::slice::from_ref(&moved));
    // The table's file, under the server's version directory.
    let files = crate::common::files_under(&moved);
    assert!(
        !files.is_empty()
            && files.iter().all(|f| f
                .strip_prefix(&moved)
                .unwrap()
                .to_string_lossy()
                .starts_with("PG_15_")),
        "{files:?}"
    );
}

#[test]
fn a_killed_incremental_publishes_nothing_and_the_next_one_is_right() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); insert into t values (1); create table big (v text); insert into big select repeat(md5(g::text), 30) from generate_series(1, 150000) g",
    );
    let (repo, repo_url) = archiving(&ws, &cluster);
    let full = ws.apply(&base_plan(&repo_url, &cluster, "full"), &[]);
    assert_eq!(full.code, 0, "{}", full.everything());
    let full_id = full.step("base")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Much changes: the incremental has much to store, and is killed while it does.
    cluster.psql(
        "app",
        "insert into t values (2); update big set v = v || 'x'",
    );
    let plan = ws.write_plan(&base_plan(&repo_url, &cluster, "incremental"));
    let child = ws.spawn_apply(&plan, &[], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(&repo)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && name != full_id
            });
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the incremental never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let killed = ws.interrupt(child, libc::SIGKILL);
    assert_ne!(killed.code, 0);
    let listed = ws.backups(&["list"]);
    assert_eq!(listed.matches("-cluster-").count(), 1, "{listed}");
    // The server forgot the backup with the session: the next one starts at once.
    let next = ws.apply(&base_plan(&repo_url, &cluster, "incremental"), &[]);
    assert_eq!(next.code, 0, "{}", next.everything());
    let next_id = next.step("base")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(next.step("base")["outputs"]["parent"], full_id.as_str());
    cluster.psql("app", "insert into t values (3)");
    archive_everything(&cluster, in_local(&repo));
    assert_eq!(
        restored_value(
            &ws,
            &repo_url,
            &next_id,
            "select string_agg(id::text, ',' order by id) || ' ' || (select count(*) from big where v like '%x') from t"
        ),
        "1,2,3 150000"
    );
}

#[test]
fn a_damaged_page_on_the_server_is_found_by_its_checksum_and_named() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.enable_checksums();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key, pad text); insert into t select g, repeat('y', 100) from generate_series(1, 20000) g; checkpoint",
    );
    let (_repo, repo_url) = archiving(&ws, &cluster);
    // Whole and checked: every page of every relation is read and matches.
    let clean = ws.apply(&base_plan(&repo_url, &cluster, "full"), &[]);
    assert_eq!(clean.code, 0, "{}", clean.everything());
    // A byte changed on disk behind the server's back, in block 5 of the table.
    let file = cluster.psql("app", "select pg_relation_filepath('t')");
    cluster.stop_clean();
    let path = cluster.dir.path().join("data").join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5 * 8192 + 4000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    cluster.restart();
    let damaged = ws.apply(&base_plan(&repo_url, &cluster, "full"), &[]);
    assert_eq!(damaged.code, 1, "{}", damaged.everything());
    let reason = damaged.step("base")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("was published, but 1 page(s) of the cluster failed their checksum")
            && reason.contains(&format!("{file} block 5")),
        "{reason}"
    );
}

#[test]
fn an_encrypted_file_level_chain_on_s3_restores_with_the_key() {
    use crate::s3::{BUCKET, S3Server, aws_env};
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    let (identity, recipient) = crate::common::identity_file(ws.dir.path());
    let repositories = format!(
        "repositories:\n  offsite:\n    url: s3://{BUCKET}/files\n    endpoint: \"{}\"\n    force_path_style: true\n    encryption: {{ recipients: [\"{recipient}\"] }}\n",
        server.endpoint
    );
    let plan = ws.path("archive.yaml");
    std::fs::write(
        &plan,
        format!("version: 1\nname: archive\n{repositories}steps:\n  - {{ id: noop, type: shell, command: \"true\" }}\n"),
    )
    .unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&plan, Some(uid), Some(gid)).unwrap();
    let env = aws_env();
    archive_with(
        &cluster,
        &format!("--repository offsite --plan {}", plan.display()),
        &env,
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key); insert into t values (1); create table big (id int, pad text); insert into big select g, repeat('z', 300) from generate_series(1, 30000) g",
    );
    cluster.psql("app", "vacuum (freeze) big");
    cluster.psql("app", "checkpoint");
    let base = |kind: &str| {
        format!(
            "version: 1\nname: base\ntargets:\n  app: {{ url: \"{}\", data_directory: \"{}\" }}\n{repositories}steps:\n  - {{ id: base, type: base_backup, target: app, repository: offsite, kind: {kind} }}\n",
            cluster.url("app"),
            cluster.dir.path().join("data").display()
        )
    };
    let identity_args = ["--identity", identity.to_str().unwrap()];
    let full = ws.apply_env(&base("full"), &[], &env);
    assert_eq!(full.code, 0, "{}", full.everything());
    let full_id = full.step("base")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Every stored byte is ciphertext: the bundles and the list of files.
    let stored: Vec<std::path::PathBuf> = crate::common::files_under(&ws.path("s3"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&full_id))
        .collect();
    assert!(
        stored
            .iter()
            .any(|p| p.to_string_lossy().ends_with("contents.json.zst.age")),
        "{stored:?}"
    );
    let cleartext = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
    for p in &stored {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            !bytes
                .windows(cleartext.len())
                .any(|w| w == cleartext.as_bytes()),
            "{p:?} holds the table's text in the clear"
        );
    }
    cluster.psql(
        "app",
        "insert into t values (2); update big set id = -id where id % 1000 = 0; checkpoint",
    );
    // The list of the parent's files is encrypted: without the key, a full, said so.
    let keyless = ws.apply_env(&base("incremental"), &[], &env);
    assert_eq!(keyless.code, 0, "{}", keyless.everything());
    assert_eq!(keyless.step("base")["outputs"]["kind"], "full");
    assert!(
        keyless
            .everything()
            .contains("is encrypted, and reading its list of files needs the identity"),
        "{}",
        keyless.everything()
    );
    cluster.psql(
        "app",
        "insert into t values (3); update big set id = -id where id % 1000 = 1; checkpoint",
    );
    let incremental = ws.apply_env(&base("incremental"), &identity_args, &env);
    assert_eq!(incremental.code, 0, "{}", incremental.everything());
    let out = &incremental.step("base")["outputs"];
    assert_eq!(out["kind"], "incremental");
    let id = out["backup_id"].as_str().unwrap().to_string();
    cluster.psql("app", "insert into t values (4)");
    let s3_root = ws.path("s3");
    archive_everything(&cluster, |segment| {
        crate::common::files_under(&s3_root)
            .iter()
            .any(|p| p.file_name().and_then(|n| n.to_str()) == Some(segment))
    });
    let drill = ws.apply_env(
        &format!(
            "version: 1\nname: drill\ntargets:\n  drill: {{ ephemeral: true }}\n{repositories}steps:\n  - {{ id: restore, type: restore, repository: offsite, backup: \"{id}\", to: {{ latest: true }}, into: {{ target: drill }} }}\n  - {{ id: q, type: sql, needs: [restore], target: drill, database: app, query: \"select string_agg(id::text, ',' order by id) || ' ' || (select count(*) from big where id < 0) from t\" }}\n"
        ),
        &identity_args,
        &env,
    );
    assert_eq!(drill.code, 0, "{}", drill.everything());
    assert_eq!(drill.step("q")["outputs"]["value"], "1,2,3,4 60");
}
