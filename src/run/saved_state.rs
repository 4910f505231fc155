//! What a saved plan records of the world it was made in (see `run::saved`): each
//! target's identity, each repository's newest backup, and the types of the record. Read
//! by the preview when it makes a saved plan, and again by `apply` before it runs one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The saved-plan format this build reads and writes.
pub const FORMAT: u32 = 1;
/// The key of a saved plan's own hash.
pub const SEAL_KEY: &str = "saved_plan_sha256";

/// How long reading one target's identity or one repository's newest backup may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the preview was made from, as far as apply can check it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SavedState {
    /// The plan file's absolute path when it was saved.
    pub plan_file: PathBuf,
    /// The `--var` values the plan was previewed with; apply uses exactly these.
    pub vars: BTreeMap<String, String>,
    /// Each step as it will run (id and the SHA-256 of its resolved parameters, condition,
    /// target and repository), in execution order.
    pub steps: Vec<StepDigest>,
    /// The backups each prune would delete, as read when the plan was saved.
    pub deletes: BTreeMap<String, Vec<String>>,
    pub targets: BTreeMap<String, TargetState>,
    pub repositories: BTreeMap<String, RepositoryState>,
}

/// One step as it will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepDigest {
    pub id: String,
    /// SHA-256 of what decides what the step does (see [`step_digests`]).
    pub sha256: String,
}

/// Which server and database a target is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TargetState {
    /// A throwaway cluster created by the run: nothing to compare.
    Ephemeral,
    Server {
        /// `pg_control_system()`: a cluster created again (or another one behind the same
        /// host name) has another one. `None` when the role may not read it.
        system_identifier: Option<String>,
        database: String,
        /// False when the database does not exist yet (a `reset` would create it).
        database_exists: bool,
        server_version_num: i64,
    },
    /// It could not be read: a plan saved like this cannot be checked, so it is not applied.
    Unread { error: String },
}

/// What a repository held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RepositoryState {
    /// No backup at all: said explicitly, so that one appearing later makes the plan stale.
    Empty,
    Holds {
        /// The newest readable backup and the SHA-256 of its manifest file.
        newest: Option<NewestBackup>,
        /// How many entries (readable or damaged) it held.
        backups: usize,
    },
    Unread {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NewestBackup {
    pub id: String,
    pub manifest_sha256: String,
}

/// Reads a target's identity over a read-only look-up; `url` as the run will use it.
pub async fn target_state(url: &str) -> TargetState {
    match tokio::time::timeout(READ_TIMEOUT, read_target(url)).await {
        Ok(Ok(state)) => state,
        Ok(Err(error)) => TargetState::Unread { error },
        Err(_) => TargetState::Unread {
            error: format!("no answer within {}s", READ_TIMEOUT.as_secs()),
        },
    }
}

async fn read_target(url: &str) -> Result<TargetState, String> {
    let info = crate::pg::conn::ConnInfo::parse(url).map_err(|e| e.to_string())?;
    let (mut conn, database_exists) = match info.connect().await {
        Ok(conn) => (conn, true),
        // The database a `reset` is to create: the server is still identified.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
            let maintenance = info.with_database("postgres");
            let conn = maintenance.connect().await.map_err(|e| e.to_string())?;
            (conn, false)
        }
        Err(e) => return Err(e.to_string()),
    };
    let (database, version): (String, String) =
        sqlx::query_as("select current_database()::text, current_setting('server_version_num')")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    let database = if database_exists {
        database
    } else {
        info.database().unwrap_or(database)
    };
    // Not every role may call pg_control_system(); the other fields still identify a lot.
    let system_identifier: Option<String> =
        sqlx::query_scalar("select system_identifier::text from pg_control_system()")
            .fetch_one(&mut conn)
            .await
            .ok();
    Ok(TargetState::Server {
        system_identifier,
        database,
        database_exists,
        server_version_num: version.parse().unwrap_or_default(),
    })
}

/// What a repository holds now.
pub async fn repository_state(
    repo: &crate::plan::model::Repository,
    base_dir: &Path,
) -> RepositoryState {
    let read = async {
        let store = crate::repo::open(repo, base_dir)
            .await
            .map_err(|e| e.to_string())?;
        let listed = crate::repo::listing::list(&store)
            .await
            .map_err(|e| e.to_string())?;
        if listed.is_empty() {
            return Ok(RepositoryState::Empty);
        }
        let newest = listed
            .iter()
            .rev()
            .find_map(|l| l.backup.as_ref().ok())
            .map(|c| NewestBackup {
                id: c.manifest.backup_id.clone(),
                manifest_sha256: c.sha256.clone(),
            });
        Ok(RepositoryState::Holds {
            newest,
            backups: listed.len(),
        })
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(state)) => state,
        Ok(Err(error)) => RepositoryState::Unread { error },
        Err(_) => RepositoryState::Unread {
            error: format!("no answer within {}s", READ_TIMEOUT.as_secs()),
        },
    }
}

/// The hash over a saved plan's JSON without its seal, in serde_json's canonical form of
/// the parsed value (the same whether it was just serialized or read back from the file).
pub fn seal(value: &Value) -> String {
    sha256(&value.to_string())
}

pub fn sha256(text: &str) -> String {
    crate::digest::hex(&Sha256::digest(text.as_bytes()))
}
