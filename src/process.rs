//! Child processes in their own process group, so that a timeout or Ctrl-C can stop the
//! whole tree a step started (`sh -c "pg_dump | zstd"` is three processes, not one).

use std::io;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct ProcessGroup {
    child: Child,
    pgid: i32,
    /// Set once the group has been killed and reaped; from then on the id may be reused by
    /// the system and must not be signalled again.
    done: bool,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> io::Result<ProcessGroup> {
        command.process_group(0).kill_on_drop(true);
        let child = command.spawn()?;
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        Ok(ProcessGroup {
            child,
            pgid,
            done: false,
        })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn id(&self) -> i32 {
        self.pgid
    }

    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    fn signal(&self, signal: i32) {
        if self.pgid > 0 && !self.done {
            // SAFETY: killpg has no memory-safety preconditions; a stale group id at worst
            // fails with ESRCH.
            unsafe {
                libc::killpg(self.pgid, signal);
            }
        }
    }

    /// Kills what is left of the group after its leader exited: a step's background
    /// children must not outlive the step.
    pub fn kill_leftovers(&mut self) {
        self.signal(libc::SIGKILL);
        self.done = true;
    }

    /// Asks the whole group to stop (SIGTERM), waits up to `grace`, then kills it (SIGKILL).
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                pgid = self.pgid,
                "process group ignored SIGTERM; sending SIGKILL"
            );
        }
        // Even when the leader exited, members that ignore SIGTERM may still run.
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().await;
        self.done = true;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The last line of defence when a future is dropped mid-flight.
        self.signal(libc::SIGKILL);
    }
}
