//! An S3 repository against a real S3-compatible HTTP server started by the test (s3s with
//! its file-system backend, in process, with SigV4 authentication): multipart uploads,
//! verification by test restore, the catalog and prune — no mocked client.

mod common;

use common::pg::{Cluster, PASSWORD};
use common::{Workspace, opsrunner};
use std::path::Path;

const ACCESS_KEY: &str = "AKIAOPSRUNNERTEST";
const SECRET_KEY: &str = "opsrunner-test-secret-key-0123456789";

/// Starts the S3 server on a thread of its own; returns its endpoint.
fn start_s3(root: &Path) -> String {
    start_s3_with_faults(root, 0).0
}

/// Requests that carried `x-amz-server-side-encryption: AES256`.
static SSE_REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Like [`start_s3`], answering the first `faults` part uploads with HTTP 503 SlowDown, as
/// a busy S3 does.
fn start_s3_with_faults(
    root: &Path,
    faults: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let faults = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(faults));
    let remaining = faults.clone();
    std::fs::create_dir_all(root.join("backups-bucket")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service.clone();
                let faults = faults.clone();
                let faulty = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    let faults = faults.clone();
                    async move {
                        if req.headers().get("x-amz-server-side-encryption").is_some_and(|v| v == "AES256") {
                            SSE_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let is_part = req.method() == hyper::Method::PUT
                            && req.uri().query().is_some_and(|q| q.contains("partNumber="));
                        let inject = is_part
                            && faults
                                .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| n.checked_sub(1))
                                .is_ok();
                        if inject {
                            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                            return Ok(hyper::Response::builder().status(503).body(s3s::Body::from(body.to_string())).unwrap());
                        }
                        hyper::service::Service::call(&service, req).await
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), faulty)
                        .await;
                });
            }
        });
    });
    (format!("http://{addr}"), remaining)
}

fn aws_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        // No profile files or instance metadata lookups from the test machine.
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    env.extend(extra.iter().cloned());
    env
}

#[test]
fn backups_go_to_s3_in_parts_and_come_back() {
    let ws = Workspace::new();
    let endpoint = start_s3(&ws.path("s3"));
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    // About 24 MB uncompressed: with 5 MiB parts, at least four parts.
    cluster.psql("app", "create table noise (id int primary key, a text, b text, c text); insert into noise select g, md5(g::text), md5((g + 1)::text), md5((g + 2)::text) from generate_series(1, 200000) g");
    let plan = format!(
        r#"
version: 1
name: s3
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite:
    url: s3://backups-bucket/nightly/app
    endpoint: "{endpoint}"
    force_path_style: true
    part_size_mib: 5
    sse: AES256
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, fingerprint: full }}
  - id: verify
    type: verify
    needs: [backup]
    repository: offsite
    backup: "{{{{ steps.backup.outputs.backup_id }}}}"
    restore_into: {{ target: scratch, database: check }}
"#
    );
    let url = cluster.url("postgres");
    let env = aws_env(&[("DATABASE_URL", url)]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = ws.apply_env(&plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bytes: u64 = run.step("backup")["outputs"]["bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        bytes > 15 * 1024 * 1024,
        "large enough for several parts: {bytes}"
    );
    assert_eq!(
        run.step("verify")["outputs"]["checks"],
        "manifest=pass files=pass archive=pass restore=pass fingerprints=pass"
    );
    let id = run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        run.step("backup")["outputs"]["uri"],
        format!("s3://backups-bucket/nightly/app/{id}")
    );
    assert!(!run.everything().contains(PASSWORD) && !run.everything().contains(SECRET_KEY));

    // The objects are where the manifest says, and the catalog finds the backup.
    let object = ws
        .path("s3/backups-bucket/nightly/app")
        .join(&id)
        .join("dump.pgdump");
    assert_eq!(std::fs::metadata(&object).unwrap().len(), bytes);
    let list = opsrunner()
        .args([
            "backups",
            "list",
            "--json",
            "--repository",
            "offsite",
            "--plan",
        ])
        .arg(ws.path("plan.yaml"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["verification"]["passed"], true);
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    let ws = Workspace::new();
    let endpoint = start_s3(&ws.path("s3"));
    let plan = format!(
        "version: 1\nname: denied\nrepositories:\n  offsite: {{ url: s3://backups-bucket/x, endpoint: \"{endpoint}\", force_path_style: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: offsite, backup: latest, retry: {{ attempts: 3, delay: 10ms }} }}\n"
    );
    let env = aws_env(&[("AWS_SECRET_ACCESS_KEY", "wrong".to_string())]);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.retain(|(k, v)| *k != "AWS_SECRET_ACCESS_KEY" || *v == "wrong");
    let run = ws.apply_env(&plan, &[], &env);
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
fn slow_down_answers_are_retried_and_the_backup_is_intact() {
    let ws = Workspace::new();
    let (endpoint, faults_left) = start_s3_with_faults(&ws.path("s3"), 2);
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table noise (id int primary key, a text, b text); insert into noise select g, md5(g::text), md5((g + 1)::text) from generate_series(1, 150000) g");
    let plan = format!(
        r#"
version: 1
name: s3-faults
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite: {{ url: s3://backups-bucket/app, endpoint: "{endpoint}", force_path_style: true, part_size_mib: 5 }}
steps:
  - {{ id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, fingerprint: full }}
  - {{ id: verify, type: verify, needs: [backup], repository: offsite, backup: "{{{{ steps.backup.outputs.backup_id }}}}", restore_into: {{ target: scratch, database: check }} }}
"#
    );
    let url = cluster.url("postgres");
    let env = aws_env(&[("DATABASE_URL", url)]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = ws.apply_env(&plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        faults_left.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "both 503s were served"
    );
    assert_eq!(
        run.attempts("backup"),
        1,
        "the SDK retried the parts; the step did not need to"
    );
    assert_eq!(
        run.step("verify")["outputs"]["checks"],
        "manifest=pass files=pass archive=pass restore=pass fingerprints=pass"
    );
}
