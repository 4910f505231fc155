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

#[test]
fn sql_on_a_protected_target_is_read_only_unless_the_step_writes() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "create table gt (id int); insert into gt values (1)",
    );
    let ws = Workspace::new();
    std::fs::write(ws.path("wipe.sql"), "drop table gt").unwrap();
    let plan = |step: &str| {
        format!(
            "version: 1\nname: guarded\nvars: {{ q: \"select 1\", f: empty.sql }}\ntargets:\n  prod: {{ url: \"{{{{ env.DATABASE_URL }}}}\", protected: true }}\nsteps:\n  - {step}\n"
        )
    };
    // Each of these drops the table without a keyword in the plan as written.
    let attempts: [Attempt; 5] = [
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
    ];
    for (step, args, env) in attempts {
        let mut env = env.to_vec();
        let url = cluster.url("postgres");
        env.push(("DATABASE_URL", &url));
        let run = ws.apply_env(&plan(step), args, &env);
        assert_eq!(run.code, 3, "{step}: {}", run.stderr);
        assert!(
            run.stderr.contains("protected") && run.stderr.contains("--confirm prod"),
            "{step}: {}",
            run.stderr
        );
        assert_eq!(
            cluster.psql("postgres", "select count(*) from gt"),
            "1",
            "{step}"
        );
    }
    // Reading works; `writes: true` is destructive and needs --confirm, then writes.
    let url = cluster.url("postgres");
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
