//! The one trait a step type implements. Everything that differs between step types —
//! parameters, outputs, target and repository, checks, whether it destroys data, its
//! preview text and read-only probes, how it runs — is a method or constant of
//! [`StepType`]; `registry.rs` lists the types.

use super::probe::{Findings, Probe};
use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use crate::plan::step_params::{CheckScope, Problem};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Outputs, StepError>> + Send + 'a>>;
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Findings> + Send + 'a>>;

/// One step type. Only `NAME`, `Params`, `OUTPUTS`, `describe` and `run` are required;
/// the rest defaults to "does not apply".
pub trait StepType: Send + Sync + 'static {
    /// The `type:` that selects it in a plan.
    const NAME: &'static str;
    /// Its parameters: the keys a step of this type takes besides the common ones.
    type Params: DeserializeOwned + Serialize + JsonSchema + Clone + fmt::Debug + Send + Sync;
    /// The outputs it sets (`{{ steps.ID.outputs.NAME }}`).
    const OUTPUTS: &'static [&'static str];
    /// Where in the parameters the target is named.
    const TARGET_PATH: &'static [&'static str] = &["target"];
    /// Fields rendered with shell quoting (a `shell` command line).
    const SHELL_QUOTED: &'static [&'static str] = &[];

    fn target(_: &Self::Params) -> Option<&str> {
        None
    }
    fn repository(_: &Self::Params) -> Option<&str> {
        None
    }
    /// Where in the parameters the repository is named.
    const REPOSITORY_PATH: &'static [&'static str] = &["repository"];
    /// A second repository the step only reads (a copy's source): bound, rendered, checked
    /// and probed like the repository, never locked.
    fn source_repository(_: &Self::Params) -> Option<&str> {
        None
    }
    /// Where in the parameters the source repository is named.
    const SOURCE_PATH: &'static [&'static str] = &["from"];
    /// Whether the step writes to its target or repository (see
    /// [`crate::plan::step_params::StepParams::writes_target`]); a run locks what it writes to.
    fn writes_target(_: &Self::Params) -> bool {
        false
    }
    fn writes_repository(_: &Self::Params) -> bool {
        false
    }
    fn jobs(_: &Self::Params) -> Option<u32> {
        None
    }
    /// Rules beyond what the parameter type enforces.
    fn check(_: &Self::Params, _: &CheckScope<'_>) -> Vec<Problem> {
        Vec::new()
    }
    /// Whether the step may destroy data (see [`crate::plan::step_params::StepParams::destructive`]).
    fn destructive(_: &Self::Params, _base_dir: &Path, _read_files: bool) -> bool {
        false
    }
    fn secrets(_: &Self::Params) -> Vec<String> {
        Vec::new()
    }
    /// What the step will do, in one line.
    fn describe(p: &Self::Params) -> String;
    /// What the preview's probe would read, for `plan --untrusted` (which reads nothing)
    /// and probes that time out; `None` when it reads nothing.
    fn reads(_: &Self::Params) -> Option<&'static str> {
        None
    }
    /// Read-only look-ups that make the preview say what *will* happen (which backup
    /// `latest` is, which migrations are pending). Never writes anything.
    fn probe<'a>(_: &'a Self::Params, _: Probe<'a>) -> impl Future<Output = Findings> + Send {
        async { Findings::default() }
    }
    fn run(
        p: &Self::Params,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send;
}
