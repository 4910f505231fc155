//! Repositories are made on purpose (issue 33, point 2): `opsrunner repo init` writes the
//! record; backups, `wal push` and prune refuse a location without one and write nothing
//! there; a plan whose encryption disagrees with the record is refused before anything is
//! written; a repository made before records existed is adopted, and the run says so.

use crate::common::pg::Cluster;
use crate::common::{Workspace, files_under, identity_file, opsrunner, run};

const RECORD: &str = "opsrunner-repository.json";

fn plan(repo: &std::path::Path, encryption: &str) -> String {
    format!(
        r#"
version: 1
name: records
targets:
  app: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local: {{ url: "file://{}"{encryption} }}
steps:
  - {{ id: backup, type: backup, target: app, repository: local }}
"#,
        repo.display()
    )
}

/// A workspace, a cluster with database `app`, and where its repository goes.
fn setup() -> (Workspace, Cluster, std::path::PathBuf) {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let repo = ws.path("repo");
    (ws, cluster, repo)
}

#[test]
fn a_location_is_a_repository_only_once_made_and_its_encryption_is_kept() {
    let (ws, cluster, repo) = setup();
    let url = cluster.url("app");
    let env = [("DATABASE_URL", url.as_str())];

    // Not a repository: refused, nothing written, the command to make one named.
    let refused = ws.apply_env(&plan(&repo, ""), &[], &env);
    assert_eq!(refused.code, 1, "{}", refused.everything());
    let text = refused.everything();
    assert!(text.contains("is not an opsrunner repository"), "{text}");
    assert!(
        text.contains(&format!("opsrunner repo init file://{}", repo.display())),
        "{text}"
    );
    assert!(!repo.exists());
    // `wal push` and `backups prune` say the same.
    let segment = ws.path("000000010000000000000001");
    std::fs::write(&segment, vec![0u8; 16 * 1024 * 1024]).unwrap();
    let repo_url = format!("file://{}", repo.display());
    let (code, out, err) = run(opsrunner()
        .args(["wal", "push"])
        .arg(&segment)
        .args(["--repository", &repo_url]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is not an opsrunner repository"), "{err}");
    let (code, out, err) = run(opsrunner().args([
        "backups",
        "prune",
        "--repository",
        &repo_url,
        "--keep-last",
        "1",
    ]));
    assert_eq!(code, opsrunner::exit::INVALID, "{out}{err}");
    assert!(err.contains("opsrunner repo init"), "{err}");
    assert!(!repo.exists());

    // Made once; again is fine and says so.
    let (code, out, err) = run(opsrunner().args(["repo", "init", &repo_url]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created repository"), "{out}");
    assert!(out.contains("not encrypted"), "{out}");
    let (code, out, err) = run(opsrunner().args(["repo", "init", &repo_url]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is already a repository"), "{out}");
    let made = ws.apply_env(&plan(&repo, ""), &[], &env);
    assert_eq!(made.code, 0, "{}", made.everything());

    // A plan that now encrypts disagrees with the record: refused before anything is
    // written, until the change is recorded on purpose.
    let (_, recipient) = identity_file(ws.dir.path());
    let encrypted = plan(
        &repo,
        &format!(", encryption: {{ recipients: [\"{recipient}\"] }}"),
    );
    let before = files_under(&repo);
    let refused = ws.apply_env(&encrypted, &[], &env);
    assert_eq!(refused.code, 1, "{}", refused.everything());
    let text = refused.everything();
    assert!(text.contains("was created not encrypted"), "{text}");
    assert!(text.contains("encrypted to 1 recipient"), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert_eq!(files_under(&repo), before);
    let plan_file = ws.write_plan(&encrypted);
    let (code, out, err) = run(opsrunner()
        .args(["repo", "init", "local", "--plan"])
        .arg(&plan_file)
        .envs(env));
    assert_eq!(code, opsrunner::exit::REFUSED, "{out}{err}");
    let (code, out, err) = run(opsrunner()
        .args(["repo", "init", "local", "--force", "--plan"])
        .arg(&plan_file)
        .envs(env));
    assert_eq!(code, 0, "{out}{err}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join(RECORD)).unwrap()).unwrap();
    assert_eq!(
        record["encryption"]["recipients"].as_array().unwrap().len(),
        1
    );
    assert!(
        !record.to_string().contains(&recipient),
        "a fingerprint, not the key"
    );
    let made = ws.apply_env(&encrypted, &[], &env);
    assert_eq!(made.code, 0, "{}", made.everything());
}

#[test]
fn a_repository_made_before_records_is_adopted_and_the_run_says_so() {
    let (ws, cluster, repo) = setup();
    let url = cluster.url("app");
    let env = [("DATABASE_URL", url.as_str())];
    let (code, out, err) = run(opsrunner()
        .args(["repo", "init"])
        .arg(format!("file://{}", repo.display())));
    assert_eq!(code, 0, "{out}{err}");
    let first = ws.apply_env(&plan(&repo, ""), &[], &env);
    assert_eq!(first.code, 0, "{}", first.everything());
    // As an opsrunner before records left it.
    std::fs::remove_file(repo.join(RECORD)).unwrap();

    let adopted = ws.apply_env(&plan(&repo, ""), &[], &env);
    assert_eq!(adopted.code, 0, "{}", adopted.everything());
    assert!(
        adopted
            .stderr
            .contains("held backups but no repository record")
            && adopted.stderr.contains("adopted it"),
        "{}",
        adopted.stderr
    );
    assert!(repo.join(RECORD).exists());
    let again = ws.apply_env(&plan(&repo, ""), &[], &env);
    assert_eq!(again.code, 0, "{}", again.everything());
    assert!(!again.stderr.contains("adopted"), "{}", again.stderr);
}
