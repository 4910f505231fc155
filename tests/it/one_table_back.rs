//! One table back (issue 34): `restore` with `tables:` (and `--table`) brings tables of a
//! backup into the live database beside the live ones, in a new schema, with their
//! sequences, indexes, constraints, triggers and grants; never over a live table unless
//! `overwrite` is asked for that table, and then only with `--confirm` on a protected
//! target; a table the backup lacks is a clear error.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner, run};

const SCHEMA: &str = r#"
create role reader;
create type mood as enum ('ok', 'sad');
create table customers (id serial primary key, name text not null);
create table orders (
  id bigint generated always as identity primary key,
  customer int references customers (id),
  m mood default 'ok',
  note text,
  touched int default 0
);
create index orders_note_idx on orders (note);
create function touch() returns trigger language plpgsql as $$ begin new.touched := old.touched + 1; return new; end $$;
create trigger orders_touch before update on orders for each row execute function touch();
grant select on orders to reader;
comment on table orders is 'what was sold';
insert into customers (name) select 'c' || g from generate_series(1, 3) g;
insert into orders (customer, note) select 1 + g % 3, 'order ' || g from generate_series(1, 100) g;
create schema sales;
create table sales.items (id serial primary key, x text);
insert into sales.items (x) select md5(g::text) from generate_series(1, 10) g;
"#;

fn restore(plan: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run(opsrunner()
        .args(["restore", "--plan"])
        .arg(plan)
        .args([
            "--repository",
            "local",
            "--target",
            "app",
            "--database",
            "app",
        ])
        .args(extra)
        .envs(env.iter().copied()))
}

#[test]
fn a_deleted_table_comes_back_beside_the_live_one_and_over_it_only_when_asked() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", SCHEMA);
    let yaml = format!(
        r#"
version: 1
name: tables
targets:
  app: {{ url: "{{{{ env.DATABASE_URL }}}}", protected: true }}
repositories:
  local: {{ url: "file://{root}/local", create: true }}
steps:
  - {{ id: backup, type: backup, target: app, database: app, repository: local }}
"#,
        root = ws.dir.path().display()
    );
    let plan = ws.write_plan(&yaml);
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];
    let applied = ws.apply_env(&yaml, &[], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let first = applied.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Someone deleted rows.
    cluster.psql("app", "delete from orders where id > 50");

    // What a killed restore left (its scratch database, marked as such) goes first.
    cluster.psql("postgres", "create database opsrunner_tables_0dead0ff");
    cluster.psql(
        "postgres",
        "comment on database opsrunner_tables_0dead0ff is 'opsrunner restore scratch database (run r); dropped when the restore ends'",
    );
    // Beside the live table, in a new schema, with what hangs on it.
    let (code, out, err) = restore(&plan, &["--table", "orders", "--as", "back"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("removed scratch database `opsrunner_tables_0dead0ff`"),
        "{err}"
    );
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname like 'opsrunner_tables_%'"
        ),
        "0",
        "the leftover and the restore's own scratch database are gone"
    );
    assert!(out.contains("tables: back.orders"), "{out}");
    assert!(
        err.contains("foreign key orders_customer_fkey not restored"),
        "{err}"
    );
    assert_eq!(
        cluster.psql("app", "select count(*) from orders"),
        "50",
        "the live table is as it was"
    );
    assert_eq!(
        cluster.psql("app", "select count(*) from back.orders"),
        "100"
    );
    assert_eq!(
        cluster.psql("app", "select string_agg(indexname, ',' order by indexname) from pg_indexes where schemaname = 'back'"),
        "orders_note_idx,orders_pkey"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "select has_table_privilege('reader', 'back.orders', 'select')"
        ),
        "t"
    );
    assert_eq!(
        cluster.psql("app", "select obj_description('back.orders'::regclass)"),
        "what was sold"
    );
    // The identity's sequence carries on where the backup left it, the trigger fires.
    assert_eq!(
        cluster.psql(
            "app",
            "insert into back.orders (note) values ('new') returning id"
        ),
        "101"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "update back.orders set note = 'x' where id = 1 returning touched"
        ),
        "1"
    );

    // A table the backup lacks, and a schema that exists already.
    let (code, out, err) = restore(&plan, &["--table", "ordrs"], &env);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("table public.ordrs is not in the backup"),
        "{err}"
    );
    assert!(err.contains("public.orders"), "names what it holds: {err}");
    let (code, out, err) = restore(&plan, &["--table", "orders", "--as", "back"], &env);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("schema `back` already exists"), "{err}");

    // A whole schema, from a directory-format backup.
    let (code, out, err) = run(opsrunner()
        .args(["backup", "--plan"])
        .arg(&plan)
        .args([
            "--target",
            "app",
            "--database",
            "app",
            "--repository",
            "local",
            "--format",
            "directory",
        ])
        .envs(env));
    assert_eq!(code, 0, "{out}{err}");
    let directory = out
        .lines()
        .find_map(|l| l.strip_prefix("backup_id: "))
        .unwrap()
        .to_string();
    let (code, out, err) = restore(
        &plan,
        &[
            "--backup",
            &directory,
            "--schema",
            "sales",
            "--as",
            "sales_back",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        cluster.psql("app", "select count(*) from sales_back.items"),
        "10"
    );

    // Over the live table: destructive, so refused on a protected target without --confirm …
    let (code, out, err) = restore(
        &plan,
        &["--backup", &first, "--table", "orders", "--overwrite"],
        &env,
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("--confirm app"), "{err}");
    assert_eq!(cluster.psql("app", "select count(*) from orders"), "50");
    // … and with it, the rows come back into the live table, whose definition stays.
    let (code, out, err) = restore(
        &plan,
        &[
            "--backup",
            &first,
            "--table",
            "orders",
            "--overwrite",
            "--confirm",
            "app",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(cluster.psql("app", "select count(*) from orders"), "100");
    assert_eq!(
        cluster.psql("app", "select count(*) from pg_constraint where conname = 'orders_customer_fkey' and conrelid = 'public.orders'::regclass"),
        "1"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "select count(*) from pg_namespace where nspname like 'restored_%'"
        ),
        "0",
        "the restored copy is gone once its rows are in"
    );
}

#[test]
fn rows_deleted_at_a_moment_come_back_from_a_base_backup_in_one_step() {
    use crate::common::pg::{
        archive_everything, archive_with, archived_at_least, in_local, server_now, server_owner,
    };
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let (uid, gid) = server_owner(&cluster);
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let repo_url = format!("file://{}", repo.display());
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key, note text); insert into t select g, 'row ' || g from generate_series(1, 20) g; create table other (x int)",
    );
    archive_with(&cluster, &format!("--repository {repo_url}"), &[]);
    archived_at_least(&cluster, 1);
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];
    let (code, out, err) = run(opsrunner()
        .args([
            "backup",
            "--base",
            "--target",
            "env:DATABASE_URL",
            "--repository",
            &repo_url,
        ])
        .envs(env));
    assert_eq!(code, 0, "{out}{err}");
    cluster.psql("app", "insert into t values (21, 'after the backup')");
    let before = server_now(&cluster);
    std::thread::sleep(std::time::Duration::from_millis(50));
    cluster.psql("app", "delete from t where id % 2 = 0");
    archive_everything(&cluster, in_local(&repo));

    let (code, out, err) = run(opsrunner()
        .args(["restore", "--repository", &repo_url, "--to-time", &before])
        .args([
            "--target",
            "env:DATABASE_URL",
            "--database",
            "app",
            "--table",
            "t",
            "--as",
            "at_1402",
        ])
        .envs(env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reached_time: "), "{out}");
    assert_eq!(cluster.psql("app", "select count(*) from at_1402.t"), "21");
    assert_eq!(
        cluster.psql("app", "select count(*) from t"),
        "11",
        "the live table is untouched"
    );
    assert_eq!(
        cluster.psql(
            "app",
            "select count(*) from pg_tables where schemaname = 'at_1402'"
        ),
        "1",
        "only the table asked for"
    );
}
