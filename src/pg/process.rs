//! Running pg_dump, pg_restore and psql: in their own process group (timeouts and Ctrl-C
//! stop the whole tree), the password in the environment, stderr streamed to the log and
//! its last lines kept for the error message.

use crate::exec::events::{Events, Stream};
use crate::exec::{StepContext, StepError};
use crate::pipe::Batched;
use crate::process::ProcessGroup;
use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use tokio::process::{ChildStdin, ChildStdout, Command};

pub struct PgProcess {
    pub name: String,
    group: ProcessGroup,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: tokio::task::JoinHandle<()>,
}

impl PgProcess {
    /// Spawns `program args…`; stdin and stdout are pipes when asked for.
    pub fn spawn(
        program: &Path,
        args: &[String],
        ctx: &StepContext,
        configure: impl FnOnce(&mut Command),
        stdin: bool,
        stdout: bool,
    ) -> Result<PgProcess, StepError> {
        let name = program
            .file_name()
            .map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned());
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            // Messages in English whatever the machine's locale, for error classification.
            .env("LC_MESSAGES", "C");
        configure(&mut command);
        // Visible in pg_stat_activity: which tool of which program holds a session.
        command.env("PGAPPNAME", format!("opsrunner {name}"));
        tracing::debug!(program = %program.display(), ?args, "spawning");
        let mut group = ProcessGroup::spawn(&mut command)
            .map_err(|e| StepError::permanent(format!("cannot start {name}: {e}")))?;
        let stderr = group.child_mut().stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn(forward_stderr(
            stderr,
            ctx.events.clone(),
            ctx.step_id.clone(),
            tail.clone(),
            name.clone(),
        ));
        Ok(PgProcess {
            name,
            group,
            stderr_tail: tail,
            stderr_task,
        })
    }

    /// The tool's output, read in batches ([`crate::pipe`]).
    pub fn stdout(&mut self) -> Batched<ChildStdout> {
        Batched::new(
            self.group
                .child_mut()
                .stdout
                .take()
                .expect("stdout is piped"),
        )
    }

    /// The tool's input as a blocking pipe, for a blocking thread ([`crate::pipe`]).
    pub fn blocking_stdin(&mut self) -> std::io::Result<std::fs::File> {
        crate::pipe::blocking_stdin(self.group.child_mut().stdin.take().expect("stdin is piped"))
    }

    /// The tool's input, written in batches ([`crate::pipe`]).
    pub fn stdin(&mut self) -> Batched<ChildStdin> {
        Batched::new(self.group.child_mut().stdin.take().expect("stdin is piped"))
    }

    /// Waits for the exit; a failure carries stderr's last lines.
    pub async fn finish(mut self, ctx: &StepContext) -> Result<(), StepError> {
        let status: ExitStatus = tokio::select! {
            s = self.group.wait() => s.map_err(|e| StepError::transient(format!("waiting for {} failed: {e}", self.name)))?,
            _ = ctx.cancel.cancelled() => {
                self.stop(ctx).await;
                return Err(StepError::cancelled());
            }
        };
        self.group.kill_leftovers();
        let _ = (&mut self.stderr_task).await;
        if status.success() {
            return Ok(());
        }
        let tail: Vec<String> = self.stderr_tail.lock().unwrap().iter().cloned().collect();
        let message = format!("{} failed ({status}): {}", self.name, tail.join(" | "));
        Err(classify(&message))
    }

    pub async fn stop(&mut self, ctx: &StepContext) {
        self.group.terminate(ctx.kill_grace).await;
        self.stderr_task.abort();
    }
}

async fn forward_stderr(
    stderr: tokio::process::ChildStderr,
    events: Events,
    step: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    name: String,
) {
    crate::exec::output::forward_lines(stderr, |line| {
        {
            let mut t = tail.lock().unwrap();
            if t.len() == 5 {
                t.pop_front();
            }
            t.push_back(line.clone());
        }
        events.output(&step, Stream::Stderr, format!("{name}: {line}"));
    })
    .await;
}

/// Connection trouble is worth a retry; a missing table or a permission error is not.
fn classify(message: &str) -> StepError {
    let transient = [
        "could not connect",
        "connection to server",
        "server closed the connection",
        "terminating connection",
        "could not receive data",
        "timeout",
        "deadlock",
        "could not serialize",
    ];
    if transient.iter().any(|t| message.contains(t)) {
        StepError::transient(message)
    } else {
        StepError::permanent(message)
    }
}
