//! The version matrix (issue 30): every PostgreSQL major users run, 13 to 18, through
//! the same work — logical backup → verify → restore in all three formats of the hostile
//! schema (a parallel restore among them), reset + migrate + seed, base backup → restore to
//! a time → verify to a mark — with client tools installed as PGDG installs them (the
//! newest first in `PATH`, others beside). Then the mixed cases: only the newest tools
//! against every older server, and a backup of an older server restored into a newer one.
//! Server binaries come from `.ci/install-postgres` (run by `.ci/run`, or by the harness).

use crate::common::Workspace;
use crate::common::pg::{Cluster, archive_with, client_bin_of, server_bin_of, server_owner};
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
/// two jobs), and a reset + migrate + seed of `app_dev`.
fn logical_plan(repo_url: &str) -> String {
    let mut plan = format!(
        r#"
version: 1
name: matrix
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  repo: {{ url: "{repo_url}" }}
steps:
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
  local: {{ url: "{repo_url}" }}
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
  local: {{ url: "{repo_url}" }}
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

/// The server's clock now, as an RFC 3339 time a restore can aim at.
fn server_now(cluster: &Cluster) -> String {
    cluster.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// The whole matrix row of PostgreSQL `major`.
fn matrix(major: u32) {
    let ws = Workspace::new();
    let (cluster, repo_url) = source(&ws, major);
    let path = pgdg_path(major);
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str()), ("PATH", path.as_str())];

    let run = ws.apply_env(&logical_plan(&repo_url), &["--concurrency", "2"], &env);
    assert_eq!(run.code, 0, "PostgreSQL {major}: {}", run.everything());
    let log = run.everything();
    // The tools were chosen for this server: pg_dump of its own major or the closest newer.
    assert!(
        log.contains(&format!("for server PostgreSQL {major}.")),
        "PostgreSQL {major}: {log}"
    );
    let (schema, content) = (cluster.schema("shop"), cluster.content("shop"));
    for format in FORMATS {
        let copy = format!("copy_{format}");
        assert_eq!(
            cluster.schema(&copy),
            schema,
            "PostgreSQL {major}, {format}: schema differs"
        );
        assert_eq!(
            cluster.content(&copy),
            content,
            "PostgreSQL {major}, {format}: content differs"
        );
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
