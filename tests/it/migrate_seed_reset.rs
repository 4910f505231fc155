//! `migrate`, `seed` and `reset` against a real cluster, with the repository's own
//! example migrations and seeds.

use crate::common::Workspace;
use crate::common::pg::Cluster;
use std::path::Path;

fn repo_path(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

fn migrate_plan(action: &str, extra: &str) -> String {
    format!(
        r#"
version: 1
name: migrate
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
steps:
  - {{ id: m, type: migrate, target: db, database: app, action: {action}, dir: "{}"{extra} }}
"#,
        repo_path("migrations")
    )
}

#[test]
fn migrations_apply_report_and_revert_like_sqlx_cli() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let ws = Workspace::new();
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];

    // The preview lists what is pending and creates nothing, not even the bookkeeping table.
    let plan = ws.write_plan(&migrate_plan("up", ""));
    let preview = crate::common::opsrunner()
        .arg("plan")
        .arg(&plan)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(
        preview.status.success(),
        "{}",
        String::from_utf8_lossy(&preview.stderr)
    );
    assert!(text.contains("pending: 20260101000000_customers"), "{text}");
    assert!(
        text.contains("pending: 20260103000000_order_totals_view"),
        "{text}"
    );
    assert_eq!(
        cluster.psql("app", "select to_regclass('_sqlx_migrations') is null"),
        "t"
    );

    let up = ws.apply_env(&migrate_plan("up", ""), &[], &env);
    assert_eq!(up.code, 0, "{}", up.stderr);
    assert_eq!(
        up.step("m")["outputs"]["applied"],
        "20260101000000_customers 20260102000000_orders 20260103000000_order_totals_view"
    );
    // sqlx-cli's table, with its checksums: `sqlx migrate info` would agree.
    assert_eq!(
        cluster.psql(
            "app",
            "select count(*) from _sqlx_migrations where success and length(checksum) = 48"
        ),
        "3"
    );

    let again = ws.apply_env(&migrate_plan("up", ""), &[], &env);
    assert_eq!(again.step("m")["outputs"]["applied"], "");
    let status = ws.apply_env(&migrate_plan("status", ""), &[], &env);
    assert_eq!(status.step("m")["outputs"]["pending"], "");

    let revert = ws.apply_env(&migrate_plan("revert", ", steps: 2"), &[], &env);
    assert_eq!(revert.code, 0, "{}", revert.stderr);
    assert_eq!(
        revert.step("m")["outputs"]["reverted"],
        "20260102000000_orders 20260103000000_order_totals_view"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "select to_regclass('orders') is null and to_regclass('customers') is not null"
        ),
        "t"
    );
    let status = ws.apply_env(&migrate_plan("status", ""), &[], &env);
    assert_eq!(
        status.step("m")["outputs"]["pending"],
        "20260102000000_orders 20260103000000_order_totals_view"
    );
}

#[test]
fn a_failing_migration_leaves_no_trace() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let ws = Workspace::new();
    let dir = ws.path("migrations");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("1_good.sql"), "create table good (id int);").unwrap();
    std::fs::write(
        dir.join("2_bad.sql"),
        "create table half (id int); select 1/0;",
    )
    .unwrap();
    let url = cluster.url("postgres");
    let run = ws.apply_env(
        "version: 1\nname: m\ntargets:\n  db: { url: \"{{ env.DATABASE_URL }}\" }\nsteps:\n  - { id: m, type: migrate, target: db, database: app, dir: migrations }\n",
        &[],
        &[("DATABASE_URL", url.as_str())],
    );
    assert_eq!(run.status("m"), "failed");
    assert!(
        run.step("m")["reason"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{}",
        run.report
    );
    // The good one is applied; the bad one's table and bookkeeping row are not.
    assert_eq!(
        cluster.psql(
            "app",
            "select to_regclass('good') is not null, to_regclass('half') is null"
        ),
        "t|t"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "select string_agg(version::text, ',') from _sqlx_migrations"
        ),
        "1"
    );
}

#[test]
fn seeds_apply_once_unless_forced() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table hits (id serial primary key, source text); create table people (id int primary key, name text, city text default 'nowhere')");
    let ws = Workspace::new();
    let set = ws.path("seeds/test");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(
        set.join("10-hits.sql"),
        "insert into hits (source) values ('sql');",
    )
    .unwrap();
    std::fs::write(
        set.join("20-people.csv"),
        "name,id\n\"Doe, Jane\",1\nJohn,2\n",
    )
    .unwrap();
    let url = cluster.url("postgres");
    let plan = |force: bool| {
        format!(
            "version: 1\nname: s\ntargets:\n  db: {{ url: \"{{{{ env.DATABASE_URL }}}}\" }}\nsteps:\n  - {{ id: s, type: seed, target: db, database: app, environment: test, dir: seeds, force: {force} }}\n"
        )
    };
    let env = [("DATABASE_URL", url.as_str())];
    let first = ws.apply_env(&plan(false), &[], &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.step("s")["outputs"]["applied"], "true");
    assert_eq!(
        cluster.psql(
            "app",
            "select string_agg(format('%s:%s:%s', id, name, city), ';' order by id) from people"
        ),
        "1:Doe, Jane:nowhere;2:John:nowhere"
    );
    let second = ws.apply_env(&plan(false), &[], &env);
    assert_eq!(second.step("s")["outputs"]["applied"], "false");
    assert_eq!(cluster.psql("app", "select count(*) from hits"), "1");
    // Forced, it runs again: the CSV now violates the primary key and everything rolls back.
    let forced = ws.apply_env(&plan(true), &[], &env);
    assert_eq!(forced.status("s"), "failed");
    assert!(
        forced.step("s")["reason"]
            .as_str()
            .unwrap()
            .contains("20-people.csv"),
        "{}",
        forced.report
    );
    assert_eq!(
        cluster.psql("app", "select count(*) from hits"),
        "1",
        "the SQL file was rolled back with the CSV"
    );
}

#[test]
fn reset_rebuilds_a_database_and_is_guarded_on_protected_targets() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app_dev");
    cluster.psql("app_dev", "create table leftover (x int)");
    let ws = Workspace::new();
    let url = cluster.url("postgres");
    let plan = format!(
        r#"
version: 1
name: reset
targets:
  dev: {{ url: "{{{{ env.DATABASE_URL }}}}", protected: true }}
steps:
  - id: fresh
    type: reset
    target: dev
    database: app_dev
    migrations: "{}"
    seeds: "{}"
    environment: development
"#,
        repo_path("migrations"),
        repo_path("examples/seeds")
    );
    let env = [("DATABASE_URL", url.as_str())];
    let refused = ws.apply_env(&plan, &[], &env);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert_eq!(
        cluster.psql("app_dev", "select to_regclass('leftover') is not null"),
        "t"
    );

    // A session left open on the database does not stop the reset.
    let mut idle = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            &cluster.url("app_dev"),
            "-c",
            "select pg_sleep(30)",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let done = ws.apply_env(&plan, &["--confirm", "dev"], &env);
    let _ = idle.kill();
    let _ = idle.wait();
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(
        cluster.psql("app_dev", "select to_regclass('leftover') is null"),
        "t"
    );
    assert_eq!(
        cluster.psql("app_dev", "select count(*) from customers"),
        "5003"
    );
    assert_eq!(
        cluster.psql("app_dev", "select sum(amount_cents) from orders"),
        "16519"
    );
}

/// `migrate` (up) and `seed` write: on a protected target they need `--confirm`, and the
/// preview shows each pending file's statements with the destructive ones marked.
#[test]
fn migrations_and_seeds_on_a_protected_target_need_confirm_and_show_their_statements() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table precious (id int); insert into precious values (1)",
    );
    let ws = Workspace::new();
    let migrations = ws.path("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("20260101000000_cleanup.up.sql"),
        "create table kept (id int);\n-- old data goes\ndrop table precious;\n",
    )
    .unwrap();
    let seeds = ws.path("seeds/production");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(
        seeds.join("10-reset.sql"),
        "insert into kept values (1); delete from kept where id > 1",
    )
    .unwrap();
    std::fs::write(seeds.join("20-kept.csv"), "id\n2\n").unwrap();
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];
    let plan = |step: &str| {
        format!(
            "version: 1\nname: guarded\ntargets:\n  prod: {{ url: \"{{{{ env.DATABASE_URL }}}}\", protected: true }}\nsteps:\n  - {step}\n"
        )
    };
    let migrate = plan("{ id: up, type: migrate, target: prod, database: app, dir: migrations }");
    let seed = plan(
        "{ id: seed, type: seed, target: prod, database: app, environment: production, dir: seeds }",
    );

    // The preview: each statement, the destructive one marked, and the need to confirm.
    let path = ws.write_plan(&migrate);
    let preview = crate::common::opsrunner()
        .arg("plan")
        .arg(&path)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{text}");
    assert!(text.contains("pending: 20260101000000_cleanup"), "{text}");
    assert!(text.contains("1. create table kept (id int)"), "{text}");
    assert!(
        text.contains("2. DESTRUCTIVE: -- old data goes drop table precious"),
        "{text}"
    );
    assert!(text.contains("--confirm prod"), "{text}");

    for (step, what) in [(&migrate, "migrate"), (&seed, "seed")] {
        let refused = ws.apply_env(step, &[], &env);
        assert_eq!(refused.code, 3, "{what}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("--confirm prod"),
            "{what}: {}",
            refused.stderr
        );
        assert_eq!(cluster.psql("app", "select count(*) from precious"), "1");
    }
    assert_eq!(
        cluster.psql("app", "select to_regclass('_sqlx_migrations') is null"),
        "t"
    );

    let path = ws.write_plan(&seed);
    let preview = crate::common::opsrunner()
        .arg("plan")
        .arg(&path)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(text.contains("seed file: 10-reset.sql"), "{text}");
    assert!(text.contains("1. insert into kept values (1)"), "{text}");
    assert!(
        text.contains("2. DESTRUCTIVE: delete from kept where id > 1"),
        "{text}"
    );
    assert!(text.contains("COPY into \"kept\""), "{text}");

    // Confirmed, both run.
    let up = ws.apply_env(&migrate, &["--confirm", "prod"], &env);
    assert_eq!(up.code, 0, "{}", up.stderr);
    let seeded = ws.apply_env(&seed, &["--confirm", "prod"], &env);
    assert_eq!(seeded.code, 0, "{}", seeded.stderr);
    assert_eq!(
        cluster.psql(
            "app",
            "select string_agg(id::text, ',' order by id) from kept"
        ),
        "1,2"
    );
}
