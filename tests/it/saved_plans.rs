//! Saved plans (issue 12, point 2): `plan --out plan.json` records what the reviewed
//! preview was made from, and `apply plan.json` runs it only while all of that still holds
//! — the plan file, the resolved steps, each target's identity, each repository's newest
//! backup (including "empty", which Terraform's staleness check misses).

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner, run};
use crate::s3::{BUCKET, S3Server, aws_env};
use serde_json::Value;
use std::path::Path;

const PLAN: &str = r#"
version: 1
name: nightly
targets:
  app: { url: "{{ env.DATABASE_URL }}" }
repositories:
  local: { url: "file://repo", create: true }
steps:
  - { id: backup, type: backup, target: app, repository: local, format: custom }
  - id: prune
    type: prune
    needs: [backup]
    repository: local
    keep: { last: "{{ vars.keep }}" }
vars: { keep: 5 }
"#;

fn save(plan: &Path, saved: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    run(opsrunner()
        .arg("plan")
        .arg(plan)
        .arg("--out")
        .arg(saved)
        .args(args)
        .envs(env.iter().copied()))
}

fn apply_saved(saved: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    run(opsrunner()
        .arg("apply")
        .arg(saved)
        .args(args)
        .envs(env.iter().copied()))
}

fn backups_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_saved_plan_runs_only_while_what_it_was_made_from_holds() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let ws = Workspace::new();
    let plan = ws.write_plan(PLAN);
    std::fs::create_dir(ws.path("repo")).unwrap();
    let url = cluster.url("app");
    let env = [("DATABASE_URL", url.as_str())];
    let saved = ws.path("plan.json");

    // `--out plan.json` is a saved plan: the JSON preview with what apply checks again.
    let (code, _, err) = save(&plan, &saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json["opsrunner_saved_plan"], 1);
    assert_eq!(json["saved"]["repositories"]["local"]["state"], "empty");
    let target = &json["saved"]["targets"]["app"];
    let system_identifier = cluster.psql(
        "postgres",
        "select system_identifier from pg_control_system()",
    );
    assert_eq!(
        target["system_identifier"].as_str(),
        Some(system_identifier.trim()),
        "{target}"
    );
    assert_eq!(target["database"], "app");
    assert!(target["server_version_num"].as_i64().unwrap() >= 130000);
    assert_eq!(
        json["saved_plan_sha256"].as_str().map(str::len),
        Some(64),
        "{json}"
    );
    assert_eq!(json["plan_sha256"].as_str().map(str::len), Some(64));

    // Applied as saved: it runs.
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(backups_in(&ws.path("repo")), 1);

    // The repository was empty when the plan was saved and holds a backup now: stale,
    // exit 3, and nothing ran (still one backup).
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(err.contains("is stale, nothing was run"), "{err}");
    assert!(
        err.contains("repository `local` holds 1 backup") && err.contains("held no backup"),
        "{err}"
    );
    assert_eq!(backups_in(&ws.path("repo")), 1);

    // A fresh saved plan records the newest backup; another backup makes it stale.
    let (code, _, err) = save(&plan, &saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let newest = &json["saved"]["repositories"]["local"]["newest"];
    assert_eq!(newest["manifest_sha256"].as_str().map(str::len), Some(64));
    let made = ws.apply_env(PLAN, &[], &env);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(err.contains(newest["id"].as_str().unwrap()), "{err}");
    assert_eq!(backups_in(&ws.path("repo")), 2);

    // Another server behind the same plan (the same database name): its system identifier
    // differs. The environment now points elsewhere, so the steps differ as well.
    let (code, _, err) = save(&plan, &saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    let other = Cluster::start();
    other.psql("postgres", "create database app");
    let other_url = other.url("app");
    let (code, _, err) = apply_saved(&saved, &[("DATABASE_URL", other_url.as_str())], &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(
        err.contains("target `app` is database `app` on server"),
        "{err}"
    );

    // The plan file changed since: exit 3, naming it.
    std::fs::write(&plan, PLAN.replace("keep: 5", "keep: 1")).unwrap();
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(
        err.contains("the plan file") && err.contains("changed"),
        "{err}"
    );
    assert!(
        err.contains("step `prune` would do something else"),
        "{err}"
    );
    assert_eq!(backups_in(&ws.path("repo")), 2, "nothing was pruned");

    // A saved plan edited by hand (its recorded --var values) is not applied.
    std::fs::write(&plan, PLAN).unwrap();
    let (code, _, err) = save(&plan, &saved, &env, &["--var", "keep=5"]);
    assert_eq!(code, 0, "{err}");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json["saved"]["vars"]["keep"], "5");
    json["saved"]["vars"]["keep"] = Value::String("1".into());
    let edited = ws.path("edited.json");
    std::fs::write(&edited, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let (code, _, err) = apply_saved(&edited, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(err.contains("was changed after it was saved"), "{err}");

    // Its --var values are the ones it runs with; new ones are a usage error.
    let (code, _, err) = apply_saved(&saved, &env, &["--var", "keep=1"]);
    assert_eq!(code, opsrunner::exit::INVALID, "{err}");
    assert!(
        err.contains("runs with the values it was saved with"),
        "{err}"
    );

    // A review-only preview read nothing: it is not a saved plan.
    let untrusted = ws.path("review.json");
    let (code, _, err) = save(&plan, &untrusted, &env, &["--untrusted"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = apply_saved(&untrusted, &env, &[]);
    assert_eq!(code, opsrunner::exit::INVALID, "{err}");
    assert!(
        err.contains("review-only preview (made with --untrusted)"),
        "{err}"
    );
    assert_eq!(backups_in(&ws.path("repo")), 2);

    // A --var value that is a secret (here the value of a credential-named variable) is
    // never written into a saved plan: the file is review-only.
    let secret = "4242";
    let with_secret = [env[0], ("RELEASE_API_TOKEN", secret)];
    let (code, _, err) = save(
        &plan,
        &untrusted,
        &with_secret,
        &["--var", &format!("keep={secret}")],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&untrusted).unwrap();
    assert!(!text.contains(&format!("\"{secret}\"")), "{text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    assert!(json["saved"].is_null(), "{json}");
    let (code, _, err) = apply_saved(&untrusted, &with_secret, &[]);
    assert_eq!(code, opsrunner::exit::INVALID, "{err}");
    assert!(err.contains("a --var value that is a secret"), "{err}");

    // Unchanged, it still runs, with its recorded values: keep 5 of 3 deletes nothing.
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(backups_in(&ws.path("repo")), 3);
}

#[test]
fn a_saved_plan_whose_target_could_not_be_read_is_not_applied() {
    let ws = Workspace::new();
    let plan = ws.write_plan(PLAN);
    std::fs::create_dir(ws.path("repo")).unwrap();
    // Nothing listens on port 1.
    let env = [("DATABASE_URL", "postgres://nobody@127.0.0.1:1/app")];
    let saved = ws.path("plan.json");
    let (code, _, err) = save(&plan, &saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json["saved"]["targets"]["app"]["state"], "unread", "{json}");
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(
        err.contains("target `app` could not be read when the plan was saved"),
        "{err}"
    );
}

#[test]
fn a_saved_plan_notices_backups_that_appeared_in_an_empty_s3_repository() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let yaml = PLAN.replace(
        "local: { url: \"file://repo\", create: true }",
        &format!(
            "local: {{ url: \"s3://{BUCKET}/app\", endpoint: \"{}\", force_path_style: true, create: true }}",
            server.endpoint
        ),
    );
    let plan = ws.write_plan(&yaml);
    let url = cluster.url("app");
    let mut env: Vec<(&str, String)> = aws_env();
    env.push(("DATABASE_URL", url.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let saved = ws.path("plan.json");
    let (code, _, err) = save(&plan, &saved, &env, &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json["saved"]["repositories"]["local"]["state"], "empty");

    let made = ws.apply_env(&yaml, &[], &env);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let (code, _, err) = apply_saved(&saved, &env, &[]);
    assert_eq!(code, opsrunner::exit::REFUSED, "{err}");
    assert!(
        err.contains("repository `local` holds 1 backup") && err.contains("held no backup"),
        "{err}"
    );
}
