//! The WAL archive (issue 13, point 2): a real cluster archiving through `opsrunner wal
//! push` as its `archive_command`, into a local and into an S3 repository (encrypted);
//! `wal fetch` gives back the very bytes; pushes are idempotent and refuse to replace; and
//! `wal fetch` says "not found" (exit 1, which ends recovery) only when the archive proved
//! it — injected S3 errors and a missing repository give 255, which aborts recovery instead.

use crate::common::pg::{Cluster, archive_with, archived_at_least, server_owner};
use crate::common::{Workspace, identity_file, opsrunner, run};
use crate::s3::{BUCKET, Fault, S3Server, aws_env};
use std::path::Path;

fn fetch(name: &str, dest: &Path, args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    run(opsrunner()
        .args(["wal", "fetch", name])
        .arg(dest)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str()))))
}

fn push(path: &Path, args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    run(opsrunner()
        .args(["wal", "push"])
        .arg(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str()))))
}

#[test]
fn a_cluster_archives_into_a_local_repository_and_fetch_gives_back_the_bytes() {
    let cluster = Cluster::start();
    let ws = Workspace::new();
    let repo = ws.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&repo, Some(uid), Some(gid)).unwrap();
    let url = format!("file://{}", repo.display());
    // Before anything is archived, `wal status --max-age` fails: archiving has not begun.
    let (code, out, err) =
        run(opsrunner().args(["wal", "status", "--repository", &url, "--max-age", "1h"]));
    assert_eq!(code, opsrunner::exit::BACKUP_TOO_OLD, "{out}{err}");
    archive_with(&cluster, &format!("--repository {url}"), &[]);
    archived_at_least(&cluster, 3);
    let in_archive: Vec<String> = std::fs::read_dir(repo.join(".wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(in_archive.len() >= 2, "{in_archive:?}");
    // Compressed: a segment of md5 text and zeros takes far less than 16 MiB.
    let first = in_archive.iter().min().unwrap().clone();
    let stored = std::fs::metadata(repo.join(".wal").join(&first))
        .unwrap()
        .len();
    assert!(stored < 16 << 20, "{stored}");

    // Fetched, it is byte for byte the segment PostgreSQL wrote (still in pg_wal).
    let dest = ws.path("fetched");
    let (code, _, err) = fetch(&first, &dest, &["--repository", &url], &[]);
    assert_eq!(code, 0, "{err}");
    let original = cluster.dir.path().join("data/pg_wal").join(&first);
    if original.exists() {
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(&original).unwrap()
        );
    }
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);

    // Pushed again with the same content: success, nothing replaced.
    let again = ws.path(&first);
    std::fs::copy(&dest, &again).unwrap();
    let (code, out, err) = push(&again, &["--repository", &url], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already archived"), "{out}");
    // With other content under the same name: refused loudly, the archived one kept.
    let mut other = std::fs::read(&dest).unwrap();
    other[100] ^= 0xff;
    std::fs::write(&again, &other).unwrap();
    let (code, _, err) = push(&again, &["--repository", &url], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already archived with different content"),
        "{err}"
    );
    let (code, _, err) = fetch(
        &first,
        &ws.path("fetched-again"),
        &["--repository", &url],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(ws.path("fetched-again")).unwrap(),
        std::fs::read(&dest).unwrap()
    );

    // Absent (proven): exit 1, which PostgreSQL reads as the end of the archive; a history
    // file of a timeline that never existed is absent the same way.
    for name in ["0000000100000000000000FF", "00000009.history"] {
        let (code, _, err) = fetch(name, &ws.path("absent"), &["--repository", &url], &[]);
        assert_eq!(code, opsrunner::exit::WAL_NOT_FOUND, "{name}: {err}");
        assert!(!ws.path("absent").exists());
    }
    // A repository that is not there (an unmounted disk) is not "absent": 255.
    let gone = format!("file://{}", ws.path("unmounted").display());
    let (code, _, err) = fetch(
        &first,
        &ws.path("x"),
        &["--repository", &gone, "--retry-for", "1s"],
        &[],
    );
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
    // Nor is an empty mount point, nor an archive directory holding no archived file: the
    // archive is not proven there, so nothing is proven absent.
    let mount_point = ws.path("empty-mount-point");
    std::fs::create_dir_all(&mount_point).unwrap();
    let empty = format!("file://{}", mount_point.display());
    for _ in 0..2 {
        let (code, _, err) = fetch(
            "0000000100000000000000FF",
            &ws.path("y"),
            &["--repository", &empty, "--retry-for", "1s"],
            &[],
        );
        assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
        assert!(err.contains("was not found"), "{err}");
        assert!(!ws.path("y").exists());
        std::fs::create_dir_all(mount_point.join(".wal")).unwrap();
        std::fs::write(
            mount_point.join(".wal/.000000010000000000000001.1.tmp"),
            "x",
        )
        .unwrap();
    }
    // `wal status`: the newest segment and its age; a segment deleted from the middle is a
    // gap recovery cannot pass: exit 6, naming it.
    let mut segments: Vec<String> = in_archive
        .iter()
        .filter(|n| n.len() == 24)
        .cloned()
        .collect();
    segments.sort();
    let (code, out, err) =
        run(opsrunner().args(["wal", "status", "--repository", &url, "--max-age", "1h"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("newest {}", segments.last().unwrap())),
        "{out}"
    );
    let middle = segments[1].clone();
    std::fs::rename(repo.join(".wal").join(&middle), ws.path("moved-away")).unwrap();
    let (code, out, err) = run(opsrunner().args(["wal", "status", "--repository", &url, "--json"]));
    assert_eq!(code, opsrunner::exit::BACKUP_CORRUPT, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["gaps"][0]["first_missing"],
        middle.as_str(),
        "{status}"
    );
    assert!(err.contains("cannot pass it"), "{err}");
    std::fs::rename(ws.path("moved-away"), repo.join(".wal").join(&middle)).unwrap();
    // A damaged archived file: 255, and nothing written for PostgreSQL to read.
    crate::common::damage(&repo.join(".wal").join(&first), 100);
    let (code, _, err) = fetch(&first, &ws.path("damaged"), &["--repository", &url], &[]);
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert!(!ws.path("damaged").exists());
    // Names that are not WAL files never reach the repository.
    let (code, _, err) = fetch(
        "../../etc/passwd",
        &ws.path("x"),
        &["--repository", &url],
        &[],
    );
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
}

#[test]
fn an_encrypted_s3_archive_survives_errors_without_ever_saying_not_found() {
    let ws = Workspace::new();
    let server = S3Server::start(&ws.path("s3"));
    let cluster = Cluster::start();
    let (identity, recipient) = identity_file(ws.dir.path());
    let plan = ws.write_plan(&format!(
        r#"
version: 1
name: pitr
repositories:
  offsite:
    url: s3://{BUCKET}/pitr
    create: true
    endpoint: "{}"
    force_path_style: true
    encryption: {{ recipients: ["{recipient}"] }}
steps:
  - {{ id: noop, type: shell, command: "true" }}
"#,
        server.endpoint
    ));
    let (uid, gid) = server_owner(&cluster);
    std::os::unix::fs::chown(&plan, Some(uid), Some(gid)).unwrap();
    let mut env = aws_env();
    archive_with(
        &cluster,
        &format!("--repository offsite --plan {}", plan.display()),
        &env,
    );
    archived_at_least(&cluster, 1);
    let objects = crate::common::files_under(&ws.path("s3"));
    let segment = objects
        .iter()
        .filter(|p| p.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new(".wal")))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .min()
        .unwrap_or_else(|| panic!("nothing archived: {objects:?}"));
    let args = ["--repository", "offsite", "--plan", plan.to_str().unwrap()];

    // With the identity: the bytes come back; without: 255, never "not found".
    let (code, _, err) = fetch(
        &segment,
        &ws.path("seg"),
        &[&args[..], &["--identity", identity.to_str().unwrap()]].concat(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(ws.path("seg")).unwrap().len(), 16 << 20);
    let (code, _, err) = fetch(&segment, &ws.path("nokey"), &args, &env);
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
    // The wrong key: said in words (a WAL file records no recipients to list).
    std::fs::create_dir_all(ws.path("other")).unwrap();
    let (wrong, _) = identity_file(&ws.path("other"));
    let (code, _, err) = fetch(
        &segment,
        &ws.path("wrongkey"),
        &[&args[..], &["--identity", wrong.to_str().unwrap()]].concat(),
        &env,
    );
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
    assert!(
        err.contains("can decrypt") && err.contains("encrypted to other recipients"),
        "{err}"
    );
    assert!(!err.contains("encrypted to ;"), "{err}");
    assert!(!ws.path("wrongkey").exists());
    // The stored object is ciphertext: the segment's own bytes are not in it.
    let stored = std::fs::read(objects.iter().find(|p| p.ends_with(&segment)).unwrap()).unwrap();
    let plain = std::fs::read(ws.path("seg")).unwrap();
    assert!(!stored.windows(64).any(|w| w == &plain[4096..4160]));

    // The store failing (500s, resets, a 403) past the client's retries: 255 every time.
    env.push(("AWS_MAX_ATTEMPTS", "2".to_string()));
    for fault in [
        Fault::InternalError,
        Fault::Reset,
        Fault::SlowDown,
        Fault::Forbidden,
    ] {
        server.fail_gets(&format!(".wal/{segment}"), &[fault; 50]);
        let before = server
            .stats
            .faulted_gets
            .load(std::sync::atomic::Ordering::SeqCst);
        let (code, _, err) = fetch(
            &segment,
            &ws.path("faulty"),
            &[
                &args[..],
                &[
                    "--identity",
                    identity.to_str().unwrap(),
                    "--retry-for",
                    "2s",
                ],
            ]
            .concat(),
            &env,
        );
        assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{fault:?}: {err}");
        assert!(!ws.path("faulty").exists());
        let served = server
            .stats
            .faulted_gets
            .load(std::sync::atomic::Ordering::SeqCst)
            - before;
        assert!(
            served >= 2,
            "{fault:?}: only {served} faults reached the client"
        );
    }
    // A few errors within the retries: fetched.
    server.fail_gets(&format!(".wal/{segment}"), &[Fault::InternalError; 3]);
    let (code, _, err) = fetch(
        &segment,
        &ws.path("retried"),
        &[
            &args[..],
            &[
                "--identity",
                identity.to_str().unwrap(),
                "--retry-for",
                "30s",
            ],
        ]
        .concat(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    server.fail_gets("", &[]);
    // The archive is not a backup: an orphan sweep of the repository leaves it alone.
    let (code, out, err) = run(opsrunner()
        .args(["backups", "prune", "--orphans", "--orphan-age", "0s"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str()))));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(".wal"), "{out}");
    let (code, _, err) = fetch(
        &segment,
        &ws.path("after-sweep"),
        &[&args[..], &["--identity", identity.to_str().unwrap()]].concat(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    // Absent on S3 (404 NoSuchKey): exit 1.
    let (code, _, err) = fetch("0000000100000000000000FE", &ws.path("absent"), &args, &env);
    assert_eq!(code, opsrunner::exit::WAL_NOT_FOUND, "{err}");
    // A prefix that holds no archive (a typo, another repository's) is not "absent": 255.
    let text = std::fs::read_to_string(&plan).unwrap();
    let typo = ws.path("typo.yaml");
    std::fs::write(&typo, text.replace("/pitr\n", "/pirt\n")).unwrap();
    assert_ne!(std::fs::read_to_string(&typo).unwrap(), text);
    let (code, _, err) = fetch(
        "0000000100000000000000FE",
        &ws.path("absent"),
        &[
            "--repository",
            "offsite",
            "--plan",
            typo.to_str().unwrap(),
            "--retry-for",
            "1s",
        ],
        &env,
    );
    assert_eq!(code, opsrunner::exit::WAL_UNREADABLE, "{err}");
    assert!(err.contains("was not found"), "{err}");
}
