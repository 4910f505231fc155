//! Table rows out and in (issue 34): `export` writes a table's or a query's rows as CSV or
//! JSON Lines into a repository (encrypted like backups, listed and verified like them) or
//! a file; `import` loads them into a table in one transaction. Every hard type round-trips:
//! text with line breaks, quotes, commas, tabs and backslashes, NULL against the empty
//! string, bytea, json, timestamps with zones, numeric precision, unicode.

use crate::common::pg::Cluster;
use crate::common::{Workspace, identity_file, opsrunner, run};

const TABLE: &str = r#"
create table odd (
  id int primary key,
  t text,
  e text,
  b bytea,
  j json,
  ts timestamptz,
  n numeric,
  a int[],
  "Odd Col" text
);
insert into odd values
  (1, E'two\nlines, a "quote", a\ttab and a back\\slash', '', '\x00ff10'::bytea, '{"k": [1, 2.50, "x\"y"], "n": null}', '2026-12-07 14:02:03.123456+05:30', 3.14159265358979323846264338327950288419, '{1,2,3}', 'ü ✓'),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, '', 'x', ''::bytea, '[]', '1999-12-31 23:59:59-08', -0.000000000000000000001, '{}', ''),
  (4, E'carriage\r\nreturn', E'\\N', '\xdeadbeef'::bytea, '"just a string"', 'infinity', 1e30, '{NULL,5}', ',');
"#;

/// Every row of `table` as text, json compared by meaning (JSON Lines keep a json value's
/// meaning, not its whitespace).
fn content(cluster: &Cluster, table: &str) -> String {
    cluster.psql(
        "app",
        &format!(
            "select string_agg(concat_ws('|', id, quote_nullable(t), quote_nullable(e), quote_nullable(b::text), quote_nullable(j::jsonb::text), quote_nullable(ts::text), quote_nullable(n::text), quote_nullable(a::text), quote_nullable(\"Odd Col\")), E'\\n' order by id) from {table}"
        ),
    )
}

#[test]
fn rows_round_trip_as_csv_and_json_lines_through_a_repository_and_a_file() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", TABLE);
    cluster.psql(
        "app",
        "create table odd_csv (like odd including all); create table odd_json (like odd including all); create table strict (id int primary key, n int not null); analyze odd",
    );
    let key_dir = ws.path("key");
    std::fs::create_dir_all(&key_dir).unwrap();
    let (identity, public) = identity_file(&key_dir);
    let yaml = format!(
        r#"
version: 1
name: rows
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local: {{ url: "file://{root}/local", create: true, encryption: {{ recipients: ["{public}"] }} }}
steps:
  - {{ id: csv, type: export, target: db, database: app, table: odd, repository: local }}
  - {{ id: jsonl, type: export, target: db, database: app, table: public.odd, format: jsonl, file: odd.jsonl.zst, encryption: {{ recipients: ["{public}"] }} }}
  - {{ id: some, type: export, target: db, database: app, query: "select id, t from odd where id < 3;", file: some.csv, compression: none }}
  - {{ id: load-csv, type: import, needs: [csv], target: db, database: app, table: odd_csv, repository: local, backup: "{{{{ steps.csv.outputs.backup_id }}}}" }}
  - {{ id: load-json, type: import, needs: [jsonl], target: db, database: app, table: odd_json, file: odd.jsonl.zst }}
"#,
        root = ws.dir.path().display(),
    );
    let plan = ws.write_plan(&yaml);
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];

    // The preview names each table and what it holds now.
    let (code, out, err) = run(opsrunner().args(["plan"]).arg(&plan).envs(env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("table public.odd_csv of database `app`"),
        "{out}"
    );
    assert!(out.contains("about 4 rows now"), "{out}");

    let applied = ws.apply_env(&yaml, &["--identity", identity.to_str().unwrap()], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    for (step, rows) in [
        ("csv", "4"),
        ("jsonl", "4"),
        ("some", "2"),
        ("load-csv", "4"),
        ("load-json", "4"),
    ] {
        assert_eq!(applied.step(step)["outputs"]["rows"], rows, "{step}");
    }
    let original = content(&cluster, "odd");
    assert_eq!(content(&cluster, "odd_csv"), original, "CSV round trip");
    assert_eq!(
        content(&cluster, "odd_json"),
        original,
        "JSON Lines round trip"
    );
    // CSV keeps even a json value's text as it was.
    assert_eq!(
        cluster.psql("app", "select count(*) from odd o join odd_csv c using (id) where o.j::text is distinct from c.j::text"),
        "0"
    );
    let some = std::fs::read_to_string(ws.path("some.csv")).unwrap();
    assert!(
        some.starts_with("id,t\n1,\"two\nlines, a \"\"quote\"\""),
        "{some}"
    );
    let sealed = std::fs::read(ws.path("odd.jsonl.zst")).unwrap();
    assert!(
        sealed.starts_with(b"age-encryption.org/"),
        "the file is encrypted"
    );

    // The export in the repository is a `rows` entry, checked by `verify` (its rows counted).
    let id = applied.step("csv")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    let (code, out, err) = run(opsrunner()
        .args(["verify", "--plan"])
        .arg(&plan)
        .args(["--repository", "local", "--backup", id, "--identity"])
        .arg(&identity)
        .envs(env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("archive=pass"), "{out}");

    // All or nothing: a bad row in the middle loads none. And loading rows changes a
    // table: on a protected target only with --confirm.
    std::fs::write(ws.path("bad.csv"), "id,n\n1,1\n2,not a number\n3,3\n").unwrap();
    let bad = ws.write_plan(
        r#"
version: 1
name: bad
targets:
  db: { url: "{{ env.DATABASE_URL }}", protected: true }
steps:
  - { id: load, type: import, target: db, database: app, table: strict, file: bad.csv }
"#,
    );
    let (code, out, err) = run(opsrunner().arg("apply").arg(&bad).envs(env));
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("--confirm db"), "{err}");
    let (code, out, err) = run(opsrunner()
        .arg("apply")
        .arg(&bad)
        .args(["--confirm", "db"])
        .envs(env));
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("not a number"), "says which value: {err}");
    assert_eq!(cluster.psql("app", "select count(*) from strict"), "0");
}
