//! Restores never destroy what they replace, and nothing unverified is restored: damaged
//! backups of every kind against `overwrite: true`, interrupted restores (killed process,
//! stopped server) and what the next run makes of them, a full spool disk under `jobs`.

use crate::common::pg::Cluster;
use crate::common::{SmallDisk, Workspace};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// `shop` with two tables, and `precious`, the database restores try to replace.
fn clusters_with_precious(rows: u32) -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database shop");
    cluster.psql(
        "shop",
        &format!(
            "create table items (id int primary key, label text);
             insert into items select g, md5(g::text) from generate_series(1, {rows}) g;
             create table notes (id int, body text);
             insert into notes values (1, 'from the backup')"
        ),
    );
    cluster.psql("postgres", "create database precious");
    cluster.psql(
        "precious",
        "create table keep (v text); insert into keep values ('mine')",
    );
    cluster
}

fn backup_plan(format: &str, compression: &str) -> String {
    format!(
        r#"
version: 1
name: backup
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: backup, type: backup, target: db, database: shop, repository: repo, format: {format}, compression: "{compression}" }}
"#
    )
}

fn restore_plan(backup: &str, database: &str, extra: &str) -> String {
    format!(
        r#"
version: 1
name: restore
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: restore, type: restore, repository: repo, backup: "{backup}", into: {{ target: db, database: {database} }}, overwrite: true{extra} }}
"#
    )
}

fn backup(ws: &Workspace, url: &str, format: &str, compression: &str) -> String {
    let run = ws.apply_env(
        &backup_plan(format, compression),
        &[],
        &[("DATABASE_URL", url)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Copies backup `id` to a new id (its manifest follows the move) and damages the copy.
fn damaged_copy(repo: &Path, id: &str, name: &str, damage: impl FnOnce(&Path, &mut Value)) {
    let dir = repo.join(name);
    copy_dir(&repo.join(id), &dir);
    let _ = std::fs::remove_file(dir.join("verification.json"));
    let path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["backup_id"] = Value::String(name.into());
    damage(&dir, &mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

fn the_file(manifest: &Value) -> String {
    manifest["files"][0]["name"].as_str().unwrap().to_string()
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_backups_never_replace_the_database() {
    let cluster = clusters_with_precious(2000);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let repo = ws.path("repo");
    let custom = backup(&ws, &url, "custom", "none");
    let directory = backup(&ws, &url, "directory", "zstd");
    let outside = ws.path("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();

    damaged_copy(&repo, &custom, "truncated", |dir, m| {
        let file = dir.join(the_file(m));
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    });
    damaged_copy(&repo, &custom, "flipped", |dir, m| {
        flip_byte(&dir.join(the_file(m)))
    });
    damaged_copy(&repo, &custom, "linked", |dir, m| {
        let file = dir.join(the_file(m));
        let elsewhere = outside.join("dump");
        std::fs::rename(&file, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    });
    damaged_copy(&repo, &custom, "no-files", |_, m| {
        m["files"] = Value::Array(vec![])
    });
    damaged_copy(&repo, &custom, "escaping-name", |_, m| {
        m["files"][0]["name"] = Value::String("../../elsewhere/dump".into())
    });
    damaged_copy(&repo, &custom, "size-lies", |_, m| {
        m["files"][0]["size"] = Value::from(m["files"][0]["size"].as_u64().unwrap() + 1)
    });
    damaged_copy(&repo, &directory, "directory-flipped", |dir, m| {
        let data = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .find(|n| !n.contains("toc.dat"))
            .unwrap();
        flip_byte(&dir.join(data));
    });
    damaged_copy(&repo, &custom, "flipped-jobs", |dir, m| {
        flip_byte(&dir.join(the_file(m)))
    });
    // An index that passes every check but puts the first table's block one byte later
    // than it is: a load reads blocks by their header (type, dump id), so the run fails.
    // (An index whose ids are swapped between two blocks next to each other loads each
    // block with its own table's statement: the data is right either way.)
    damaged_copy(&repo, &custom, "index-shifted", |_, m| {
        let blocks = m["files"][0]["index"]["blocks"].as_array_mut().unwrap();
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        blocks[0][1] = Value::from(blocks[0][1].as_u64().unwrap() + 1);
    });

    let cases = [
        ("truncated", "", "truncated or damaged"),
        ("flipped", "", "SHA-256 is"),
        ("linked", "", "symbolic link"),
        ("no-files", "", "lists no files"),
        ("escaping-name", "", "not one a backup can hold"),
        ("size-lies", "", "the manifest says"),
        ("directory-flipped", ", jobs: 2", "SHA-256 is"),
        ("flipped-jobs", ", jobs: 2", "SHA-256 is"),
        (
            "index-shifted",
            ", jobs: 2",
            "where table data was expected",
        ),
    ];
    for (name, extra, why) in cases {
        let run = ws.apply_env(
            &restore_plan(name, "precious", extra),
            &[],
            &[("DATABASE_URL", &url)],
        );
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        let reason = run.step("restore")["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(why), "{name}: {reason}");
        assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
        assert_eq!(
            cluster.psql("precious", "select string_agg(v, ',') from keep"),
            "mine",
            "{name}: the database was touched"
        );
        assert_eq!(cluster.restore_leftovers(), "", "{name}: leftovers");
    }
    // The symlinked file outside the repository was read by nobody and is still there.
    assert!(outside.join("dump").exists());

    // The good backup replaces it, with no leftovers and the same owner, and the catalogue
    // lists the damaged copies as damaged instead of failing.
    cluster.psql("postgres", "create role shop_owner");
    cluster.psql("postgres", "alter database precious owner to shop_owner");
    let run = ws.apply_env(
        &restore_plan(&custom, "precious", ""),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("restore")["outputs"]["replaced"], "true");
    assert_eq!(
        cluster.psql(
            "postgres",
            "select pg_get_userbyid(datdba) from pg_database where datname = 'precious'"
        ),
        "shop_owner"
    );
    assert_eq!(
        cluster.psql("precious", "select count(*) from items"),
        "2000"
    );
    assert_eq!(cluster.restore_leftovers(), "");
    // Damage inside the files shows only when they are read (verify, restore); damage to
    // the manifest shows in the listing.
    let list = ws.backups(&["list"]);
    assert!(list.contains("\n9 backups\n"), "{list}");
    assert!(list.contains("2 damaged"), "{list}");
    assert!(list.contains("  no-files: "), "{list}");
    assert!(list.contains("  escaping-name: "), "{list}");
}

#[test]
fn a_flipped_byte_is_never_restored_and_a_failed_new_restore_leaves_nothing() {
    let cluster = clusters_with_precious(500);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let id = backup(&ws, &url, "custom", "none");
    let file = ws.path("repo").join(&id).join("dump.pgdump");
    let good = std::fs::read(&file).unwrap();
    // A byte inside the table data: pg_restore itself would load it without complaint.
    let at = good
        .windows(32)
        .position(|w| w == b"c4ca4238a0b923820dcc509a6f75849b")
        .expect("md5('1') is in the dump");
    let mut bad = good.clone();
    bad[at] = b'd';
    std::fs::write(&file, &bad).unwrap();

    let run = ws.apply_env(
        &restore_plan(&id, "fresh", ""),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = run.step("restore")["reason"].as_str().unwrap();
    assert!(reason.contains("dump.pgdump: SHA-256 is"), "{reason}");
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'fresh'"
        ),
        "0"
    );
    assert_eq!(cluster.restore_leftovers(), "");

    // Repaired, the same restore works on the next try.
    std::fs::write(&file, &good).unwrap();
    let run = ws.apply_env(
        &restore_plan(&id, "fresh", ""),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        cluster.psql("fresh", "select label from items where id = 1"),
        "c4ca4238a0b923820dcc509a6f75849b"
    );
}

/// Waits until the staging database of `database` exists and holds a table.
fn wait_for_staging(cluster: &Cluster, deadline: Duration) {
    let started = Instant::now();
    loop {
        let names = cluster.restore_leftovers();
        if let Some(staging) = names.split(',').find(|n| n.contains("_opsrunner_new_")) {
            let tables = cluster.psql(
                staging,
                "select count(*) from pg_tables where schemaname = 'public'",
            );
            if tables != "0" {
                return;
            }
        }
        assert!(started.elapsed() < deadline, "the restore never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupted_restore_leaves_the_old_database_and_the_next_run_finishes() {
    let cluster = clusters_with_precious(300_000);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let id = backup(&ws, &url, "custom", "zstd");
    let plan = ws.write_plan(&restore_plan(&id, "precious", ""));
    let url_path = std::path::PathBuf::from(&url);
    let next_run = || {
        let run = ws.apply_env(
            &restore_plan(&id, "precious", ""),
            &[],
            &[("DATABASE_URL", &url)],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr.contains("left by an interrupted restore"),
            "{}",
            run.stderr
        );
        assert_eq!(
            cluster.psql("precious", "select count(*) from items"),
            "300000"
        );
        assert_eq!(cluster.restore_leftovers(), "");
    };

    // SIGKILL while the staging database is being filled: the old database is untouched,
    // and the next run removes the leftover and finishes the job.
    let child = ws.spawn_apply(&plan, &[], &[("DATABASE_URL", url_path.as_path())]);
    wait_for_staging(&cluster, Duration::from_secs(60));
    let killed = ws.interrupt(child, libc::SIGKILL);
    assert_eq!(killed.code, -1);
    assert_eq!(cluster.psql("precious", "select v from keep"), "mine");
    next_run();

    // The server stopped mid-restore: a clear error, the database as it was, the partial
    // restore left clearly named, and again the next run finishes.
    cluster.psql(
        "precious",
        "insert into notes values (2, 'after the restore')",
    );
    let child = ws.spawn_apply(&plan, &[], &[("DATABASE_URL", url_path.as_path())]);
    wait_for_staging(&cluster, Duration::from_secs(60));
    cluster.stop();
    let out = child.wait_with_output().unwrap();
    let stopped = crate::common::Applied::from(out, &ws.report_path());
    assert_eq!(stopped.code, 1, "{}", stopped.stderr);
    let reason = stopped.step("restore")["reason"].as_str().unwrap();
    assert!(
        reason.contains("is removed by the next restore into `precious`"),
        "{reason}"
    );
    cluster.restart();
    assert_eq!(
        cluster.psql("precious", "select body from notes where id = 2"),
        "after the restore"
    );
    assert!(
        cluster
            .restore_leftovers()
            .contains("precious_opsrunner_new_"),
        "{}",
        cluster.restore_leftovers()
    );
    next_run();
}

#[test]
fn the_step_retry_finishes_a_restore_the_server_interrupted() {
    let cluster = clusters_with_precious(300_000);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let id = backup(&ws, &url, "custom", "zstd");
    let plan = ws.write_plan(&restore_plan(
        &id,
        "precious",
        ", retry: { attempts: 5, delay: 2s }",
    ));
    let url_path = std::path::PathBuf::from(&url);
    let child = ws.spawn_apply(&plan, &[], &[("DATABASE_URL", url_path.as_path())]);
    wait_for_staging(&cluster, Duration::from_secs(60));
    cluster.stop();
    cluster.restart();
    let out = child.wait_with_output().unwrap();
    let run = crate::common::Applied::from(out, &ws.report_path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.attempts("restore") >= 2);
    assert_eq!(
        cluster.psql("precious", "select count(*) from items"),
        "300000"
    );
    assert_eq!(cluster.restore_leftovers(), "");
}

/// A backup written before files had a seek index (or one whose index was lost) is
/// restored in parallel from a local copy of the archive, which needs room in TMPDIR;
/// one with an index needs none.
#[test]
fn a_full_spool_disk_fails_a_parallel_restore_clearly_instead_of_hanging() {
    let cluster = clusters_with_precious(100_000);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let indexed = backup(&ws, &url, "custom", "zstd");
    let id = "without-index";
    damaged_copy(&ws.path("repo"), &indexed, id, |_, m| {
        m["files"][0].as_object_mut().unwrap().remove("index");
        m["manifest_version"] = 1.into();
    });
    let disk = SmallDisk::new(1 << 20);
    let restore = |id: &str| {
        let output = crate::common::opsrunner()
            .arg("apply")
            .arg(ws.write_plan(&restore_plan(id, "precious", ", jobs: 2")))
            .arg("--report")
            .arg(ws.report_path())
            .env("DATABASE_URL", &url)
            .env("TMPDIR", disk.path())
            .output()
            .unwrap();
        crate::common::Applied::from(output, &ws.report_path())
    };
    let started = Instant::now();
    let run = restore(id);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(120));
    let reason = run.step("restore")["reason"].as_str().unwrap();
    assert!(reason.contains("cannot spool the archive"), "{reason}");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert_eq!(cluster.psql("precious", "select v from keep"), "mine");
    assert_eq!(cluster.restore_leftovers(), "");

    let run = restore(&indexed);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        cluster.psql("precious", "select count(*) from items"),
        "100000"
    );
    assert_eq!(cluster.restore_leftovers(), "");
}

#[test]
fn a_full_repository_disk_fails_the_backup_and_publishes_nothing() {
    let cluster = clusters_with_precious(100_000);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let disk = SmallDisk::new(256 << 10);
    let plan = backup_plan("custom", "none").replace(
        "file://./repo",
        &format!("file://{}", disk.path().display()),
    );
    let run = ws.apply_env(&plan, &[], &[("DATABASE_URL", &url)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = run.step("backup")["reason"].as_str().unwrap();
    assert!(reason.contains("No space left on device"), "{reason}");
    // Which disk: the file being written is named.
    assert!(
        reason.contains(&format!("writing {}", disk.path().display())),
        "{reason}"
    );
    // Only the repository's record, made before the backup started.
    assert!(
        crate::common::files_under(disk.path())
            .iter()
            .all(|f| f.ends_with("opsrunner-repository.json")),
        "{:?}",
        crate::common::files_under(disk.path())
    );
}

/// A table whose rows the server refuses on restore — a check calling a function that
/// names a table without its schema, which fails under the empty search path pg_restore
/// (and a parallel restore's own loading sessions) use — fails the parallel restore,
/// naming the table and the server's reason, and leaves the database it was to replace
/// and no staging database behind.
#[test]
fn a_table_the_server_refuses_fails_a_parallel_restore_and_replaces_nothing() {
    let cluster = clusters_with_precious(2000);
    cluster.psql(
        "shop",
        "create table limits (v int); insert into limits values (0);
         create function above_limit(int) returns boolean language sql as
           'select $1 > (select min(v) from limits)';
         create table guarded (n int check (above_limit(n)));
         insert into guarded select g from generate_series(1, 100) g;",
    );
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let id = backup(&ws, &url, "custom", "zstd");
    let run = ws.apply_env(
        &restore_plan(&id, "precious", ", jobs: 2"),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = run.step("restore")["reason"].as_str().unwrap();
    assert!(reason.contains("COPY of public.guarded"), "{reason}");
    assert!(
        reason.contains("relation \"limits\" does not exist"),
        "{reason}"
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(
        cluster.psql("precious", "select string_agg(v, ',') from keep"),
        "mine"
    );
    assert_eq!(cluster.restore_leftovers(), "");
}

fn verify_plan(backup: &str, database: &str) -> String {
    format!(
        r#"
version: 1
name: verify
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: verify, type: verify, repository: repo, backup: "{backup}", restore_into: {{ target: db, database: "{database}" }} }}
"#
    )
}

/// Waits until scratch database `name` (the first, when `name` ends in `%`) exists and
/// holds a table; returns its name.
fn wait_for_scratch(cluster: &Cluster, name: &str, deadline: Duration) -> String {
    let started = Instant::now();
    loop {
        let found = cluster.psql(
            "postgres",
            &format!(
                "select coalesce(min(datname), '') from pg_database where datname like '{name}'"
            ),
        );
        if !found.is_empty()
            && cluster.psql(
                &found,
                "select count(*) from pg_tables where schemaname = 'public'",
            ) != "0"
        {
            return found;
        }
        assert!(
            started.elapsed() < deadline,
            "the test restore never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A verify killed mid-restore leaves its scratch database; the next verify recognises it
/// as an interrupted verify's, removes it first and says so — with a fixed name (which
/// would otherwise fail every later verify) and with a run-id name (which would pile up).
/// A database that only happens to have a scratch name is never touched.
#[test]
fn a_killed_verify_leaves_a_scratch_database_the_next_one_removes() {
    let cluster = clusters_with_precious(300_000);
    let url = cluster.url("postgres");
    let url_path = std::path::PathBuf::from(&url);
    let ws = Workspace::new();
    let id = backup(&ws, &url, "custom", "zstd");
    for (scratch, like) in [
        ("verify_scratch", "verify_scratch"),
        ("verify_{{ run.id }}", "verify_2%"),
    ] {
        let plan = ws.write_plan(&verify_plan(&id, scratch));
        let child = ws.spawn_apply(&plan, &[], &[("DATABASE_URL", url_path.as_path())]);
        let left = wait_for_scratch(&cluster, like, Duration::from_secs(60));
        let killed = ws.interrupt(child, libc::SIGKILL);
        assert_eq!(killed.code, -1);
        // Nothing is assumed about when the server notices the closed connection.
        assert_eq!(
            cluster.psql(
                "postgres",
                &format!("select count(*) from pg_database where datname = '{left}'")
            ),
            "1"
        );
        let next = ws.apply_env(&verify_plan(&id, scratch), &[], &[("DATABASE_URL", &url)]);
        assert_eq!(next.code, 0, "{scratch}: {}", next.stderr);
        assert!(
            next.stderr.contains(&format!(
                "removed scratch database `{left}` on target `db`, left by an interrupted verify"
            )),
            "{scratch}: {}",
            next.stderr
        );
        assert_eq!(
            cluster.psql(
                "postgres",
                "select count(*) from pg_database where datname like 'verify%'"
            ),
            "0",
            "{scratch}"
        );
    }
    // Someone's own database under the scratch name: refused, untouched.
    cluster.psql("postgres", "create database verify_scratch");
    let refused = ws.apply_env(
        &verify_plan(&id, "verify_scratch"),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("already exists"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'verify_scratch'"
        ),
        "1"
    );
}

/// `backup: latest` with the newest backup damaged restores the newest intact one and
/// says so: in the log, the report (`skipped`) and the preview; `verify` of `latest`
/// fails with the damaged backup's verdict (exit 6).
#[test]
fn latest_passing_over_a_damaged_newest_backup_says_so() {
    let cluster = clusters_with_precious(100);
    let url = cluster.url("postgres");
    let ws = Workspace::new();
    let older = backup(&ws, &url, "custom", "zstd");
    // Ids start with their second: the next backup is a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let newer = backup(&ws, &url, "custom", "zstd");
    assert!(newer > older, "{older} {newer}");
    std::fs::write(
        ws.path("repo").join(&newer).join("manifest.json"),
        "{ truncated",
    )
    .unwrap();

    let restore = ws.apply_env(
        &restore_plan("latest", "copy", ""),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    let said = format!("`latest` is not the newest backup: {newer} is newer but damaged");
    assert!(restore.stderr.contains(&said), "{}", restore.stderr);
    let outputs = &restore.step("restore")["outputs"];
    assert_eq!(outputs["backup_id"], older.as_str(), "{}", restore.report);
    assert!(
        outputs["skipped"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{newer}: ")),
        "{}",
        restore.report
    );
    assert_eq!(cluster.psql("copy", "select count(*) from items"), "100");

    let preview = crate::common::opsrunner()
        .arg("plan")
        .arg(ws.path("plan.yaml"))
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(
        text.contains(&format!("latest is {older}")) && text.contains("newer ones are damaged"),
        "{text}"
    );

    let verify = ws.apply_env(
        &verify_plan("latest", "verify_check"),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(verify.code, 6, "{}", verify.stderr);
    assert!(verify.stderr.contains(&said), "{}", verify.stderr);
    let reason = verify.step("verify")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains(&newer)
            && reason.contains(&format!("{older}, the newest intact one, passed")),
        "{reason}"
    );
}
