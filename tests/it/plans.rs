//! The plans shipped in `plans/` and `examples/`, run end to end against real clusters.

use crate::common::pg::{Cluster, PASSWORD};
use crate::common::{Workspace, opsrunner};
use std::path::Path;

fn shipped(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(plan: &Path, ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> crate::common::Applied {
    let output = opsrunner()
        .arg("apply")
        .arg(plan)
        .arg("--report")
        .arg(ws.report_path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    crate::common::Applied::from(output, &ws.report_path())
}

#[test]
fn nightly_then_drill_then_reset_seed() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    let ws = Workspace::new();
    let backups = ws.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let dev_url = cluster.url("postgres");
    let app_url = cluster.url("app");

    // A development database from the shipped migrations and seeds...
    let seeded = run(
        &shipped("plans/reset-seed.yaml"),
        &ws,
        &["--var", "database=app"],
        &[("DEV_DATABASE_URL", &dev_url)],
    );
    assert_eq!(seeded.code, 0, "{}", seeded.stderr);
    assert_eq!(seeded.step("status")["outputs"]["pending"], "");
    assert_eq!(
        cluster.psql("app", "select count(*) from customers"),
        "5003"
    );

    // ...backed up and verified by the nightly plan...
    // Every variable its header lists: the alert's hook too (it runs only on failure,
    // but a run does not start without what any of its steps needs).
    let (hook, posted) = crate::common::receiver(&[200]);
    let env = [
        ("DATABASE_URL", app_url.as_str()),
        ("BACKUP_DIR", backups.to_str().unwrap()),
        ("ALERT_WEBHOOK", hook.as_str()),
    ];
    // A mistyped BACKUP_DIR: the preview says the run will refuse it...
    let typo = ws.path("backup");
    let mistyped = [env[0], ("BACKUP_DIR", typo.to_str().unwrap()), env[2]];
    let (code, out, err) = crate::common::run(
        opsrunner()
            .arg("plan")
            .arg(shipped("plans/nightly.yaml"))
            .envs(mistyped.iter().copied()),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: repository `local`: apply will refuse to write")
            && out.contains("opsrunner repo init"),
        "{out}"
    );
    // ...the run refuses it, and nothing appears there.
    let refused = run(&shipped("plans/nightly.yaml"), &ws, &[], &mistyped);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .everything()
            .contains("is not an opsrunner repository"),
        "{}",
        refused.everything()
    );
    assert!(refused.everything().contains("opsrunner repo init"));
    assert!(!typo.exists());
    // ...and the failure alert, whose variable was checked before the run, went out.
    assert_eq!(posted.lock().unwrap().len(), 1);
    // The repository is made once, on purpose, as the README says.
    let (code, out, err) = crate::common::run(
        opsrunner()
            .args(["repo", "init", "local", "--plan"])
            .arg(shipped("plans/nightly.yaml"))
            .envs(env.iter().copied()),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created repository"), "{out}");
    let nightly = run(&shipped("plans/nightly.yaml"), &ws, &[], &env);
    assert_eq!(nightly.code, 0, "{}", nightly.stderr);
    assert_eq!(nightly.status("notify-on-failure"), "skipped");
    assert_eq!(posted.lock().unwrap().len(), 1);
    assert!(!nightly.everything().contains(PASSWORD));

    // The drill's preview says which backup `latest` is, without touching anything.
    let preview = opsrunner()
        .arg("plan")
        .arg(shipped("plans/drill.yaml"))
        .env("BACKUP_DIR", &backups)
        .output()
        .unwrap();
    let backup_id = nightly.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(text.contains(&format!("latest is {backup_id}")), "{text}");

    // ...and restored by the drill.
    let drill = run(
        &shipped("plans/drill.yaml"),
        &ws,
        &[],
        &[("BACKUP_DIR", backups.to_str().unwrap())],
    );
    assert_eq!(drill.code, 0, "{}", drill.stderr);
    let backup_id = nightly.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    assert_eq!(
        drill.step("verify-latest")["outputs"]["backup_id"],
        backup_id
    );
    let report = drill.step("report")["outputs"]["stdout"].as_str().unwrap();
    assert!(report.contains("RTO: restore took"), "{report}");
    assert!(
        !report.contains('\''),
        "the values print without quotes: {report}"
    );
}

#[test]
fn quickstart_runs_on_ephemeral_clusters_only() {
    // The README's first command, as a test: no server, no configuration.
    let ws = Workspace::new();
    let dir = ws.path("checkout");
    // The quickstart writes its backups next to the checkout (../backups from examples/).
    copy_dir(&shipped("examples"), &dir.join("examples"));
    copy_dir(&shipped("migrations"), &dir.join("migrations"));
    let run = run(&dir.join("examples/quickstart.yaml"), &ws, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("check")["outputs"]["value"], "5003");
    let summary = run.step("summary")["outputs"]["stdout"].as_str().unwrap();
    assert!(summary.contains("verify: manifest=pass"), "{summary}");
    assert!(
        !summary.contains('\''),
        "the values print without quotes: {summary}"
    );
    assert!(dir.join("backups").is_dir());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every plan in `plans/` and `examples/`: as shipped.
fn every_shipped_plan() -> Vec<std::path::PathBuf> {
    let mut plans = Vec::new();
    for dir in ["plans", "examples"] {
        for entry in std::fs::read_dir(shipped(dir)).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                plans.push(path);
            }
        }
    }
    plans.sort();
    plans
}

#[test]
fn every_shipped_plan_validates_and_its_header_lists_every_variable_it_needs() {
    let plans = every_shipped_plan();
    assert!(plans.len() >= 10, "{plans:?}");
    for path in plans {
        let (code, out, err) = crate::common::run(opsrunner().arg("validate").arg(&path));
        assert_eq!(code, 0, "{}: {out}{err}", path.display());
        let source = opsrunner::plan::PlanSource::read(&path).unwrap();
        let header: String = source
            .text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let (_, valid) = opsrunner::plan::check(source).unwrap();
        for name in opsrunner::plan::env_references(&valid.plan) {
            assert!(
                header.contains(&name),
                "{}: the header does not say that the plan needs {name}",
                path.display()
            );
        }
    }
}

#[test]
fn the_shipped_examples_print_their_values_without_quotes() {
    // examples/hello.yaml runs anywhere; examples/sql.yaml against a real cluster.
    let ws = Workspace::new();
    let hello = run(&shipped("examples/hello.yaml"), &ws, &[], &[]);
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    let summary = hello.step("summary")["outputs"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.starts_with("greet said: hello from run"),
        "{summary}"
    );
    assert!(!summary.contains('\''), "{summary}");
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    let sql = run(
        &shipped("examples/sql.yaml"),
        &ws,
        &[],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(sql.code, 0, "{}", sql.stderr);
    let report = sql.step("report")["outputs"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(report.starts_with("PostgreSQL "), "{report}");
    assert!(report.contains("— database size "), "{report}");
    assert!(!report.contains('\''), "{report}");
    assert!(!sql.everything().contains(PASSWORD));
}

/// The `run:` scripts of the CI example's job `job`, by step name, with the workflow's
/// expressions (`${{ … }}`) replaced by `values`.
fn workflow_scripts(job: &str, values: &[(&str, &str)]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(shipped("examples/ci/opsrunner.yml")).unwrap();
    let workflow = opsrunner::plan::yaml::parse(&text).unwrap().to_json();
    let steps = workflow["jobs"][job]["steps"].as_array().unwrap().clone();
    steps
        .iter()
        .filter_map(|step| {
            let mut script = step["run"].as_str()?.to_string();
            for (expression, value) in values {
                script = script.replace(&format!("${{{{ {expression} }}}}"), value);
            }
            assert!(
                !script.contains("${{"),
                "an expression the test does not know: {script}"
            );
            Some((
                step["name"].as_str().unwrap_or_default().to_string(),
                script,
            ))
        })
        .collect()
}

/// Runs a workflow script with `sh -e` in `dir`, with `opsrunner` on the PATH (what
/// `cargo install` puts there) and `env`.
fn run_script(script: &str, dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = dir.join(".bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("opsrunner");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_opsrunner"), &link).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    crate::common::run(
        std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied()),
    )
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_ci_example_previews_the_changed_plans_without_secrets_and_drills_on_a_fresh_runner() {
    let ws = Workspace::new();
    // The preview job: a pull request that changes one plan, in a clone of the main branch.
    let origin = ws.path("origin");
    copy_dir(&shipped("plans"), &origin.join("plans"));
    std::fs::create_dir_all(&origin).unwrap();
    git(&origin, &["init", "-q", "-b", "main"]);
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-qm", "plans"]);
    let clone = ws.path("clone");
    git(
        ws.dir.path(),
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-qb", "change"]);
    let nightly = clone.join("plans/nightly.yaml");
    let text = std::fs::read_to_string(&nightly).unwrap();
    std::fs::write(&nightly, text.replace("keep_daily: 14", "keep_daily: 7")).unwrap();
    git(&clone, &["commit", "-qam", "keep a week"]);
    let scripts = workflow_scripts(
        "preview",
        &[
            ("github.base_ref", "main"),
            ("github.event.number", "7"),
            ("github.token", "x"),
        ],
    );
    let mut previewed = false;
    for (name, script) in &scripts {
        if script.starts_with("cargo install") || script.starts_with("gh ") {
            // What the runner has: the binary above; the comment is GitHub's.
            continue;
        }
        let (code, out, err) = run_script(script, &clone, &[("BASE_REF", "main")]);
        assert_eq!(code, 0, "{name}: {out}{err}");
        previewed = true;
    }
    assert!(previewed);
    let preview = std::fs::read_to_string(clone.join("preview.md")).unwrap();
    assert!(preview.contains("nightly"), "{preview}");
    assert!(
        !preview.contains("`drill`"),
        "only the changed plan: {preview}"
    );

    // The drill job: a fresh runner with a PostgreSQL service (here a cluster of the test).
    let cluster = Cluster::start();
    let checkout = ws.path("checkout");
    for dir in ["plans", "examples", "migrations"] {
        copy_dir(&shipped(dir), &checkout.join(dir));
    }
    let runner_temp = ws.path("runner-temp");
    std::fs::create_dir_all(&runner_temp).unwrap();
    let dev_url = cluster.url("postgres");
    let app_url = cluster.url("app_dev");
    let env = [
        ("DEV_DATABASE_URL", dev_url.as_str()),
        ("DATABASE_URL", app_url.as_str()),
        ("RUNNER_TEMP", runner_temp.to_str().unwrap()),
    ];
    let scripts = workflow_scripts("drill", &[]);
    let mut drilled = false;
    for (name, script) in &scripts {
        if script.contains("apt-get") {
            continue;
        }
        let (code, out, err) = run_script(script, &checkout, &env);
        assert_eq!(code, 0, "{name}: {out}{err}");
        drilled |= script.contains("plans/drill.yaml");
    }
    assert!(drilled);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkout.join("drill.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert!(checkout.join("drill.xml").is_file());
    assert!(
        runner_temp
            .join("backups/opsrunner-repository.json")
            .is_file()
    );
}

#[test]
fn the_offsite_plan_backs_up_encrypted_into_s3_as_shipped() {
    let ws = Workspace::new();
    let server = crate::s3::S3Server::start(&ws.path("s3"));
    // The plan's own bucket, on the test's S3 server.
    std::fs::create_dir_all(ws.path("s3").join("acme-backups")).unwrap();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table secret_payroll as select 1 as id");
    let (_, recipient) = crate::common::identity_file(ws.dir.path());
    let recipients = ws.path("backup-recipients.txt");
    std::fs::write(&recipients, format!("# the backup key\n{recipient}\n")).unwrap();
    let url = cluster.url("app");
    let mut env: Vec<(&str, String)> = crate::s3::aws_env();
    env.push(("AWS_ENDPOINT_URL", server.endpoint.clone()));
    env.push(("DATABASE_URL", url.clone()));
    env.push(("BACKUP_RECIPIENTS_FILE", recipients.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // As shipped, but with its local repository in the workspace, not /var/backups.
    let text = std::fs::read_to_string(shipped("plans/offsite.yaml")).unwrap();
    assert!(text.contains("file:///var/backups/app\n"), "{text}");
    let plan = ws.path("offsite.yaml");
    std::fs::write(
        &plan,
        text.replace(
            "file:///var/backups/app\n",
            &format!("file://{}\n", ws.path("local").display()),
        ),
    )
    .unwrap();
    // As its header says: the repositories are made once, with the plan's encryption.
    for (name, said) in [
        ("local", "not encrypted"),
        ("offsite", "encrypted to 1 recipient"),
    ] {
        let (code, out, err) = crate::common::run(
            opsrunner()
                .args(["repo", "init", name, "--plan"])
                .arg(&plan)
                .envs(env.iter().copied()),
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(said), "{out}");
    }
    let applied = run(&plan, &ws, &[], &env);
    assert_eq!(applied.code, 0, "{}", applied.everything());
    let id = applied.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap();
    assert_eq!(applied.step("copy")["outputs"]["copied"], id);
    assert_eq!(applied.step("copy")["outputs"]["reencrypted"], id);
    assert!(
        applied.step("verify")["outputs"]["checks"]
            .as_str()
            .unwrap()
            .contains("restore=pass"),
        "the local backup is proven by a test restore"
    );
    assert!(
        applied.step("verify-copy")["outputs"]["checks"]
            .as_str()
            .unwrap()
            .contains("files=pass"),
        "the copy is checked where it is, without the key"
    );
    assert_eq!(applied.status("prune-local"), "succeeded");
    assert_eq!(applied.status("prune-offsite"), "succeeded");
    // Copied again: there already, by its encrypted copy's names.
    let (code, out, err) = crate::common::run(
        opsrunner()
            .args([
                "backups", "copy", "--from", "local", "--to", "offsite", "--plan",
            ])
            .arg(&plan)
            .envs(env.iter().copied()),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("present: {id}")), "{out}");
    let stored = crate::common::files_under(&ws.path("s3").join("acme-backups"));
    let dumps: Vec<_> = stored
        .iter()
        .filter(|f| f.to_string_lossy().contains("/dump"))
        .collect();
    assert!(!dumps.is_empty(), "{stored:?}");
    for dump in dumps {
        assert!(
            dump.to_string_lossy().ends_with(".age"),
            "{}",
            dump.display()
        );
        let bytes = std::fs::read(dump).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("secret_payroll"),
            "{} is readable",
            dump.display()
        );
    }
    assert!(!applied.everything().contains(PASSWORD));
}
