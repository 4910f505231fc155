//! `shell`: a command run by `sh -c`, its output streamed to the log line by line.

use super::step_type::StepType;
use crate::exec::events::{Events, Outputs, Stream};
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::plan::step_params::{CheckScope, Problem};
use crate::process::ProcessGroup;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use tokio::io::AsyncRead;
use tokio::process::Command;

/// `shell`: runs a command with `sh -c`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// The command line, run by `sh -c`.
    pub command: String,
    /// Extra environment variables for the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the plan file's directory (default: that directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// The `stdout` output keeps at most this much, so a chatty command cannot exhaust memory.
const MAX_CAPTURED_STDOUT: usize = 1024 * 1024;

pub struct Shell;

impl StepType for Shell {
    const NAME: &'static str = "shell";
    type Params = ShellParams;
    const OUTPUTS: &'static [&'static str] = &["exit_code", "stdout"];
    const SHELL_QUOTED: &'static [&'static str] = &["command"];

    /// A secret in the command line is visible to every user of the machine.
    fn check(p: &ShellParams, scope: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for r in crate::plan::template::references(&p.command).unwrap_or_default() {
            if r.path.len() == 2 && r.path[0] == "env" && scope.secrets.contains(&r.path[1]) {
                let name = &r.path[1];
                problems.push(
                    Problem::new(&["command"], format!("secret `env.{name}` in a command line, where every user on the machine can read it"))
                        .help(format!("pass it through the environment: `env: {{ {name}: \"{{{{ env.{name} }}}}\" }}` and use ${name} in the command"))
                        .narrow_to(r.dotted()),
                );
            }
        }
        problems
    }

    fn describe(p: &ShellParams) -> String {
        describe(p)
    }

    fn run(
        p: &ShellParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

pub fn describe(p: &ShellParams) -> String {
    format!("run `{}` with sh -c", p.command)
}

pub async fn run(p: &ShellParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    // Command lines are visible to every user on the machine (ps, /proc); secrets travel
    // through the environment instead.
    if ctx.redactor().redact(&p.command) != p.command {
        return Err(StepError::permanent(
            "the command line would contain a secret, which every user on this machine could read with ps; \
             pass it through the step's `env:` (e.g. `env: { TOKEN: \"{{ env.TOKEN }}\" }`) and use $TOKEN in the command",
        ));
    }
    let workdir = ctx.resolve(p.workdir.as_deref().unwrap_or("."));
    if !workdir.is_dir() {
        return Err(StepError::permanent(format!(
            "working directory {} does not exist",
            workdir.display()
        )));
    }
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&p.command)
        .current_dir(&workdir)
        .envs(&p.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = ProcessGroup::spawn(&mut command)
        .map_err(|e| StepError::permanent(format!("cannot start sh: {e}")))?;
    let stdout = group.child_mut().stdout.take().expect("stdout is piped");
    let stderr = group.child_mut().stderr.take().expect("stderr is piped");
    let out_task = tokio::spawn(forward(
        stdout,
        ctx.events.clone(),
        ctx.step_id.clone(),
        Stream::Stdout,
    ));
    let err_task = tokio::spawn(forward(
        stderr,
        ctx.events.clone(),
        ctx.step_id.clone(),
        Stream::Stderr,
    ));

    let status = tokio::select! {
        status = group.wait() => status.map_err(|e| StepError::transient(format!("waiting for sh failed: {e}")))?,
        _ = ctx.cancel.cancelled() => {
            group.terminate(ctx.kill_grace).await;
            out_task.abort();
            err_task.abort();
            return Err(StepError::cancelled());
        }
    };
    // Background processes the command left behind would keep the pipes open and the step
    // running forever; they end with the step.
    group.kill_leftovers();
    let captured = out_task.await.unwrap_or_default();
    let _ = err_task.await;

    let code = status.code();
    let mut outputs = Outputs::new();
    outputs.insert(
        "exit_code".into(),
        code.map_or_else(|| "signal".into(), |c| c.to_string()),
    );
    outputs.insert("stdout".into(), captured.trim_end().to_string());
    if status.success() {
        return Ok(outputs);
    }
    Err(match code {
        // 126: found but not executable; 127: not found. Trying again changes nothing.
        Some(c @ (126 | 127)) => StepError {
            kind: ErrorKind::Permanent,
            message: format!(
                "command exited with status {c} (command not found or not executable)"
            ),
        },
        Some(c) => StepError::transient(format!("command exited with status {c}")),
        None => {
            use std::os::unix::process::ExitStatusExt;
            StepError::transient(format!(
                "command was killed by signal {}",
                status.signal().unwrap_or(0)
            ))
        }
    })
}

/// Sends each line to the log and returns what was read (up to a limit).
async fn forward(
    reader: impl AsyncRead + Unpin,
    events: Events,
    step: String,
    stream: Stream,
) -> String {
    let mut captured = String::new();
    crate::exec::output::forward_lines(reader, |line| {
        if stream == Stream::Stdout && captured.len() + line.len() < MAX_CAPTURED_STDOUT {
            captured.push_str(&line);
            captured.push('\n');
        }
        events.output(&step, stream, line);
    })
    .await;
    captured
}
