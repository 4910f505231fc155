//! Step types. Each file implements one; this module dispatches on [`StepKind`]. What they
//! share with `pg/` and `run/` (the context a step runs in, how errors are classified) lives
//! below all three, in [`crate::exec`].

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
pub mod webhook;

use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use crate::plan::model::StepKind;
use std::future::Future;
use std::pin::Pin;

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
            StepKind::Webhook(p) => Box::pin(webhook::run(p, ctx)),
        }
    }
}

/// Values in a step's rendered parameters that are secrets whatever their name: a
/// webhook's URL and headers. Redacted everywhere before anything is shown.
pub fn secrets(kind: &StepKind) -> Vec<String> {
    match kind {
        StepKind::Webhook(p) => webhook::secrets(p),
        _ => Vec::new(),
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
        StepKind::Webhook(p) => webhook::describe(p),
    }
}

/// The one guard, asked by `apply` before the run, by each step as it starts (on its
/// rendered parameters) and by the preview: the protected target the step may destroy
/// data on without `--confirm` for it. `read_files: false` (an untrusted preview reads no
/// file) counts SQL from a file as destructive.
pub fn unconfirmed<'a>(
    kind: &'a StepKind,
    targets: &std::collections::BTreeMap<String, crate::plan::model::Target>,
    base_dir: &std::path::Path,
    confirmed: &[String],
    read_files: bool,
) -> Option<&'a str> {
    let target = kind.target()?;
    let protected = targets.get(target).is_some_and(|t| t.protected);
    (protected
        && destructive_reading(kind, base_dir, read_files)
        && !confirmed.iter().any(|c| c == target))
    .then_some(target)
}

/// [`destructive`], where a file that may not be read counts as destructive.
pub fn destructive_reading(kind: &StepKind, base_dir: &std::path::Path, read_files: bool) -> bool {
    match kind {
        StepKind::Sql(p) if !read_files && p.file.is_some() => true,
        _ => destructive(kind, base_dir),
    }
}

/// Whether a step may destroy data. Destructive steps are marked in previews and need
/// `--confirm TARGET` on protected targets.
pub fn destructive(kind: &StepKind, base_dir: &std::path::Path) -> bool {
    match kind {
        StepKind::Shell(_)
        | StepKind::WaitReady(_)
        | StepKind::Backup(_)
        | StepKind::Verify(_)
        | StepKind::Webhook(_) => false,
        StepKind::Restore(p) => p.overwrite,
        StepKind::Reset(_) | StepKind::Prune(_) => true,
        // Migrations and seeds change a database, but that is what they are for; a revert
        // may drop data.
        StepKind::Migrate(p) => p.action == crate::plan::model::MigrateAction::Revert,
        StepKind::Seed(_) => false,
        StepKind::Sql(p) => p.writes || sql::destructive(p, base_dir),
    }
}
