//! Backups, verification and restores against real clusters: a hostile database round
//! trip in every format and compression, checked by fingerprints and independently (schema
//! dump and sorted table contents); a damaged backup; the restore guards; a timeout that
//! must kill pg_dump.

use crate::common::Workspace;
use crate::common::pg::{Cluster, PASSWORD};
use std::path::Path;
use std::time::{Duration, Instant};

fn hostile_source() -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database shop");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile.sql");
    // The fixture must be readable by psql, which the harness runs as root: fine.
    cluster.psql_file("shop", &fixture);
    cluster
}

/// Equality with a readable failure: the first lines that differ, not two whole dumps.
fn assert_same(expected: &str, actual: &str, what: &str) {
    if expected == actual {
        return;
    }
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let diff: Vec<String> = (0..e.len().max(a.len()))
        .filter(|&i| e.get(i) != a.get(i))
        .take(5)
        .map(|i| {
            format!(
                "line {}: expected {:?}, got {:?}",
                i + 1,
                e.get(i),
                a.get(i)
            )
        })
        .collect();
    panic!("{what} differs after restore:\n{}", diff.join("\n"));
}

/// One custom-format backup of `shop` into `./repo`.
const BACKUP_SHOP: &str = r#"
version: 1
name: backup-shop
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: shop, repository: repo }
"#;

const FORMATS: &[&str] = &["custom", "directory", "plain"];
const COMPRESSIONS: &[&str] = &["none", "gzip:1", "zstd"];

#[test]
fn hostile_database_round_trips_in_every_format_and_compression() {
    let cluster = hostile_source();
    let ws = Workspace::new();
    let mut plan = String::from(
        r#"
version: 1
name: round-trip
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
"#,
    );
    let mut restored = Vec::new();
    for format in FORMATS {
        for compression in COMPRESSIONS {
            let id = format!("{format}-{}", compression.replace(':', ""));
            let db = format!("copy_{}", id.replace('-', "_"));
            let jobs = if *format == "directory" {
                "\n    jobs: 2"
            } else {
                ""
            };
            let restore_jobs = if *format == "plain" {
                ""
            } else {
                "\n    jobs: 2"
            };
            plan.push_str(&format!(
                r#"
  - id: backup-{id}
    type: backup
    target: db
    database: shop
    repository: repo
    format: {format}
    compression: "{compression}"
    fingerprint: full{jobs}
  - id: verify-{id}
    type: verify
    needs: [backup-{id}]
    repository: repo
    backup: "{{{{ steps.backup-{id}.outputs.backup_id }}}}"
    restore_into: {{ target: db, database: "verify_{{{{ run.id }}}}_{}" }}
  - id: restore-{id}
    type: restore
    needs: [verify-{id}]
    repository: repo
    backup: "{{{{ steps.backup-{id}.outputs.backup_id }}}}"
    into: {{ target: db, database: {db} }}{restore_jobs}
"#,
                id.replace('-', "_")
            ));
            restored.push((id, db));
        }
    }
    let run = ws.apply_env(
        &plan,
        &["--concurrency", "2"],
        &[("DATABASE_URL", &cluster.url("postgres"))],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.everything().contains(PASSWORD), "the password leaked");

    let source_schema = cluster.schema("shop");
    let source_content = cluster.content("shop");
    assert!(
        source_content.contains("424242:"),
        "fixture has large objects"
    );
    for (id, db) in restored {
        let checks = run.step(&format!("verify-{id}"))["outputs"]["checks"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            checks, "manifest=pass files=pass archive=pass restore=pass fingerprints=pass",
            "{id}"
        );
        assert_same(
            &source_schema,
            &cluster.schema(&db),
            &format!("{id}: schema"),
        );
        assert_same(
            &source_content,
            &cluster.content(&db),
            &format!("{id}: content"),
        );
    }
    // Scratch databases of verify are gone.
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname like 'verify\\_%'"
        ),
        "0"
    );
}

#[test]
fn a_flipped_byte_makes_verify_fail_naming_the_file() {
    let cluster = hostile_source();
    let ws = Workspace::new();
    let plan = BACKUP_SHOP;
    let env = [("DATABASE_URL", cluster.url("postgres"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = ws.apply_env(plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = ws.path("repo").join(&id).join("dump.pgdump.zst");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let verify = format!(
        "version: 1\nname: v\nrepositories:\n  repo: {{ url: \"file://./repo\", create: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: repo, backup: {id} }}\n"
    );
    let run = ws.apply(&verify, &[]);
    assert_eq!(run.code, opsrunner::exit::BACKUP_CORRUPT);
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("files: dump.pgdump.zst: SHA-256 is"),
        "{reason}"
    );
    assert!(run.stderr.contains("check files: FAIL"), "{}", run.stderr);
}

#[test]
fn restore_guards_refuse_and_touch_nothing() {
    let cluster = hostile_source();
    let ws = Workspace::new();
    cluster.psql("postgres", "create database precious");
    cluster.psql(
        "precious",
        "create table keep (v text); insert into keep values ('mine')",
    );
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];
    let backup = ws.apply_env(BACKUP_SHOP, &[], &env);
    assert_eq!(backup.code, 0, "{}", backup.stderr);

    let restore = |overwrite: bool, protected: bool, args: &[&str]| {
        ws.apply_env(
            &format!(
                r#"
version: 1
name: r
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}", protected: {protected} }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: restore, type: restore, repository: repo, backup: latest, into: {{ target: db, database: precious }}, overwrite: {overwrite} }}
"#
            ),
            args,
            &env,
        )
    };
    // Existing, non-empty database without overwrite: refused at run time.
    let refused = restore(false, false, &[]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.step("restore")["reason"]
            .as_str()
            .unwrap()
            .contains("exists and is not empty")
    );
    assert_eq!(cluster.psql("precious", "select v from keep"), "mine");

    // Overwrite on a protected target without --confirm: refused before anything runs.
    let guarded = restore(true, true, &[]);
    assert_eq!(guarded.code, 3, "{}", guarded.stderr);
    assert!(
        guarded.stderr.contains("--confirm db"),
        "{}",
        guarded.stderr
    );
    assert_eq!(cluster.psql("precious", "select v from keep"), "mine");

    // With --confirm it replaces the database.
    let done = restore(true, true, &["--confirm", "db"]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(
        cluster.psql(
            "precious",
            "select count(*) from pg_tables where tablename = 'keep'"
        ),
        "0"
    );
    assert_eq!(
        cluster.psql("precious", "select count(*) from public.parent"),
        "100"
    );
}

#[test]
fn a_timeout_kills_pg_dump_and_publishes_nothing() {
    let cluster = hostile_source();
    let ws = Workspace::new();
    // A session holding an exclusive lock makes pg_dump wait for as long as it lives.
    let mut locker = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "psql -X -q '{}' -c 'begin; lock table public.parent in access exclusive mode; select pg_sleep(60)'",
            cluster.url("shop")
        ))
        .spawn()
        .unwrap();
    cluster.wait_for_exclusive_lock("shop", "parent");
    let started = Instant::now();
    let url = cluster.url("postgres");
    let run = ws.apply_env(
        r#"
version: 1
name: slow
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: shop, repository: repo, timeout: 2s }
"#,
        &["--kill-grace", "1s"],
        &[("DATABASE_URL", url.as_str())],
    );
    let _ = locker.kill();
    let _ = locker.wait();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(run.status("backup"), "failed");
    assert!(
        run.step("backup")["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s")
    );
    // No pg_dump process and no pg_dump session is left, and the repository holds no backup.
    let marker = format!(":{}/shop", cluster.port);
    let pg_dump_processes = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("pg_dump") && c.contains(&marker))
            .count()
    };
    let sessions = || {
        cluster.psql(
            "postgres",
            "select count(*) from pg_stat_activity where application_name like 'opsrunner%'",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (pg_dump_processes() > 0 || sessions() != "0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pg_dump_processes(), 0, "pg_dump survived the timeout");
    assert_eq!(sessions(), "0", "a pg_dump session outlived the timeout: {}", cluster.psql("postgres", "select application_name, state, wait_event_type, query from pg_stat_activity where application_name like 'opsrunner%'"));
    // Besides the repository's record, made before the backup started.
    let leftovers: Vec<_> = std::fs::read_dir(ws.path("repo"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !p.ends_with("opsrunner-repository.json"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|p| !p.join("manifest.json").exists()),
        "{leftovers:?}"
    );
    assert!(
        leftovers.is_empty(),
        "an unfinished backup was left behind: {leftovers:?}"
    );
}

/// A custom archive's file starts a new compressed frame before each large table, and a
/// parallel restore from a local repository loads every table from its own part of the
/// stored file; from S3 (where that would download the file twice: the parts, and the
/// whole to check it) it restores from one download. The content is the same.
#[test]
fn a_parallel_restore_reads_each_table_from_its_own_part_of_the_stored_file() {
    use crate::s3::{BUCKET, S3Server};
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database shop");
    // Two tables of ≈ 20 MB each (more than a frame's 8 MiB), a small one after them.
    // The first has a sequence, a view and a comment that must exist before its load
    // starts (created beside it, they would wait for its lock); the second a check
    // calling a function that reads another table, so it waits for all of the schema.
    cluster.psql(
        "shop",
        "create table first (id serial primary key, n bigint generated by default as identity, a text, b text, c text);
         insert into first select g, g, md5(g::text), md5((g + 1)::text), md5((g + 2)::text) from generate_series(1, 200000) g;
         select setval('first_id_seq', 200000);
         create materialized view first_count as select count(*) from first;
         create table parted (at date not null, v text) partition by range (at);
         create table parted_2026 partition of parted for values from ('2026-01-01') to ('2027-01-01');
         insert into parted values ('2026-12-03', 'a partition');
         select lo_from_bytea(0, 'a large object');
         comment on table first is 'loaded before the rest of the schema exists';
         create table tail (v text); insert into tail values ('after the large ones');
         create view first_and_tail as select first.id, tail.v from first, tail;
         create table zz_lookup (v text); insert into zz_lookup values ('read by a check');
         create function lookup_is_there() returns boolean language plpgsql as
           $$ begin perform 1 from public.zz_lookup limit 1; return true; end $$;
         create table second (id bigint, body text, check (lookup_is_there()));
         insert into second select g, repeat(md5(g::text), 3) from generate_series(1, 200000) g;",
    );
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let mut steps = String::new();
    for repo in ["local", "offsite"] {
        steps.push_str(&format!(
            "  - {{ id: backup-{repo}, type: backup, target: db, database: shop, repository: {repo} }}\n  \
             - {{ id: restore-{repo}, type: restore, needs: [backup-{repo}], repository: {repo}, backup: \"{{{{ steps.backup-{repo}.outputs.backup_id }}}}\", into: {{ target: db, database: copy_{repo} }}, jobs: 2 }}\n"
        ));
    }
    let plan = format!(
        r#"
version: 1
name: frames
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local: {{ url: "file://./repo", create: true }}
  offsite: {{ url: "s3://{BUCKET}/shop", endpoint: "{}", force_path_style: true, create: true }}
steps:
{steps}"#,
        server.endpoint
    );
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    env.push(("OPSRUNNER_LOG", "opsrunner=debug".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = ws.apply_env(&plan, &["--concurrency", "1"], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Both restores, the local one and the one from S3 (by ranged reads).
    assert_eq!(
        run.stderr
            .matches("loading the tables from their parts of the stored file")
            .count(),
        2,
        "{}",
        run.stderr
    );
    // Only the first table loads before the rest of the schema exists.
    let early: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("creating the schema of the first tables"))
        .collect();
    assert_eq!(early.len(), 2, "{}", run.stderr);
    assert!(early.iter().all(|l| l.contains("runs=1")), "{early:?}");
    assert!(
        run.stderr
            .contains("creating the rest of the schema while the first tables load"),
        "{}",
        run.stderr
    );

    let id = run.step("backup-local")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.path("repo").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["manifest_version"], 2);
    let index = &manifest["files"][0]["index"];
    // The head and the first table, the second table, the small ones (a partition,
    // two tables, the large objects).
    assert_eq!(index["frames"].as_array().unwrap().len(), 3, "{index}");
    assert_eq!(index["blocks"].as_array().unwrap().len(), 6, "{index}");
    // A standard tool reads the frames as one stream.
    let file = ws
        .path("repo")
        .join(&id)
        .join(manifest["files"][0]["name"].as_str().unwrap());
    let zstd = std::process::Command::new("zstd")
        .arg("-t")
        .arg(&file)
        .output();
    if let Ok(out) = zstd {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The large tables' rows went over opsrunner's own connections, once per restore
    // (the small ones share their run with the large objects, which COPY cannot load: a
    // pg_restore loads it).
    for table in ["public.first", "public.second"] {
        assert_eq!(
            run.stderr
                .lines()
                .filter(|l| l.contains("table data loaded") && l.contains(table))
                .count(),
            2,
            "{table}: {}",
            run.stderr
        );
    }

    let source = cluster.content("shop");
    for part in ["after the large ones", "a partition", "200000"] {
        assert!(source.contains(part), "{part}: {source:.300}");
    }
    for copy in ["copy_local", "copy_offsite"] {
        assert_same(&cluster.schema("shop"), &cluster.schema(copy), copy);
        assert!(
            cluster.content(copy) == source,
            "{copy}: the content differs"
        );
    }
}

/// A parallel restore loads table data over its own connections only when the archive's
/// data is UTF-8 (what those connections speak); a database in another encoding is
/// loaded by pg_restore, which sets the archive's, and comes back the same.
#[test]
fn a_database_in_another_encoding_round_trips_through_a_parallel_restore() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "create database latin encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' template template0",
    );
    cluster.psql(
        "latin",
        // chr() gives the database's own characters: é and ñ in LATIN1, whatever the
        // encoding psql's session speaks.
        "create table words (id int primary key, w text);
         insert into words select g, 'caf' || chr(233) || ' ' || chr(241) || ' ' || g from generate_series(1, 5000) g;",
    );
    let ws = Workspace::new();
    let plan = r#"
version: 1
name: latin
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
repositories:
  repo: { url: "file://./repo", create: true }
steps:
  - { id: backup, type: backup, target: db, database: latin, repository: repo }
  - { id: restore, type: restore, needs: [backup], repository: repo, backup: "{{ steps.backup.outputs.backup_id }}", into: { target: db, database: latin_copy }, jobs: 2 }
"#;
    let url = cluster.url("postgres");
    let run = ws.apply_env(
        plan,
        &[],
        &[("DATABASE_URL", &url), ("OPSRUNNER_LOG", "opsrunner=debug")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("loading the tables from their parts of the stored file"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("table data loaded"), "{}", run.stderr);
    assert_eq!(
        cluster.psql(
            "latin_copy",
            "set client_encoding = 'UTF8'; select w from words where id = 4242"
        ),
        "café ñ 4242"
    );
    // The same text, whatever encoding each database stores it in.
    let all = "set client_encoding = 'UTF8'; select count(*), md5(convert_to(string_agg(w, ',' order by id), 'UTF8')) from words";
    assert_eq!(cluster.psql("latin", all), cluster.psql("latin_copy", all));
}
