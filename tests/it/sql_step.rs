//! The `sql` step against a real PostgreSQL cluster started by the test, with password
//! authentication, so that the password's absence from all output means something.

use crate::common::Workspace;
use crate::common::pg::{Cluster, PASSWORD};

fn apply_with_db(
    ws: &Workspace,
    cluster: &Cluster,
    yaml: &str,
    args: &[&str],
) -> crate::common::Applied {
    ws.apply_env(yaml, args, &[("DATABASE_URL", &cluster.url("postgres"))])
}

#[test]
fn sql_steps_run_queries_and_files_and_never_show_the_password() {
    let cluster = Cluster::start();
    let ws = Workspace::new();
    std::fs::write(
        ws.path("setup.sql"),
        "create table items (id int primary key, name text);\ninsert into items values (1, 'a'), (2, 'b');\ninsert into items values (3, 'c');\n",
    )
    .unwrap();
    let run = apply_with_db(
        &ws,
        &cluster,
        r#"
version: 1
name: sql
targets:
  db: { url: "{{ env.DATABASE_URL }}" }
steps:
  - { id: setup, type: sql, target: db, file: setup.sql }
  - { id: count, type: sql, target: db, needs: [setup], query: "select count(*) from items" }
  - { id: echo, type: shell, needs: [count], command: "echo {{ steps.count.outputs.value }} items" }
  - { id: broken, type: sql, target: db, needs: [setup], query: "selec 1", retry: { attempts: 4, delay: 10ms } }
"#,
        &[],
    );
    assert_eq!(run.status("setup"), "succeeded", "{}", run.stderr);
    assert_eq!(run.step("count")["outputs"]["value"], "3");
    assert_eq!(run.step("echo")["outputs"]["stdout"], "3 items");
    assert_eq!(
        cluster.psql(
            "postgres",
            "select string_agg(name, ',' order by id) from items"
        ),
        "a,b,c"
    );
    // A syntax error is permanent: one attempt, whatever `retry` says.
    assert_eq!(run.status("broken"), "failed");
    assert_eq!(run.attempts("broken"), 1);
    assert!(
        run.step("broken")["reason"]
            .as_str()
            .unwrap()
            .contains("SQLSTATE 42601"),
        "{}",
        run.report
    );
    assert_eq!(run.code, 1);
    assert!(!run.everything().contains(PASSWORD));
}

#[test]
fn connection_errors_are_transient_and_keep_the_password_out_of_errors() {
    let cluster = Cluster::start();
    let ws = Workspace::new();
    // Right password, a port nobody listens on.
    let bad = cluster
        .url("postgres")
        .replace(&format!(":{}/", cluster.port), ":1/");
    let run = ws.apply_env(
        r#"
version: 1
name: wrong-db
targets:
  db: { url: "{{ env.BAD_URL }}" }
steps:
  - { id: q, type: sql, target: db, query: "select 1", retry: { attempts: 2, delay: 10ms } }
"#,
        &[],
        &[("BAD_URL", &bad)],
    );
    assert_eq!(run.status("q"), "failed");
    assert_eq!(
        run.attempts("q"),
        2,
        "connection refused is worth a retry: {}",
        run.report
    );
    assert!(!run.everything().contains(PASSWORD), "{}", run.everything());
    assert!(
        !run.everything().contains("Tr0ub4dor%263"),
        "{}",
        run.everything()
    );
}

#[test]
fn destructive_steps_on_protected_targets_are_refused_without_confirm() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "create table precious (id int); insert into precious values (1)",
    );
    let ws = Workspace::new();
    let yaml = r#"
version: 1
name: guarded
targets:
  prod: { url: "{{ env.DATABASE_URL }}", protected: true }
steps:
  - { id: first, type: shell, command: touch first-ran }
  - { id: wipe, type: sql, target: prod, needs: [first], writes: true, query: "drop table precious" }
"#;
    let refused = apply_with_db(&ws, &cluster, yaml, &[]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--confirm prod"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.report["status"], "refused");
    assert!(
        !ws.path("first-ran").exists(),
        "nothing runs when a guard refuses"
    );
    assert_eq!(
        cluster.psql("postgres", "select count(*) from precious"),
        "1"
    );

    let confirmed = apply_with_db(&ws, &cluster, yaml, &["--confirm", "prod"]);
    assert_eq!(confirmed.code, 0, "{}", confirmed.stderr);
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_tables where tablename = 'precious'"
        ),
        "0"
    );
}

/// A step, its command-line arguments and its environment.
type Attempt<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

/// A URL for `role`, which has the harness's password, on the cluster's database `db`.
fn role_url(cluster: &Cluster, role: &str, db: &str) -> String {
    cluster
        .url(db)
        .replacen("://postgres:", &format!("://{role}:"), 1)
}

/// An application role that owns a table: it could drop it, were it not read-only.
fn with_owner(cluster: &Cluster, role: &str) {
    cluster.psql(
        "postgres",
        &format!(
            "create role {role} login password '{}'; create table gt (id int); insert into gt values (1); alter table gt owner to {role}",
            PASSWORD.replace('\'', "''")
        ),
    );
}

#[test]
fn sql_on_a_protected_target_is_read_only_unless_the_step_writes() {
    let cluster = Cluster::start();
    with_owner(&cluster, "app");
    let ws = Workspace::new();
    std::fs::write(ws.path("wipe.sql"), "drop table gt").unwrap();
    let plan = |step: &str| {
        format!(
            "version: 1\nname: guarded\nvars: {{ q: \"select 1\", f: empty.sql }}\ntargets:\n  prod: {{ url: \"{{{{ env.DATABASE_URL }}}}\", protected: true }}\nsteps:\n  - {step}\n"
        )
    };
    // Each of these drops the table without a keyword in the plan as written, or leaves
    // the read-only transaction first.
    let attempts: [Attempt; 10] = [
        (
            "{ id: s, type: sql, target: prod, query: \"{{ vars.q }}\" }",
            &["--var", "q=drop table gt"],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"{{ env.Q }}\" }",
            &[],
            &[("Q", "drop table gt")],
        ),
        (
            "{ id: s, type: sql, target: prod, file: \"{{ vars.f }}\" }",
            &["--var", "f=wipe.sql"],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"do $$ begin execute 'dr' || 'op table gt'; end $$\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"select 1; create table other (id int)\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"set default_transaction_read_only = off; commit; do $$ begin execute 'dr' || 'op table gt'; end $$\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"set transaction read write; do $$ begin execute 'dr' || 'op table gt'; end $$\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"rollback; set session characteristics as transaction read write; do $$ begin execute 'dr' || 'op table gt'; end $$\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"do $$ begin set default_transaction_read_only = off; commit; execute 'dr' || 'op table gt'; end $$\" }",
            &[],
            &[],
        ),
        (
            "{ id: s, type: sql, target: prod, query: \"select 'a\\\\'; commit; do $$ begin execute 'dr' || 'op table gt'; end $$; select '\\\\'\" }",
            &[],
            &[],
        ),
    ];
    let url = role_url(&cluster, "app", "postgres");
    for (step, args, env) in attempts {
        let mut env = env.to_vec();
        env.push(("DATABASE_URL", &url));
        let run = ws.apply_env(&plan(step), args, &env);
        assert_ne!(run.code, 0, "{step}: {}", run.stderr);
        assert!(
            run.code == 1 || run.code == 3,
            "{step}: exit {}: {}",
            run.code,
            run.stderr
        );
        assert_eq!(
            cluster.psql("postgres", "select count(*) from gt"),
            "1",
            "{step}"
        );
    }
    assert_eq!(
        cluster.psql(
            "postgres",
            "select count(*) from pg_tables where tablename = 'other'"
        ),
        "0"
    );
    // Reading works; `writes: true` is destructive and needs --confirm, then writes.
    let env = [("DATABASE_URL", url.as_str())];
    let read = ws.apply_env(
        &plan("{ id: s, type: sql, target: prod, query: \"select count(*) from gt\" }"),
        &[],
        &env,
    );
    assert_eq!(read.code, 0, "{}", read.stderr);
    let writes = plan(
        "{ id: s, type: sql, target: prod, writes: true, query: \"insert into gt values (2)\" }",
    );
    assert_eq!(ws.apply_env(&writes, &[], &env).code, 3);
    let confirmed = ws.apply_env(&writes, &["--confirm", "prod"], &env);
    assert_eq!(confirmed.code, 0, "{}", confirmed.stderr);
    assert_eq!(cluster.psql("postgres", "select count(*) from gt"), "2");
}

/// Read-only SQL on a protected target runs only as a role that cannot reach past the
/// read-only transaction: no server file written or read, no program run, no session of
/// its own opened — whichever channel the SQL tries, and the refusal comes before any of
/// it is sent.
#[test]
fn read_only_sql_on_a_protected_target_cannot_reach_the_servers_files() {
    let cluster = Cluster::start();
    with_owner(&cluster, "app");
    let ws = Workspace::new();
    // A directory the server's user may write to, so that only the guard stands between.
    let out = ws.path("server-files");
    std::fs::create_dir_all(&out).unwrap();
    std::process::Command::new("chmod")
        .args(["777"])
        .arg(&out)
        .status()
        .unwrap();
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(ws.path(""))
        .status()
        .unwrap();
    let file = out.join("written");
    let plan = |query: &str| {
        format!(
            "version: 1\nname: guarded\ntargets:\n  prod: {{ url: \"{{{{ env.DATABASE_URL }}}}\", protected: true }}\nsteps:\n  - {{ id: s, type: sql, target: prod, query: {query:?} }}\n"
        )
    };
    let f = file.display();
    let channels = [
        format!("copy (select 1) to '{f}'"),
        format!("copy (select 1) to program 'touch {f}'"),
        format!("select lo_export(lo_from_bytea(0, 'x'), '{f}')"),
        format!("select pg_file_write('{f}', 'x', false)"),
        format!(
            "select dblink_exec('host=127.0.0.1 port={} user=postgres password=x dbname=postgres', 'create table stolen ()')",
            cluster.port
        ),
    ];
    let run = |url: &str, query: &str, confirm: bool| {
        let args: &[&str] = if confirm { &["--confirm", "prod"] } else { &[] };
        ws.apply_env(&plan(query), args, &[("DATABASE_URL", url)])
    };

    // As the superuser: refused before anything is sent, whatever the channel.
    let superuser = cluster.url("postgres");
    for query in &channels {
        let refused = run(&superuser, query, false);
        assert_eq!(refused.code, 3, "{query}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("superuser") && refused.stderr.contains("nothing was run"),
            "{query}: {}",
            refused.stderr
        );
        assert!(!file.exists(), "{query} wrote a server file");
    }

    // As a role without those rights the server itself refuses each channel.
    let app = role_url(&cluster, "app", "postgres");
    for query in &channels[..3] {
        let failed = run(&app, query, false);
        assert_ne!(failed.code, 0, "{query}: {}", failed.stderr);
        assert!(!file.exists(), "{query} wrote a server file");
    }
    assert_eq!(run(&app, "select count(*) from gt", false).code, 0);

    // Each right that would reach past the transaction is found and named.
    let grants = [
        (
            "grant pg_write_server_files to app",
            "pg_write_server_files",
            "revoke pg_write_server_files from app",
        ),
        (
            "grant pg_execute_server_program to app",
            "pg_execute_server_program",
            "revoke pg_execute_server_program from app",
        ),
        (
            "grant pg_read_server_files to app",
            "pg_read_server_files",
            "revoke pg_read_server_files from app",
        ),
        (
            "grant execute on function lo_export(oid, text) to app",
            "lo_export",
            "revoke execute on function lo_export(oid, text) from app",
        ),
        ("create extension dblink", "dblink", "drop extension dblink"),
        (
            "create extension adminpack; grant execute on function pg_file_write(text, text, boolean) to app",
            "adminpack",
            "drop extension adminpack",
        ),
        (
            "create extension postgres_fdw; create server self foreign data wrapper postgres_fdw options (host '127.0.0.1'); grant usage on foreign server self to app",
            "foreign server self",
            "drop extension postgres_fdw cascade",
        ),
        (
            "create role admins superuser; grant admins to app",
            "superuser",
            "drop role admins",
        ),
    ];
    for (grant, named, revoke) in grants {
        cluster.psql("postgres", grant);
        for query in &channels {
            let refused = run(&app, query, false);
            assert_eq!(refused.code, 3, "{grant}: {query}: {}", refused.stderr);
            assert!(
                refused.stderr.contains(named),
                "{grant}: {}",
                refused.stderr
            );
            assert!(!file.exists(), "{grant}: {query} wrote a server file");
        }
        cluster.psql("postgres", revoke);
    }
    assert_eq!(cluster.psql("postgres", "select count(*) from gt"), "1");
    assert_eq!(run(&app, "select count(*) from gt", false).code, 0);

    // A step that declares it writes, confirmed, runs as the target's role: the operator
    // asked for it by name.
    let confirmed = ws.apply_env(
        &plan(&channels[0]).replace("query:", "writes: true, query:"),
        &["--confirm", "prod"],
        &[("DATABASE_URL", &superuser)],
    );
    assert_eq!(confirmed.code, 0, "{}", confirmed.stderr);
    assert!(file.exists());
}
