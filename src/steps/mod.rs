//! Step types. Each file implements one; this module dispatches on [`StepKind`] and holds
//! what they share: the context a step runs in and how errors are classified.

pub mod backup;
pub mod migrate;
pub mod preview_reads;
pub mod prune;
pub mod reset;
pub mod restore;
pub mod seed;
pub mod shell;
pub mod sql;
pub mod verify;
pub mod wait_ready;

use crate::plan::model::StepKind;
use crate::redact::Redactor;
use crate::run::events::{Events, Outputs};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Might pass on another try: a dropped connection, a busy server, a non-zero exit.
    Transient,
    /// Will fail the same way again: bad SQL, a missing file, a command that does not exist.
    Permanent,
    /// Stopped by a timeout or Ctrl-C.
    Cancelled,
    /// A safety rule stopped the step before it changed anything (exit code 3).
    Refused,
}

#[derive(Debug, Clone)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StepError {
    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
    pub fn cancelled() -> Self {
        StepError {
            kind: ErrorKind::Cancelled,
            message: "cancelled".into(),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A repository I/O error as a step error: missing permissions, missing objects and
/// corrupt data will not change on a retry; anything else (the network) may.
pub fn io_error(context: &str, e: &std::io::Error) -> StepError {
    use std::io::ErrorKind::*;
    match e.kind() {
        PermissionDenied | NotFound | InvalidData | InvalidInput => {
            StepError::permanent(format!("{context}: {e}"))
        }
        _ => StepError::transient(format!("{context}: {e}")),
    }
}

/// Everything a running step may use.
#[derive(Clone)]
pub struct StepContext {
    pub step_id: String,
    /// Relative paths in parameters are resolved against the plan file's directory.
    pub base_dir: PathBuf,
    /// Rendered connection URLs of the targets, by name.
    pub targets: BTreeMap<String, String>,
    /// The repositories the step uses, by name, URLs rendered.
    pub repositories: BTreeMap<String, crate::plan::model::Repository>,
    pub events: Events,
    /// Cancelled when the attempt times out or the run is interrupted; steps stop their
    /// work and child processes when it fires.
    pub cancel: CancellationToken,
    /// How long child processes get between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The step's `timeout`, for steps whose work is waiting.
    pub timeout: Option<Duration>,
    /// The run's id, for records the step leaves behind.
    pub run_id: String,
    /// age identities for reading encrypted backups (`--identity`).
    pub identities: Option<crate::repo::crypto::Identities>,
    /// Targets declared `protected`: SQL runs read-only there unless the step writes.
    pub protected: std::collections::BTreeSet<String>,
}

impl StepContext {
    pub fn redactor(&self) -> &Redactor {
        self.events.redactor()
    }

    pub fn target_url(&self, name: &str) -> Result<&str, StepError> {
        self.targets
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| StepError::permanent(format!("target `{name}` is not available")))
    }

    pub async fn repository(&self, name: &str) -> Result<crate::repo::AnyStore, StepError> {
        let repo = self
            .repositories
            .get(name)
            .ok_or_else(|| StepError::permanent(format!("repository `{name}` is not available")))?;
        crate::repo::open(&repo.url, &self.base_dir, &repo.s3_options())
            .await
            .map_err(StepError::permanent)
    }

    /// The recipients backups to repository `name` are encrypted to; `None` when the
    /// repository does not encrypt.
    pub fn recipients(
        &self,
        name: &str,
    ) -> Result<Option<crate::repo::crypto::Recipients>, StepError> {
        let Some(config) = self
            .repositories
            .get(name)
            .and_then(|r| r.encryption.as_ref())
        else {
            return Ok(None);
        };
        config
            .recipients(&self.base_dir)
            .map(Some)
            .map_err(|e| StepError::permanent(format!("repository `{name}`: {e}")))
    }

    /// Unseals an encrypted backup's manifest, or says clearly why it cannot be read.
    pub fn unseal(&self, manifest: &mut crate::repo::manifest::Manifest) -> Result<(), StepError> {
        if manifest.encryption.is_none() {
            return Ok(());
        }
        let identities = self.identities.as_ref().ok_or_else(|| {
            StepError::permanent(crate::repo::pipeline::needs_identity(manifest).to_string())
        })?;
        manifest
            .unseal(identities)
            .map_err(|e| StepError::permanent(e.to_string()))
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Outputs, StepError>> + Send + 'a>>;

/// Runs rendered steps. The executor is generic over this so that benchmarks can measure
/// its own overhead with steps that do nothing.
pub trait StepRunner: Send + Sync + 'static {
    fn run<'a>(&'a self, kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a>;
}

/// The real step implementations.
pub struct Builtin;

impl StepRunner for Builtin {
    fn run<'a>(&'a self, kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a> {
        match kind {
            StepKind::Shell(p) => Box::pin(shell::run(p, ctx)),
            StepKind::Sql(p) => Box::pin(sql::run(p, ctx)),
            StepKind::WaitReady(p) => Box::pin(wait_ready::run(p, ctx)),
            StepKind::Backup(p) => Box::pin(backup::run(p, ctx)),
            StepKind::Restore(p) => Box::pin(restore::run(p, ctx)),
            StepKind::Verify(p) => Box::pin(verify::run(p, ctx)),
            StepKind::Migrate(p) => Box::pin(migrate::run(p, ctx)),
            StepKind::Seed(p) => Box::pin(seed::run(p, ctx)),
            StepKind::Reset(p) => Box::pin(reset::run(p, ctx)),
            StepKind::Prune(p) => Box::pin(prune::run(p, ctx)),
        }
    }
}

/// What a step will do, in one line, for previews.
pub fn describe(kind: &StepKind) -> String {
    match kind {
        StepKind::Shell(p) => shell::describe(p),
        StepKind::Sql(p) => sql::describe(p),
        StepKind::WaitReady(p) => wait_ready::describe(p),
        StepKind::Backup(p) => backup::describe(p),
        StepKind::Restore(p) => restore::describe(p),
        StepKind::Verify(p) => verify::describe(p),
        StepKind::Migrate(p) => migrate::describe(p),
        StepKind::Seed(p) => seed::describe(p),
        StepKind::Reset(p) => reset::describe(p),
        StepKind::Prune(p) => prune::describe(p),
    }
}

/// Whether a step may destroy data. Destructive steps are marked in previews and need
/// `--confirm TARGET` on protected targets.
pub fn destructive(kind: &StepKind, base_dir: &std::path::Path) -> bool {
    match kind {
        StepKind::Shell(_) | StepKind::WaitReady(_) | StepKind::Backup(_) | StepKind::Verify(_) => {
            false
        }
        StepKind::Restore(p) => p.overwrite,
        StepKind::Reset(_) | StepKind::Prune(_) => true,
        // Migrations and seeds change a database, but that is what they are for; a revert
        // may drop data.
        StepKind::Migrate(p) => p.action == crate::plan::model::MigrateAction::Revert,
        StepKind::Seed(_) => false,
        StepKind::Sql(p) => p.writes || sql::destructive(p, base_dir),
    }
}
