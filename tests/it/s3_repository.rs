//! An S3 repository against a real S3-compatible HTTP server started by the test (s3s with
//! its file-system backend, in process, with SigV4 authentication): multipart uploads with
//! checksums, verification by test restore, the catalog, injected faults (throttling, 500s,
//! resets, parts cut off, 403s), a process killed mid-upload, and client-side encryption —
//! no mocked client.

use crate::common::pg::{Cluster, PASSWORD};
use crate::common::{Workspace, files_under, opsrunner};
use crate::s3::{BUCKET, Fault, S3Server, SECRET_KEY};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ALL_PASS: &str = "manifest=pass files=pass archive=pass restore=pass fingerprints=pass";

/// A database `app` of about 24 MB uncompressed: with 5 MiB parts, five parts.
fn source() -> (Cluster, String) {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table noise (id int primary key, a text, b text, c text); insert into noise select g, md5(g::text), md5((g + 1)::text), md5((g + 2)::text) from generate_series(1, 200000) g");
    let url = cluster.url("postgres");
    (cluster, url)
}

/// A plan with an S3 repository `offsite` at `s3://BUCKET/app` and a `scratch` target.
fn plan(endpoint: &str, repository_extra: &str, steps: &str) -> String {
    format!(
        r#"
version: 1
name: s3
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite:
    url: s3://{BUCKET}/app
    create: true
    endpoint: "{endpoint}"
    force_path_style: true
    part_size_mib: 5{repository_extra}
steps:
{steps}"#
    )
}

const BACKUP: &str = "  - { id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, fingerprint: full }\n";
const BACKUP_AND_VERIFY: &str = "  - { id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, fingerprint: full }\n  - { id: verify, type: verify, needs: [backup], repository: offsite, backup: \"{{ steps.backup.outputs.backup_id }}\", restore_into: { target: scratch, database: check } }\n";

fn env_with(database_url: &str, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = crate::s3::aws_env();
    env.push(("DATABASE_URL", database_url.to_string()));
    env.extend(extra.iter().cloned());
    env
}

/// Multipart uploads s3s-fs holds open: its `.upload-<id>.json` records in the server's
/// root (parts are `.upload_id-<id>.part-N` beside them).
fn open_uploads(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
        .collect()
}

/// A backup run caught while its first part is uploading (parts are slowed down).
struct MidUpload {
    server: S3Server,
    cluster: Cluster,
    env: Vec<(&'static str, String)>,
    child: std::process::Child,
}

fn backup_caught_mid_upload(ws: &Workspace) -> MidUpload {
    let server = S3Server::start(&ws.path("s3"));
    server.delay_parts(Duration::from_secs(2));
    let (cluster, url) = source();
    let plan_path = ws.write_plan(&plan(&server.endpoint, "", BACKUP));
    let env = env_with(&url, &[]);
    let mut child = opsrunner()
        .arg("apply")
        .arg(&plan_path)
        .arg("--report")
        .arg(ws.report_path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.stats.part_requests.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no part upload began"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    MidUpload {
        server,
        cluster,
        env,
        child,
    }
}

#[test]
fn backups_go_to_s3_in_parts_and_come_back() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let (_cluster, url) = source();
    let plan = plan(&server.endpoint, "\n    sse: AES256", BACKUP_AND_VERIFY);
    let env = env_with(&url, &[]);
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bytes: u64 = run.step("backup")["outputs"]["bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        bytes > 20 * 1024 * 1024,
        "large enough for five parts: {bytes}"
    );
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    let id = run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        run.step("backup")["outputs"]["uri"],
        format!("s3://{BUCKET}/app/{id}")
    );
    assert!(!run.everything().contains(PASSWORD) && !run.everything().contains(SECRET_KEY));

    // Five parts, every one with a CRC32 for the store to check; SSE asked for every object.
    let parts = server.stats.part_requests.load(Ordering::SeqCst);
    assert_eq!(parts, 5, "24 MB in 5 MiB parts");
    assert_eq!(server.stats.parts_with_crc32.load(Ordering::SeqCst), parts);
    assert!(server.stats.sse_requests.load(Ordering::SeqCst) >= 2);
    // Every object, the notes of uploads in progress included: a bucket policy that
    // refuses unencrypted writes must not fail a backup.
    assert_eq!(server.stats.puts_without_sse.load(Ordering::SeqCst), 0);

    // The objects are where the manifest says; no upload is left open, no note behind.
    let object = ws.path("s3").join(BUCKET).join("app").join(&id);
    assert_eq!(
        std::fs::metadata(object.join("dump.pgdump")).unwrap().len(),
        bytes
    );
    assert!(files_under(&object.join(".uploads")).is_empty());
    assert!(open_uploads(&ws.path("s3")).is_empty());
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["verification"]["passed"], true);
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let plan = format!(
        "version: 1\nname: denied\nrepositories:\n  offsite: {{ url: s3://{BUCKET}/x, endpoint: \"{}\", force_path_style: true, create: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: offsite, backup: latest, retry: {{ attempts: 3, delay: 10ms }} }}\n",
        server.endpoint
    );
    let mut env = crate::s3::aws_env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", "wrong".to_string()));
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 1);
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot list repository `offsite`"),
        "{reason}"
    );
    assert_eq!(run.attempts("verify"), 1, "a 403 is not retried");
    assert_eq!(run.step("verify")["attempts"][0]["transient"], false);
}

#[test]
fn throttling_errors_resets_and_cut_off_parts_are_retried_and_the_backup_is_intact() {
    let ws = Workspace::new();
    let faults = [
        Fault::SlowDown,
        Fault::InternalError,
        Fault::Reset,
        Fault::Truncate,
        Fault::SlowDown,
    ];
    let server = S3Server::with_faults(&ws.path("s3"), &faults);
    let (_cluster, url) = source();
    let plan = plan(&server.endpoint, "", BACKUP_AND_VERIFY);
    let run = ws.apply_owned(&plan, &[], &env_with(&url, &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(server.stats.faults_left(), 0, "every fault was served");
    assert_eq!(
        server.stats.part_requests.load(Ordering::SeqCst),
        5 + faults.len(),
        "each faulty part was sent again"
    );
    assert_eq!(
        run.attempts("backup"),
        1,
        "the parts were retried; the step did not need to be"
    );
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    assert!(open_uploads(&ws.path("s3")).is_empty());
}

#[test]
fn a_403_on_a_part_fails_at_once_and_publishes_nothing() {
    let ws = Workspace::new();
    let server = S3Server::with_faults(&ws.path("s3"), &[Fault::Forbidden]);
    let (_cluster, url) = source();
    let steps = "  - { id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, retry: { attempts: 3, delay: 10ms } }\n";
    let plan = plan(&server.endpoint, "", steps);
    let env = env_with(&url, &[]);
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = run.step("backup")["reason"].as_str().unwrap();
    assert!(
        reason.contains("uploading part") && reason.contains("AccessDenied"),
        "{reason}"
    );
    assert_eq!(run.attempts("backup"), 1, "a 403 is not retried");
    assert_eq!(run.step("backup")["attempts"][0]["transient"], false);
    // Nothing published, nothing left: no objects, no open upload.
    let (_, stdout, _) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(stdout.trim(), "[]");
    assert!(no_objects_but_the_record(&ws.path("s3").join(BUCKET)));
    assert!(open_uploads(&ws.path("s3")).is_empty());
}

#[test]
fn a_backup_killed_mid_upload_never_appears_and_prune_orphans_aborts_its_upload() {
    let ws = Workspace::new();
    let MidUpload {
        server: _server,
        cluster: _cluster,
        env,
        mut child,
    } = backup_caught_mid_upload(&ws);
    child.kill().unwrap();
    child.wait().unwrap();

    // No backup appears, but the upload is open and noted.
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "[]");
    assert_eq!(open_uploads(&ws.path("s3")).len(), 1, "one upload open");
    // Besides the lease the killed run held (its holder is gone: the next run takes it).
    let mut leftovers = files_under(&ws.path("s3").join(BUCKET));
    leftovers
        .retain(|f| !f.ends_with(".opsrunner.lease") && !f.ends_with("opsrunner-repository.json"));
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(
        leftovers[0].parent().unwrap().ends_with(".uploads"),
        "{leftovers:?}"
    );

    // The preview names it and changes nothing; then it is removed and the upload aborted.
    let prune = ["prune", "--orphans", "--orphan-age", "0s"];
    let (code, stdout, stderr) =
        ws.backups_of("offsite", &[&prune[..], &["--dry-run"]].concat(), &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("would delete") && stdout.contains("unfinished backup"),
        "{stdout}"
    );
    let mut unchanged = files_under(&ws.path("s3").join(BUCKET));
    unchanged
        .retain(|f| !f.ends_with(".opsrunner.lease") && !f.ends_with("opsrunner-repository.json"));
    assert_eq!(unchanged, leftovers);
    assert!(!open_uploads(&ws.path("s3")).is_empty());
    let (code, stdout, stderr) = ws.backups_of("offsite", &prune, &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("delete ") && stdout.contains("unfinished backup"),
        "{stdout}"
    );
    assert!(
        open_uploads(&ws.path("s3")).is_empty(),
        "the upload was aborted"
    );
    assert!(no_objects_but_the_record(&ws.path("s3").join(BUCKET)));
    let (_, stdout, _) = ws.backups_of("offsite", &prune, &env);
    assert_eq!(stdout.trim(), "no unfinished backups");
}

#[test]
fn encrypted_backups_round_trip_through_s3() {
    use age::secrecy::ExposeSecret;
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table salaries (id int primary key, who text); insert into salaries select g, 'employee-' || g from generate_series(1, 20000) g");
    let identity = age::x25519::Identity::generate();
    let key_file = ws.path("backup.key");
    std::fs::write(&key_file, identity.to_string().expose_secret()).unwrap();
    let extra = format!(
        "\n    encryption: {{ recipients: [\"{}\"] }}",
        identity.to_public()
    );
    let plan = plan(&server.endpoint, &extra, BACKUP_AND_VERIFY);
    let env = env_with(
        &cluster.url("postgres"),
        &[(
            "OPSRUNNER_AGE_IDENTITY_FILE",
            key_file.display().to_string(),
        )],
    );
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    for file in files_under(&ws.path("s3").join(BUCKET)) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("employee-") && !text.contains("salaries"),
            "{} reveals data",
            file.display()
        );
    }
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(" age "), "{stdout}");
}

#[test]
fn credentials_in_an_s3_url_are_refused_without_being_printed() {
    let ws = Workspace::new();
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let path = ws.write_plan(&format!(
        "version: 1\nname: leaky\nrepositories:\n  offsite: {{ url: \"s3://AKIAEXAMPLE:{secret}@{BUCKET}/app\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: offsite, keep: {{ last: 3 }} }}\n"
    ));
    let out = opsrunner().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the S3 URL carries credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("repositories.offsite.url"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    let out = opsrunner()
        .args(["backups", "list", "--repository"])
        .arg(format!("s3://AKIAEXAMPLE:{secret}@{BUCKET}/app"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("carries credentials") && !stderr.contains(secret),
        "{stderr}"
    );
}

#[test]
fn small_files_go_up_in_one_request_each() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    // Directory format, uncompressed: a small file per table.
    cluster.psql("app", "create table empty (id int); create table small (id int primary key, v text); insert into small select g, md5(g::text) from generate_series(1, 1000) g");
    let steps = "  - { id: backup, type: backup, target: db, database: app, repository: offsite, format: directory, compression: none, fingerprint: full }\n  - { id: verify, type: verify, needs: [backup], repository: offsite, backup: \"{{ steps.backup.outputs.backup_id }}\", restore_into: { target: scratch, database: check } }\n";
    let plan = plan(&server.endpoint, "", steps);
    let run = ws.apply_owned(&plan, &[], &env_with(&cluster.url("postgres"), &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    assert_eq!(
        server.stats.part_requests.load(Ordering::SeqCst),
        0,
        "no multipart upload for files smaller than a part"
    );
    let id = run.step("backup")["outputs"]["backup_id"].as_str().unwrap();
    let files = files_under(&ws.path("s3").join(BUCKET).join("app").join(id).join("dump"));
    assert_eq!(files.len(), 3, "toc.dat and one file per table: {files:?}");
    assert!(open_uploads(&ws.path("s3")).is_empty());
}

#[test]
fn a_backup_interrupted_mid_upload_aborts_its_upload_and_leaves_nothing() {
    let ws = Workspace::new();
    let MidUpload {
        server: _server,
        cluster: _cluster,
        env,
        child,
    } = backup_caught_mid_upload(&ws);
    // What systemd sends when a unit is stopped.
    let run = ws.interrupt(child, libc::SIGTERM);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.status("backup"), "cancelled");
    let (_, stdout, _) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(stdout.trim(), "[]");
    assert!(
        open_uploads(&ws.path("s3")).is_empty(),
        "the upload was aborted before the process exited"
    );
    assert!(no_objects_but_the_record(&ws.path("s3").join(BUCKET)));
}

/// Variables reach every field, typed or not, and a bad value is refused like a literal,
/// naming the variable; the S3 endpoint may come from the environment.
#[test]
fn variables_reach_every_field_and_are_checked_like_literals() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let (_cluster, url) = source();
    let plan = format!(
        r#"version: 1
name: matrix
vars: {{ format: directory, compression: zstd, keep: 5, timeout: 5m, path_style: "true", workers: 1 }}
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite:
    url: s3://{BUCKET}/matrix
    create: true
    endpoint: "{{{{ env.S3_ENDPOINT }}}}"
    force_path_style: "{{{{ vars.path_style }}}}"
steps:
  - id: backup
    type: backup
    target: db
    database: app
    repository: offsite
    format: "{{{{ vars.format }}}}"
    compression: "{{{{ vars.compression }}}}"
    jobs: "{{{{ vars.workers }}}}"
    timeout: "{{{{ vars.timeout }}}}"
  - id: prune
    type: prune
    needs: [backup]
    repository: offsite
    keep: {{ last: "{{{{ vars.keep }}}}" }}
"#
    );
    let plan_file = ws.write_plan(&plan);
    let env = env_with(&url, &[("S3_ENDPOINT", server.endpoint.clone())]);
    let matrix = [
        "--var",
        "format=directory",
        "--var",
        "compression=gzip:6",
        "--var",
        "workers=2",
        "--var",
        "keep=1",
    ];
    let run_cli = |verb: &str, args: &[&str]| {
        let out = opsrunner()
            .arg(verb)
            .arg(&plan_file)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run_cli("validate", &matrix);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run_cli("plan", &matrix);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("directory") && text.contains("gzip:6"),
        "{text}"
    );

    // Two runs: the second's prune keeps one backup, as `keep=1` says.
    for _ in 0..2 {
        let run = ws.apply_owned(&plan, &matrix, &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["format"], "directory", "{stdout}");
    assert_eq!(listed[0]["compression"], "gzip:6", "{stdout}");

    // A bad value is refused before anything runs, where the field is, naming the variable.
    for (args, field, says) in [
        (["--var", "format=tarball"], "steps[0].format", "tarball"),
        (["--var", "compression=lz5"], "steps[0].compression", "lz5"),
        (["--var", "timeout=forever"], "steps[0].timeout", "forever"),
        (
            ["--var", "path_style=maybe"],
            "repositories.offsite.force_path_style",
            "maybe",
        ),
        (["--var", "workers=100"], "steps[0].jobs", "64"),
    ] {
        for verb in ["validate", "apply"] {
            let (code, text) = run_cli(verb, &args);
            assert_eq!(code, Some(2), "{verb} {args:?}: {text}");
            assert!(
                text.contains(field) && text.contains(says),
                "{verb} {args:?}: {text}"
            );
            assert!(text.contains("plan.yaml:"), "{verb} {args:?}: {text}");
        }
    }
}

/// A template where a field cannot take one, and a step's output where the value must be
/// known before the run, are refused by validate with the field's position.
#[test]
fn templates_where_they_cannot_be_rendered_are_refused() {
    let ws = Workspace::new();
    for (plan, field, says) in [
        (
            "version: 1\nname: t\ntargets:\n  db: { url: \"postgres://h/db\", protected: \"{{ vars.p }}\" }\nvars: { p: false }\nsteps:\n  - { id: a, type: sql, target: db, query: \"select 1\" }\n",
            "targets.db.protected",
            "takes no template",
        ),
        (
            "version: 1\nname: t\nvars: { a: \"{{ env.HOME }}\" }\nsteps:\n  - { id: a, type: shell, command: \"true\" }\n",
            "vars",
            "takes no template",
        ),
        (
            "version: 1\nname: t\nvars: { a: x }\nsteps:\n  - { id: \"{{ vars.a }}\", type: shell, command: \"true\" }\n",
            "steps[0].id",
            "takes no template",
        ),
        (
            "version: 1\nname: t\nrepositories:\n  r: { url: \"file://./r\", create: true }\ntargets:\n  db: { url: \"postgres://h/db\" }\nsteps:\n  - { id: a, type: shell, command: \"echo 2\" }\n  - { id: b, type: backup, needs: [a], target: db, repository: r, jobs: \"{{ steps.a.outputs.stdout }}\" }\n",
            "steps[1].jobs",
            "known only when that step has run",
        ),
        (
            "version: 1\nname: t\nrepositories:\n  r: { url: \"file://./r\", create: true }\ntargets:\n  db: { url: \"postgres://h/db\" }\nsteps:\n  - { id: a, type: shell, command: \"echo db\" }\n  - { id: b, type: backup, needs: [a], target: \"{{ steps.a.outputs.stdout }}\", repository: r }\n",
            "steps[1].target",
            "must be known before the run",
        ),
    ] {
        let out = opsrunner()
            .arg("validate")
            .arg(ws.write_plan(plan))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(field) && text.contains(says), "{text}");
        assert!(text.contains("plan.yaml:"), "{text}");
    }
}

/// A verify that cannot read the backup's files just now (the store answers 500 and resets
/// connections, more often than the client retries) has no verdict on the backup: exit 1
/// with the read error, not 6 "corrupt", and no verification recorded; once the store
/// answers again, the same backup verifies.
#[test]
fn a_verify_that_cannot_read_the_store_is_not_a_verdict_of_corruption() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql(
        "app",
        "create table t (id int); insert into t select generate_series(1, 1000)",
    );
    // Two attempts per request: the faults below outlast the client's retries in seconds.
    let env = env_with(
        &cluster.url("postgres"),
        &[("AWS_MAX_ATTEMPTS", "2".to_string())],
    );
    let made = ws.apply_owned(&plan(&server.endpoint, "", BACKUP), &[], &env);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let id = made.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let verify = format!(
        "  - {{ id: verify, type: verify, repository: offsite, backup: \"{id}\", restore_into: {{ target: scratch, database: check }} }}\n"
    );
    let faults: Vec<Fault> = [Fault::InternalError, Fault::Reset]
        .into_iter()
        .cycle()
        .take(8)
        .collect();
    server.fail_gets("/dump", &faults);
    let unreadable = ws.apply_owned(&plan(&server.endpoint, "", &verify), &[], &env);
    assert!(server.stats.faulted_gets.load(Ordering::SeqCst) > 0);
    assert_eq!(unreadable.code, 1, "{}", unreadable.stderr);
    let step = unreadable.step("verify");
    assert!(step.get("verdict").is_none_or(|v| v.is_null()), "{step}");
    assert!(
        step["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no verdict on the backup"),
        "{step}"
    );
    let recorded = files_under(&ws.path("s3"))
        .into_iter()
        .any(|f| f.ends_with("verification.json"));
    assert!(!recorded, "a verification was recorded");

    server.fail_gets("/dump", &[]);
    let verified = ws.apply_owned(&plan(&server.endpoint, "", &verify), &[], &env);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert_eq!(verified.step("verify")["outputs"]["checks"], ALL_PASS);
}

/// Nothing under `dir` but the repository's record (made before the backup started).
fn no_objects_but_the_record(dir: &std::path::Path) -> bool {
    files_under(dir)
        .iter()
        .all(|f| f.ends_with("opsrunner-repository.json"))
}
