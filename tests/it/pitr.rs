//! Point-in-time recovery (issue 13): base backups published only with their WAL, checked
//! by pg_verifybackup; a restore to the moment before a table was dropped shows exactly the
//! rows committed by then, in a throwaway cluster; a missing segment or a target before the
//! backup makes the restore refuse before anything is touched; a damaged segment stops
//! recovery instead of ending it early; an encrypted S3 archive works the same way.

use crate::common::pg::{
    Cluster, archive_everything, archive_with, archived_at_least, in_local, server_owner,
};
use crate::common::{Workspace, files_under, identity_file, opsrunner, run};
use crate::s3::{BUCKET, S3Server, aws_env};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A local repository the server (running as `postgres`) can write its WAL into.
fn repository(ws: &Workspace, cluster: &Cluster) -> PathBuf {
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    repo
}

/// A cluster with database `app` and its table `t`, archiving into a local repository:
/// the cluster, the repository and its URL.
fn archiving(ws: &Workspace) -> (Cluster, PathBuf, String) {
    let cluster = Cluster::start();
    let repo = repository(ws, &cluster);
    let url = format!("file://{}", repo.display());
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    archive_with(&cluster, &format!("--repository {url}"), &[]);
    (cluster, repo, url)
}

/// Rows committed one transaction each; returns the server's clock after the last.
fn insert(cluster: &Cluster, ids: &[i32]) -> String {
    for id in ids {
        cluster.psql("app", &format!("insert into t (id) values ({id})"));
    }
    let at = cluster
        .psql("postgres", "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .trim()
        .to_string();
    // Commits after `at` get later timestamps for sure.
    std::thread::sleep(Duration::from_millis(50));
    at
}

fn base_backup_plan(cluster: &Cluster, repo_url: &str) -> String {
    format!(
        r#"
version: 1
name: base
targets:
  app: {{ url: "{}" }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - {{ id: base, type: base_backup, target: app, repository: local, wal_wait: 20s }}
  - id: verify
    type: verify
    needs: [base]
    repository: local
    backup: "{{{{ steps.base.outputs.backup_id }}}}"
"#,
        cluster.url("postgres")
    )
}

fn restore_plan(repo_url: &str, to: &str, query: &str) -> String {
    format!(
        r#"
version: 1
name: pitr
targets:
  drill: {{ ephemeral: true }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - id: restore
    type: restore
    repository: local
    to: {to}
    into: {{ target: drill }}
  - id: check
    type: sql
    needs: [restore]
    target: drill
    database: app
    query: "{query}"
"#
    )
}

fn directory_plan(repo_url: &str, to: &str, data: &Path) -> String {
    format!(
        r#"
version: 1
name: pitr-directory
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - id: restore
    type: restore
    repository: local
    to: {to}
    into: {{ data_directory: "{}" }}
"#,
        data.display()
    )
}

/// A private directory the server's user owns, for a restored data directory at `data` in it.
fn parent_for_data(cluster: &Cluster) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = server_owner(cluster);
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    dir
}

/// A point-in-time verify to `to` in a throwaway cluster, with `extra` keys.
fn pitr_verify_plan(repo_url: &str, to: &str, extra: &str) -> String {
    format!(
        r#"
version: 1
name: pitr-verify
targets:
  drill: {{ ephemeral: true }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - id: verify
    type: verify
    repository: local
    to: {to}
    restore_into: {{ target: drill }}
{extra}"#
    )
}

fn verify_plan(repo_url: &str) -> String {
    pitr_verify_plan(repo_url, "{ latest: true }", "    max_age: 1d\n")
}

fn recorded(repo: &Path, backup_id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo.join(backup_id).join("verification.json")).unwrap())
        .unwrap()
}

const ROWS: &str = "select coalesce(string_agg(id::text, ',' order by id), '') from t";

#[test]
fn a_restore_to_the_moment_before_a_drop_shows_exactly_the_rows_committed_by_then() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let repo = repository(&ws, &cluster);
    let url = format!("file://{}", repo.display());
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");

    // Not archiving yet: a base backup is refused, and nothing is published.
    let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
    assert_eq!(applied.status("base"), "failed", "{}", applied.everything());
    assert!(
        applied.everything().contains("does not archive its WAL"),
        "{}",
        applied.everything()
    );
    assert!(
        std::fs::read_dir(&repo)
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == "opsrunner-repository.json"),
        "something was published"
    );

    // Archiving that fails: refused at once, instead of pg_basebackup waiting forever for
    // the WAL to be archived.
    cluster.psql("postgres", "alter system set archive_mode = on");
    cluster.psql("postgres", "alter system set archive_command = 'false'");
    cluster.stop();
    cluster.restart();
    cluster.psql("postgres", "select pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.psql("postgres", "select failed_count from pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archiving did not fail");
        std::thread::sleep(Duration::from_millis(100));
    }
    let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
    assert_eq!(applied.status("base"), "failed", "{}", applied.everything());
    assert!(
        applied
            .everything()
            .contains("is failing to archive its WAL"),
        "{}",
        applied.everything()
    );

    archive_with(&cluster, &format!("--repository {url}"), &[]);
    // Until the segment that failed is archived, archiving still counts as failing.
    archived_at_least(&cluster, 1);
    insert(&cluster, &[1]);
    let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let base = applied.step("base")["outputs"].clone();
    let backup_id = base["backup_id"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join(&backup_id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["format"], "base");
    assert_eq!(manifest["base"]["start_lsn"], base["start_lsn"]);
    assert_eq!(manifest["base"]["timeline"], 1);
    assert_eq!(
        manifest["base"]["system_identifier"].as_str().unwrap(),
        cluster
            .psql(
                "postgres",
                "select system_identifier from pg_control_system()"
            )
            .trim()
    );
    // The verify extracted it and pg_verifybackup checked every file.
    assert!(
        applied
            .everything()
            .contains("each as the server's backup_manifest records it"),
        "{}",
        applied.everything()
    );

    let before_backup_end = "2000-01-01T00:00:00Z";
    let two = insert(&cluster, &[2, 3]);
    let before_drop = insert(&cluster, &[4]);
    insert(&cluster, &[5]);
    cluster.psql("app", "drop table t");
    archive_everything(&cluster, in_local(&repo));

    // The preview names the backup and the WAL, all of it archived.
    let plan = ws.write_plan(&restore_plan(
        &url,
        &format!("{{ time: \"{before_drop}\" }}"),
        ROWS,
    ));
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("base backup {backup_id}")), "{out}");
    assert!(out.contains("all archived"), "{out}");

    // To the moment before the drop (after row 4): rows 1 to 4, nothing after.
    let applied = ws.apply(
        &restore_plan(&url, &format!("{{ time: \"{before_drop}\" }}"), ROWS),
        &[],
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("check")["outputs"]["value"], "1,2,3,4");
    let restored = &applied.step("restore")["outputs"];
    assert_eq!(restored["backup_id"], backup_id.as_str());
    assert_eq!(restored["timeline"], "1");
    assert_eq!(restored["new_timeline"], "2");
    let reached = restored["reached_time"].as_str().unwrap();
    assert!(reached <= before_drop.as_str(), "{reached} > {before_drop}");
    // An earlier moment: fewer rows.
    let applied = ws.apply(
        &restore_plan(&url, &format!("{{ time: \"{two}\" }}"), ROWS),
        &[],
    );
    assert_eq!(applied.step("check")["outputs"]["value"], "1,2,3");
    // To the end of the archive: the table is gone.
    let applied = ws.apply(
        &restore_plan(
            &url,
            "{ latest: true }",
            "select (to_regclass('t') is null)::text",
        ),
        &[],
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("check")["outputs"]["value"], "true");

    // A point-in-time verify: recovered to the end of the archive, checked by pg_amcheck,
    // with the RTO and the achieved RPO, recorded beside the base backup.
    let applied = ws.apply(&verify_plan(&url), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let verified = &applied.step("verify")["outputs"];
    assert_eq!(verified["backup_id"], backup_id.as_str());
    assert_eq!(
        verified["checks"],
        "age=pass wal=pass recovery=pass amcheck=pass",
        "{}",
        applied.everything()
    );
    assert!(
        applied
            .everything()
            .contains("every table and B-tree index"),
        "{}",
        applied.everything()
    );
    assert!(!verified["restore_duration_ms"].as_str().unwrap().is_empty());
    assert!(!verified["rpo_s"].as_str().unwrap().is_empty());
    assert_eq!(recorded(&repo, &backup_id)["passed"], true);
    assert_eq!(recorded(&repo, &backup_id)["restored"], true);

    // The archive's check: recent, no gap.
    let status = format!(
        "version: 1\nname: status\nrepositories:\n  local: {{ url: \"{url}\", create: true }}\nsteps:\n  - {{ id: archive, type: wal_status, repository: local, max_age: 1h }}\n"
    );
    let applied = ws.apply(&status, &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("archive")["outputs"]["gaps"], "0");

    // Before the backup ends: refused up front.
    let applied = ws.apply(
        &restore_plan(&url, &format!("{{ time: \"{before_backup_end}\" }}"), ROWS),
        &[],
    );
    assert_eq!(applied.status("restore"), "failed");
    assert!(
        applied
            .everything()
            .contains("lies before the end of every base backup"),
        "{}",
        applied.everything()
    );

    // A segment the restore needs is gone from between others: refused up front, naming it.
    cluster.psql(
        "postgres",
        "create table later (v int); insert into later values (1)",
    );
    archive_everything(&cluster, in_local(&repo));
    let needed = manifest["base"]["start_lsn"].as_str().unwrap().to_string();
    let segments: Vec<String> = std::fs::read_dir(repo.join(".wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    let mut segments = segments;
    segments.sort();
    let start_segment = cluster
        .psql("postgres", &format!("select pg_walfile_name('{needed}')"))
        .trim()
        .to_string();
    let next = segments
        .iter()
        .find(|s| **s > start_segment)
        .unwrap()
        .clone();
    std::fs::rename(repo.join(".wal").join(&next), ws.path("moved")).unwrap();
    let applied = ws.apply(&status, &[]);
    assert_eq!(
        applied.code,
        opsrunner::exit::BACKUP_CORRUPT,
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains(&format!("the first {next}")),
        "{}",
        applied.everything()
    );
    let plan = ws.write_plan(&restore_plan(&url, "{ latest: true }", ROWS));
    let (_, out, _) = run(opsrunner().arg("plan").arg(&plan));
    assert!(out.contains(&format!("MISSING, the first {next}")), "{out}");
    let applied = ws.apply(&restore_plan(&url, "{ latest: true }", ROWS), &[]);
    assert_eq!(applied.status("restore"), "failed");
    let text = applied.everything();
    assert!(text.contains(&format!("the first {next}")), "{text}");
    assert!(text.contains("Nothing was touched"), "{text}");
    std::fs::rename(ws.path("moved"), repo.join(".wal").join(&next)).unwrap();

    // A damaged segment: recovery stops (wal fetch exits 255) instead of ending early and
    // promoting a cluster that silently lacks the rest.
    crate::common::damage(&repo.join(".wal").join(&next), 10);
    let applied = ws.apply(&restore_plan(&url, "{ latest: true }", ROWS), &[]);
    assert_eq!(
        applied.status("restore"),
        "failed",
        "{}",
        applied.everything()
    );
    assert_eq!(applied.status("check"), "skipped");
    assert!(
        applied.everything().contains("recovery stopped"),
        "{}",
        applied.everything()
    );
    // The step names the segment and says it is damaged, not only "exit code 255".
    let reason = applied.step("restore")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains(&format!("WAL segment {next} is damaged in the archive")),
        "{reason}"
    );
    // And a point-in-time verify says the backup cannot be recovered: exit 6, recorded.
    let applied = ws.apply(&verify_plan(&url), &[]);
    assert_eq!(
        applied.code,
        opsrunner::exit::BACKUP_CORRUPT,
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains("check recovery: FAIL"),
        "{}",
        applied.everything()
    );
    assert_eq!(recorded(&repo, &backup_id)["passed"], false);
}

#[test]
fn an_encrypted_s3_archive_restores_to_a_point_with_the_key() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    let (identity, recipient) = identity_file(ws.dir.path());
    let repositories = format!(
        r#"
repositories:
  offsite:
    url: s3://{BUCKET}/pitr
    create: true
    endpoint: "{}"
    force_path_style: true
    encryption: {{ recipients: ["{recipient}"] }}
"#,
        server.endpoint
    );
    let plan = ws.path("archive.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: archive\n{repositories}steps:\n  - {{ id: noop, type: shell, command: \"true\" }}\n"
        ),
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
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    insert(&cluster, &[1]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let applied = ws.apply_env(
        &format!(
            "version: 1\nname: base\ntargets:\n  app: {{ url: \"{}\" }}\n{repositories}steps:\n  - {{ id: base, type: base_backup, target: app, repository: offsite, compression: zstd }}\n",
            cluster.url("postgres")
        ),
        &[],
        &env,
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let lsn_before = {
        insert(&cluster, &[2]);
        cluster
            .psql("postgres", "select pg_current_wal_lsn()")
            .trim()
            .to_string()
    };
    insert(&cluster, &[3]);
    let marked = ws.apply_env(
        &format!(
            "version: 1\nname: mark\ntargets:\n  app: {{ url: \"{}\" }}\n{repositories}steps:\n  - {{ id: mark, type: pitr_mark, target: app, repository: offsite }}\n",
            cluster.url("app")
        ),
        &[],
        &env,
    );
    assert_eq!(marked.code, 0, "{}", marked.everything());
    let s3_root = ws.path("s3");
    archive_everything(&cluster, |segment| {
        files_under(&s3_root)
            .iter()
            .any(|p| p.file_name().and_then(|n| n.to_str()) == Some(segment))
    });
    // The base backup is ciphertext in the bucket.
    let stored = files_under(&s3_root)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("base.tar"))
        .unwrap();
    assert!(stored.to_string_lossy().ends_with(".age"), "{stored:?}");

    let restore = format!(
        "version: 1\nname: pitr\ntargets:\n  drill: {{ ephemeral: true }}\n{repositories}steps:\n  - {{ id: restore, type: restore, repository: offsite, to: {{ lsn: \"{lsn_before}\" }}, into: {{ target: drill }} }}\n  - {{ id: check, type: sql, needs: [restore], target: drill, database: app, query: \"{ROWS}\" }}\n"
    );
    // Without the key: refused before the cluster is touched.
    let applied = ws.apply_env(&restore, &[], &env);
    assert_eq!(applied.status("restore"), "failed");
    assert!(
        applied.everything().contains("--identity"),
        "{}",
        applied.everything()
    );
    let applied = ws.apply_env(&restore, &["--identity", identity.to_str().unwrap()], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("check")["outputs"]["value"], "1,2");
    // The key copy the server used is gone with the run; it was never in the plan's
    // directory.
    assert!(
        !files_under(ws.dir.path())
            .iter()
            .any(|p| p.ends_with("wal-identity.txt"))
    );

    // The mark is ciphertext in the bucket too; the preview, which holds no key, shows
    // where it is; the verify with the key recovers to it and compares.
    let stored_mark = files_under(&s3_root)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".mark"))
        .unwrap();
    assert!(!String::from_utf8_lossy(&std::fs::read(&stored_mark).unwrap()).contains("public.t"));
    let verify = format!(
        "version: 1\nname: verify\ntargets:\n  drill: {{ ephemeral: true }}\n{repositories}steps:\n  - {{ id: verify, type: verify, repository: offsite, to: {{ mark: latest }}, restore_into: {{ target: drill }} }}\n"
    );
    let plan = ws.write_plan(&verify);
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan).envs(env.iter().copied()));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("encrypted: its name and fingerprints are read when the step runs"),
        "{out}"
    );
    let applied = ws.apply_env(&verify, &["--identity", identity.to_str().unwrap()], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(
        applied.step("verify")["outputs"]["checks"],
        "wal=pass recovery=pass amcheck=pass fingerprints=pass"
    );

    // Into a data directory: recovered to the point with a private key copy (gone after),
    // and the first start reads the operator's key file named in restore_command.
    let parent = parent_for_data(&cluster);
    let data = parent.path().join("data");
    let into_directory = format!(
        "version: 1\nname: pitr\n{repositories}steps:\n  - {{ id: restore, type: restore, repository: offsite, to: {{ lsn: \"{lsn_before}\" }}, into: {{ data_directory: \"{}\" }} }}\n",
        data.display()
    );
    let applied = ws.apply_env(
        &into_directory,
        &["--identity", identity.to_str().unwrap()],
        &env,
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert!(
        applied.everything().contains("the archive is encrypted"),
        "{}",
        applied.everything()
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("--identity ''{}''", identity.display())),
        "{auto}"
    );
    assert!(!auto.contains("AGE-SECRET-KEY"), "{auto}");
    // The server's user reads the key at the first start (the test's key file is the
    // operator's, readable by root only): hand it a copy, as an operator would.
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&identity, Some(uid), Some(gid)).unwrap();
    // The first start needs the S3 credentials in the server's environment, as
    // archive_command did.
    let restored = Cluster::adopt_env(parent, &env);
    restored.wait_promoted();
    assert_eq!(restored.psql("app", ROWS), "1,2");
}

/// The same from Azure Blob Storage (Azurite): the archive written by `wal push` with the
/// account in the server's environment, a base backup, a restore to a point whose
/// `restore_command` fetches from Azure.
#[test]
fn an_azure_archive_restores_to_a_point() {
    let ws = Workspace::new();
    let azurite = crate::azure::Azurite::start();
    let cluster = Cluster::start();
    let repositories = format!(
        "\nrepositories:\n  offsite: {{ url: \"azure://{}/pitr\", endpoint: \"{}\", create: true }}\n",
        crate::azure::CONTAINER,
        azurite.endpoint
    );
    let plan = ws.path("archive.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: archive\n{repositories}steps:\n  - {{ id: noop, type: shell, command: \"true\" }}\n"
        ),
    )
    .unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&plan, Some(uid), Some(gid)).unwrap();
    let env = azurite.env();
    archive_with(
        &cluster,
        &format!("--repository offsite --plan {}", plan.display()),
        &env,
    );
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    insert(&cluster, &[1]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let applied = ws.apply_env(
        &format!(
            "version: 1\nname: base\ntargets:\n  app: {{ url: \"{}\" }}\n{repositories}steps:\n  - {{ id: base, type: base_backup, target: app, repository: offsite, compression: zstd }}\n",
            cluster.url("postgres")
        ),
        &[],
        &env,
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    insert(&cluster, &[2]);
    let lsn_before = cluster
        .psql("postgres", "select pg_current_wal_lsn()")
        .trim()
        .to_string();
    insert(&cluster, &[3]);
    archive_everything(&cluster, |segment| {
        azurite
            .keys("pitr/.wal/")
            .iter()
            .any(|k| k.ends_with(&format!("/{segment}")))
    });
    let restore = format!(
        "version: 1\nname: pitr\ntargets:\n  drill: {{ ephemeral: true }}\n{repositories}steps:\n  - {{ id: restore, type: restore, repository: offsite, to: {{ lsn: \"{lsn_before}\" }}, into: {{ target: drill }} }}\n  - {{ id: check, type: sql, needs: [restore], target: drill, database: app, query: \"{ROWS}\" }}\n"
    );
    let applied = ws.apply_env(&restore, &[], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("check")["outputs"]["value"], "1,2");
}

#[test]
fn after_a_failover_the_restore_follows_the_timeline_it_is_asked_for() {
    let ws = Workspace::new();
    let (primary, repo, url) = archiving(&ws);
    insert(&primary, &[1]);
    let applied = ws.apply(&base_backup_plan(&primary, &url), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    insert(&primary, &[2]);
    archive_everything(&primary, in_local(&repo));

    // Failover: a standby takes over on timeline 2 and archives into the same repository.
    let standby = primary.standby();
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.psql("app", "select count(*) from t") != "2" {
        assert!(Instant::now() < deadline, "the standby did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    primary.stop();
    standby.promote();
    insert(&standby, &[3]);
    archive_everything(&standby, in_local(&repo));
    assert!(repo.join(".wal/00000002.history").exists());

    let check = |to: &str| {
        let applied = ws.apply(&restore_plan(&url, to, ROWS), &[]);
        assert_eq!(applied.code, 0, "{to}: {}", applied.everything());
        (
            applied.step("check")["outputs"]["value"]
                .as_str()
                .unwrap()
                .to_string(),
            applied.step("restore")["outputs"]["timeline"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    // By default the newest timeline, as PostgreSQL's `latest`, resolved to its number.
    assert_eq!(check("{ latest: true }"), ("1,2,3".into(), "2".into()));
    assert_eq!(
        check("{ latest: true, timeline: \"2\" }"),
        ("1,2,3".into(), "2".into())
    );
    // The old timeline, when asked for: what the old primary archived, nothing of the new.
    assert_eq!(
        check("{ latest: true, timeline: current }"),
        ("1,2".into(), "1".into())
    );
    // The drills promoted their own clusters; none of them archived a timeline 3 that a
    // later `latest` would follow.
    assert!(!repo.join(".wal/00000003.history").exists());
    let names: Vec<String> = std::fs::read_dir(repo.join(".wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("00000003")),
        "{names:?}"
    );
}

fn shipped(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_shipped_pitr_plans_back_up_and_drill() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let repo = repository(&ws, &cluster);
    archive_with(
        &cluster,
        &format!("--repository file://{}", repo.display()),
        &[],
    );
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    insert(&cluster, &[1, 2]);
    let env = [
        ("DATABASE_URL", cluster.url("postgres")),
        ("PITR_DIR", repo.display().to_string()),
    ];
    let apply = |plan: &str| {
        let report = ws.path(&format!("{plan}.json"));
        let out = opsrunner()
            .arg("apply")
            .arg(shipped(&format!("plans/{plan}.yaml")))
            .arg("--report")
            .arg(&report)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        crate::common::Applied::from(out, &report)
    };
    let nightly = apply("pitr");
    assert_eq!(nightly.code, 0, "{}", nightly.everything());
    assert_eq!(nightly.status("verify"), "succeeded");
    assert_eq!(nightly.step("archive")["outputs"]["gaps"], "0");
    insert(&cluster, &[3]);
    archive_everything(&cluster, in_local(&repo));
    let drill = apply("pitr-drill");
    assert_eq!(drill.code, 0, "{}", drill.everything());
    let restored = &drill.step("recover")["outputs"];
    assert_eq!(
        restored["backup_id"],
        nightly.step("base")["outputs"]["backup_id"]
    );
    assert!(!restored["reached_time"].as_str().unwrap().is_empty());
    assert_ne!(drill.step("answers")["outputs"]["value"], "0");
    // Recovered again to the night's mark, the tables hold what it recorded.
    assert_eq!(nightly.status("mark"), "succeeded");
    assert_eq!(
        drill.step("proven")["outputs"]["checks"],
        "wal=pass recovery=pass amcheck=pass fingerprints=pass",
        "{}",
        drill.everything()
    );
}

#[test]
fn pruning_a_base_backup_prunes_the_wal_only_it_needed() {
    let ws = Workspace::new();
    let (cluster, repo, url) = archiving(&ws);
    let backup = || {
        let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
        assert_eq!(applied.code, 0, "{}", applied.everything());
        let out = &applied.step("base")["outputs"];
        (
            out["backup_id"].as_str().unwrap().to_string(),
            cluster
                .psql(
                    "postgres",
                    &format!(
                        "select pg_walfile_name('{}')",
                        out["start_lsn"].as_str().unwrap()
                    ),
                )
                .trim()
                .to_string(),
        )
    };
    insert(&cluster, &[1]);
    let (first, _) = backup();
    insert(&cluster, &[2]);
    // A mark only the first backup reaches: pruned with its segment.
    let marked = ws.apply(&mark_plan(&cluster, &url, "10s"), &[]);
    assert_eq!(marked.code, 0, "{}", marked.everything());
    archive_everything(&cluster, in_local(&repo));
    let (second, second_start) = backup();
    insert(&cluster, &[3]);
    archive_everything(&cluster, in_local(&repo));
    let archived = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(repo.join(".wal"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };
    let before = archived();
    let older: Vec<&String> = before
        .iter()
        .filter(|n| n.get(..24).is_some_and(|s| s < second_start.as_str()))
        .collect();
    assert!(!older.is_empty(), "{before:?}");
    assert!(older.iter().any(|n| n.ends_with(".mark")), "{before:?}");

    let prune = format!(
        "version: 1\nname: prune\nrepositories:\n  local: {{ url: \"{url}\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: local, keep: {{ last: 1 }} }}\n"
    );
    // The preview names both: the backup and the WAL only it needed.
    let plan = ws.write_plan(&prune);
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("delete {first}")), "{out}");
    assert!(
        out.contains(&format!(
            "where the oldest kept base backup {second} starts"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("delete WAL {}", older[0])), "{out}");
    assert_eq!(archived(), before, "the preview deleted something");

    let applied = ws.apply(&prune, &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(
        applied.step("prune")["outputs"]["wal_deleted"],
        older.len().to_string().as_str()
    );
    assert!(!repo.join(&first).exists());
    let after = archived();
    for name in &after {
        if name.ends_with(".history") {
            continue;
        }
        assert!(name.as_str() >= second_start.as_str(), "{name} was kept");
    }
    assert!(after.contains(&second_start), "{after:?}");
    // The kept backup still restores, with every row.
    let applied = ws.apply(&restore_plan(&url, "{ latest: true }", ROWS), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(applied.step("check")["outputs"]["value"], "1,2,3");
    // Pruning again deletes no more WAL: the newest base backup always stays.
    let applied = ws.apply(&prune, &[]);
    assert_eq!(applied.step("prune")["outputs"]["wal_deleted"], "0");
    assert_eq!(archived(), after);
}

#[test]
fn a_restore_into_a_data_directory_stops_at_the_target_and_its_first_start_promotes() {
    let ws = Workspace::new();
    let (cluster, repo, url) = archiving(&ws);
    archived_at_least(&cluster, 1);
    insert(&cluster, &[1]);
    let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let backup_id = applied.step("base")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let after_three = insert(&cluster, &[2, 3]);
    insert(&cluster, &[4]);
    archive_everything(&cluster, in_local(&repo));
    let to = format!("{{ time: \"{after_three}\" }}");

    // A relative path is refused when the plan is read.
    let applied = ws.apply(&directory_plan(&url, &to, Path::new("restored")), &[]);
    assert_eq!(
        applied.code,
        opsrunner::exit::INVALID,
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains("not an absolute path"),
        "{}",
        applied.everything()
    );

    // A directory that holds anything is refused, and what it holds stays.
    let parent = parent_for_data(&cluster);
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("keep"), "precious").unwrap();
    let applied = ws.apply(&directory_plan(&url, &to, &data), &[]);
    assert_eq!(
        applied.status("restore"),
        "failed",
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains("is not empty"),
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains("nothing was touched"),
        "{}",
        applied.everything()
    );
    assert_eq!(
        std::fs::read_to_string(data.join("keep")).unwrap(),
        "precious"
    );
    std::fs::remove_file(data.join("keep")).unwrap();

    // The preview names the directory's state, the backup and the WAL.
    let plan = ws.write_plan(&directory_plan(&url, &to, &data));
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("data directory {}: empty", data.display())),
        "{out}"
    );
    assert!(out.contains(&format!("base backup {backup_id}")), "{out}");
    assert!(out.contains("all archived"), "{out}");

    // Recovered to the target and stopped there, still in recovery.
    let applied = ws.apply(&directory_plan(&url, &to, &data), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let outputs = &applied.step("restore")["outputs"];
    assert_eq!(outputs["backup_id"], backup_id.as_str());
    assert_eq!(outputs["timeline"], "1");
    let reached = outputs["reached_time"].as_str().unwrap();
    assert!(
        !reached.is_empty() && reached <= after_three.as_str(),
        "{reached}"
    );
    assert!(
        applied.everything().contains("recovery stopping"),
        "{}",
        applied.everything()
    );
    assert!(data.join("recovery.signal").exists());
    assert!(!data.join("opsrunner-restore-incomplete").exists());
    assert_eq!(
        Cluster::control_field(&data, "Database cluster state"),
        "shut down in recovery"
    );

    // Its first start, with the configuration it came with: rows 1 to 3, promoted on a new
    // timeline, whose history file reaches the archive (the copy archives as production).
    let restored = Cluster::adopt(parent);
    restored.wait_promoted();
    assert_eq!(restored.psql("app", ROWS), "1,2,3");
    assert_eq!(
        restored.psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()"
        ),
        "2"
    );
    let history = repo.join(".wal/00000002.history");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !history.exists() {
        assert!(
            Instant::now() < deadline,
            "the new timeline was not archived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(restored);

    // To the end of the archive (the backup's timeline: the copy above made a timeline 2):
    // prepared only, and its first start replays everything, then promotes.
    let parent = parent_for_data(&cluster);
    let data = parent.path().join("data");
    let applied = ws.apply(
        &directory_plan(&url, "{ latest: true, timeline: current }", &data),
        &[],
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert!(
        applied
            .everything()
            .contains("prepared to recover to the end of the archive"),
        "{}",
        applied.everything()
    );
    let restored = Cluster::adopt(parent);
    restored.wait_promoted();
    assert_eq!(restored.psql("app", ROWS), "1,2,3,4");
    drop(restored);

    // A target the archive does not reach: recovery stops, the step fails with the
    // server's words, and the directory it created is gone again.
    let parent = parent_for_data(&cluster);
    let data = parent.path().join("data");
    let applied = ws.apply(
        &directory_plan(
            &url,
            "{ time: \"2100-01-01T00:00:00Z\", timeline: current }",
            &data,
        ),
        &[],
    );
    assert_eq!(
        applied.status("restore"),
        "failed",
        "{}",
        applied.everything()
    );
    let text = applied.everything();
    assert!(
        text.contains("recovery ended before configured recovery target"),
        "{text}"
    );
    assert!(text.contains("was removed again"), "{text}");
    assert!(!data.exists());
}

fn mark_plan(cluster: &Cluster, repo_url: &str, lock_wait: &str) -> String {
    format!(
        r#"
version: 1
name: mark
targets:
  app: {{ url: "{}" }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - {{ id: mark, type: pitr_mark, target: app, repository: local, fingerprint: full, wal_wait: 30s, lock_wait: {lock_wait} }}
"#,
        cluster.url("app")
    )
}

fn mark_verify_plan(repo_url: &str, mark: &str) -> String {
    pitr_verify_plan(repo_url, &format!("{{ mark: \"{mark}\" }}"), "")
}

/// A `file://` repository, opened with the library.
fn local_repository(url: &str) -> opsrunner::repo::AnyStore {
    let path = url.strip_prefix("file://").expect("a file:// URL");
    opsrunner::repo::AnyStore::new(opsrunner::repo::local::LocalStore::new(path.into()))
}

/// The marks archived in a local repository, read with the library.
fn marks(url: &str) -> Vec<(opsrunner::repo::mark::Place, opsrunner::repo::mark::Mark)> {
    use opsrunner::repo::{mark, wal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = local_repository(url);
        let names = wal::list(&store).await.unwrap();
        let mut out = Vec::new();
        for place in mark::places(&names, 16 << 20) {
            let m = mark::read(&store, &place, None).await.unwrap();
            out.push((place, m));
        }
        out
    })
}

#[test]
fn a_mark_holds_the_content_at_its_restore_point_and_a_verify_proves_it() {
    let ws = Workspace::new();
    let (cluster, repo, url) = archiving(&ws);
    archived_at_least(&cluster, 1);
    cluster.psql(
        "app",
        "create table u (k int primary key, v bigint); insert into u select g, 0 from generate_series(1, 100) g; create table stop (at timestamptz)",
    );
    insert(&cluster, &[1]);
    let applied = ws.apply(&base_backup_plan(&cluster, &url), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());

    // A transaction that keeps writing longer than lock_wait: the step fails, retryable,
    // and makes no restore point (nor holds writers up for longer).
    let mut long = cluster
        .psql_command(
            "app",
            "begin; insert into t values (999999); select pg_sleep(4); commit",
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let applied = ws.apply(&mark_plan(&cluster, &url, "1s"), &[]);
    assert_eq!(applied.status("mark"), "failed", "{}", applied.everything());
    assert!(
        applied
            .everything()
            .contains("did not finish within lock_wait 1s: no restore point was made"),
        "{}",
        applied.everything()
    );
    assert!(long.wait().unwrap().success());
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
        ),
        "0"
    );
    cluster.psql("app", "delete from t where id = 999999");

    // Writers commit all the time, one small transaction after another, while the mark is
    // made: its fingerprints (row counts and row hashes) must be those of exactly the
    // transactions committed before its restore point.
    let mut writer = cluster
        .psql_command(
            "app",
            "do $$ declare i int := 1000; begin
               while not exists (select 1 from stop) and i < 200000 loop
                 insert into t values (i);
                 update u set v = v + i where k = 1 + i % 100;
                 commit;
                 perform pg_sleep(0.001);
                 i := i + 1;
               end loop;
             end $$",
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let applied = ws.apply(&mark_plan(&cluster, &url, "10s"), &[]);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let made = applied.step("mark")["outputs"].clone();
    let name = made["name"].as_str().unwrap().to_string();
    assert_eq!(made["tables"], "3", "{made}");
    std::thread::sleep(Duration::from_millis(500));
    cluster.psql("app", "insert into stop values (now())");
    assert!(writer.wait().unwrap().success());
    archive_everything(&cluster, in_local(&repo));

    // The mark is archived beside the segment of its restore point, and the writes went
    // on after it (so a recovery to the end of the archive would not match it).
    let archived = marks(&url);
    assert_eq!(archived.len(), 1);
    let (place, mark) = &archived[0];
    assert_eq!(mark.name, name);
    assert_eq!(mark.lsn, made["lsn"].as_str().unwrap());
    assert!(repo.join(".wal").join(&place.file[..24]).exists());
    let at_mark = mark.fingerprints["public.t"].rows;
    let now: i64 = cluster
        .psql("app", "select count(*) from t")
        .parse()
        .unwrap();
    assert!(
        at_mark > 1 && now > at_mark,
        "{at_mark} at the mark, {now} now"
    );

    // The preview names the mark; the verify recovers to it and finds its fingerprints.
    let plan = ws.write_plan(&mark_verify_plan(&url, "latest"));
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("mark `{name}`")), "{out}");
    // A random mark is drawn when the step runs, not in the preview.
    let plan = ws.write_plan(&mark_verify_plan(&url, "random"));
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("mark: one of 1 drawn at random when the step runs"),
        "{out}"
    );
    for which in ["latest", "random", name.as_str()] {
        let applied = ws.apply(&mark_verify_plan(&url, which), &[]);
        assert_eq!(applied.code, 0, "{which}: {}", applied.everything());
        assert_eq!(
            applied.step("verify")["outputs"]["checks"],
            "wal=pass recovery=pass amcheck=pass fingerprints=pass",
            "{}",
            applied.everything()
        );
        assert!(
            applied
                .everything()
                .contains(&format!("3 tables of database `app` as at mark `{name}`")),
            "{}",
            applied.everything()
        );
    }
    // A restore to the mark holds its rows.
    let applied = ws.apply(
        &restore_plan(
            &url,
            &format!("{{ mark: \"{name}\" }}"),
            "select count(*) from t",
        ),
        &[],
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(
        applied.step("check")["outputs"]["value"],
        at_mark.to_string().as_str()
    );

    // A mark that says something else than what recovery brings back fails the verify as
    // a damaged backup would (exit 6), naming the table.
    {
        use opsrunner::repo::mark;
        std::fs::remove_file(repo.join(".wal").join(&place.file)).unwrap();
        let mut forged = mark.clone();
        forged.fingerprints.get_mut("public.t").unwrap().rows += 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = local_repository(&url);
            mark::store(&store, &forged, None).await.unwrap();
        });
    }
    let applied = ws.apply(&mark_verify_plan(&url, "latest"), &[]);
    assert_eq!(
        applied.code,
        opsrunner::exit::BACKUP_CORRUPT,
        "{}",
        applied.everything()
    );
    assert!(
        applied.everything().contains(&format!(
            "public.t: {at_mark} rows after restore, {} at the mark",
            at_mark + 1
        )),
        "{}",
        applied.everything()
    );

    // No mark a backup can reach: said so, nothing recovered.
    let applied = ws.apply(&mark_verify_plan(&url, "no-such-mark"), &[]);
    assert_ne!(applied.code, 0);
    assert!(
        applied
            .everything()
            .contains("holds no mark named `no-such-mark`"),
        "{}",
        applied.everything()
    );
}
