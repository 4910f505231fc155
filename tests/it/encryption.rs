//! Client-side encryption with age on a local repository: what is stored reveals neither
//! rows nor table names; verify and restore work with the identity, and fail clearly
//! without it or with the wrong one; list and prune need no key.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner};
use age::secrecy::ExposeSecret;
use std::path::{Path, PathBuf};

/// A row value and a table name that must never appear in what is stored.
const CANARY: &str = "canary-4f1d2e-plaintext";
const TABLE: &str = "payroll_secrets";

fn identity_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        ),
    )
    .unwrap();
    (path, identity.to_public().to_string())
}

fn plan(recipients_yaml: &str, steps: &str) -> String {
    format!(
        r#"
version: 1
name: encrypted
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  vault:
    url: file://./repo
    create: true
    encryption: {recipients_yaml}
steps:
{steps}"#
    )
}

fn all_stored_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    crate::common::files_under(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn encrypted_backups_reveal_nothing_and_need_the_identity() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        &format!("create table {TABLE} (id int primary key, note text); insert into {TABLE} select g, '{CANARY}-' || g from generate_series(1, 5000) g"),
    );
    let ws = Workspace::new();
    let (right, right_public) = identity_file(ws.dir.path(), "right.key");
    let (wrong, _) = identity_file(ws.dir.path(), "wrong.key");
    let (second, second_public) = identity_file(ws.dir.path(), "second.key");
    // One recipient inline, one from a recipients file: either identity decrypts.
    std::fs::write(
        ws.path("recipients.txt"),
        format!("# ops team\n\n{second_public}\n"),
    )
    .unwrap();
    let url = cluster.url("postgres");
    let env = [("DATABASE_URL", url.as_str())];

    // Uncompressed, so that any plaintext would be plainly visible in the stored bytes.
    let backup_steps = "  - { id: backup, type: backup, target: db, database: app, repository: vault, compression: none, fingerprint: full }\n  - { id: dir, type: backup, target: db, database: app, repository: vault, compression: none, format: directory }\n";
    let recipients =
        format!("{{ recipients: [\"{right_public}\"], recipients_file: recipients.txt }}");
    let run = ws.apply_env(&plan(&recipients, backup_steps), &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir_id = run.step("dir")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();

    let stored = all_stored_bytes(&ws.path("repo"));
    assert!(stored.len() > 3, "dump files and manifests: {stored:?}");
    for (path, bytes) in &stored {
        assert!(
            !contains(bytes, CANARY),
            "{} holds row data",
            path.display()
        );
        assert!(
            !contains(bytes, TABLE),
            "{} names the table",
            path.display()
        );
        if !path.ends_with("manifest.json") && !path.ends_with("opsrunner-repository.json") {
            assert!(
                path.to_string_lossy().ends_with(".age"),
                "{} is not an age file",
                path.display()
            );
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.path("repo").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["encryption"]["scheme"], "age");
    assert_eq!(
        manifest["encryption"]["recipients"],
        serde_json::json!([right_public, second_public])
    );
    assert_eq!(manifest["fingerprints"], serde_json::json!({}));

    // The catalog works without a key and says what is encrypted.
    let list = ws.backups(&["list"]);
    assert!(list.contains("ENCRYPTED"), "{list}");
    assert_eq!(list.matches(" age ").count(), 2, "{list}");
    let shown = ws.backups(&["show", &id]);
    assert!(shown.contains("encryption   age, to age1"), "{shown}");
    assert!(shown.contains("tables       encrypted"), "{shown}");
    assert!(!shown.contains(TABLE), "{shown}");
    let unsealed = ws.backups(&["show", &id, "--identity", right.to_str().unwrap()]);
    assert!(
        unsealed.contains(&format!("public.{TABLE}  5000 rows")),
        "{unsealed}"
    );

    // A preview of a verify says the backup is encrypted and what apply will need.
    let path = ws.write_plan(&plan(
        &recipients,
        "  - { id: verify, type: verify, repository: vault, backup: latest }\n",
    ));
    let out = opsrunner()
        .arg("plan")
        .arg(&path)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("encrypted with age to {right_public}"))
            && text.contains("apply needs --identity FILE"),
        "{text}"
    );

    let verify = |backup: &str, args: &[&str], env_identity: Option<&Path>| {
        let steps = format!(
            "  - {{ id: verify, type: verify, repository: vault, backup: {backup}, restore_into: {{ target: scratch, database: check }} }}\n"
        );
        let mut env: Vec<(&str, &str)> = env.to_vec();
        let identity;
        if let Some(p) = env_identity {
            identity = p.display().to_string();
            env.push(("OPSRUNNER_AGE_IDENTITY_FILE", identity.as_str()));
        }
        ws.apply_env(&plan(&recipients, &steps), args, &env)
    };

    // No identity: a clear error before any check, and no verification is recorded.
    let run = verify(&id, &[], None);
    assert_eq!(run.code, 1);
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("is encrypted") && reason.contains("--identity FILE"),
        "{reason}"
    );
    assert!(!ws.path("repo").join(&id).join("verification.json").exists());

    // The wrong key: named as such, with the recipients that would work.
    let run = verify(&id, &["--identity", wrong.to_str().unwrap()], None);
    assert_eq!(run.code, 1);
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("no identity in") && reason.contains(&right_public),
        "{reason}"
    );
    assert!(!run.everything().contains("AGE-SECRET-KEY"));

    // The right key (from the environment, or the second recipient's by flag): every check
    // passes, fingerprints included, for both formats.
    let run = verify(&id, &[], Some(&right));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The test wrote the key world-readable (0644): worth a warning, not a refusal.
    assert!(
        run.stderr.contains("can be read by other users") && run.stderr.contains("chmod 600"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.step("verify")["outputs"]["checks"],
        "manifest=pass files=pass archive=pass restore=pass fingerprints=pass"
    );
    let run = verify(&dir_id, &["--identity", second.to_str().unwrap()], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.step("verify")["outputs"]["checks"],
        "manifest=pass files=pass archive=pass restore=pass fingerprints=pass"
    );

    // A restore gives back exactly the rows, streamed and with parallel loaders (each of
    // which decrypts its own stream).
    let restore = format!(
        "  - {{ id: restore, type: restore, repository: vault, backup: {id}, into: {{ target: db, database: copy }} }}\n  - {{ id: parallel, type: restore, repository: vault, backup: {id}, into: {{ target: db, database: copy2 }}, jobs: 2 }}\n"
    );
    let run = ws.apply_env(
        &plan(&recipients, &restore),
        &["--identity", right.to_str().unwrap()],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(cluster.content("app"), cluster.content("copy"));
    assert_eq!(cluster.content("app"), cluster.content("copy2"));

    // One flipped byte in the ciphertext: the file check names the file.
    let data = ws.path("repo").join(&id).join("dump.pgdump.age");
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let run = verify(&id, &[], Some(&right));
    assert_eq!(run.code, opsrunner::exit::BACKUP_CORRUPT);
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("files: dump.pgdump.age: SHA-256"),
        "{reason}"
    );
}

#[test]
fn a_private_key_in_the_plan_is_refused_without_being_printed() {
    let ws = Workspace::new();
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string().expose_secret().to_string();
    let plan = plan(
        &format!("{{ recipients: [\"{secret}\"] }}"),
        "  - { id: hi, type: shell, command: \"true\" }\n",
    );
    let path = ws.write_plan(&plan);
    let out = opsrunner().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("private key"), "{stderr}");
    assert!(
        stderr.contains("repositories.vault.encryption.recipients[0]"),
        "{stderr}"
    );
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(
        !stderr.to_ascii_uppercase().contains("AGE-SECRET-KEY-1"),
        "{stderr}"
    );
}

#[test]
fn a_missing_identity_file_stops_the_run_before_it_starts() {
    let ws = Workspace::new();
    let plan = "version: 1\nname: x\nsteps:\n  - { id: hi, type: shell, command: \"true\" }\n";
    let run = ws.apply(plan, &["--identity", "/nonexistent/key.txt"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/key.txt"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_preview_shows_who_can_read_the_backups_and_a_broken_recipients_file() {
    let ws = Workspace::new();
    let (_, public) = identity_file(ws.dir.path(), "ops.key");
    let steps = "  - { id: backup, type: backup, target: db, repository: vault }\n";
    let preview = |recipients: &str| {
        let path = ws.write_plan(&plan(recipients, steps));
        let out = opsrunner()
            .arg("plan")
            .arg(&path)
            .env("DATABASE_URL", "postgres://app@db.invalid/app")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = preview(&format!("{{ recipients: [\"{public}\"] }}"));
    assert!(text.contains("destination: file://./repo"), "{text}");
    assert!(
        text.contains(&format!("client-side encryption: age, to {public}")),
        "{text}"
    );
    let text = preview("{ recipients_file: missing-recipients.txt }");
    assert!(
        text.contains("client-side encryption: cannot be set up: recipients file")
            && text.contains("missing-recipients.txt"),
        "{text}"
    );
}

#[test]
fn a_damaged_encrypted_backup_never_replaces_the_database() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g",
    );
    cluster.psql("postgres", "create database precious");
    cluster.psql(
        "precious",
        "create table keep (v text); insert into keep values ('mine')",
    );
    let ws = Workspace::new();
    let (identity, public) = identity_file(ws.dir.path(), "id.txt");
    let url = cluster.url("postgres");
    let backup = ws.apply_env(
        &plan(
            &format!("{{ recipients: [\"{public}\"] }}"),
            "  - { id: backup, type: backup, target: db, database: app, repository: vault }\n",
        ),
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(backup.code, 0, "{}", backup.stderr);
    let id = backup.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = ws.path("repo").join(&id);
    let file = crate::common::files_under(&dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".age"))
        .expect("an encrypted dump file");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();

    let restore = plan(
        &format!("{{ recipients: [\"{public}\"] }}"),
        &format!(
            "  - {{ id: restore, type: restore, repository: vault, backup: {id}, into: {{ target: db, database: precious }}, overwrite: true }}\n"
        ),
    );
    for jobs in ["", ", jobs: 2"] {
        let run = ws.apply_env(
            &restore.replace("overwrite: true", &format!("overwrite: true{jobs}")),
            &["--identity", identity.to_str().unwrap()],
            &[("DATABASE_URL", &url)],
        );
        assert_eq!(run.code, 1, "{}", run.stderr);
        let reason = run.step("restore")["reason"].as_str().unwrap();
        assert!(
            reason.contains("does not match its manifest") && reason.contains("SHA-256 is"),
            "{reason}"
        );
        assert_eq!(cluster.psql("precious", "select v from keep"), "mine");
        assert_eq!(cluster.restore_leftovers(), "");
    }
}
