//! Every command in the README runs (issue 12, point 5): a README that drifts from the
//! program fails CI. The commands are read from the README's ```sh blocks, in order, and
//! run against a real cluster with the README's own plans, from a copy of the repository's
//! `plans/`, `examples/` and `migrations/`. Paths a test may not touch (`/etc/systemd`,
//! `/var/backups`) and example ids are replaced by the workspace's; commands of other
//! programs (`systemctl`, `kubectl`, `docker`) are replaced by the checks that stand in for
//! them here, each named below. A command this file does not know fails the test.

use crate::common::pg::Cluster;
use crate::common::{Workspace, opsrunner, python_with, receiver};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One command of the README: its line, and its words (continuations joined, the trailing
/// `# comment` dropped).
#[derive(Debug)]
struct ReadmeCommand {
    line: usize,
    words: Vec<String>,
}

fn readme_commands(readme: &str) -> Vec<ReadmeCommand> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (n, line) in readme.lines().enumerate() {
        let line_no = n + 1;
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                None => Some(info.trim().to_string()),
                Some(_) => None,
            };
            continue;
        }
        let Some(info) = &fence else { continue };
        if info != "sh" {
            // A command shown in a block of another kind would escape this test.
            let word = line.split_whitespace().next().unwrap_or_default();
            assert!(
                !matches!(
                    word,
                    "opsrunner" | "cargo" | "systemctl" | "kubectl" | "docker"
                ),
                "README.md:{line_no}: a command in a ```{info} block; mark the block ```sh so that it is run"
            );
            continue;
        }
        let text = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        };
        if text.trim().is_empty() || text.trim_start().starts_with('#') {
            continue;
        }
        if pending.is_empty() {
            pending_line = line_no;
        }
        match text.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(text);
                for part in pending.split("&&") {
                    assert!(
                        !part.contains(['"', '\'', '$', '|', ';', '`']),
                        "README.md:{pending_line}: `{part}` needs a shell; teach tests/it/readme.rs to run it"
                    );
                    out.push(ReadmeCommand {
                        line: pending_line,
                        words: part.split_whitespace().map(str::to_string).collect(),
                    });
                }
                pending.clear();
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

struct Readme {
    ws: Workspace,
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// README text → what stands for it here.
    replace: Vec<(String, String)>,
}

impl Readme {
    /// Runs `opsrunner WORDS…` (a `> FILE` at the end writes stdout there); returns the
    /// exit code, stdout and stderr.
    fn opsrunner(&self, words: &[String]) -> (i32, String, String) {
        let mut args: Vec<String> = Vec::new();
        let mut redirect = None;
        let mut words = words.iter();
        while let Some(word) = words.next() {
            // `[--plan NAME]` shows an option; the command runs without it.
            if word.starts_with('[') {
                let mut w = word;
                while !w.ends_with(']') {
                    w = words.next().expect("an option in brackets is closed");
                }
                continue;
            }
            if word == ">" {
                redirect = words.next().cloned();
                continue;
            }
            let mut word = word.clone();
            for (from, to) in &self.replace {
                word = word.replace(from, to);
            }
            args.push(word);
        }
        let out = opsrunner()
            .args(&args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(file) = redirect {
            std::fs::write(self.dir.join(file), &stdout).unwrap();
        }
        (
            out.status.code().unwrap_or(-1),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn every_command_in_the_readme_runs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    let commands = readme_commands(&readme);
    assert!(commands.len() >= 20, "{commands:?}");

    let cluster = Cluster::start();
    // The plans connect as the application's role, as the README's examples do: read-only
    // SQL on a protected target refuses a superuser (see README, "Guards").
    cluster.psql(
        "postgres",
        &format!(
            "create role ops login createdb password '{}'",
            crate::common::pg::PASSWORD.replace('\'', "''")
        ),
    );
    cluster.psql("postgres", "create database app owner ops");
    let ops_url = |db: &str| cluster.url(db).replacen("://postgres:", "://ops:", 1);
    let ws = Workspace::new();
    let dir = ws.path("repo");
    for part in ["plans", "examples", "migrations"] {
        copy_dir(&Path::new(ROOT).join(part), &dir.join(part));
    }
    let backups = ws.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let units = ws.path("units");
    std::fs::create_dir(&units).unwrap();
    let (webhook, _seen) = receiver(&[200]);
    let mut readme_run = Readme {
        env: vec![
            ("DATABASE_URL".into(), ops_url("app")),
            ("BACKUP_DIR".into(), backups.display().to_string()),
            ("ALERT_WEBHOOK".into(), webhook),
            ("ALERT_TOKEN".into(), "readme-test-token".into()),
            (
                "OPSRUNNER_STATE_DIR".into(),
                ws.path("state").display().to_string(),
            ),
        ],
        replace: vec![
            ("/var/backups/app".into(), backups.display().to_string()),
            ("/etc/systemd/system".into(), units.display().to_string()),
            (
                "/tmp/base.yaml".into(),
                ws.path("base.yaml").display().to_string(),
            ),
        ],
        dir: dir.clone(),
        ws,
    };

    // What the README's commands assume exists: a night that backed up and verified (for
    // `backups list/show/check`), a failed night (for `--resume RUN_ID`), two versions of
    // a plan (for `diff old.yaml new.yaml`).
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    // A table for "one table back" to bring back.
    cluster.psql(
        "app",
        "set role ops; create table orders (id int primary key, note text); insert into orders select g, 'order ' || g from generate_series(1, 10) g",
    );
    let (code, _, err) = readme_run.opsrunner(&words("repo init local --plan plans/nightly.yaml"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = readme_run.opsrunner(&words("apply plans/nightly.yaml"));
    assert_eq!(code, 0, "{err}");
    let failing: Vec<(String, String)> = readme_run
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "DATABASE_URL" => (k.clone(), ops_url("no_such_database")),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let failed = opsrunner()
        .args(["apply", "plans/nightly.yaml"])
        .current_dir(&dir)
        .envs(failing.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let (_, runs, _) = readme_run.opsrunner(&words("runs list --json"));
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    let failed_run = runs[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    let (_, listed, _) = readme_run.opsrunner(&words(&format!(
        "backups list --repository file://{} --json",
        backups.display()
    )));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let backup_id = listed[0]["backup_id"]
        .as_str()
        .or(listed[0]["id"].as_str())
        .unwrap_or_else(|| panic!("{listed}"))
        .to_string();
    readme_run
        .replace
        .push(("20261124T020000Z-app-1a2b".into(), backup_id));
    readme_run.replace.push(("RUN_ID".into(), failed_run));
    let nightly = std::fs::read_to_string(dir.join("plans/nightly.yaml")).unwrap();
    std::fs::write(dir.join("old.yaml"), &nightly).unwrap();
    std::fs::write(
        dir.join("new.yaml"),
        nightly.replace("keep_daily: 14", "keep_daily: 7"),
    )
    .unwrap();

    let mut ran = 0;
    for command in &commands {
        let at = format!("README.md:{}: `{}`", command.line, command.words.join(" "));
        let w: Vec<&str> = command.words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["opsrunner", rest @ ..] | ["cargo", "run", "--", rest @ ..] => {
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                let (code, out, err) = readme_run.opsrunner(&rest);
                assert_eq!(code, 0, "{at} exited {code}:\n{out}\n{err}");
                ran += 1;
            }
            // .ci/run runs these (the install into a scratch root, reusing the debug build).
            ["cargo", "test"] | ["cargo", "install", ..] => {
                let text = w.join(" ");
                assert!(
                    ci.lines().any(|l| l.trim_start().starts_with(&text)),
                    "{at}: .ci/run does not run it"
                );
            }
            // The base plan of `--base`: the main branch's version, here the same file.
            ["git", "show", _, ">", file] => {
                let to = file.replace(
                    "/tmp/base.yaml",
                    &readme_run.ws.path("base.yaml").display().to_string(),
                );
                std::fs::write(to, &nightly).unwrap();
            }
            ["sudo", "install", "-m", "0755", _, _] => {
                let to = readme_run.ws.path("usr-local-bin");
                std::fs::create_dir_all(&to).unwrap();
                let status = std::process::Command::new("install")
                    .args(["-m", "0755", env!("CARGO_BIN_EXE_opsrunner")])
                    .arg(to.join("opsrunner"))
                    .status()
                    .unwrap();
                assert!(status.success(), "{at}");
                let version = std::process::Command::new(to.join("opsrunner"))
                    .arg("--version")
                    .output()
                    .unwrap();
                assert!(version.status.success(), "{at}");
            }
            // What systemd checks of the units the README writes.
            ["systemctl", "daemon-reload"] | ["systemctl", "enable", "--now", _] => {
                let files: Vec<PathBuf> = std::fs::read_dir(&units)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                assert!(!files.is_empty(), "{at}: no units were written");
                if let Some(timer) = w.last().filter(|t| t.ends_with(".timer")) {
                    assert!(units.join(timer).is_file(), "{at}: no {timer}");
                }
                let out = std::process::Command::new("systemd-analyze")
                    .arg("verify")
                    .args(&files)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{at}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // What the API server checks: the Kubernetes schemas.
            ["kubectl", "apply", "-f", file] => {
                let python = python_with("kubernetes_validate", "kubernetes-validate");
                let validate = python.parent().unwrap().join("kubernetes-validate");
                let out = std::process::Command::new(validate)
                    .arg("--strict")
                    .arg(dir.join(file))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{at}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // No container engine runs here: .ci/run lints the Dockerfile and checks the
            // compose file against the compose specification instead.
            ["docker", "build", ..] => {
                assert!(ci.contains("hadolint docker/Dockerfile"), "{at}");
            }
            ["docker", "compose", ..] => {
                assert!(
                    ci.contains("--builtin-schema vendor.compose-spec docker/compose.yaml"),
                    "{at}"
                );
            }
            _ => panic!("{at}: tests/it/readme.rs does not know how to run this command"),
        }
    }
    assert!(ran >= 20, "only {ran} opsrunner commands ran");
}
