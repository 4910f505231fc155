//! The manifest: what a backup holds and how to check it. It is written last; a backup
//! without one does not exist for listing, restoring or pruning.

use super::compression::Compression;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST_VERSION: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Manifest {
    pub manifest_version: u32,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The database that was dumped.
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub format: DumpFormat,
    pub compression: Compression,
    pub options: DumpOptions,
    /// Every file of the backup, as stored (after compression).
    pub files: Vec<FileEntry>,
    pub fingerprint: FingerprintMode,
    /// Per table (`"schema"."table"`), taken in the same snapshot as the dump.
    pub fingerprints: BTreeMap<String, TableFingerprint>,
    pub opsrunner_version: String,
    /// Set when the files are encrypted with age (client-side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Encrypted backups: the parts of the manifest that describe the data (table names,
    /// row counts and hashes, table filters), age-encrypted to the same recipients and
    /// ASCII-armored. `fingerprints` and the table filters are empty until unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Encryption {
    /// Always `age`.
    pub scheme: String,
    /// The public keys the files are encrypted to; one of their identities decrypts them.
    pub recipients: Vec<String>,
}

/// What [`Manifest::sealed`] holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SealedPart {
    tables: Vec<String>,
    exclude_tables: Vec<String>,
    fingerprints: BTreeMap<String, TableFingerprint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the backup, `/`-separated.
    pub name: String,
    /// Bytes as stored.
    pub size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
pub struct DumpOptions {
    #[serde(default)]
    pub schema_only: bool,
    #[serde(default)]
    pub data_only: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DumpFormat {
    /// pg_dump's custom archive: one file, restorable selectively and in parallel.
    #[default]
    Custom,
    /// One file per table, dumped in parallel with `jobs`.
    Directory,
    /// A SQL script, restored with psql.
    Plain,
}

impl DumpFormat {
    pub fn pg_dump_flag(self) -> &'static str {
        match self {
            DumpFormat::Custom => "--format=custom",
            DumpFormat::Directory => "--format=directory",
            DumpFormat::Plain => "--format=plain",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FingerprintMode {
    None,
    /// Row count per table.
    #[default]
    Counts,
    /// Row count and an order-independent hash of every row.
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct TableFingerprint {
    pub rows: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The outcome of the last `verify` of a backup, stored next to it as `verification.json`
/// (the manifest itself never changes after publication).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Verification {
    pub verified_at: DateTime<Utc>,
    /// Every check that ran passed.
    pub passed: bool,
    /// The checks included a test restore with fingerprint comparison.
    pub restored: bool,
    /// `manifest=pass files=pass …`, or the failures.
    pub checks: String,
    pub run_id: String,
}

pub const VERIFICATION_NAME: &str = "verification.json";

/// The order every listing uses: by creation time, ties by id.
pub fn sort_oldest_first(list: &mut [Manifest]) {
    list.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.backup_id.cmp(&b.backup_id))
    });
}

impl Manifest {
    /// Moves what describes the data into an encrypted part, for an encrypted backup.
    pub fn seal(&mut self, recipients: &super::crypto::Recipients) -> std::io::Result<()> {
        let part = SealedPart {
            tables: std::mem::take(&mut self.options.tables),
            exclude_tables: std::mem::take(&mut self.options.exclude_tables),
            fingerprints: std::mem::take(&mut self.fingerprints),
        };
        let json = serde_json::to_vec(&part).map_err(std::io::Error::other)?;
        self.sealed = Some(recipients.seal(&json)?);
        self.encryption = Some(Encryption {
            scheme: "age".into(),
            recipients: recipients.texts(),
        });
        Ok(())
    }

    /// Restores the sealed part (a no-op for unencrypted backups).
    pub fn unseal(&mut self, identities: &super::crypto::Identities) -> std::io::Result<()> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        let recipients = self
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default();
        let json = identities.unseal(&sealed, &recipients)?;
        let part: SealedPart = serde_json::from_slice(&json).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the sealed part of the manifest: {e}"),
            )
        })?;
        self.options.tables = part.tables;
        self.options.exclude_tables = part.exclude_tables;
        self.fingerprints = part.fingerprints;
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The major version of the pg_dump that wrote the backup; restoring needs tools at
    /// least that new.
    pub fn pg_dump_major(&self) -> u32 {
        crate::pg::tools::parse_major(&self.pg_dump_version).unwrap_or(0)
    }
}
