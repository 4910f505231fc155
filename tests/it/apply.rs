//! `opsrunner apply` end to end: the real binary, real processes, the JSON report.

use crate::common::{Workspace, opsrunner, receiver};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn independent_steps_overlap() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: overlap
steps:
  - { id: a, type: shell, command: sleep 1 }
  - { id: b, type: shell, command: sleep 1 }
  - { id: c, type: shell, command: sleep 1 }
"#,
        &["--concurrency", "3"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ids = ["a", "b", "c"];
    let first_finish = ids
        .iter()
        .map(|id| time(&run.step(id)["finished_at"]))
        .min()
        .unwrap();
    for id in ids {
        assert!(
            time(&run.step(id)["started_at"]) < first_finish,
            "{id} started after another step finished: {}",
            run.report
        );
    }
}

#[test]
fn concurrency_limit_serialises_steps() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: serial
steps:
  - { id: a, type: shell, command: sleep 0.3 }
  - { id: b, type: shell, command: sleep 0.3 }
"#,
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(time(&run.step("b")["started_at"]) >= time(&run.step("a")["finished_at"]));
}

#[test]
fn transient_failures_are_retried_up_to_attempts() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: retry
steps:
  - id: always-fails
    type: shell
    command: echo trying; exit 1
    retry: { attempts: 3, delay: 10ms, backoff: exponential }
  - id: flaky
    type: shell
    # Fails on the first attempt, succeeds on the second.
    command: if [ -f tried ]; then echo ok; else touch tried; exit 1; fi
    retry: { attempts: 4, delay: 10ms }
"#,
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("always-fails"), "failed");
    assert_eq!(run.attempts("always-fails"), 3);
    let attempts = run.step("always-fails")["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        attempts
            .iter()
            .all(|a| a["error"].as_str().unwrap().contains("status 1"))
    );
    assert_eq!(run.status("flaky"), "succeeded");
    assert_eq!(run.attempts("flaky"), 2);
    assert_eq!(run.step("flaky")["outputs"]["stdout"], "ok");
    assert!(
        run.stderr.contains("flaky attempt 1 failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn permanent_errors_are_not_retried() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: permanent
steps:
  - id: missing-command
    type: shell
    command: definitely-not-a-command-opsrunner
    retry: { attempts: 5, delay: 10ms }
"#,
        &[],
    );
    assert_eq!(run.code, 1);
    let id = "missing-command";
    assert_eq!(run.status(id), "failed");
    assert_eq!(run.attempts(id), 1, "{id} was retried: {}", run.report);
    assert_eq!(run.step(id)["attempts"][0]["transient"], false);
    // A missing environment variable is no failure of a step any more: the run does not
    // start (tests/it/before_the_run.rs), nor does one with a template that may have no
    // value (plan validation).
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; only its parent has yet to collect it.
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The process whose pid a step wrote to `child.pid` (one that ignores SIGTERM) must be gone
/// shortly after the step was stopped.
fn assert_child_gone(ws: &Workspace, after: &str) {
    let pid: i32 = std::fs::read_to_string(ws.path("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(pid), "child {pid} survived the {after}");
}

#[test]
fn timeout_kills_the_whole_process_group_even_when_sigterm_is_ignored() {
    let ws = Workspace::new();
    let started = Instant::now();
    let run = ws.apply(
        r#"
version: 1
name: timeout
steps:
  - id: stubborn
    type: shell
    command: trap '' TERM; sleep 60 & echo $! > child.pid; wait
    timeout: 1s
"#,
        &["--kill-grace", "300ms"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout did not stop the step"
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("stubborn"), "failed");
    assert!(
        run.step("stubborn")["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s")
    );
    assert_child_gone(&ws, "timeout");
}

#[test]
fn a_failure_skips_dependents_but_not_unrelated_branches() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: skips
steps:
  - { id: broken, type: shell, command: exit 3 }
  - { id: after, type: shell, needs: [broken], command: touch after-ran }
  - { id: after-after, type: shell, needs: [after], command: "true" }
  - { id: unrelated, type: shell, command: sleep 0.2; touch unrelated-ran }
  - { id: tolerant, type: shell, command: exit 1, continue_on_error: true }
  - { id: after-tolerant, type: shell, needs: [tolerant], command: "true" }
"#,
        &[],
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.status("broken"), "failed");
    assert_eq!(run.status("after"), "skipped");
    assert_eq!(run.status("after-after"), "skipped");
    assert!(
        run.step("after")["reason"]
            .as_str()
            .unwrap()
            .contains("needs `broken`, which failed")
    );
    assert!(!ws.path("after-ran").exists());
    assert_eq!(run.status("unrelated"), "succeeded");
    assert!(ws.path("unrelated-ran").exists());
    assert_eq!(run.status("tolerant"), "failed");
    assert_eq!(run.status("after-tolerant"), "succeeded");
    assert_eq!(run.report["status"], "failed");
}

const ALERT_PLAN: &str = r#"
version: 1
name: alert
vars: { outcome: "0" }
steps:
  - { id: work, type: shell, command: "exit {{ vars.outcome }}" }
  - { id: next, type: shell, needs: [work], command: "true" }
  - { id: alert, type: shell, needs: [next], if: failure(), command: echo alerting }
  - { id: cleanup, type: shell, needs: [next], if: always(), command: echo cleaning }
"#;

#[test]
fn failure_condition_runs_only_when_something_upstream_failed() {
    let ws = Workspace::new();
    let failed = ws.apply(ALERT_PLAN, &["--var", "outcome=1"]);
    assert_eq!(failed.code, 1);
    assert_eq!(failed.status("next"), "skipped");
    assert_eq!(failed.status("alert"), "succeeded");
    assert_eq!(failed.step("alert")["log_tail"][0], "alerting");
    assert_eq!(failed.status("cleanup"), "succeeded");

    let ok = ws.apply(ALERT_PLAN, &[]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.status("alert"), "skipped");
    assert_eq!(ok.status("cleanup"), "succeeded");
}

#[test]
fn outputs_flow_into_later_steps() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: outputs
steps:
  - { id: make, type: shell, command: echo 42 }
  - { id: use, type: shell, needs: [make], command: "echo got {{ steps.make.outputs.stdout }} run {{ run.id }}" }
"#,
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run_id = run.report["run_id"].as_str().unwrap();
    assert_eq!(
        run.step("use")["outputs"]["stdout"],
        format!("got 42 run {run_id}")
    );
}

#[test]
fn interruption_cancels_running_steps_and_still_writes_the_report() {
    let ws = Workspace::new();
    let plan = ws.write_plan(
        r#"
version: 1
name: cancel
steps:
  - { id: long, type: shell, command: "trap '' TERM; touch started; sleep 60 & echo $! > child.pid; wait" }
  - { id: later, type: shell, needs: [long], command: touch later-ran }
"#,
    );
    let child = ws.spawn_apply(&plan, &["--kill-grace", "300ms"], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ws.path("child.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    let run = ws.interrupt(child, libc::SIGTERM);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.report["status"], "cancelled");
    assert_eq!(run.status("long"), "cancelled");
    assert_eq!(run.status("later"), "skipped");
    assert!(!ws.path("later-ran").exists());
    assert_child_gone(&ws, "cancellation");
}

fn last_line(text: &str) -> String {
    text.trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// SIGTERM (what systemd sends at a timeout or a shutdown) cancels the running step, and
/// then the cleanup and alert steps still run and can say what happened; a second signal
/// stops a cleanup step that hangs.
#[test]
fn cleanup_and_alert_steps_run_after_a_cancellation() {
    let ws = Workspace::new();
    let plan = ws.write_plan(
        r#"
version: 1
name: cancel
steps:
  - { id: long, type: shell, command: "touch started; sleep 60" }
  - { id: later, type: shell, needs: [long], command: touch later-ran }
  - id: alert
    type: shell
    needs: [long]
    if: failure()
    command: "echo '{{ run.status }} {{ steps.long.status }} {{ steps.long.error }}' > alert.txt"
  - { id: cleanup, type: shell, needs: [long], if: always(), command: "touch cleanup-ran" }
  - { id: on-cancel, type: shell, needs: [long], if: cancelled(), command: "touch cancelled-ran" }
  - id: post
    type: webhook
    needs: [long]
    if: always()
    url: "{{ env.ALERT_WEBHOOK }}"
    body: { run: "{{ run.status }}", long: "{{ steps.long.status }}" }
"#,
    );
    let (url, seen) = receiver(&[200]);
    let wait_for = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ws.path(name).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let child = ws.spawn_apply(
        &plan,
        &["--kill-grace", "300ms"],
        &[("ALERT_WEBHOOK", std::path::Path::new(&url))],
    );
    wait_for("started");
    std::thread::sleep(Duration::from_millis(100));
    let run = ws.interrupt(child, libc::SIGTERM);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.report["status"], "cancelled");
    assert_eq!(run.status("post"), "succeeded", "{}", run.stderr);
    let posted = seen.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert!(
        posted[0].ends_with(r#"{"long":"cancelled","run":"cancelled"}"#),
        "{posted:?}"
    );
    assert_eq!(run.status("long"), "cancelled");
    assert_eq!(run.status("later"), "skipped");
    assert!(!ws.path("later-ran").exists());
    for (step, file) in [
        ("alert", "alert.txt"),
        ("cleanup", "cleanup-ran"),
        ("on-cancel", "cancelled-ran"),
    ] {
        assert_eq!(run.status(step), "succeeded", "{step}: {}", run.stderr);
        assert!(ws.path(file).exists(), "{step}");
    }
    let alert = std::fs::read_to_string(ws.path("alert.txt")).unwrap();
    assert!(
        alert.starts_with("cancelled cancelled cancelled"),
        "{alert}"
    );
    let last = last_line(&run.stderr);
    assert!(last.contains("run cancelled after"), "{last}");

    // Without a cancellation, `cancelled()` steps are skipped and the last line says how
    // the run ended.
    let quiet = ws.apply(
        "version: 1\nname: q\nsteps:\n  - { id: a, type: shell, command: \"false\" }\n  - { id: c, type: shell, needs: [a], if: cancelled(), command: \"true\" }\n",
        &[],
    );
    assert_eq!(quiet.code, 1, "{}", quiet.stderr);
    assert_eq!(quiet.status("c"), "skipped");
    let last = last_line(&quiet.stderr);
    assert!(last.contains("run failed in"), "{last}");

    // A cleanup step that hangs is stopped by a second signal.
    let plan = ws.write_plan(
        "version: 1\nname: hang\nsteps:\n  - { id: long, type: shell, command: \"touch started2; sleep 60\" }\n  - { id: stuck, type: shell, needs: [long], if: always(), command: \"touch stuck-started; sleep 60\" }\n",
    );
    let child = ws.spawn_apply(&plan, &["--kill-grace", "300ms"], &[]);
    wait_for("started2");
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for("stuck-started");
    let started = Instant::now();
    let run = ws.interrupt(child, libc::SIGTERM);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second signal stops it"
    );
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(run.status("stuck"), "cancelled");
}

#[test]
fn secrets_are_redacted_in_log_and_report() {
    let ws = Workspace::new();
    let run = ws.apply_env(
        r#"
version: 1
name: secrets
secrets: [OPSRUNNER_TEST_TOKEN]
steps:
  - id: leak
    type: shell
    command: "echo token=$OPSRUNNER_TEST_TOKEN; echo url=$OPSRUNNER_TEST_URL >&2; exit 1"
"#,
        &[],
        &[
            ("OPSRUNNER_TEST_TOKEN", "sekr1t-t0ken"),
            ("OPSRUNNER_TEST_URL", "postgres://u:hunter22@db/x"),
        ],
    );
    let all = run.everything();
    assert!(!all.contains("sekr1t-t0ken"), "{all}");
    assert!(!all.contains("hunter22"), "{all}");
    assert!(run.stderr.contains("token=***"), "{}", run.stderr);
    // stdout and stderr interleave in either order.
    let tail = run.step("leak")["log_tail"].as_array().unwrap().clone();
    assert!(tail.contains(&"token=***".into()), "{tail:?}");
    assert!(
        tail.contains(&"stderr: url=postgres://u:***@db/x".into()),
        "{tail:?}"
    );
}

#[test]
fn dry_run_changes_nothing_and_reports_planned_steps() {
    let ws = Workspace::new();
    let run = ws.apply(
        r#"
version: 1
name: dry
steps:
  - { id: touch, type: shell, command: touch should-not-exist }
"#,
        &["--dry-run"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!ws.path("should-not-exist").exists());
    assert!(run.stdout.contains("will run `touch should-not-exist`"));
    assert_eq!(run.report["mode"], "dry-run");
    assert_eq!(run.status("touch"), "planned");
}

#[test]
fn invalid_plans_exit_2_and_unknown_vars_are_usage_errors() {
    let ws = Workspace::new();
    let bad = ws.apply(
        "version: 1\nname: x\nsteps:\n  - { id: a, type: shel, command: x }\n",
        &[],
    );
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("did you mean `shell`?"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("plan.yaml:4:20"), "{}", bad.stderr);
    let var = ws.apply(
        "version: 1\nname: x\nvars: { keep: 1 }\nsteps:\n  - { id: a, type: shell, command: x }\n",
        &["--var", "kep=2"],
    );
    assert_eq!(var.code, 2);
    assert!(
        var.stderr.contains("did you mean `keep`?"),
        "{}",
        var.stderr
    );
}

#[test]
fn json_log_format_emits_one_event_per_line() {
    let ws = Workspace::new();
    let run = ws.apply(
        "version: 1\nname: j\nsteps:\n  - { id: a, type: shell, command: echo hi }\n",
        &["--log-format", "json"],
    );
    assert_eq!(run.code, 0);
    let events: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "step_started",
            "output",
            "step_finished",
            "run_finished"
        ]
    );
}

#[test]
fn secrets_never_reach_a_command_line() {
    let ws = Workspace::new();
    let run = ws.apply_env(
        r#"
version: 1
name: argv
targets:
  db: { url: "{{ env.OPSRUNNER_TEST_DB }}" }
steps:
  - id: via-argv
    type: shell
    command: "echo {{ env.OPSRUNNER_TEST_DB }} > argv-ran"
  - id: via-env
    type: shell
    env: { URL: "{{ env.OPSRUNNER_TEST_DB }}" }
    command: 'test -n "$URL" && touch env-ran'
"#,
        &[],
        &[("OPSRUNNER_TEST_DB", "postgres://app:n0t-in-ps@db/app")],
    );
    assert_eq!(run.status("via-argv"), "failed");
    assert!(
        run.step("via-argv")["reason"]
            .as_str()
            .unwrap()
            .contains("command line would contain a secret")
    );
    assert!(!ws.path("argv-ran").exists());
    assert_eq!(run.status("via-env"), "succeeded", "{}", run.stderr);
    assert!(ws.path("env-ran").exists());
    assert!(!run.everything().contains("n0t-in-ps"));
}

/// The alert of a failed run reaches the receiver as JSON saying what failed, after one
/// retry of a 503; the URL, which carries a token, is shown nowhere.
#[test]
fn a_webhook_step_posts_what_failed_and_keeps_its_url_secret() {
    let ws = Workspace::new();
    let (base, seen) = receiver(&[503, 200]);
    // The receiver echoes the path of the refused first attempt, as Express does; a
    // percent-encoded query value comes back decoded.
    let url = format!("{base}/hooks/T0KEN-abcdef123456?sig=q%2Fv4lue-9876");
    let run = ws.apply_env(
        r#"
version: 1
name: alerting
steps:
  - { id: backup, type: shell, command: "echo 'disk \"full\"' >&2; exit 3" }
  - id: alert
    type: webhook
    needs: [backup]
    if: failure()
    url: "{{ env.ALERT_WEBHOOK }}"
    headers: { Authorization: "Bearer {{ env.ALERT_TOKEN }}" }
    retry: { attempts: 2, delay: 100ms }
    body:
      text: "{{ run.plan }}: {{ run.status }}; backup {{ steps.backup.status }}: {{ steps.backup.error }}"
"#,
        &[],
        &[("ALERT_WEBHOOK", url.as_str()), ("ALERT_TOKEN", "s3cr3t-bearer")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("alert"), "succeeded", "{}", run.stderr);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "one retry after the 503: {requests:?}");
    let request = &requests[1];
    assert!(
        request.starts_with("POST /hooks/T0KEN-abcdef123456?sig=q%2Fv4lue-9876 "),
        "{request}"
    );
    assert!(
        request
            .to_lowercase()
            .contains("content-type: application/json"),
        "{request}"
    );
    assert!(request.contains("Bearer s3cr3t-bearer"), "{request}");
    let body: serde_json::Value =
        serde_json::from_str(&request[request.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("alerting: failed; backup failed: "),
        "{text}"
    );
    let all = run.everything();
    for secret in [
        "T0KEN-abcdef123456",
        "s3cr3t-bearer",
        "q/v4lue-9876",
        "q%2Fv4lue-9876",
    ] {
        assert!(!all.contains(secret), "{secret}: {all}");
        // Not even a first part of it, cut off where a long answer is truncated.
        assert!(!all.contains(&secret[..6]), "{secret}: {all}");
    }
    // The refused attempt's answer is shown, redacted.
    assert!(all.contains("HTTP 503"), "{all}");
    assert!(all.contains("Cannot POST ***"), "{all}");

    // The preview does not show them either.
    let plan = ws.path("plan.yaml");
    let out = opsrunner()
        .args(["plan", "--format", "json"])
        .arg(&plan)
        .env("ALERT_WEBHOOK", &url)
        .env("ALERT_TOKEN", "s3cr3t-bearer")
        .output()
        .unwrap();
    let preview = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{preview}");
    assert!(
        !preview.contains("T0KEN-abcdef123456") && !preview.contains("s3cr3t-bearer"),
        "{preview}"
    );
}

#[test]
fn an_output_that_may_not_exist_needs_a_fallback() {
    let ws = Workspace::new();
    let plan = |first: &str, fallback: bool| {
        let reference = if fallback {
            r#"{{ default steps.first.outputs.stdout "n/a" }}"#
        } else {
            "{{ steps.first.outputs.stdout }}"
        };
        format!(
            r#"
version: 1
name: fallback
steps:
  - {{ id: first, type: shell, command: "{first}" }}
  - id: report
    type: shell
    needs: [first]
    if: always()
    command: 'echo "out={reference} status={{{{ steps.first.status }}}}" > report.txt'
"#
        )
    };
    // Without a fallback, validate says the output may not exist, where, and what to do.
    ws.write_plan(&plan("exit 3", false));
    let out = opsrunner()
        .arg("validate")
        .arg(ws.path("plan.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("steps.first.outputs.stdout` may not exist")
            && stderr.contains("plan.yaml:10:")
            && stderr.contains("steps[1].command")
            && stderr.contains("default steps.first.outputs.stdout"),
        "{stderr}"
    );
    // With one, the fallback stands in when the step failed…
    let run = ws.apply(&plan("exit 3", true), &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(ws.path("report.txt")).unwrap(),
        "out=n/a status=failed\n"
    );
    // …and the output when it succeeded.
    let run = ws.apply(&plan("echo hello", true), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(ws.path("report.txt")).unwrap(),
        "out=hello status=succeeded\n"
    );
    // A fallback does not excuse a name the step type does not set.
    ws.write_plan(&plan("true", true).replace("outputs.stdout", "outputs.stdot"));
    let out = opsrunner()
        .arg("validate")
        .arg(ws.path("plan.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `stdout`"), "{stderr}");
}

/// The shipped nightly plan's alert names the status of every step, the skipped verify and
/// prune among them: when the backup fails, the alert must still render and be sent (it
/// once failed with "`steps.verify.status` has no value", losing the one message that
/// mattered).
#[test]
fn the_nightly_alert_is_sent_when_the_backup_fails_and_later_steps_are_skipped() {
    let cluster = crate::common::pg::Cluster::start();
    let ws = Workspace::new();
    let (url, seen) = receiver(&[200]);
    let backups = ws.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let plan = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/nightly.yaml");
    let out = opsrunner()
        .arg("apply")
        .arg(&plan)
        .arg("--report")
        .arg(ws.report_path())
        // A database that does not exist: a permanent error, not retried.
        .env("DATABASE_URL", cluster.url("nope"))
        .env("BACKUP_DIR", &backups)
        .env("ALERT_WEBHOOK", &url)
        .output()
        .unwrap();
    let run = crate::common::Applied::from(out, &ws.report_path());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("backup"), "failed");
    assert_eq!(run.status("verify"), "skipped");
    assert_eq!(
        run.status("notify-on-failure"),
        "succeeded",
        "{}",
        run.stderr
    );
    let posted = seen.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert!(
        posted[0].contains("verify skipped") && posted[0].contains("prune skipped"),
        "{posted:?}"
    );
}

/// `timeout` and `retry` from `{{ env.X }}` are enforced like literal ones; a value that
/// does not parse fails the step, naming the key.
#[test]
fn timeout_and_retry_delay_from_the_environment_are_enforced() {
    let ws = Workspace::new();
    let plan = r#"
version: 1
name: from-env
steps:
  - { id: slow, type: shell, command: "sleep 5", timeout: "{{ env.T }}" }
  - id: flaky
    type: shell
    command: "test -f once || { touch once; exit 1; }"
    retry: { attempts: 2, delay: "{{ env.D }}" }
"#;
    let run = ws.apply_env(
        plan,
        &["--log-format", "json"],
        &[("T", "1s"), ("D", "1500ms")],
    );
    assert_eq!(run.status("slow"), "failed", "{}", run.stderr);
    assert!(
        run.step("slow")["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{}",
        run.report
    );
    assert_eq!(run.status("flaky"), "succeeded", "{}", run.stderr);
    let retry_in: Vec<u64> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "attempt_failed")
        .filter_map(|e| e["retry_in_ms"].as_u64())
        .collect();
    assert_eq!(retry_in, [1500], "{}", run.stderr);

    std::fs::remove_file(ws.path("once")).unwrap();
    let bad = ws.apply_env(plan, &[], &[("T", "garbage"), ("D", "-1")]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    let slow = bad.step("slow")["reason"].as_str().unwrap().to_string();
    assert!(
        slow.contains("`timeout`") && slow.contains("garbage"),
        "{slow}"
    );
    let flaky = bad.step("flaky")["reason"].as_str().unwrap().to_string();
    assert!(flaky.contains("`retry.delay`"), "{flaky}");
    assert!(
        !ws.path("once").exists(),
        "a step whose retry does not parse does not run"
    );
}

/// Every output asked for follows one rule: checked before the run (above, in the hostile
/// inputs), and one that cannot be written when the run ends — a full disk — fails the
/// command: exit 1 after a run that succeeded, the run's own code after one that failed.
#[test]
fn an_output_that_cannot_be_written_fails_the_command_whichever_it_is() {
    let ws = Workspace::new();
    let plan = |exit: u8| {
        ws.write_plan(&format!(
            "version: 1\nname: outputs\nsteps:\n  - {{ id: a, type: shell, command: \"touch ran; exit {exit}\" }}\n"
        ))
    };
    for flag in ["--report", "--junit", "--metrics"] {
        // A disk with room for the check before the run (an empty file), then full.
        let disk = crate::common::SmallDisk::new(64 << 10);
        let _ = std::fs::write(disk.path().join("filler"), vec![0u8; 128 << 10]);
        let out_path = disk.path().join("out");
        for (exit, code) in [(0u8, 1), (6, 1)] {
            let _ = std::fs::remove_file(ws.path("ran"));
            let out = opsrunner()
                .arg("apply")
                .arg(plan(exit))
                .arg(flag)
                .arg(&out_path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(ws.path("ran").exists(), "{flag}: the run ran: {err}");
            assert_eq!(
                out.status.code(),
                Some(code),
                "{flag}, step exit {exit}: {err}"
            );
            assert!(err.contains("cannot write"), "{flag}: {err}");
            assert!(err.contains("No space left"), "{flag}: {err}");
            assert!(!out_path.exists(), "{flag}: a half-written output");
        }
    }
}

/// A retention count from the environment that is not one says so in words.
#[test]
fn a_count_from_the_environment_that_is_not_one_is_named() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("repo")).unwrap();
    let plan = "version: 1\nname: counts\nrepositories:\n  r: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: p, type: prune, repository: r, keep: { last: \"{{ env.K }}\" } }\n";
    for (value, says) in [
        ("-1", "`-1` is not a count"),
        (
            "12345678901234567890",
            "a number of 20 digits is not a count",
        ),
        ("many", "`many` is not a whole number"),
    ] {
        let run = ws.apply_env(plan, &[], &[("K", value)]);
        assert_eq!(run.code, 1, "{value}: {}", run.stderr);
        let reason = run.step("p")["reason"].as_str().unwrap().to_string();
        assert!(
            reason.contains("`keep.last`") && reason.contains(says),
            "{value}: {reason}"
        );
        assert!(!reason.contains("untagged"), "{reason}");
    }
}

/// An interruption is said in the live log, with its time and signal, and a step whose
/// command ignores SIGTERM is killed after `--kill-grace`.
#[test]
fn an_interruption_is_logged_with_its_time_and_a_stubborn_child_is_killed() {
    let ws = Workspace::new();
    let plan = ws.write_plan(
        "version: 1\nname: stubborn\nsteps:\n  - { id: s, type: shell, command: \"trap '' TERM INT; echo $$ > pid; sleep 60\" }\n",
    );
    let child = ws.spawn_apply(&plan, &["--kill-grace", "1s"], &[]);
    let started = Instant::now();
    while !ws.path("pid").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let run = ws.interrupt(child, libc::SIGINT);
    assert_eq!(run.code, 130, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("interrupted (SIGINT)"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let stamp = line.split_whitespace().next().unwrap();
    assert!(
        DateTime::parse_from_rfc3339(stamp).is_ok(),
        "no timestamp: {line}"
    );
    assert_eq!(run.report["status"], "cancelled");
    let pid: i32 = std::fs::read_to_string(ws.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the shell that ignored SIGTERM still runs");
}
