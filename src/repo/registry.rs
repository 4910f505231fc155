//! Every repository backend, by URL scheme: the one place that knows which schemes exist.
//! A backend is one file (`local.rs`, `s3.rs`, …) that exports a [`Backend`] (its scheme,
//! how to open it, what is wrong with a URL, what the preview says), and one line
//! in [`BACKENDS`]. Opening, checking a URL in a plan, and describing where a backup goes
//! all ask here.

use super::any::AnyStore;
use super::store::{Backend, OpenError};
use crate::plan::model::Repository;
use std::path::Path;

/// The backends, one line each.
pub const BACKENDS: &[Backend] = &[
    super::local::BACKEND,
    #[cfg(feature = "s3")]
    super::s3::BACKEND,
    super::azure::BACKEND,
];

/// The backend of a URL, by its scheme.
pub fn backend(url: &str) -> Option<&'static Backend> {
    let (scheme, _) = url.split_once("://")?;
    BACKENDS.iter().find(|b| b.scheme == scheme)
}

/// Why a repository URL cannot be used, or `None`: an unknown scheme, or what its backend
/// finds wrong with it.
pub fn url_problem(url: &str) -> Option<UrlProblem> {
    match backend(url) {
        None => Some(UrlProblem::Unsupported(supported())),
        Some(b) => (b.url_problem)(url).map(|problem| match problem {
            super::store::UrlProblem::Credentials(text) => UrlProblem::Credentials(text),
            super::store::UrlProblem::Invalid(text) => UrlProblem::Invalid(text),
        }),
    }
}

/// What [`url_problem`] found.
pub enum UrlProblem {
    /// No backend has the URL's scheme; what to use instead.
    Unsupported(String),
    /// Credentials in the URL, in the backend's words (never echoing the URL).
    Credentials(String),
    /// A malformed URL, in the backend's words.
    Invalid(String),
}

/// "`file://path/to/dir` or `s3://bucket/prefix`".
pub fn supported() -> String {
    let examples: Vec<String> = BACKENDS
        .iter()
        .map(|b| format!("`{}`", b.example))
        .collect();
    match examples.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Opens the repository a plan defines.
pub async fn open(definition: &Repository, base_dir: &Path) -> Result<AnyStore, OpenError> {
    match backend(&definition.url) {
        Some(b) => Ok(AnyStore::shared((b.open)(definition, base_dir).await?)),
        None => Err(OpenError::UnsupportedUrl {
            url: definition.url.clone(),
            supported: supported(),
        }),
    }
}

/// The local directory of a `file://` repository as written (relative paths stay
/// relative), for what must know it: the generated units' writable paths.
pub fn local_path(url: &str) -> Option<&str> {
    url.strip_prefix("file://")
}

/// How a backup is written to `definition`'s repository, for the preview.
pub fn describe(definition: &Repository) -> Vec<String> {
    backend(&definition.url).map_or_else(Vec::new, |b| (b.describe)(definition))
}
