//! The repository record, `opsrunner-repository.json` at a repository's root: what makes a
//! location a repository. `opsrunner repo init` writes it; a backup, `wal push` or prune
//! into a location without one fails instead of starting a new, empty repository where a
//! mistyped path or bucket pointed. It holds the format version, when and by what it was
//! made, and — when the repository is encrypted — the fingerprints of the recipients, so
//! that a plan encrypting to others (or not at all) is refused before anything is written.
//!
//! A repository made before records existed is adopted: the first write of this version
//! into a location that already holds backups or WAL writes its record and says so.

use super::any::AnyStore;
use super::store::Condition;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use super::store::RECORD_KEY;

/// The record format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The most a record may hold.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub created_at: DateTime<Utc>,
    /// `opsrunner 0.1.0`.
    pub created_by: String,
    /// Made for a location that already held backups (before records existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// `None`: backups are not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<RecordEncryption>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEncryption {
    /// `sha256:` and the first 16 hex digits of the SHA-256 of each recipient (`age1…`),
    /// sorted.
    pub recipients: Vec<String>,
}

/// A recipient's fingerprint, as the record holds it.
pub fn fingerprint(recipient: &str) -> String {
    let digest = Sha256::digest(recipient.trim().as_bytes());
    format!("sha256:{}", &crate::digest::hex(&digest)[..16])
}

impl Record {
    fn new(recipients: Option<&[String]>, adopted: bool) -> Record {
        Record {
            format: FORMAT,
            created_at: Utc::now(),
            created_by: format!("opsrunner {}", env!("CARGO_PKG_VERSION")),
            adopted,
            encryption: recipients.map(|r| RecordEncryption {
                recipients: fingerprints(r),
            }),
        }
    }

    /// `not encrypted`, `encrypted to 2 recipients (sha256:…, sha256:…)`.
    pub fn describe_encryption(&self) -> String {
        describe(self.encryption.as_ref().map(|e| e.recipients.as_slice()))
    }
}

fn fingerprints(recipients: &[String]) -> Vec<String> {
    let mut out: Vec<String> = recipients.iter().map(|r| fingerprint(r)).collect();
    out.sort();
    out.dedup();
    out
}

fn describe(fingerprints: Option<&[String]>) -> String {
    match fingerprints {
        None => "not encrypted".into(),
        Some(f) => format!(
            "encrypted to {} recipient{} ({})",
            f.len(),
            if f.len() == 1 { "" } else { "s" },
            f.join(", ")
        ),
    }
}

/// What [`require`] and [`init`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The record was there and agrees.
    Present(Record),
    /// There was none, but backups or WAL were: a record was written for them.
    Adopted(Record),
    /// There was none and nothing else: a record was written (`repo init`, `create: true`).
    Created(Record),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "{location} is not an opsrunner repository (it holds no {RECORD_KEY}), so nothing was written there. If this is the right place, create the repository once with `opsrunner repo init {location}` (with --plan FILE for a repository a plan names, to record its encryption); if not, check the URL: a mistyped path or bucket would otherwise become a new, empty repository"
    )]
    Missing { location: String },
    #[error(
        "repository {location} was created {recorded}, but the plan's repository is {planned}; nothing was written. If the change is intended (a new key), record it with `opsrunner repo init {location} --plan FILE --force`; backups made before stay readable with their own keys"
    )]
    Mismatch {
        location: String,
        recorded: String,
        planned: String,
    },
    #[error("{location}: the repository record {RECORD_KEY} cannot be read: {reason}")]
    Damaged { location: String, reason: String },
    #[error("{location}: {error}")]
    Io {
        location: String,
        error: std::io::Error,
    },
}

impl RecordError {
    /// Only trouble reaching the store may pass on a retry.
    pub fn is_transient(&self) -> bool {
        matches!(self, RecordError::Io { .. })
    }
}

/// The record of `store`, if it has one.
pub async fn read(store: &AnyStore) -> Result<Option<Record>, RecordError> {
    let location = store.location();
    let small = store
        .objects()
        .read_small(RECORD_KEY, MAX_RECORD_BYTES)
        .await
        .map_err(|error| RecordError::Io {
            location: location.clone(),
            error,
        })?;
    let Some(small) = small else {
        return Ok(None);
    };
    let damaged = |reason: String| RecordError::Damaged {
        location: location.clone(),
        reason,
    };
    let bytes = small
        .bytes
        .ok_or_else(|| damaged(format!("larger than {MAX_RECORD_BYTES} bytes")))?;
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not a record: {e}")))?;
    if record.format > FORMAT {
        return Err(damaged(format!(
            "format {} is newer than this opsrunner understands ({FORMAT}); upgrade opsrunner",
            record.format
        )));
    }
    Ok(Some(record))
}

/// Before writing into `store` (a backup, WAL, a prune): its record must be there and
/// agree with `recipients` (the plan's, `None` when it does not encrypt). Without one, a
/// location that already holds backups or WAL is adopted, and an empty one is created
/// only when `create` (the plan's `create: true`) says so.
pub async fn require(
    store: &AnyStore,
    recipients: Option<&[String]>,
    create: bool,
) -> Result<Checked, RecordError> {
    match read(store).await? {
        Some(record) => {
            agrees(store, &record, recipients)?;
            Ok(Checked::Present(record))
        }
        None if holds_anything(store).await? => write(store, recipients, true).await,
        None if create => write(store, recipients, false).await,
        None => Err(RecordError::Missing {
            location: store.location(),
        }),
    }
}

/// Before deleting from `store` without a plan's view of its encryption (`backups
/// prune`): it must be a repository (or one to adopt); what it encrypts to is not asked.
pub async fn require_repository(store: &AnyStore) -> Result<Checked, RecordError> {
    match read(store).await? {
        Some(record) => Ok(Checked::Present(record)),
        // Adopted as it is: what it was encrypted to is the next plan's to record.
        None => require(store, None, false).await,
    }
}

/// [`require`] for a repository as a plan (or the command line) defines it: its
/// encryption's recipients, its `create`.
pub async fn require_for(
    store: &AnyStore,
    definition: &crate::plan::model::Repository,
    base_dir: &std::path::Path,
) -> Result<Checked, RecordError> {
    let recipients = recipients_of(store, definition, base_dir)?;
    require(store, recipients.as_deref(), definition.create).await
}

/// The recipients `definition` encrypts to, as text; `None` when it does not encrypt.
pub fn recipients_of(
    store: &AnyStore,
    definition: &crate::plan::model::Repository,
    base_dir: &std::path::Path,
) -> Result<Option<Vec<String>>, RecordError> {
    definition
        .encryption
        .as_ref()
        .map(|e| super::crypto::Recipients::of(e, base_dir).map(|r| r.texts()))
        .transpose()
        .map_err(|reason| RecordError::Damaged {
            location: store.location(),
            reason: format!("the plan's encryption: {reason}"),
        })
}

/// What a write into `store` will meet, for a preview (which reads and writes nothing
/// else): `None` when its record is there and agrees; else what the run will do or why it
/// will refuse. Trouble reading the store is the preview's to report elsewhere.
pub async fn assess(
    store: &AnyStore,
    definition: &crate::plan::model::Repository,
    base_dir: &std::path::Path,
) -> Option<String> {
    let recipients = recipients_of(store, definition, base_dir).ok()?;
    match read(store).await {
        Ok(Some(record)) => agrees(store, &record, recipients.as_deref())
            .err()
            .map(|e| format!("apply will refuse to write: {e}")),
        Ok(None) => match holds_anything(store).await {
            Ok(true) => Some(format!(
                "{} holds backups but no repository record yet: the run adopts it and writes {RECORD_KEY}",
                store.location()
            )),
            Ok(false) if definition.create => Some(format!(
                "{} is not a repository yet: the run creates it (`create: true`)",
                store.location()
            )),
            Ok(false) => Some(format!(
                "apply will refuse to write: {}",
                RecordError::Missing {
                    location: store.location()
                }
            )),
            Err(_) => None,
        },
        Err(e @ RecordError::Damaged { .. }) => Some(format!("apply will refuse to write: {e}")),
        Err(_) => None,
    }
}

/// What a run says when it adopted a repository or created one (`create: true`).
pub fn said(checked: &Checked, location: &str) -> Option<String> {
    match checked {
        Checked::Present(_) => None,
        Checked::Adopted(_) => Some(format!(
            "{location} held backups but no repository record (made before opsrunner kept one): adopted it, and wrote {RECORD_KEY}"
        )),
        Checked::Created(r) => Some(format!(
            "created repository {location} ({}), as the plan's `create: true` allows",
            r.describe_encryption()
        )),
    }
}

/// `opsrunner repo init`: writes the record (adopting what the location holds), or finds
/// one that agrees; `force` replaces one that does not.
pub async fn init(
    store: &AnyStore,
    recipients: Option<&[String]>,
    force: bool,
) -> Result<Checked, RecordError> {
    match read(store).await? {
        Some(record) => match agrees(store, &record, recipients) {
            Ok(()) => Ok(Checked::Present(record)),
            Err(_) if force => {
                let mut new = Record::new(recipients, record.adopted);
                new.created_at = record.created_at;
                put(store, &new, Condition::Always).await?;
                Ok(Checked::Created(new))
            }
            Err(e) => Err(e),
        },
        None => {
            let adopt = holds_anything(store).await?;
            write(store, recipients, adopt).await
        }
    }
}

fn agrees(
    store: &AnyStore,
    record: &Record,
    recipients: Option<&[String]>,
) -> Result<(), RecordError> {
    let planned = recipients.map(fingerprints);
    let recorded = record.encryption.as_ref().map(|e| e.recipients.clone());
    if planned == recorded {
        return Ok(());
    }
    Err(RecordError::Mismatch {
        location: store.location(),
        recorded: describe(recorded.as_deref()),
        planned: describe(planned.as_deref()),
    })
}

/// Whether the location holds anything of a repository's besides a lock or lease.
async fn holds_anything(store: &AnyStore) -> Result<bool, RecordError> {
    let listed = match store.objects().list("").await {
        Ok(listed) => listed,
        // A local directory that is not there holds nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => {
            return Err(RecordError::Io {
                location: store.location(),
                error,
            });
        }
    };
    Ok(listed
        .iter()
        .any(|l| l.key != super::lease::LEASE_NAME && l.key != super::lease::LOCAL_LOCK_NAME))
}

async fn write(
    store: &AnyStore,
    recipients: Option<&[String]>,
    adopted: bool,
) -> Result<Checked, RecordError> {
    let record = Record::new(recipients, adopted);
    if !put(store, &record, Condition::Absent).await? {
        // Another run wrote one meanwhile: that one stands, if it agrees.
        let Some(theirs) = read(store).await? else {
            return Err(RecordError::Damaged {
                location: store.location(),
                reason: "it was written and is gone again".into(),
            });
        };
        agrees(store, &theirs, recipients)?;
        return Ok(Checked::Present(theirs));
    }
    Ok(if adopted {
        Checked::Adopted(record)
    } else {
        Checked::Created(record)
    })
}

async fn put(
    store: &AnyStore,
    record: &Record,
    condition: Condition<'_>,
) -> Result<bool, RecordError> {
    let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
    store
        .objects()
        .put(RECORD_KEY, bytes, condition)
        .await
        .map(|tag| tag.is_some())
        .map_err(|error| RecordError::Io {
            location: store.location(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> AnyStore {
        let name = format!("record-{}", fastrand::u64(..));
        AnyStore::new(crate::repo::memory::MemoryStore::named(&name))
    }

    #[tokio::test]
    async fn an_empty_location_is_refused_unless_created_and_then_remembered() {
        let store = memory();
        let Err(RecordError::Missing { .. }) = require(&store, None, false).await else {
            panic!("an empty location is no repository");
        };
        assert!(store.objects().list("").await.unwrap().is_empty());
        let Checked::Created(_) = init(&store, None, false).await.unwrap() else {
            panic!("init creates");
        };
        let Checked::Present(_) = require(&store, None, false).await.unwrap() else {
            panic!("then it is a repository");
        };
    }

    #[tokio::test]
    async fn encryption_that_disagrees_with_the_record_is_refused() {
        let store = memory();
        let keys = vec!["age1qqq".to_string()];
        init(&store, Some(&keys), false).await.unwrap();
        let Err(e @ RecordError::Mismatch { .. }) = require(&store, None, false).await else {
            panic!("an unencrypted plan into an encrypted repository is refused");
        };
        assert!(e.to_string().contains("encrypted to 1 recipient"), "{e}");
        assert!(e.to_string().contains("not encrypted"), "{e}");
        let other = vec!["age1zzz".to_string()];
        assert!(require(&store, Some(&other), false).await.is_err());
        assert!(init(&store, Some(&other), false).await.is_err());
        init(&store, Some(&other), true).await.unwrap();
        require(&store, Some(&other), false).await.unwrap();
    }

    #[tokio::test]
    async fn a_location_with_backups_is_adopted() {
        let store = memory();
        store
            .objects()
            .put(
                "20261207T000000Z-app-0001/manifest.json",
                b"{}".to_vec(),
                Condition::Always,
            )
            .await
            .unwrap();
        let Checked::Adopted(record) = require(&store, None, false).await.unwrap() else {
            panic!("adopted");
        };
        assert!(record.adopted);
        let Checked::Present(_) = require(&store, None, false).await.unwrap() else {
            panic!("adopted once");
        };
    }
}
