//! The manifest: what a backup holds and how to check it. It is written last; a backup
//! without one does not exist for listing, restoring or pruning.

use super::compression::Compression;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};

/// The newest manifest version this opsrunner reads. A backup is written with the lowest
/// version that describes it: 2 only when a file holds several compressed frames (it has
/// a [`SeekIndex`]), which an opsrunner that knows only version 1 would read as ending
/// after the first — it says it cannot read the backup instead; 3 for file-level base
/// backups ([`BaseMethod::Files`]), which an older opsrunner would take for a tar; 4 for
/// exported table rows ([`DumpFormat::Rows`]), which it would take for a dump.
pub const MANIFEST_VERSION: u32 = 4;
/// The version of an `export` step's manifest (rows as CSV or JSON Lines).
pub const MANIFEST_VERSION_ROWS: u32 = 4;
/// The version of a manifest with a [`SeekIndex`].
pub const MANIFEST_VERSION_INDEXED: u32 = 2;
/// The version of a file-level base backup's manifest.
pub const MANIFEST_VERSION_FILES: u32 = 3;
/// The version of a manifest none of whose files has a [`SeekIndex`].
pub const MANIFEST_VERSION_PLAIN: u32 = 1;
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
    /// Base backups (`format: base`): where in the server's WAL the copy starts and ends,
    /// which point-in-time recovery needs to choose it and to find its WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseBackup>,
    /// Exported rows (`format: rows`, an `export` step): what they are and how written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowsExport>,
}

/// What an `export` step wrote: the rows of one table or query, as CSV or JSON Lines.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct RowsExport {
    pub format: RowsFormat,
    /// `table "public"."orders"`, or `query`.
    pub source: String,
    /// The columns, in order (the CSV header's).
    pub columns: Vec<String>,
    /// How many rows were written.
    pub rows: u64,
}

/// How exported rows are written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RowsFormat {
    /// RFC 4180 CSV with a header line, as PostgreSQL's `COPY … (FORMAT csv, HEADER)`
    /// writes it: NULL is an empty field, an empty string `""`.
    #[default]
    Csv,
    /// One JSON object per line (`row_to_json`): NULL is `null`.
    Jsonl,
}

impl RowsFormat {
    pub fn extension(self) -> &'static str {
        match self {
            RowsFormat::Csv => ".csv",
            RowsFormat::Jsonl => ".jsonl",
        }
    }
}

/// What a base backup (a copy of a whole cluster's files by `pg_basebackup`) records
/// besides the files: the copy is consistent only once the WAL from `start_lsn` to
/// `stop_lsn` (archived under `.wal/` of the same repository) has been replayed over it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct BaseBackup {
    /// `pg_control_system()`'s system identifier: which cluster this is a copy of (WAL of
    /// another cluster cannot be replayed over it).
    pub system_identifier: String,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// `backup_label`'s `START WAL LOCATION`, e.g. `0/2000028`.
    pub start_lsn: String,
    /// The end of the WAL range in the server's `backup_manifest`: recovery reaches a
    /// consistent state here, and no target before it can be reached from this backup.
    pub stop_lsn: String,
    /// The server's clock just before the copy began and just after it ended (at or after
    /// the real end: a backup is chosen for a target time only when this is before it).
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Bytes per WAL segment on this cluster (`wal_segment_size`), to name segments.
    pub wal_segment_size: u64,
    /// The stored file that holds the cluster's files; the server's own `backup_manifest`
    /// is its last member (checked with `pg_verifybackup` when it is extracted).
    pub server_manifest: String,
    /// Full, or relative to another base backup (`parent`). Older manifests: full.
    #[serde(default)]
    pub kind: BaseKind,
    /// The base backup this one is relative to: restoring it needs that one (and its own
    /// parent, down to a full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The stored copy of the server's `backup_manifest` on its own, which the next
    /// incremental backup is taken against (PostgreSQL 17+ `pg_basebackup --incremental`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_manifest: Option<String>,
    /// How the copy was made: by `pg_basebackup` (a tar) or file by file from the data
    /// directory. Older manifests: `pg_basebackup`.
    #[serde(default, skip_serializing_if = "BaseMethod::is_tar")]
    pub method: BaseMethod,
    /// File-level backups: the stored list of every file and where its bytes are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
}

/// How a base backup was taken.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BaseMethod {
    /// `pg_basebackup`'s tar stream (with PostgreSQL 17+, its own incremental backups).
    #[default]
    Tar,
    /// File by file from the data directory, between `pg_backup_start` and
    /// `pg_backup_stop`, into bundles ([`crate::repo::bundle`]).
    Files,
}

impl BaseMethod {
    fn is_tar(&self) -> bool {
        *self == BaseMethod::Tar
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BaseMethod::Tar => "pg_basebackup",
            BaseMethod::Files => "file-level",
        }
    }
}

/// What a base backup holds: every file, or what changed since a parent.
#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum BaseKind {
    /// Every file of the cluster.
    #[default]
    Full,
    /// What changed since the newest full backup.
    Differential,
    /// What changed since the newest base backup of any kind.
    Incremental,
}

impl BaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BaseKind::Full => "full",
            BaseKind::Differential => "differential",
            BaseKind::Incremental => "incremental",
        }
    }
}

impl BaseBackup {
    pub fn start(&self) -> Option<u64> {
        parse_lsn(&self.start_lsn)
    }
    pub fn stop(&self) -> Option<u64> {
        parse_lsn(&self.stop_lsn)
    }
}

/// Parses PostgreSQL's `X/Y` notation of a WAL position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(hi) || !hex(lo) {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Writes a WAL position as PostgreSQL does (`0/2000028`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
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
    /// An export's source and columns (which name tables), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows: Option<RowsExport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the backup, `/`-separated.
    pub name: String,
    /// Bytes as stored.
    pub size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    /// Where a reader can start without reading what comes before (custom archives that
    /// are not encrypted): a parallel restore loads each table from its own part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<SeekIndex>,
}

/// Where a stored file's independent compressed frames start, and where in the original
/// bytes each data block of the archive is — so that a table's data can be decompressed
/// from the frame before it, without the tables before it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
pub struct SeekIndex {
    /// `[original offset, stored offset]` of each frame's start, ascending, from `[0, 0]`.
    pub frames: Vec<(u64, u64)>,
    /// `[dump id, start, end]` of each data block, in the original bytes, in archive order.
    pub blocks: Vec<(i64, u64, u64)>,
}

impl SeekIndex {
    /// Whether the index can be followed: frames and blocks in order, inside the file.
    /// A wrong index can only make a restore fail (a load finds blocks by their header
    /// and dump id, and the stored file is checked against its SHA-256), never load other
    /// data; it is refused here so that it fails early and clearly.
    fn check(&self, stored_size: u64) -> Result<(), String> {
        if self.frames.first() != Some(&(0, 0)) {
            return Err("the first frame does not start at the beginning".into());
        }
        for pair in self.frames.windows(2) {
            if pair[1].0 <= pair[0].0 || pair[1].1 <= pair[0].1 {
                return Err("frames are not in order".into());
            }
        }
        if self.frames.last().is_some_and(|f| f.1 >= stored_size) {
            return Err("a frame starts past the end of the file".into());
        }
        let mut ids = BTreeSet::new();
        let mut after = 0;
        for &(id, start, end) in &self.blocks {
            if start < after || end <= start {
                return Err(format!("block {id} is not after the one before it"));
            }
            if !ids.insert(id) {
                return Err(format!("block {id} is listed twice"));
            }
            after = end;
        }
        Ok(())
    }

    /// The frame a reader of original offset `at` starts at: (its original offset, its
    /// stored offset).
    pub fn frame_before(&self, at: u64) -> (u64, u64) {
        let i = self.frames.partition_point(|f| f.0 <= at);
        self.frames
            .get(i.wrapping_sub(1))
            .copied()
            .unwrap_or((0, 0))
    }
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
    /// A base backup of a whole cluster (`base_backup` step): `pg_basebackup`'s tar, for
    /// point-in-time recovery. Not a `backup` step's format (so not in the plan schema).
    #[schemars(skip)]
    Base,
    /// Rows of a table or query as CSV or JSON Lines (an `export` step): loaded by an
    /// `import` step, never restored. Not a `backup` step's format.
    #[schemars(skip)]
    Rows,
}

impl DumpFormat {
    pub fn pg_dump_flag(self) -> &'static str {
        match self {
            DumpFormat::Custom => "--format=custom",
            DumpFormat::Directory => "--format=directory",
            DumpFormat::Plain => "--format=plain",
            DumpFormat::Base => "--format=tar",
            DumpFormat::Rows => "",
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
    /// SHA-256 of the manifest file this verification checked: a record copied onto
    /// another backup, or left behind when a manifest was replaced, does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// SHA-256 of this record (with `seal` empty): a record edited by hand does not count.
    /// A checksum, not a signature: whoever can write the repository can delete backups too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Verification {
    fn digest(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.seal = None;
        let json = serde_json::to_vec(&unsealed).expect("serializes");
        crate::digest::hex(&sha2::Sha256::digest(&json))
    }

    /// Binds the record to the manifest it verified and seals it.
    pub fn sealed_for(mut self, manifest_sha256: &str) -> Verification {
        self.manifest_sha256 = Some(manifest_sha256.to_string());
        self.seal = None;
        self.seal = Some(self.digest());
        self
    }

    /// Why this record does not vouch for the manifest whose SHA-256 is given, if it does not.
    pub fn distrust(&self, manifest_sha256: &str) -> Option<String> {
        match (&self.manifest_sha256, &self.seal) {
            (None, _) | (_, None) => Some("the record names no manifest (written by hand or by an older opsrunner)".into()),
            (Some(m), _) if m != manifest_sha256 => {
                Some("the record is for another manifest (copied from another backup, or the manifest changed)".into())
            }
            (_, Some(seal)) if *seal != self.digest() => Some("the record was changed after it was written".into()),
            _ => None,
        }
    }
}

pub const VERIFICATION_NAME: &str = "verification.json";
/// Where an unfinished copy between repositories records the files it has written.
pub const COPY_JOURNAL_NAME: &str = "copy-journal.json";

/// A file name in a manifest: `/`-separated, relative, inside the backup, and none of the
/// repository's own files.
fn check_file_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 1024
        || name.contains(['\\', '\0'])
        || name
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.') || part.len() > 255)
        || [MANIFEST_NAME, VERIFICATION_NAME, COPY_JOURNAL_NAME].contains(&name);
    if bad {
        return Err(format!(
            "file name `{}` is not one a backup can hold",
            name.escape_debug()
        ));
    }
    Ok(())
}

impl Manifest {
    /// Moves what describes the data into an encrypted part, for an encrypted backup.
    pub fn seal(&mut self, recipients: &super::crypto::Recipients) -> std::io::Result<()> {
        let part = SealedPart {
            tables: std::mem::take(&mut self.options.tables),
            exclude_tables: std::mem::take(&mut self.options.exclude_tables),
            fingerprints: std::mem::take(&mut self.fingerprints),
            rows: self.rows.take(),
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
        if part.rows.is_some() {
            self.rows = part.rows;
        }
        Ok(())
    }

    /// Checks a manifest read from the backup at `location` as a whole, before anything
    /// trusts it: the id it claims is where it lives, and its file list is complete and
    /// names only files inside the backup. Every problem is an error here, never a panic
    /// later.
    pub fn check(&self, location: &str) -> Result<(), String> {
        if self.manifest_version == 0 || self.manifest_version > MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} is not one this opsrunner understands (1 to {MANIFEST_VERSION})",
                self.manifest_version
            ));
        }
        if self.backup_id != location {
            return Err(format!(
                "the manifest names backup `{}` but lives at `{location}` (copied or edited); a backup is identified by its location",
                self.backup_id
            ));
        }
        if self.database.is_empty() {
            return Err("the manifest names no database".into());
        }
        if self.files.is_empty() {
            return Err("the manifest lists no files".into());
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            check_file_name(&f.name)?;
            if !seen.insert(f.name.as_str()) {
                return Err(format!("file `{}` is listed twice", f.name));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "file `{}`: `sha256` is not a SHA-256 in hex",
                    f.name
                ));
            }
            if let Some(index) = &f.index {
                index
                    .check(f.size)
                    .map_err(|e| format!("file `{}`: `index`: {e}", f.name))?;
            }
        }
        match (self.format, &self.base) {
            (DumpFormat::Base, None) => {
                return Err("a base backup's manifest needs its `base` section (WAL range, system identifier)".into());
            }
            (DumpFormat::Base, Some(base)) => {
                if base.start().is_none() || base.stop().is_none() {
                    return Err("`base`: start_lsn and stop_lsn must be WAL positions (X/Y)".into());
                }
                if base.start() > base.stop() {
                    return Err("`base`: the backup stops before it starts".into());
                }
                if !base.wal_segment_size.is_power_of_two()
                    || !(1 << 20..=1 << 30).contains(&base.wal_segment_size)
                {
                    return Err(
                        "`base`: wal_segment_size is not a power of two from 1 MiB to 1 GiB".into(),
                    );
                }
                if base.timeline == 0 {
                    return Err("`base`: timeline 0 does not exist".into());
                }
                if !self.files.iter().any(|f| f.name == base.server_manifest) {
                    return Err(format!(
                        "`base`: server_manifest names `{}`, which the manifest does not list",
                        base.server_manifest
                    ));
                }
                match (base.method, &base.contents) {
                    (BaseMethod::Tar, None) => {}
                    (BaseMethod::Files, Some(name)) => {
                        if !self.files.iter().any(|f| &f.name == name) {
                            return Err(format!(
                                "`base`: contents names `{name}`, which the manifest does not list"
                            ));
                        }
                        if self.manifest_version < MANIFEST_VERSION_FILES {
                            return Err(format!(
                                "a file-level base backup's manifest is of version {MANIFEST_VERSION_FILES} or later"
                            ));
                        }
                    }
                    (BaseMethod::Tar, Some(_)) => {
                        return Err(
                            "`base`: a pg_basebackup copy has no list of files (`contents`)".into(),
                        );
                    }
                    (BaseMethod::Files, None) => {
                        return Err(
                            "`base`: a file-level copy needs its list of files (`contents`)".into(),
                        );
                    }
                }
                if let Some(name) = &base.backup_manifest
                    && !self.files.iter().any(|f| &f.name == name)
                {
                    return Err(format!(
                        "`base`: backup_manifest names `{name}`, which the manifest does not list"
                    ));
                }
                match (&base.parent, base.kind) {
                    (None, BaseKind::Full) => {}
                    (Some(parent), BaseKind::Differential | BaseKind::Incremental) => {
                        check_id(parent).map_err(|e| format!("`base`: parent: {e}"))?;
                    }
                    (None, kind) => {
                        return Err(format!(
                            "`base`: an {} backup names no parent",
                            kind.as_str()
                        ));
                    }
                    (Some(_), BaseKind::Full) => {
                        return Err("`base`: a full backup has no parent".into());
                    }
                }
            }
            (_, Some(_)) => {
                return Err("only a base backup's manifest has a `base` section".into());
            }
            _ => {}
        }
        match self.format {
            DumpFormat::Custom | DumpFormat::Plain if self.files.len() != 1 => Err(format!(
                "a {:?} backup has exactly one file; the manifest lists {}",
                self.format,
                self.files.len()
            )),
            // The copy, and since incremental backups the server's backup_manifest beside it.
            // A file-level copy: its bundles and its list of files, as many as it takes.
            DumpFormat::Base
                if self.base.as_ref().is_some_and(|b| b.method == BaseMethod::Files) =>
            {
                Ok(())
            }
            DumpFormat::Base if !(1..=2).contains(&self.files.len()) => Err(format!(
                "a base backup has its copy and at most its backup_manifest; the manifest lists {} files",
                self.files.len()
            )),
            DumpFormat::Directory
                if !self
                    .files
                    .iter()
                    .any(|f| f.name.starts_with("dump/toc.dat")) =>
            {
                Err("a directory backup needs its table of contents (dump/toc.dat); the manifest lists none".into())
            }
            _ => Ok(()),
        }?;
        if let Some(e) = &self.encryption
            && (e.recipients.is_empty() || self.sealed.is_none())
        {
            return Err(
                "an encrypted backup's manifest needs recipients and its sealed part".into(),
            );
        }
        if let Some((table, _)) = self.fingerprints.iter().find(|(_, f)| f.rows < 0) {
            return Err(format!("table {table}: a negative row count"));
        }
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        // Sizes come from a file anyone could edit: add without wrapping.
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }

    /// What retention and `latest` count this backup among: its database, or for exported
    /// rows the database's exports (an export never takes a backup's place).
    pub fn series(&self) -> String {
        match self.format {
            DumpFormat::Rows => format!("{} (exports)", self.database),
            _ => self.database.clone(),
        }
    }

    /// The major version of the pg_dump that wrote the backup; restoring needs tools at
    /// least that new.
    pub fn pg_dump_major(&self) -> u32 {
        parse_major(&self.pg_dump_version).unwrap_or(0)
    }

    /// The major version of the server the backup was taken from (`15.18 (Debian …)`:
    /// its first number); 0 when not recorded.
    pub fn server_major(&self) -> u32 {
        self.server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Backup ids come from opsrunner, from users (`backup: ID`) and from the repository's
/// listing; anything that could name a place outside one backup is refused.
pub fn check_id(backup_id: &str) -> std::io::Result<()> {
    if backup_id.is_empty()
        || backup_id.len() > 255
        || backup_id.contains(['/', '\\', '\0'])
        || backup_id.starts_with('.')
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid backup id `{}`", backup_id.escape_debug()),
        ));
    }
    Ok(())
}

/// 15 from "pg_dump (PostgreSQL) 15.14 (Debian 15.14-1)", as a program reports its version
/// and a manifest records it.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let version = version_line.split(')').nth(1)?.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::SeekIndex;

    fn index(frames: &[(u64, u64)], blocks: &[(i64, u64, u64)]) -> SeekIndex {
        SeekIndex {
            frames: frames.to_vec(),
            blocks: blocks.to_vec(),
        }
    }

    #[test]
    fn an_index_out_of_order_or_outside_the_file_is_refused() {
        let good = index(&[(0, 0), (900, 300)], &[(7, 100, 900), (8, 900, 2000)]);
        assert_eq!(good.check(400), Ok(()));
        let refused = [
            (index(&[], &[]), "the first frame"),
            (index(&[(5, 0)], &[]), "the first frame"),
            (
                index(&[(0, 0), (900, 300), (800, 350)], &[]),
                "not in order",
            ),
            (
                index(&[(0, 0), (900, 300), (950, 300)], &[]),
                "not in order",
            ),
            (index(&[(0, 0), (900, 400)], &[]), "past the end"),
            (
                index(&[(0, 0)], &[(7, 100, 900), (8, 800, 2000)]),
                "block 8",
            ),
            (index(&[(0, 0)], &[(7, 100, 100)]), "block 7"),
            (index(&[(0, 0)], &[(7, 100, 200), (7, 200, 300)]), "twice"),
        ];
        for (index, why) in refused {
            let e = index.check(400).unwrap_err();
            assert!(e.contains(why), "{index:?}: {e}");
        }
    }

    #[test]
    fn a_reader_starts_at_the_last_frame_before_where_it_wants_to_be() {
        let index = index(&[(0, 0), (900, 300), (5000, 1200)], &[]);
        assert_eq!(index.frame_before(0), (0, 0));
        assert_eq!(index.frame_before(899), (0, 0));
        assert_eq!(index.frame_before(900), (900, 300));
        assert_eq!(index.frame_before(4999), (900, 300));
        assert_eq!(index.frame_before(1 << 40), (5000, 1200));
        assert_eq!(SeekIndex::default().frame_before(10), (0, 0));
    }
}
