//! The version matrix (issue 30): every PostgreSQL major users run, 13 to 18, through
//! the same work — logical backup → verify → restore in all three formats of the hostile
//! schema (a parallel restore among them), reset + migrate + seed, base backup → restore to
//! a time → verify to a mark — with client tools installed as PGDG installs them (the
//! newest first in `PATH`, others beside). Then the mixed cases: only the newest tools
//! against every older server, and a backup of an older server restored into a newer one.
//! Server binaries come from `.ci/install-postgres` (run by `.ci/run`, or by the harness).

use crate::common::Workspace;
use crate::common::pg::{
    Cluster, archive_with, client_bin_of, server_bin_of, server_now, server_owner,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FORMATS: &[&str] = &["custom", "directory", "plain"];

/// The newest major installed for the matrix: what throwaway clusters start as.
const NEWEST: u32 = 18;

fn repo_path(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// `PATH` as a PGDG installation has it: the newest client tools first, then the others
/// installed here, then the server programs of `major` (so that a throwaway cluster of the
/// backup's major can start), then the machine's own `PATH` (Debian's 15).
fn pgdg_path(major: u32) -> String {
    let mut dirs: Vec<PathBuf> = [18, 16].into_iter().filter_map(client_bin_of).collect();
    dirs.push(server_bin_of(major));
    let mut path = std::env::join_paths(dirs).unwrap().into_string().unwrap();
    path.push(':');
    path.push_str(&std::env::var("PATH").unwrap_or_default());
    path
}

/// A cluster of `major` with the hostile schema in `shop`, a table `t` in `app`, and its
/// WAL archived into a local repository: the cluster and the repository's URL.
fn source(ws: &Workspace, major: u32) -> (Cluster, String) {
    let cluster = Cluster::start_major(major);
    assert_eq!(cluster.major(), major);
    cluster.psql("postgres", "create database shop");
    cluster.psql_file(
        "shop",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile.sql"),
    );
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let url = format!("file://{}", repo.display());
    archive_with(&cluster, &format!("--repository {url}"), &[]);
    (cluster, url)
}

/// Backup → verify → restore of `shop` in every format (custom and directory restored with
/// two jobs).
fn logical_plan(repo_url: &str) -> String {
    let mut plan = format!(
        r#"
version: 1
name: matrix
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  repo: {{ url: "{repo_url}", create: true }}
steps:
"#
    );
    for format in FORMATS {
        let jobs = if *format == "plain" {
            ""
        } else {
            "\n    jobs: 2"
        };
        plan.push_str(&format!(
            r#"
  - {{ id: backup-{format}, type: backup, target: db, database: shop, repository: repo, format: {format}, fingerprint: full }}
  - id: verify-{format}
    type: verify
    needs: [backup-{format}]
    repository: repo
    backup: "{{{{ steps.backup-{format}.outputs.backup_id }}}}"
    restore_into: {{ target: db, database: "verify_{format}_{{{{ run.id }}}}" }}
  - id: restore-{format}
    type: restore
    needs: [verify-{format}]
    repository: repo
    backup: "{{{{ steps.backup-{format}.outputs.backup_id }}}}"
    into: {{ target: db, database: copy_{format} }}{jobs}
"#
        ));
    }
    plan
}

/// A reset + migrate + seed of `app_dev`.
fn reset_step() -> String {
    format!(
        r#"
  - id: fresh
    type: reset
    target: db
    database: app_dev
    migrations: "{}"
    seeds: "{}"
    environment: development
"#,
        repo_path("migrations"),
        repo_path("examples/seeds")
    )
}

/// `shop` of `restored` has the schema and the content of `shop` of `source`, for every
/// format's copy.
fn assert_copies(cluster: &Cluster, what: &str) {
    let (schema, content) = (cluster.schema("shop"), cluster.content("shop"));
    for format in FORMATS {
        let copy = format!("copy_{format}");
        assert_eq!(
            cluster.schema(&copy),
            schema,
            "{what}, {format}: schema differs"
        );
        assert_eq!(
            cluster.content(&copy),
            content,
            "{what}, {format}: content differs"
        );
    }
}

/// A base backup, rows committed around a moment, a mark; then a restore to that moment
/// and a verify to the mark, each in a throwaway cluster.
fn pitr_plans(repo_url: &str, app_url: &str) -> (String, String) {
    let base = format!(
        r#"
version: 1
name: base
targets:
  app: {{ url: "{app_url}" }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - {{ id: base, type: base_backup, target: app, repository: local, wal_wait: 30s }}
"#
    );
    let drill = format!(
        r#"
version: 1
name: drill
targets:
  app: {{ url: "{app_url}" }}
  drill: {{ ephemeral: true }}
  proof: {{ ephemeral: true }}
repositories:
  local: {{ url: "{repo_url}", create: true }}
steps:
  - {{ id: mark, type: pitr_mark, target: app, repository: local, fingerprint: full, wal_wait: 30s }}
  - id: restore
    type: restore
    needs: [mark]
    repository: local
    to: {{ time: "{{{{ vars.at }}}}" }}
    into: {{ target: drill }}
  - id: rows
    type: sql
    needs: [restore]
    target: drill
    database: app
    query: "select string_agg(id::text, ',' order by id) from t"
  - id: verify
    type: verify
    needs: [mark]
    repository: local
    to: {{ mark: latest }}
    restore_into: {{ target: proof }}
vars:
  at: ""
"#
    );
    (base, drill)
}

/// The whole matrix row of PostgreSQL `major`.
fn matrix(major: u32) {
    let ws = Workspace::new();
    let (cluster, repo_url) = source(&ws, major);
    let path = pgdg_path(major);
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str()), ("PATH", path.as_str())];

    let plan = logical_plan(&repo_url) + &reset_step();
    let run = ws.apply_env(&plan, &["--concurrency", "2"], &env);
    assert_eq!(run.code, 0, "PostgreSQL {major}: {}", run.everything());
    let log = run.everything();
    // The tools were chosen for this server: pg_dump of its own major or the closest newer.
    assert!(
        log.contains(&format!("for server PostgreSQL {major}.")),
        "PostgreSQL {major}: {log}"
    );
    assert_copies(&cluster, &format!("PostgreSQL {major}"));
    for format in FORMATS {
        let checks = run.step(&format!("verify-{format}"))["outputs"]["checks"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(checks.contains("fingerprints=pass"), "{checks}");
    }
    assert_eq!(
        cluster.psql("app_dev", "select count(*) from customers"),
        "5003"
    );

    let (base, drill) = pitr_plans(&repo_url, &cluster.url("app"));
    let based = ws.apply_env(&base, &[], &env);
    assert_eq!(based.code, 0, "PostgreSQL {major}: {}", based.everything());
    cluster.psql("app", "insert into t values (1)");
    cluster.psql("app", "insert into t values (2)");
    let at = server_now(&cluster);
    std::thread::sleep(Duration::from_millis(50));
    cluster.psql("app", "insert into t values (3)");
    let drilled = ws.apply_env(&drill, &["--var", &format!("at={at}")], &env);
    assert_eq!(
        drilled.code,
        0,
        "PostgreSQL {major}: {}",
        drilled.everything()
    );
    assert_eq!(
        drilled.step("rows")["outputs"]["value"],
        "1,2",
        "{}",
        drilled.everything()
    );
    // Throwaway clusters start on the newest server; a copy of this cluster's files runs
    // on its own major's programs instead.
    assert_eq!(
        drilled.everything().contains(&format!(
            "is of PostgreSQL {major}: the recovered copy runs"
        )),
        major != NEWEST,
        "{}",
        drilled.everything()
    );

    // The file-level way (the target's data directory read here) on the same server: the
    // drill to a moment after it restores from it. On the oldest server (pg_start_backup),
    // Debian's (pg_backup_start) and the newest: the way is the same on the others.
    if ![13, 15, NEWEST].contains(&major) {
        return;
    }
    let data = cluster.dir.path().join("data");
    let files = base.replace(
        &format!("app: {{ url: \"{}\" }}", cluster.url("app")),
        &format!(
            "app: {{ url: \"{}\", data_directory: \"{}\" }}",
            cluster.url("app"),
            data.display()
        ),
    );
    assert_ne!(files, base);
    let based = ws.apply_env(&files, &[], &env);
    assert_eq!(based.code, 0, "PostgreSQL {major}: {}", based.everything());
    assert_eq!(based.step("base")["outputs"]["method"], "file-level");
    cluster.psql("app", "insert into t values (4)");
    let at = server_now(&cluster);
    std::thread::sleep(Duration::from_millis(50));
    cluster.psql("app", "insert into t values (5)");
    let drilled = ws.apply_env(&drill, &["--var", &format!("at={at}")], &env);
    assert_eq!(
        drilled.code,
        0,
        "PostgreSQL {major}: {}",
        drilled.everything()
    );
    assert_eq!(drilled.step("rows")["outputs"]["value"], "1,2,3,4");
    assert!(
        drilled
            .everything()
            .contains("every one checked against its SHA-256"),
        "PostgreSQL {major}: {}",
        drilled.everything()
    );
}

#[test]
fn postgresql_13() {
    matrix(13);
}

#[test]
fn postgresql_14() {
    matrix(14);
}

#[test]
fn postgresql_15() {
    matrix(15);
}

#[test]
fn postgresql_16() {
    matrix(16);
}

#[test]
fn postgresql_17() {
    matrix(17);
}

#[test]
fn postgresql_18() {
    matrix(18);
}

/// The case the issue was filed for: PostgreSQL 18's client tools alone (PGDG's newest,
/// nothing older installed) against every older server. pg_restore 18 sends
/// `SET transaction_timeout`, which 13 to 16 reject: its script goes through psql
/// without it, and every format verifies and restores with no difference.
#[test]
fn the_newest_tools_alone_back_up_verify_and_restore_every_older_server() {
    let newest = client_bin_of(NEWEST).expect("PostgreSQL 18 client tools");
    let only_newest = newest.display().to_string();
    for major in 13..NEWEST {
        let ws = Workspace::new();
        let cluster = Cluster::start_major(major);
        cluster.psql("postgres", "create database shop");
        cluster.psql_file(
            "shop",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile.sql"),
        );
        let url = cluster.url("postgres");
        let run = ws.apply_env(
            &logical_plan("file://./repo"),
            &["--concurrency", "2"],
            &[
                ("DATABASE_URL", url.as_str()),
                ("OPSRUNNER_PG_SEARCH", only_newest.as_str()),
            ],
        );
        assert_eq!(run.code, 0, "PostgreSQL {major}: {}", run.everything());
        let log = run.everything();
        assert!(
            log.contains(&format!(
                "using {}/pg_dump (PostgreSQL 18.6) for server PostgreSQL {major}.",
                newest.display()
            )),
            "{log}"
        );
        assert_eq!(
            log.contains("without `SET transaction_timeout`"),
            major < 17,
            "PostgreSQL {major}: {log}"
        );
        assert_copies(&cluster, &format!("PostgreSQL {major} with 18's tools"));
    }
}

/// The upgrade path users take: a backup of an old server restored into a new one.
#[test]
fn a_backup_of_an_older_server_restores_into_a_newer_one() {
    let ws = Workspace::new();
    let old = Cluster::start_major(13);
    old.psql("postgres", "create database shop");
    old.psql_file(
        "shop",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile.sql"),
    );
    let new = Cluster::start_major(NEWEST);
    let plan = format!(
        r#"
version: 1
name: upgrade
targets:
  old: {{ url: "{}" }}
  new: {{ url: "{}" }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: custom, type: backup, target: old, database: shop, repository: repo, format: custom, fingerprint: full }}
  - {{ id: plain, type: backup, target: old, database: shop, repository: repo, format: plain, fingerprint: full }}
  - id: restore-custom
    type: restore
    needs: [custom]
    repository: repo
    backup: "{{{{ steps.custom.outputs.backup_id }}}}"
    into: {{ target: new, database: shop }}
    jobs: 2
  - id: restore-plain
    type: restore
    needs: [plain]
    repository: repo
    backup: "{{{{ steps.plain.outputs.backup_id }}}}"
    into: {{ target: new, database: shop_plain }}
"#,
        old.url("postgres"),
        new.url("postgres")
    );
    let path = pgdg_path(13);
    let run = ws.apply_env(&plan, &[], &[("PATH", path.as_str())]);
    assert_eq!(run.code, 0, "{}", run.everything());
    // The restores ran the destination's own pg_restore and psql.
    assert!(
        run.everything()
            .contains("/pg_restore (PostgreSQL 18.6) for server PostgreSQL 18"),
        "{}",
        run.everything()
    );
    let content = old.content("shop");
    assert_eq!(new.content("shop"), content, "custom: content differs");
    assert_eq!(new.content("shop_plain"), content, "plain: content differs");
}

/// A restore that fails because the destination lacks an extension the backup uses is
/// not a verdict on the backup: exit 1, the extension named, nothing recorded.
#[test]
fn a_verify_whose_destination_lacks_an_extension_fails_with_exit_1_naming_it() {
    // Debian's 15 has the contrib modules; the PostgreSQL 18 build here has no hstore.
    let source = Cluster::start();
    source.psql("postgres", "create database app");
    source.psql(
        "app",
        "create extension hstore; create table h (id int primary key, attrs hstore); insert into h values (1, 'a=>1')",
    );
    verify_fails_for_the_destination(
        &source,
        &Cluster::start_major(NEWEST),
        &["an extension the backup uses is not installed", "hstore"],
    );
}

/// Roles are the cluster's, not the database's: a verify's test restore leaves out owners
/// and grants (a missing role says nothing about the backup), while a restore that keeps
/// them fails with exit 1 naming the role, and creates nothing.
#[test]
fn a_missing_role_passes_verify_and_fails_a_restore_with_exit_1_naming_it() {
    let ws = Workspace::new();
    let source = Cluster::start();
    source.psql("postgres", "create database app");
    source.psql("postgres", "create role reporting");
    source.psql(
        "app",
        "create table t (id int primary key); insert into t values (1); grant select on t to reporting",
    );
    let other = Cluster::start();
    let plan = verify_plan(&source, &other, true);
    let run = ws.apply(&plan, &[]);
    assert_eq!(run.code, 1, "{}", run.everything());
    assert_eq!(run.status("verify"), "succeeded", "{}", run.everything());
    assert_eq!(run.status("restore"), "failed");
    let reason = run.step("restore")["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("a role the backup names does not exist on the destination server: create it there, or set `no_owner: true`")
            && reason.contains("\"reporting\" does not exist"),
        "{reason}"
    );
    assert_eq!(
        other.psql(
            "postgres",
            "select count(*) from pg_database where datname in ('copy', 'verify_x')"
        ),
        "0"
    );
}

/// Backs up `app` of `source` and verifies it into a scratch database on `scratch`, which
/// lacks something the backup needs: the step fails with exit 1, says `expected`, records
/// no verdict and leaves no scratch database.
fn verify_fails_for_the_destination(source: &Cluster, scratch: &Cluster, expected: &[&str]) {
    let ws = Workspace::new();
    let plan = verify_plan(source, scratch, false);
    let path = pgdg_path(15);
    let run = ws.apply_env(&plan, &[], &[("PATH", path.as_str())]);
    assert_eq!(run.code, 1, "{}", run.everything());
    assert_eq!(run.status("verify"), "failed");
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        expected.iter().all(|e| reason.contains(e))
            && reason.contains("not a verdict on the backup"),
        "{reason}"
    );
    assert!(
        run.step("verify").get("verdict").is_none(),
        "{}",
        run.everything()
    );
    let id = run.step("backup")["outputs"]["backup_id"].as_str().unwrap();
    assert!(
        !ws.path("repo").join(id).join("verification.json").exists(),
        "a verification was recorded"
    );
    // The scratch database is gone.
    assert_eq!(
        scratch.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'verify_x'"
        ),
        "0"
    );
}

/// Backs up `app` of `source`, verifies the backup into database `verify_x` of `other`,
/// and, with `restore`, then restores it into database `copy` there.
fn verify_plan(source: &Cluster, other: &Cluster, restore: bool) -> String {
    let restore = if restore {
        r#"
  - id: restore
    type: restore
    needs: [verify]
    repository: repo
    backup: "{{ steps.backup.outputs.backup_id }}"
    into: { target: other, database: copy }"#
    } else {
        ""
    };
    format!(
        r#"
version: 1
name: verify
targets:
  app: {{ url: "{}" }}
  other: {{ url: "{}" }}
repositories:
  repo: {{ url: "file://./repo", create: true }}
steps:
  - {{ id: backup, type: backup, target: app, repository: repo }}
  - id: verify
    type: verify
    needs: [backup]
    repository: repo
    backup: "{{{{ steps.backup.outputs.backup_id }}}}"
    restore_into: {{ target: other, database: verify_x }}{restore}
"#,
        source.url("app"),
        other.url("postgres")
    )
}
