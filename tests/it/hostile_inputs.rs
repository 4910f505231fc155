//! A table of hostile and careless inputs — wrong types, numbers out of range, encodings,
//! alias bombs, deep nesting, control characters, bad templates, injection attempts in
//! names and paths, bad command lines: every one is refused with exit 2 and a message that
//! says where, and none panics. (Time and memory of the worst ones are measured in
//! `bench/hostile_plans.sh`, not here.)

use crate::common::{Workspace, opsrunner};

/// A valid plan around one step, with a restore/verify/backup/prune-ready repository and
/// target, so that a case only has to break one thing.
fn with_step(step: &str) -> String {
    format!(
        "version: 1\nname: hostile\ntargets:\n  t: {{ url: \"postgres://u@localhost/db\" }}\nrepositories:\n  r: {{ url: \"file://./repo\", create: true }}\nsteps:\n  - {step}\n"
    )
}

struct Case {
    name: String,
    plan: Vec<u8>,
    args: Vec<String>,
    /// A piece of the expected message.
    says: String,
}

fn case(name: impl Into<String>, plan: impl Into<Vec<u8>>, says: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        plan: plan.into(),
        args: Vec::new(),
        says: says.into(),
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    // Durations: every place a plan writes one, every way to get it wrong.
    let bad_durations = [
        ("10", "no unit"),
        ("-1s", "not a duration"),
        ("1e400s", "unknown unit"),
        ("99999999999999999999h", "too long"),
        (".inf", "not a number a plan can use"),
        ("abc", "not a duration"),
        ("\"\"", "empty duration"),
        ("36501d", "too long"),
        ("1x", "unknown unit"),
    ];
    for (value, says) in bad_durations {
        let steps = [
            (
                "timeout",
                format!("{{ id: a, type: shell, command: \"true\", timeout: {value} }}"),
            ),
            (
                "retry.delay",
                format!(
                    "{{ id: a, type: shell, command: \"true\", retry: {{ attempts: 2, delay: {value} }} }}"
                ),
            ),
            (
                "retry.max_delay",
                format!(
                    "{{ id: a, type: shell, command: \"true\", retry: {{ attempts: 2, max_delay: {value} }} }}"
                ),
            ),
            (
                "min_age",
                format!(
                    "{{ id: a, type: prune, repository: r, keep: {{ last: 2 }}, min_age: {value} }}"
                ),
            ),
            (
                "keep.within",
                format!("{{ id: a, type: prune, repository: r, keep: {{ within: {value} }} }}"),
            ),
        ];
        for (key, step) in steps {
            out.push(case(format!("{key} = {value}"), with_step(&step), says));
        }
    }
    // Counts.
    for value in ["0", "65", "100000", "-1", "\"x\"", "1.5", "99999999999"] {
        for kind in [
            "{ id: a, type: restore, repository: r, backup: latest, into: { target: t, database: d }, jobs: V }",
            "{ id: a, type: verify, repository: r, backup: latest, jobs: V }",
            "{ id: a, type: backup, target: t, repository: r, format: directory, jobs: V }",
        ] {
            out.push(case(
                format!("jobs = {value} in {}", &kind[17..30]),
                with_step(&kind.replace('V', value)),
                "jobs",
            ));
        }
    }
    for value in ["0", "1001", "-1", "\"x\"", "4294967296"] {
        out.push(case(
            format!("attempts = {value}"),
            with_step(&format!(
                "{{ id: a, type: shell, command: \"true\", retry: {{ attempts: {value} }} }}"
            )),
            "attempts",
        ));
    }
    for rule in ["last", "hourly", "daily", "weekly", "monthly", "yearly"] {
        out.push(case(
            format!("keep.{rule} = 0"),
            with_step(&format!(
                "{{ id: a, type: prune, repository: r, keep: {{ {rule}: 0 }} }}"
            )),
            format!("`{rule}: 0` would keep none"),
        ));
    }
    out.push(case(
        "keep.last = -1",
        with_step("{ id: a, type: prune, repository: r, keep: { last: -1 } }"),
        "keep",
    ));
    out.push(case(
        "continue_on_error from the environment",
        with_step("{ id: a, type: shell, command: \"true\", continue_on_error: \"{{ env.C }}\" }"),
        "`continue_on_error` must be known before the run",
    ));
    out.push(case(
        "keep.last of 20 digits",
        with_step("{ id: a, type: prune, repository: r, keep: { last: 12345678901234567890 } }"),
        "a number of 20 digits is not a count",
    ));
    out.push(case(
        "keep.daily = x",
        with_step("{ id: a, type: prune, repository: r, keep: { daily: x } }"),
        "not a whole number",
    ));
    out.push(case(
        "keep = {}",
        with_step("{ id: a, type: prune, repository: r, keep: {} }"),
        "keeps nothing",
    ));
    for size in ["0", "4", "5121", "4294967295"] {
        out.push(case(
            format!("part_size_mib = {size}"),
            format!("version: 1\nname: p\nrepositories:\n  r: {{ url: \"s3://bucket/x\", part_size_mib: {size}, create: true }}\nsteps:\n  - {{ id: a, type: shell, command: \"true\" }}\n"),
            "part_size_mib",
        ));
    }

    // YAML structure and encodings.
    let mut bomb = String::from("version: 1\nname: b\na: &a [x,x,x,x,x,x,x,x,x]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        bomb.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
    }
    bomb.push_str("steps: []\n");
    out.push(case("alias bomb", bomb, "alias bomb"));
    out.push(case(
        "alias bomb inside a step",
        "version: 1\nname: b\nx: &x [1,1,1,1,1,1,1,1,1,1]\ny: &y [*x,*x,*x,*x,*x,*x,*x,*x,*x,*x]\nz: &z [*y,*y,*y,*y,*y,*y,*y,*y,*y,*y]\nw: &w [*z,*z,*z,*z,*z,*z,*z,*z,*z,*z]\nv: &v [*w,*w,*w,*w,*w,*w,*w,*w,*w,*w]\nsteps:\n  - { id: a, type: shell, command: \"true\", env: { A: *v } }\n",
        "alias bomb",
    ));
    out.push(case(
        "nested 100 deep",
        format!(
            "version: 1\nname: d\nvars: {{ a: {}{} }}\nsteps: []\n",
            "[".repeat(100),
            "]".repeat(100)
        ),
        "nested more than 64",
    ));
    out.push(case(
        "nested 100,000 deep",
        format!(
            "version: 1\nname: d\nvars: {{ a: {}{} }}\nsteps: []\n",
            "{a: ".repeat(100_000),
            "}".repeat(100_000)
        ),
        "nested more than 64",
    ));
    out.push(case(
        "NUL byte",
        b"version: 1\nname: n\x00ul\nsteps: []\n".to_vec(),
        "U+0000",
    ));
    out.push(case(
        "escape sequence in the name",
        b"version: 1\nname: \"\x1b[31mred\"\nsteps: []\n".to_vec(),
        "U+001B",
    ));
    out.push(case(
        "escape written as a YAML escape",
        "version: 1\nname: \"\\e[2Jcleared\"\nsteps: []\n",
        "U+001B",
    ));
    out.push(case(
        "bell in a command",
        "version: 1\nname: b\nsteps:\n  - { id: a, type: shell, command: \"echo \\a\" }\n",
        "U+0007",
    ));
    out.push(case(
        "BOM and a duplicate key",
        "\u{feff}version: 1\nname: a\nname: b\nsteps: []\n",
        "duplicate key `name`",
    ));
    out.push(case(
        "not UTF-8",
        b"version: 1\nname: \xff\xfe\nsteps: []\n".to_vec(),
        "not UTF-8",
    ));
    out.push(case("empty file", "", "empty"));
    out.push(case("only a comment", "# nothing\n", "empty"));
    out.push(case(
        "two documents",
        "version: 1\nname: a\nsteps: []\n---\nversion: 1\nname: b\nsteps: []\n",
        "exactly one YAML document",
    ));
    out.push(case(
        "alias to an unknown anchor",
        "version: 1\nname: a\nsteps: *nowhere\n",
        "unknown anchor",
    ));
    out.push(case(
        "a tab-indented mapping",
        "version: 1\nname: a\nsteps:\n\t- { id: a, type: shell, command: \"true\" }\n",
        "invalid YAML",
    ));
    out.push(case(
        "a list where a mapping belongs",
        "- version: 1\n",
        "mapping",
    ));
    out.push(case(
        "a complex key",
        "version: 1\nname: a\n? [a, b]\n: c\nsteps: []\n",
        "mapping keys must be plain strings",
    ));
    out.push(case(
        "version 2",
        "version: 2\nname: a\nsteps: []\n",
        "version",
    ));
    out.push(case(
        "version as text",
        "version: one\nname: a\nsteps: []\n",
        "version",
    ));
    out.push(case(
        "name as a list",
        "version: 1\nname: [a]\nsteps: []\n",
        "name",
    ));
    out.push(case(
        "steps as a mapping",
        "version: 1\nname: a\nsteps: { a: 1 }\n",
        "steps",
    ));
    out.push(case(
        "an unknown top-level key",
        "version: 1\nname: a\nstep: []\n",
        "unknown key",
    ));
    for (what, step, says) in [
        (
            "an id with a space",
            "{ id: \"a b\", type: shell, command: \"true\" }",
            "id",
        ),
        (
            "an id with a shell metacharacter",
            "{ id: \"a;rm\", type: shell, command: \"true\" }",
            "id",
        ),
        (
            "an id with a path",
            "{ id: ../../etc, type: shell, command: \"true\" }",
            "id",
        ),
        (
            "an unknown type",
            "{ id: a, type: shel, command: \"true\" }",
            "shell",
        ),
        ("no type", "{ id: a, command: \"true\" }", "type"),
        (
            "an unknown need",
            "{ id: a, type: shell, command: \"true\", needs: [b] }",
            "unknown",
        ),
        (
            "needing itself",
            "{ id: a, type: shell, command: \"true\", needs: [a] }",
            "cycle",
        ),
        (
            "an unknown target",
            "{ id: a, type: sql, target: nope, query: \"select 1\" }",
            "unknown target",
        ),
        (
            "an unknown repository",
            "{ id: a, type: verify, repository: nope, backup: latest }",
            "unknown repository",
        ),
        (
            "an unknown key in a step",
            "{ id: a, type: shell, command: \"true\", comand: x }",
            "unknown key",
        ),
        (
            "a condition that is not one",
            "{ id: a, type: shell, command: \"true\", if: \"$(reboot)\" }",
            "if",
        ),
        (
            "query and file together",
            "{ id: a, type: sql, target: t, query: \"select 1\", file: x.sql }",
            "query",
        ),
        (
            "schema_only and data_only",
            "{ id: a, type: backup, target: t, repository: r, schema_only: true, data_only: true }",
            "exclude each other",
        ),
        (
            "a compression that is not one",
            "{ id: a, type: backup, target: t, repository: r, compression: \"zstd:99\" }",
            "compression",
        ),
        (
            "a format that is not one",
            "{ id: a, type: backup, target: t, repository: r, format: tar }",
            "format",
        ),
        (
            "a migrate action that is not one",
            "{ id: a, type: migrate, target: t, action: drop }",
            "action",
        ),
        (
            "a timeout of zero",
            "{ id: a, type: shell, command: \"true\", timeout: 0s }",
            "timeout of zero",
        ),
        (
            "a number where text belongs",
            "{ id: a, type: shell, command: 42 }",
            "command",
        ),
        (
            "a list where text belongs",
            "{ id: a, type: shell, command: [echo, hi] }",
            "command",
        ),
    ] {
        out.push(case(what, with_step(step), says));
    }

    // Templates.
    for (what, template, says) in [
        ("this", "{{ this }}", "unknown reference `this`"),
        ("vars alone", "{{ vars }}", "`vars` alone"),
        (
            "env alone",
            "{{ env }}",
            "not an environment variable reference",
        ),
        ("an unclosed template", "{{ vars.x", "not closed"),
        (
            "an undeclared variable",
            "{{ vars.nope }}",
            "unknown variable",
        ),
        (
            "an unknown step",
            "{{ steps.nope.outputs.x }}",
            "unknown step",
        ),
        (
            "a run field that is not one",
            "{{ run.secret }}",
            "unknown reference",
        ),
        ("an unknown root", "{{ process.env }}", "unknown reference"),
        (
            "a helper call",
            "{{ lookup env \"HOME\" }}",
            "helpers, blocks and partials",
        ),
        (
            "a partial",
            "{{> /etc/passwd }}",
            "helpers, blocks and partials",
        ),
        (
            "a block",
            "{{#each env}}{{this}}{{/each}}",
            "helpers, blocks and partials",
        ),
    ] {
        out.push(case(
            format!("template: {what}"),
            with_step(&format!(
                "{{ id: a, type: shell, command: \"echo {}\" }}",
                template.replace('"', "\\\"")
            )),
            says,
        ));
    }

    // Repository URLs.
    out.push(case(
        "credentials in an S3 URL",
        "version: 1\nname: p\nrepositories:\n  r: { url: \"s3://AKIAEXAMPLE:secret@bucket/x\", create: true }\nsteps:\n  - { id: a, type: shell, command: \"true\" }\n",
        "credentials",
    ));
    out.push(case(
        "an unsupported repository URL",
        "version: 1\nname: p\nrepositories:\n  r: { url: \"ftp://host/x\", create: true }\nsteps:\n  - { id: a, type: shell, command: \"true\" }\n",
        "file://",
    ));

    // Command lines.
    let ok = with_step("{ id: a, type: shell, command: \"true\" }");
    for (what, args, says) in [
        (
            "an undeclared --var",
            vec!["--var", "nope=1"],
            "declares no variable",
        ),
        ("--var without =", vec!["--var", "novalue"], "KEY=VALUE"),
        ("--concurrency 0", vec!["--concurrency", "0"], "concurrency"),
        ("--concurrency -1", vec!["--concurrency", "-1"], "-1"),
        (
            "--kill-grace huge",
            vec!["--kill-grace", "99999999999999999999h"],
            "too long",
        ),
        (
            "--kill-grace without unit",
            vec!["--kill-grace", "5"],
            "no unit",
        ),
        (
            "--confirm an unknown target",
            vec!["--confirm", "prod"],
            "no target",
        ),
        (
            "--report a directory",
            vec!["--report", "/"],
            "is a directory",
        ),
        (
            "--report in a missing directory",
            vec!["--report", "/nonexistent/r.json"],
            "does not exist",
        ),
        (
            "--junit a directory",
            vec!["--junit", "/"],
            "is a directory",
        ),
        (
            "--junit in a missing directory",
            vec!["--junit", "/nonexistent/j.xml"],
            "does not exist",
        ),
        (
            "--metrics a directory",
            vec!["--metrics", "/"],
            "is a directory",
        ),
        (
            "--metrics in a missing directory",
            vec!["--metrics", "/nonexistent/m.prom"],
            "does not exist",
        ),
        (
            "--report and --junit the same file",
            vec!["--report", "out.json", "--junit", "out.json"],
            "name the same file",
        ),
        (
            "--max-plan-nodes 5",
            vec!["--max-plan-nodes", "5"],
            "more than 5 nodes",
        ),
        (
            "--max-plan-bytes 10",
            vec!["--max-plan-bytes", "10"],
            "larger than 10 bytes",
        ),
    ] {
        let mut c = case(what, ok.clone(), says);
        c.args = args.into_iter().map(String::from).collect();
        out.push(c);
    }
    out
}

#[test]
fn every_hostile_input_is_refused_with_exit_2_and_a_location() {
    let ws = Workspace::new();
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let plan = ws.path("plan.yaml");
    let mut failures = Vec::new();
    for c in &cases {
        std::fs::write(&plan, &c.plan).unwrap();
        let out = opsrunner()
            .arg("apply")
            .arg(&plan)
            .args(&c.args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let located = stderr.contains("plan.yaml") || stderr.contains("--") || !c.args.is_empty();
        let problems = [
            (
                out.status.code() != Some(2),
                format!("exit {:?}", out.status.code()),
            ),
            (stderr.contains("panicked"), "panicked".to_string()),
            (
                !stderr.contains(&c.says),
                format!("does not say {:?}", c.says),
            ),
            (!located, "names no location".to_string()),
            (
                stderr.contains('\u{1b}'),
                "an escape character reached the terminal".to_string(),
            ),
            (
                !out.stdout.is_empty() && c.args.is_empty(),
                "something ran".to_string(),
            ),
        ];
        for (failed, what) in problems {
            if failed {
                failures.push(format!("{}: {what}\n{stderr}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_plan_file_larger_than_the_limit_is_not_read_whole() {
    let ws = Workspace::new();
    // /dev/zero never ends: reading it whole would never finish.
    let out = opsrunner()
        .args(["validate", "/dev/zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));
    let big = ws.path("big.yaml");
    std::fs::write(
        &big,
        format!(
            "version: 1\nname: b\n# {}\nsteps:\n  - {{ id: a, type: shell, command: \"true\" }}\n",
            "x".repeat(17 << 20)
        ),
    )
    .unwrap();
    let out = opsrunner().arg("validate").arg(&big).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = opsrunner()
        .arg("validate")
        .arg(&big)
        .args(["--max-plan-bytes", "20000000"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn credentials_never_leave_even_when_a_step_prints_them() {
    let ws = Workspace::new();
    let secrets = [
        ("PGPASSWORD", "pg-pass-7f3a9c"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-51be02"),
        ("AWS_SESSION_TOKEN", "aws-session-e8d1c4"),
        ("DEPLOY_API_TOKEN", "deploy-token-90ab7e"),
    ];
    let plan = "version: 1\nname: leak\nsteps:\n  - { id: a, type: shell, command: \"echo $PGPASSWORD $AWS_SECRET_ACCESS_KEY; echo $AWS_SESSION_TOKEN $DEPLOY_API_TOKEN >&2\" }\n";
    for format in ["text", "json"] {
        let run = ws.apply_env(plan, &["--log-format", format], &secrets);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let all = run.everything();
        for (name, value) in secrets {
            assert!(
                !all.contains(value),
                "{name} leaked in the {format} log or report:\n{all}"
            );
        }
        assert!(all.contains("***"), "{all}");
        let preview = opsrunner()
            .arg("plan")
            .arg(ws.path("plan.yaml"))
            .envs(secrets)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&preview.stdout);
        assert!(preview.status.success(), "{text}");
    }
}

#[test]
fn errors_about_a_file_never_quote_its_content() {
    let ws = Workspace::new();
    std::fs::write(ws.path("pgpass"), "db:5432:*:app:hunter2-not-a-key\n").unwrap();
    let plan = ws.write_plan(
        "version: 1\nname: e\nrepositories:\n  r: { url: \"file://./repo\", encryption: { recipients_file: pgpass }, create: true }\nsteps:\n  - { id: b, type: backup, target: t, repository: r }\ntargets:\n  t: { url: \"postgres://u@localhost/db\" }\n",
    );
    // `plan` reads the recipients file to show who can read the backups; `apply` to encrypt.
    for command in ["plan", "apply"] {
        let out = opsrunner().arg(command).arg(&plan).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("hunter2"), "{command}: {all}");
        assert!(all.contains("pgpass:1"), "{command}: {all}");
    }
}

#[test]
fn store_errors_are_one_plain_line_without_the_sdks_debug_dump() {
    let ws = Workspace::new();
    // Port 9 (discard) refuses connections here; nothing has to run.
    let plan = ws.write_plan(
        "version: 1\nname: s\nrepositories:\n  r: { url: \"s3://bucket/p\", endpoint: \"http://127.0.0.1:9\", region: us-east-1, force_path_style: true, create: true }\nsteps:\n  - { id: p, type: prune, repository: r, keep: { last: 2 } }\n",
    );
    let refused = ("AKIAEXAMPLE", "refused", "Connection refused");
    // No credentials at all, and no instance metadata service to ask.
    let missing = ("", "missing", "no usable AWS credentials");
    for (key_id, name, says) in [refused, missing] {
        let out = opsrunner()
            .env_remove("NO_COLOR")
            .env_remove("OPSRUNNER_LOG")
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env(
                "AWS_SECRET_ACCESS_KEY",
                if key_id.is_empty() {
                    ""
                } else {
                    "s3cr3t-value"
                },
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", ws.path("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", ws.path("none"))
            .args(["backups", "list", "--plan"])
            .arg(&plan)
            .args(["--repository", "r"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        for noise in [
            "DispatchFailure {",
            "Response {",
            "\u{1b}[",
            "WARN",
            "s3cr3t",
        ] {
            assert!(!stderr.contains(noise), "{name}: {noise:?} in {stderr}");
        }
    }
}

#[test]
fn values_in_shell_commands_stay_one_word() {
    let ws = Workspace::new();
    let plan = "version: 1\nname: q\nvars: { v: x }\nsteps:\n  - { id: a, type: shell, command: \"printf '[%s]\\\\n' {{ vars.v }} {{ env.QUOTED }}\" }\n  - { id: raw, type: shell, needs: [a], command: \"{{{ vars.v }}}\" }\n";
    let run = ws.apply_env(
        plan,
        &["--var", "v=hello; echo INJECTED"],
        &[("QUOTED", "it's \"quoted\" $(id)")],
    );
    // The first step printed each value as one argument; only the explicitly raw
    // `{{{ }}}` ran the text as shell.
    assert!(
        run.stderr.contains("a | [hello; echo INJECTED]"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("a | [it's \"quoted\" $(id)]"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("raw | INJECTED"), "{}", run.stderr);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A listener standing for a host a pull request's author controls: it records whether
/// anything connected, and never answers.
fn trap() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, hits)
}

fn hostile_pull_request(addr: &str) -> String {
    format!(
        r#"version: 1
name: pr
targets:
  prod: {{ url: "postgres://u:{{{{ env.SOME_SECRET }}}}@{addr}/db" }}
repositories:
  offsite: {{ url: "s3://bucket-{{{{ env.AWS_SECRET_ACCESS_KEY }}}}/x", endpoint: "http://{addr}", force_path_style: true, encryption: {{ recipients_file: ../../../etc/hostname }}, create: true }}
steps:
  - {{ id: up, type: migrate, target: prod, dir: migrations }}
  - {{ id: prune, type: prune, repository: offsite, keep: {{ last: 2 }} }}
  - {{ id: backup, type: backup, target: prod, repository: offsite }}
  - {{ id: show, type: shell, command: "echo {{{{ env.SOME_SECRET }}}} {{{{ env.PGPASSWORD }}}}" }}
"#
    )
}

#[test]
fn an_untrusted_preview_contacts_nothing_and_shows_no_environment_value() {
    let ws = Workspace::new();
    let (addr, hits) = trap();
    let plan = ws.write_plan(&hostile_pull_request(&addr));
    let secrets = [
        ("SOME_SECRET", "pr-can-steal-this-1"),
        ("PGPASSWORD", "pr-can-steal-this-2"),
        ("AWS_SECRET_ACCESS_KEY", "pr-can-steal-this-3"),
    ];
    for format in ["text", "markdown", "json"] {
        let out = opsrunner()
            .args(["plan", "--untrusted", "--format", format])
            .arg(&plan)
            .envs(secrets)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("pr-can-steal-this"), "{format}: {text}");
        assert!(text.contains("(env SOME_SECRET)"), "{format}: {text}");
        assert!(
            text.contains("probe skipped (--untrusted)"),
            "{format}: {text}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the untrusted preview connected to the plan's host"
    );
}

#[test]
fn a_probe_that_never_answers_times_out_and_says_so() {
    let ws = Workspace::new();
    let (addr, hits) = trap();
    let plan = ws.write_plan(&format!(
        "version: 1\nname: slow\nrepositories:\n  offsite: {{ url: \"s3://bucket/x\", endpoint: \"http://{addr}\", force_path_style: true, create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: offsite, keep: {{ last: 2 }} }}\n"
    ));
    let out = opsrunner()
        .args(["plan"])
        .arg(&plan)
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("probe timed out after 10s"), "{text}");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn a_preview_against_a_base_plan_probes_only_what_is_unchanged() {
    let ws = Workspace::new();
    let (addr, hits) = trap();
    // An empty repository (its directory exists): the unchanged prune may read it.
    std::fs::create_dir_all(ws.path("repo")).unwrap();
    let base = "version: 1\nname: nightly\ntargets:\n  prod: { url: \"{{ env.PROD_URL }}\" }\nrepositories:\n  local: { url: \"file://./repo\", create: true }\nsteps:\n  - { id: up, type: migrate, target: prod, dir: migrations }\n  - { id: prune, type: prune, repository: local, keep: { last: 2 } }\n";
    let old = ws.path("base.yaml");
    std::fs::write(&old, base).unwrap();
    // The pull request points `prod` at its own host and adds a step printing a secret.
    let new_text = base.replace(
        "\"{{ env.PROD_URL }}\"",
        &format!("\"postgres://u:{{{{ env.PROD_PASSWORD }}}}@{addr}/db\""),
    ) + "  - { id: show, type: shell, command: \"echo {{ env.PROD_URL }}\" }\n";
    let new = ws.write_plan(&new_text);
    let out = opsrunner()
        .arg("plan")
        .arg(&new)
        .arg("--base")
        .arg(&old)
        .env("PROD_URL", "postgres://app@db.internal/app")
        .env("PROD_PASSWORD", "base-mode-secret-1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("probe skipped (target `prod` is new or changed against the base plan)"),
        "{text}"
    );
    // The unchanged repository was read: prune says what it found.
    assert!(
        text.contains("the repository holds no backup to consider"),
        "{text}"
    );
    assert!(
        !text.contains("base-mode-secret-1") && !text.contains("db.internal"),
        "{text}"
    );
    assert!(text.contains("(env PROD_URL)"), "{text}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn a_base_preview_compares_what_would_be_contacted_not_the_text() {
    let ws = Workspace::new();
    let (addr, hits) = trap();
    // The definitions are the same text in both plans; only the variables they use change.
    let plan = |host: &str, endpoint: &str| {
        format!(
            "version: 1\nname: nightly\nvars:\n  host: \"{host}\"\n  endpoint: \"{endpoint}\"\ntargets:\n  prod: {{ url: \"postgres://u:{{{{ env.PROD_PASSWORD }}}}@{{{{ vars.host }}}}/db\" }}\nrepositories:\n  offsite: {{ url: \"s3://bucket/x\", endpoint: \"{{{{ vars.endpoint }}}}\", force_path_style: true, create: true }}\nsteps:\n  - {{ id: up, type: migrate, target: prod, dir: migrations }}\n  - {{ id: prune, type: prune, repository: offsite, keep: {{ last: 2 }} }}\n"
        )
    };
    let old = ws.path("base.yaml");
    std::fs::write(&old, plan("db.internal:5432", "http://s3.internal:9000")).unwrap();
    let new = ws.write_plan(&plan(&addr, &format!("http://{addr}")));
    let out = opsrunner()
        .arg("plan")
        .arg(&new)
        .arg("--base")
        .arg(&old)
        .env("PROD_PASSWORD", "vars-steered-secret-1")
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "vars-steered-secret-2")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("probe skipped (target `prod` is new or changed against the base plan)"),
        "{text}"
    );
    assert!(
        text.contains(
            "probe skipped (repository `offsite` is new or changed against the base plan)"
        ),
        "{text}"
    );
    assert!(!text.contains("vars-steered-secret"), "{text}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the preview contacted the host the pull request's variables chose"
    );
}

/// Waits for `child` at most `limit`; kills it and fails the test if it is still running
/// (a hang, which is what these tests are about: not how fast, but whether it ends).
fn ends_within(mut child: std::process::Child, limit: std::time::Duration) -> std::process::Output {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A store that accepts connections and never answers: `wal fetch --retry-for` gives up
/// at its deadline (255, never "absent"), and in `apply` the step's timeout fires and a
/// signal stops the run, each with its report written.
#[test]
fn a_silent_object_store_hangs_nothing() {
    let ws = Workspace::new();
    let (addr, hits) = trap();
    let plan = |timeout: &str| {
        ws.write_plan(&format!(
            "version: 1\nname: silent\ntargets:\n  db: {{ url: \"postgres://u@127.0.0.1:1/db\" }}\nrepositories:\n  offsite: {{ url: \"s3://bucket/x\", endpoint: \"http://{addr}\", force_path_style: true, region: us-east-1, create: true }}\nsteps:\n  - {{ id: backup, type: backup, target: db, repository: offsite{timeout} }}\n"
        ))
    };
    let aws = [
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "example-secret"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let limit = std::time::Duration::from_secs(60);

    let path = plan("");
    let fetch = opsrunner()
        .args(["wal", "fetch", "000000010000000000000001"])
        .arg(ws.path("segment"))
        .args(["--repository", "offsite", "--plan"])
        .arg(&path)
        .args(["--retry-for", "2s"])
        .envs(aws)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = ends_within(fetch, limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(opsrunner::exit::WAL_UNREADABLE),
        "{err}"
    );
    assert!(err.contains("did not answer in time"), "{err}");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) > 0);

    let path = plan(", timeout: 2s");
    let run = opsrunner()
        .arg("apply")
        .arg(&path)
        .arg("--report")
        .arg(ws.report_path())
        .envs(aws)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = ends_within(run, limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after 2s"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.report_path()).unwrap()).unwrap();
    assert_eq!(report["status"], "failed", "{report}");

    std::fs::remove_file(ws.report_path()).unwrap();
    let path = plan("");
    let env: Vec<(&str, &std::path::Path)> = aws
        .iter()
        .map(|(k, v)| (*k, std::path::Path::new(*v)))
        .collect();
    let child = ws.spawn_apply(&path, &[], &env);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = ends_within(child, limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.report_path()).unwrap()).unwrap();
    assert_eq!(report["status"], "cancelled", "{report}");
}
