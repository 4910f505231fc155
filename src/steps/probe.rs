//! What a step type's preview probe may look at (`StepType::probe`): read-only look-ups
//! that make the preview say what *will* happen rather than what might — the migrations
//! a `migrate` would apply (over a read-only session), the backup `latest` stands for, the
//! exact SQL and files of a `reset`. Nothing a probe does writes anything.

use std::path::Path;

/// Where a step's target is, as far as a preview knows.
pub enum TargetView<'a> {
    /// A server to read from.
    Url(&'a str),
    /// An ephemeral cluster: it does not exist before `apply`, and starts empty.
    Ephemeral,
    /// Not applicable or unknown.
    None,
}

/// What a probe may look at: the plan's directory, where the step's target is, and its
/// repository (rendered) when it has one.
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub base_dir: &'a Path,
    pub target: &'a TargetView<'a>,
    pub repo: Option<&'a crate::plan::model::Repository>,
}

impl Probe<'_> {
    /// The step's repository opened for reading, when it can be.
    pub async fn open(&self) -> Option<crate::repo::AnyStore> {
        let repo = self.repo?;
        crate::repo::open(&repo.url, self.base_dir, &repo.s3_options())
            .await
            .ok()
    }
}
