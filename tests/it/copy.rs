//! Copies between repositories (issue 34): a backup copied off-site to S3 is encrypted
//! again to the destination's recipients, checked on the way, skipped when it is there
//! already and verified in its own repository; a damaged source publishes nothing; a copy
//! killed midway publishes nothing and the next one resumes it; a point-in-time recovery
//! works from a copy alone (the WAL went with the base backup).

use crate::common::pg::{
    Cluster, archive_everything, archive_with, archived_at_least, in_local, server_now,
    server_owner,
};
use crate::common::{Workspace, damage, files_under, identity_file, opsrunner, run};
use crate::s3::{BUCKET, S3Server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `opsrunner ARGS…` with `env`: (exit code, stdout, stderr).
fn cmd(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    run(opsrunner()
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str()))))
}

/// The value of `name: value` in a one-shot command's stdout.
fn output<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stdout}"))
}

/// Two age identities in one file (mode 600): its path and the two public keys.
fn two_identities(ws: &Workspace) -> (PathBuf, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let (a_dir, b_dir) = (ws.path("key-a"), ws.path("key-b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (a, a_public) = identity_file(&a_dir);
    let (b, b_public) = identity_file(&b_dir);
    let both = ws.path("both.txt");
    let text = std::fs::read_to_string(a).unwrap() + &std::fs::read_to_string(b).unwrap();
    std::fs::write(&both, text).unwrap();
    std::fs::set_permissions(&both, std::fs::Permissions::from_mode(0o600)).unwrap();
    (both, a_public, b_public)
}

fn manifest_at(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_copy_offsite_is_encrypted_again_checked_skipped_when_there_and_verified_there() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 2000) g",
    );
    let (identity, a, b) = two_identities(&ws);
    let local = ws.path("local");
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: offsite-copy
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local:
    url: file://{local}
    create: true
    encryption: {{ recipients: ["{a}"] }}
  offsite:
    url: s3://{BUCKET}/app
    create: true
    endpoint: "{endpoint}"
    force_path_style: true
    encryption: {{ recipients: ["{b}"] }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: local }}
  - {{ id: verify, type: verify, needs: [backup], repository: local, backup: "{{{{ steps.backup.outputs.backup_id }}}}" }}
  - {{ id: copy, type: copy, needs: [verify], from: local, to: offsite }}
"#,
        local = local.display(),
        endpoint = server.endpoint,
    ));
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    let plan_arg = plan.to_str().unwrap();
    let identity_arg = identity.to_str().unwrap();

    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let applied = ws.apply_env(
        &std::fs::read_to_string(&plan).unwrap(),
        &["--identity", identity_arg],
        &envs,
    );
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let id = applied.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = &applied.step("copy")["outputs"];
    assert_eq!(copy["copied"], id.as_str(), "{copy}");
    assert_eq!(copy["reencrypted"], id.as_str(), "{copy}");

    // In S3: the destination's recipients, other stored bytes, no verification record.
    let there = ws.path("s3").join(BUCKET).join("app").join(&id);
    let manifest = manifest_at(&there);
    assert_eq!(manifest["encryption"]["recipients"], serde_json::json!([b]));
    let original = manifest_at(&local.join(&id));
    assert_ne!(
        manifest["files"][0]["sha256"], original["files"][0]["sha256"],
        "encrypted again, to another key"
    );
    assert!(local.join(&id).join("verification.json").exists());
    assert!(
        !there.join("verification.json").exists(),
        "a verification record is not copied"
    );
    assert!(!there.join("copy-journal.json").exists());

    // The preview says what is there already and copies nothing.
    let (code, out, err) = cmd(
        &[
            "backups",
            "copy",
            "--plan",
            plan_arg,
            "--from",
            "local",
            "--to",
            "offsite",
            "--dry-run",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{id} (app) is already in `offsite`: skipped")),
        "{out}"
    );

    // Again: already there, nothing copied.
    let (code, out, err) = cmd(
        &[
            "backups",
            "copy",
            "--plan",
            plan_arg,
            "--from",
            "local",
            "--to",
            "offsite",
            "latest",
            "--identity",
            identity_arg,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "present"), id, "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("copied: ")),
        "nothing copied: {out}"
    );

    // The copy is verified where it is, by a test restore, with the other key.
    let (code, out, err) = cmd(
        &[
            "verify",
            "--plan",
            plan_arg,
            "--repository",
            "offsite",
            "--identity",
            identity_arg,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(there.join("verification.json").exists());

    // A damaged backup at the source is refused, naming it, and nothing of it is published.
    let (code, out, err) = cmd(
        &[
            "backup",
            "--plan",
            plan_arg,
            "--target",
            "db",
            "--repository",
            "local",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let second = output(&out, "backup_id").to_string();
    let stored = files_under(&local.join(&second))
        .into_iter()
        .find(|p| !p.ends_with("manifest.json"))
        .unwrap();
    damage(&stored, 100);
    let (code, out, err) = cmd(
        &[
            "backups",
            "copy",
            "--plan",
            plan_arg,
            "--from",
            "local",
            "--to",
            "offsite",
            &second,
            "--identity",
            identity_arg,
        ],
        &env,
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains(&second), "{err}");
    assert!(
        err.contains("SHA-256") && err.contains("nothing of it was published"),
        "says the source is damaged: {err}"
    );
    let listed = cmd(
        &[
            "backups",
            "list",
            "--plan",
            plan_arg,
            "--repository",
            "offsite",
        ],
        &env,
    );
    assert!(listed.1.contains(&id), "{listed:?}");
    assert!(!listed.1.contains(&second), "nothing published: {listed:?}");
}

#[test]
fn a_point_in_time_recovery_works_from_a_copy_alone() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    let (uid, gid) = server_owner(&cluster);
    let first = ws.path("first");
    std::fs::create_dir(&first).unwrap();
    std::os::unix::fs::chown(&first, Some(uid), Some(gid)).unwrap();
    let first_url = format!("file://{}", first.display());
    let second = ws.path("second");
    let second_url = format!("file://{}", second.display());
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table t (id int primary key)");
    archive_with(&cluster, &format!("--repository {first_url}"), &[]);
    archived_at_least(&cluster, 1);
    cluster.psql("app", "insert into t values (1)");
    let env = vec![("DATABASE_URL", cluster.url("postgres"))];
    let (code, out, err) = cmd(
        &[
            "backup",
            "--base",
            "--target",
            "env:DATABASE_URL",
            "--repository",
            &first_url,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = output(&out, "backup_id").to_string();
    cluster.psql("app", "insert into t values (2)");
    let before_the_drop = server_now(&cluster);
    std::thread::sleep(Duration::from_millis(50));
    cluster.psql("app", "drop table t");
    archive_everything(&cluster, in_local(&first));

    // The destination is made on purpose, like any repository.
    let (code, out, err) = cmd(
        &["backups", "copy", "--from", &first_url, "--to", &second_url],
        &[],
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("opsrunner repo init"), "{err}");
    let (code, out, err) = cmd(&["repo", "init", &second_url], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cmd(
        &["backups", "copy", "--from", &first_url, "--to", &second_url],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(output(&out, "copied"), id, "{out}");
    let wal: u64 = output(&out, "wal_copied").parse().unwrap();
    assert!(wal >= 2, "the WAL from the backup's start on: {out}");

    // The original repository is gone: only the copy is left.
    std::fs::rename(&first, ws.path("gone")).unwrap();
    let parent = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(parent.path(), Some(uid), Some(gid)).unwrap();
    let data = parent.path().join("data");
    let (code, out, err) = cmd(
        &[
            "restore",
            "--repository",
            &second_url,
            "--to-time",
            &before_the_drop,
            "--data-directory",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let restored = Cluster::adopt(parent);
    restored.wait_promoted();
    assert_eq!(
        restored.psql("app", "select string_agg(id::text, ',' order by id) from t"),
        "1,2"
    );
}

#[test]
fn a_copy_killed_midway_publishes_nothing_and_the_next_one_resumes() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    for table in ["a", "b", "c"] {
        cluster.psql(
            "app",
            &format!("create table {table} (id int primary key, x text, y text); insert into {table} select g, md5(g::text), md5((g + 1)::text) from generate_series(1, 90000) g"),
        );
    }
    let local = ws.path("local");
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: resume
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local: {{ url: "file://{local}", create: true }}
  offsite:
    url: s3://{BUCKET}/app
    create: true
    endpoint: "{endpoint}"
    force_path_style: true
    part_size_mib: 5
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: local, format: directory, compression: none }}
"#,
        local = local.display(),
        endpoint = server.endpoint,
    ));
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    let plan_arg = plan.to_str().unwrap();
    let (code, out, err) = cmd(&["apply", plan_arg], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cmd(&["repo", "init", "offsite", "--plan", plan_arg], &env);
    assert_eq!(code, 0, "{out}{err}");

    // Killed once the first file is in S3 (the journal says so), while others upload.
    server.delay_parts(Duration::from_millis(700));
    let mut child = opsrunner()
        .args([
            "backups", "copy", "--plan", plan_arg, "--from", "local", "--to", "offsite",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = ws.path("s3").join(BUCKET).join("app");
    let started = Instant::now();
    let journal = loop {
        let found = files_under(&prefix)
            .into_iter()
            .find(|p| p.ends_with("copy-journal.json"));
        if let Some(found) = found {
            break found;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was caught"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no file was copied"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !journal.parent().unwrap().join("manifest.json").exists(),
        "a copy killed midway publishes nothing"
    );
    let listed = cmd(
        &[
            "backups",
            "list",
            "--plan",
            plan_arg,
            "--repository",
            "offsite",
            "--json",
        ],
        &env,
    );
    assert_eq!(listed.0, 0, "{listed:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&listed.1)
            .unwrap()
            .as_array()
            .is_some_and(|b| b.is_empty()),
        "{listed:?}"
    );

    server.delay_parts(Duration::ZERO);
    let (code, out, err) = cmd(
        &[
            "backups", "copy", "--plan", plan_arg, "--from", "local", "--to", "offsite",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let resumed: u64 = output(&out, "resumed").parse().unwrap();
    assert!(
        resumed >= 1,
        "the files copied before the kill are kept: {out}"
    );
    let (code, out, err) = cmd(
        &[
            "verify",
            "--plan",
            plan_arg,
            "--repository",
            "offsite",
            "--no-restore",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_export_round_trips_through_local_s3_and_encrypted_repositories_and_damage_is_refused() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 20000) g",
    );
    let key_dir = ws.path("key");
    std::fs::create_dir_all(&key_dir).unwrap();
    let (identity, public) = identity_file(&key_dir);
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: export
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  local: {{ url: "file://{root}/local", create: true }}
  fresh: {{ url: "file://{root}/fresh", create: true }}
  sealed: {{ url: "file://{root}/sealed", create: true, encryption: {{ recipients: ["{public}"] }} }}
  sealed2: {{ url: "file://{root}/sealed2", create: true, encryption: {{ recipients: ["{public}"] }} }}
  offsite:
    url: s3://{BUCKET}/app
    create: true
    endpoint: "{endpoint}"
    force_path_style: true
steps:
  - {{ id: a, type: backup, target: db, database: app, repository: local, compression: none }}
  - {{ id: b, type: backup, target: db, database: app, repository: sealed }}
  - {{ id: c, type: wait_ready, target: db }}
"#,
        root = ws.dir.path().display(),
        endpoint = server.endpoint,
    ));
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    let p = plan.to_str().unwrap();
    // Every repository made, and one backup in `local` and one in `sealed`.
    let applied = cmd(
        &["apply", p, "--report", ws.report_path().to_str().unwrap()],
        &env,
    );
    assert_eq!(applied.0, 0, "{applied:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.report_path()).unwrap()).unwrap();
    let id_of = |step: &str| {
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == step)
            .unwrap()["outputs"]["backup_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (plain, secret) = (id_of("a"), id_of("b"));
    for name in ["fresh", "sealed2", "offsite"] {
        let (code, out, err) = cmd(&["repo", "init", name, "--plan", p], &env);
        assert_eq!(code, 0, "{out}{err}");
    }
    let exported = ws.path("plain.tar");
    let e = exported.to_str().unwrap();

    // local → file → S3, and the copy restores there.
    let (code, out, err) = cmd(
        &[
            "backups",
            "export",
            "latest",
            e,
            "--repository",
            "local",
            "--plan",
            p,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&plain), "{out}");
    assert!(!ws.path("plain.tar.partial").exists());
    let (code, out, err) = cmd(
        &[
            "backups",
            "import",
            e,
            "--repository",
            "offsite",
            "--plan",
            p,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("imported {plain}")), "{out}");
    let (code, out, err) = cmd(
        &[
            "verify",
            "--plan",
            p,
            "--repository",
            "offsite",
            "--backup",
            &plain,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        output(&out, "checks").contains("fingerprints=pass"),
        "{out}"
    );
    let (code, out, err) = cmd(
        &[
            "backups",
            "import",
            e,
            "--repository",
            "offsite",
            "--plan",
            p,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is already in"), "{out}");

    // Encrypted: exported as stored (still encrypted), imported into another encrypted
    // repository, restorable there with the key.
    let sealed_file = ws.path("sealed.tar");
    let s = sealed_file.to_str().unwrap();
    let (code, out, err) = cmd(
        &[
            "backups",
            "export",
            &secret,
            s,
            "--repository",
            "sealed",
            "--plan",
            p,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let bytes = std::fs::read(&sealed_file).unwrap();
    assert!(
        !bytes.windows(5).any(|w| w == b"items"),
        "the export holds the backup as stored, encrypted"
    );
    let (code, out, err) = cmd(
        &[
            "backups",
            "import",
            s,
            "--repository",
            "sealed2",
            "--plan",
            p,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cmd(
        &[
            "verify",
            "--plan",
            p,
            "--repository",
            "sealed2",
            "--identity",
            identity.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        output(&out, "checks").contains("fingerprints=pass"),
        "{out}"
    );
    // A backup that is not encrypted does not go into an encrypted repository.
    let (code, out, err) = cmd(
        &[
            "backups",
            "import",
            e,
            "--repository",
            "sealed2",
            "--plan",
            p,
        ],
        &env,
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("plaintext"), "{err}");

    // A damaged export and a truncated one are refused, naming the file; nothing is published.
    let whole = std::fs::read(&exported).unwrap();
    let damaged = ws.path("damaged.tar");
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    std::fs::write(&damaged, flipped).unwrap();
    let truncated = ws.path("truncated.tar");
    std::fs::write(&truncated, &whole[..whole.len() * 2 / 3]).unwrap();
    for (file, said) in [(&damaged, "damaged"), (&truncated, "truncated")] {
        let f = file.to_str().unwrap();
        let (code, out, err) = cmd(
            &["backups", "import", f, "--repository", "fresh", "--plan", p],
            &env,
        );
        assert_ne!(code, 0, "{out}{err}");
        assert!(err.contains(f), "names the file: {err}");
        assert!(err.contains(said), "{err}");
        let (code, listed, err) = cmd(
            &[
                "backups",
                "list",
                "--repository",
                "fresh",
                "--plan",
                p,
                "--json",
            ],
            &env,
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(listed.trim(), "[]", "nothing published");
    }
    let leftovers: Vec<PathBuf> = files_under(&ws.path("fresh"))
        .into_iter()
        .filter(|f| !f.ends_with("opsrunner-repository.json"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_copy_goes_from_one_object_store_to_the_other_and_back_out_as_a_file() {
    use crate::azure::{Azurite, CONTAINER};
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let azurite = Azurite::start();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int primary key, note text); insert into t select g, md5(g::text) from generate_series(1, 5000) g",
    );
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: stores
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
repositories:
  s3: {{ url: "s3://{BUCKET}/app", create: true, endpoint: "{s3}", force_path_style: true }}
  azure: {{ url: "azure://{CONTAINER}/app", create: true, endpoint: "{azure}" }}
  local: {{ url: "file://{local}", create: true }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: s3 }}
"#,
        s3 = server.endpoint,
        azure = azurite.endpoint,
        local = ws.path("local").display(),
    ));
    let mut env = crate::s3::aws_env();
    env.extend(azurite.env());
    env.push(("DATABASE_URL", cluster.url("postgres")));
    let p = plan.to_str().unwrap();
    let (code, out, err) = cmd(&["apply", p], &env);
    assert_eq!(code, 0, "{out}{err}");
    for name in ["azure", "local"] {
        let (code, out, err) = cmd(&["repo", "init", name, "--plan", p], &env);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = cmd(
        &[
            "backups", "copy", "--plan", p, "--from", "s3", "--to", "azure", "all",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = output(&out, "copied").to_string();
    let (code, out, err) = cmd(&["verify", "--plan", p, "--repository", "azure"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        output(&out, "checks").contains("fingerprints=pass"),
        "{out}"
    );

    let file = ws.path("app.tar");
    let f = file.to_str().unwrap();
    let (code, out, err) = cmd(
        &[
            "backups",
            "export",
            &id,
            f,
            "--plan",
            p,
            "--repository",
            "azure",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cmd(
        &["backups", "import", f, "--plan", p, "--repository", "local"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("imported {id}")), "{out}");
    let (code, out, err) = cmd(
        &[
            "verify",
            "--plan",
            p,
            "--repository",
            "local",
            "--no-restore",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");

    // By a retention rule: of two backups, the one `--keep-last 1` keeps.
    let (code, out, err) = cmd(&["apply", p], &env);
    assert_eq!(code, 0, "{out}{err}");
    let keep = [
        "backups",
        "copy",
        "--plan",
        p,
        "--from",
        "s3",
        "--to",
        "azure",
        "--keep-last",
        "1",
    ];
    let (code, out, err) = cmd(&[&keep[..], &["--dry-run"]].concat(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(&id), "only the newest: {out}");
    let (code, out, err) = cmd(&keep, &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(output(&out, "copied"), id, "{out}");
    assert!(!out.contains("present: "), "{out}");
}
