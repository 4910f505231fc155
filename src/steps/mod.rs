//! Step types. Each file implements one [`step_type::StepType`]; [`registry::TYPES`] lists
//! them. What they share with `pg/` and `run/` (the context a step runs in, how errors are
//! classified) lives below all three, in [`crate::exec`].

pub mod backup;
pub mod base_backup;
pub mod base_files;
pub mod base_parts;
pub mod copy;
pub mod export;
pub mod import;
pub mod migrate;
pub mod pitr;
pub mod pitr_directory;
pub mod pitr_mark;
pub mod pitr_verify;
pub mod probe;
pub mod prune;
pub mod registry;
pub mod reset;
pub mod restore;
pub mod seed;
pub mod shell;
pub mod sql;
pub mod step_type;
pub mod verify;
pub mod wait_ready;
pub mod wal_status;
pub mod webhook;

use crate::exec::StepContext;
use crate::plan::step_params::StepKind;
pub use registry::StepFuture;

/// Runs rendered steps. The executor is generic over this so that benchmarks can measure
/// its own overhead with steps that do nothing.
pub trait StepRunner: Send + Sync + 'static {
    fn run<'a>(&'a self, kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a>;
}

/// The real step implementations.
pub struct Builtin;

impl StepRunner for Builtin {
    fn run<'a>(&'a self, kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a> {
        registry::run_step(kind, ctx)
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
    (protected && kind.destructive(base_dir, read_files) && !confirmed.iter().any(|c| c == target))
        .then_some(target)
}
