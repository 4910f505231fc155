//! Mistakes caught before the first step (issue 33, points 3, 4 and 6): every missing
//! environment variable listed at once, the identity a later verify needs checked before
//! the backup, the preview of a database the plan itself creates, connection errors that
//! name the place, and secrets that are masked by position where their text is ambiguous.

use crate::common::pg::Cluster;
use crate::common::{Workspace, identity_file, opsrunner, run};

#[test]
fn every_missing_variable_is_listed_at_once_and_nothing_runs() {
    let ws = Workspace::new();
    let backups = ws.path("backups");
    let plan = ws.write_plan(
        r#"
version: 1
name: nightly
targets:
  app: { url: "{{ env.DATABASE_URL }}" }
repositories:
  local: { url: "file://{{ env.BACKUP_DIR }}" }
steps:
  - { id: backup, type: backup, target: app, repository: local }
  - id: alert
    type: webhook
    needs: [backup]
    if: failure()
    url: https://alerts.example/hook
    headers: { Authorization: "Bearer {{ env.ALERT_TOKEN }}" }
    body: { text: "{{ default env.ALERT_CHANNEL \"ops\" }}" }
"#,
    );
    let (code, out, err) = run(opsrunner()
        .arg("apply")
        .arg(&plan)
        .env("DATABASE_URL", "postgres://app@127.0.0.1:1/app")
        .env_remove("BACKUP_DIR")
        .env_remove("ALERT_TOKEN")
        .env_remove("ALERT_CHANNEL"));
    assert_eq!(code, opsrunner::exit::INVALID, "{out}{err}");
    assert!(
        err.contains("2 environment variables the plan needs are not set"),
        "{err}"
    );
    assert!(
        err.contains("BACKUP_DIR  (used by repository `local`)"),
        "{err}"
    );
    assert!(err.contains("ALERT_TOKEN  (used by step `alert`)"), "{err}");
    // A reference with a fallback needs nothing.
    assert!(!err.contains("ALERT_CHANNEL"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!err.contains("started"), "{err}");
    assert!(!backups.exists());
    // The preview still works without them: it shows where they go.
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan).env_remove("BACKUP_DIR"));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_identity_a_later_verify_needs_is_checked_before_the_backup_starts() {
    let ws = Workspace::new();
    let (_, recipient) = identity_file(ws.dir.path());
    let other = ws.path("other");
    std::fs::create_dir(&other).unwrap();
    let (wrong_identity, _) = identity_file(&other);
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: offsite
targets:
  app: {{ url: "postgres://app@127.0.0.1:1/app" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite:
    url: "file://{}"
    encryption: {{ recipients: ["{recipient}"] }}
steps:
  - {{ id: backup, type: backup, target: app, repository: offsite }}
  - id: verify
    type: verify
    needs: [backup]
    repository: offsite
    backup: "{{{{ steps.backup.outputs.backup_id }}}}"
    restore_into: {{ target: scratch, database: verify_scratch }}
"#,
        ws.path("repo").display()
    ));
    let (code, out, err) = run(opsrunner()
        .arg("apply")
        .arg(&plan)
        .env_remove("OPSRUNNER_AGE_IDENTITY_FILE"));
    assert_eq!(code, opsrunner::exit::INVALID, "{out}{err}");
    assert!(
        err.contains("step `verify` reads the backups this plan encrypts"),
        "{err}"
    );
    assert!(err.contains("--identity FILE"), "{err}");
    assert!(!ws.path("repo").exists());

    let (code, out, err) = run(opsrunner()
        .arg("apply")
        .arg(&plan)
        .arg("--identity")
        .arg(&wrong_identity));
    assert_eq!(code, opsrunner::exit::INVALID, "{out}{err}");
    assert!(err.contains("holds none of the keys"), "{err}");
    assert!(err.contains(&recipient), "{err}");
    assert!(!ws.path("repo").exists());
}

#[test]
fn the_preview_of_a_database_the_plan_creates_says_so() {
    let cluster = Cluster::start();
    let plan = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/reset-seed.yaml");
    let (code, out, err) = run(opsrunner()
        .arg("plan")
        .arg(&plan)
        .arg("--strict")
        .env("DEV_DATABASE_URL", cluster.url("postgres")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("INCOMPLETE"), "{out}");
    assert!(
        out.contains("database `app_dev` does not exist yet: step `fresh` creates it"),
        "{out}"
    );
    assert!(out.contains("pending: 20260101000000_customers"), "{out}");
    assert!(!out.contains("at line"), "{out}");
}

#[test]
fn a_password_that_is_also_a_name_and_a_one_character_secret_break_nothing() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "create role shopkeeper login password 'shopkeeper'",
    );
    cluster.psql("postgres", "create database shopkeeper owner shopkeeper");
    let url = cluster.url("shopkeeper").replacen(
        &format!(
            "postgres:{}",
            crate::common::pg::urlencode(crate::common::pg::PASSWORD)
        ),
        "shopkeeper:shopkeeper",
        1,
    );
    assert!(
        url.starts_with("postgres://shopkeeper:shopkeeper@"),
        "{url}"
    );
    let plan = ws.write_plan(
        r#"
version: 1
name: weak
secrets: [TABLES_SEEN]
targets:
  shop: { url: "{{ env.DATABASE_URL }}" }
steps:
  - { id: count, type: sql, target: shop, query: "select 17" }
  - id: summary
    type: shell
    needs: [count]
    env: { SEEN: "{{ env.TABLES_SEEN }}" }
    command: echo shopkeeper has {{ steps.count.outputs.value }} tables, check $SEEN
"#,
    );
    let env = [("DATABASE_URL", url.as_str()), ("TABLES_SEEN", "7")];

    // validate names both weak secrets once, never their values' places.
    let (code, out, err) = run(opsrunner().arg("validate").arg(&plan).envs(env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("secret TABLES_SEEN is weak: it is 1 character long"),
        "{err}"
    );
    assert!(
        err.contains(
            "the password in DATABASE_URL is weak: it is also a name the plan uses openly (`shopkeeper`)"
        ),
        "{err}"
    );

    // The preview masks the password by its position and nothing else.
    let (code, out, err) = run(opsrunner().arg("plan").arg(&plan).envs(env));
    assert_eq!(code, 0, "{out}{err}");
    let shown = url.replacen("shopkeeper:shopkeeper@", "shopkeeper:***@", 1);
    assert!(out.contains(&shown), "{shown} in:\n{out}");

    // The command that names the database runs, and the summary says 17, not 1***.
    let applied = ws.apply_env(&std::fs::read_to_string(&plan).unwrap(), &[], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    assert_eq!(
        applied.step("summary")["outputs"]["stdout"],
        "shopkeeper has 17 tables, check 7"
    );
    assert!(
        !applied.everything().contains("shopkeeper:shopkeeper@"),
        "{}",
        applied.everything()
    );
}

#[test]
fn a_connection_error_names_the_host_port_database_and_user_but_not_the_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (code, out, err) = run(opsrunner()
        .args(["sql", "--target", "env:SHOP_URL", "-c", "select 1"])
        .env(
            "SHOP_URL",
            format!("postgres://shop:s3cret-pw@127.0.0.1:{port}/orders"),
        ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}, database `orders`, user `shop`")),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");
}
