//! Everything a running step may use: rendered targets and repositories, the event bus,
//! cancellation, identities.

use super::error::StepError;
use super::events::Events;
use crate::redact::Redactor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// The throwaway clusters of ephemeral targets, by target name: a point-in-time restore
    /// replaces one's contents with a recovered copy.
    pub ephemeral: BTreeMap<String, EphemeralDir>,
    /// Directories of PostgreSQL programs the plan names for this step (its target's
    /// `pg_bin_dir`, then the plan's), searched before `PATH`.
    pub pg_bin_dirs: Vec<PathBuf>,
    /// The step's target's data directory, when the plan names one (`data_directory`).
    pub data_directory: Option<PathBuf>,
}

/// Where an ephemeral target's throwaway cluster lives and how it runs.
#[derive(Debug, Clone)]
pub struct EphemeralDir {
    /// The cluster's private directory: the data directory is `data/` in it, and the
    /// server's Unix socket is here.
    pub dir: PathBuf,
    /// The directory of its server programs (`postgres`, `pg_ctl`).
    pub bin: PathBuf,
    pub major: u32,
    /// The port number its socket is named by.
    pub port: u16,
    /// The uid and gid the server runs as (when opsrunner runs as root).
    pub owner: Option<(u32, u32)>,
    /// The name of that user (the target's `run_as`), for another cluster of the target's.
    pub run_as: String,
    /// The server options it is started with (`pg_ctl -o`).
    pub options: String,
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
        Ok(crate::repo::open(repo, &self.base_dir).await?)
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
        crate::repo::crypto::Recipients::of(config, &self.base_dir)
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
