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
    /// The psql a [`Relay`]ed pg_restore writes its script into.
    downstream: Option<Box<Downstream>>,
}

/// How a pg_restore reaches a server older than itself: it writes its script to stdout,
/// and psql runs it after [`super::compat`] took out the settings the server does not
/// know. (Restoring straight into the server, pg_restore would send them itself.)
#[derive(Debug, Clone)]
pub struct Relay {
    /// The psql that runs the script: one of pg_restore's own installation.
    pub psql: std::path::PathBuf,
    /// The settings taken out of the script's header.
    pub unknown: Vec<&'static str>,
}

struct Downstream {
    psql: PgProcess,
    relay: tokio::task::JoinHandle<std::io::Result<()>>,
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
            downstream: None,
        })
    }

    /// Spawns pg_restore with `args` (which name the database as `--dbname=…`): straight
    /// into the database, or with a `relay`, writing a script into psql (then `--jobs` is
    /// dropped: a script is one stream).
    pub fn spawn_restore<C: Fn(&mut Command)>(
        program: &Path,
        args: &[String],
        relay: Option<&Relay>,
        ctx: &StepContext,
        configure: &C,
        stdin: bool,
    ) -> Result<PgProcess, StepError> {
        let Some(relay) = relay else {
            return PgProcess::spawn(program, args, ctx, configure, stdin, false);
        };
        let dbname = args
            .iter()
            .find(|a| a.starts_with("--dbname="))
            .cloned()
            .ok_or_else(|| StepError::permanent("a restore names no database"))?;
        let mut script_args: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with("--dbname=") && !a.starts_with("--jobs="))
            .cloned()
            .collect();
        script_args.insert(0, "--file=-".into());
        let psql_args: Vec<String> = vec![
            "-X".into(),
            "-q".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            dbname,
            "-f".into(),
            "-".into(),
        ];
        let mut psql = PgProcess::spawn(&relay.psql, &psql_args, ctx, configure, true, false)?;
        let mut pg_restore = PgProcess::spawn(program, &script_args, ctx, configure, stdin, true)?;
        let script = pg_restore
            .group
            .child_mut()
            .stdout
            .take()
            .expect("stdout is piped");
        let mut into = psql.group.child_mut().stdin.take().expect("stdin is piped");
        let unknown = relay.unknown.clone();
        let relay = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut script = tokio::io::BufReader::with_capacity(1 << 20, script);
            let head = super::compat::fixed_header(&mut script, &unknown).await?;
            into.write_all(&head).await?;
            tokio::io::copy_buf(&mut script, &mut into).await?;
            into.shutdown().await
        });
        pg_restore.downstream = Some(Box::new(Downstream { psql, relay }));
        Ok(pg_restore)
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

    /// Waits for the exit; a failure carries stderr's last lines. With a relay, psql's
    /// failure is the one reported: it names the SQL that failed, and pg_restore's is then
    /// only the pipe psql closed.
    pub async fn finish(mut self, ctx: &StepContext) -> Result<(), StepError> {
        let downstream = self.downstream.take();
        let own = self.finish_own(ctx).await;
        let Some(downstream) = downstream else {
            return own;
        };
        let Downstream { mut psql, relay } = *downstream;
        if own
            .as_ref()
            .is_err_and(|e| e.kind == crate::exec::ErrorKind::Cancelled)
        {
            psql.stop(ctx).await;
            return own;
        }
        let relayed = relay.await;
        let theirs = Box::pin(psql.finish(ctx)).await;
        theirs?;
        own?;
        match relayed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StepError::permanent(format!(
                "passing pg_restore's script to psql failed: {e}"
            ))),
            Err(e) => Err(StepError::permanent(format!(
                "passing pg_restore's script to psql failed: {e}"
            ))),
        }
    }

    async fn finish_own(&mut self, ctx: &StepContext) -> Result<(), StepError> {
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
        if let Some(downstream) = self.downstream.as_mut() {
            Box::pin(downstream.psql.stop(ctx)).await;
            downstream.relay.abort();
        }
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
