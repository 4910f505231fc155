//! The plan file's types. They are what serde deserializes each section into and what the
//! JSON Schema in `schemas/plan.schema.json` is generated from, so the schema editors use
//! and the loader's checks cannot disagree.

use super::duration::HumanDuration;
use crate::repo::compression::Compression;
use crate::repo::manifest::{DumpFormat, FingerprintMode};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The plan versions this build understands.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// A whole plan file.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "opsrunner plan")]
pub struct Plan {
    /// Plan language version; this build understands `1`.
    pub version: u32,
    /// A short name, used in logs, reports and previews.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Default values for `{{ vars.NAME }}`; `--var NAME=VALUE` overrides them.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    /// Names of environment variables whose values are secrets: they are redacted as `***`
    /// everywhere opsrunner writes.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Databases the steps work on.
    #[serde(default)]
    pub targets: BTreeMap<String, Target>,
    /// Places backups are kept.
    #[serde(default)]
    pub repositories: BTreeMap<String, Repository>,
    pub steps: Vec<StepDef>,
}

/// A database server (and database) steps connect to.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A libpq connection URL, usually `{{ env.DATABASE_URL }}`: keep passwords out of the
    /// file. Without `url` (and without `ephemeral`), the PG* environment variables and the
    /// passfile say where to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A throwaway local cluster, created for this run and removed when it ends.
    #[serde(default)]
    pub ephemeral: bool,
    /// Ephemeral clusters only: the operating-system user the server runs as when opsrunner
    /// runs as root (PostgreSQL refuses to run as root). Default `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Destructive steps on a protected target are refused unless `--confirm NAME` is given.
    #[serde(default)]
    pub protected: bool,
    /// The definition as written, rendered again when a step starts.
    #[serde(skip)]
    #[schemars(skip)]
    pub written: RawParams,
}

impl Target {
    /// The URL template, empty when the environment supplies everything.
    pub fn url_template(&self) -> &str {
        self.url.as_deref().unwrap_or("")
    }
}

/// A backup repository.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// `file://path` or `s3://bucket/prefix`.
    pub url: String,
    /// S3: the bucket's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3-compatible stores (MinIO, Ceph, R2, …): the service's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3-compatible stores: address buckets as `endpoint/bucket` rather than by host name.
    #[serde(default)]
    pub force_path_style: bool,
    /// S3: multipart part size in MiB (default 16, at least 5); memory use is about four parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size_mib: Option<u32>,
    /// S3: server-side encryption of the objects written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<SseAlgorithm>,
    /// S3 with `sse: aws:kms`: the KMS key id or ARN (default: the AWS-managed key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// Client-side encryption with age: files are encrypted to these recipients before they
    /// are stored; restore and verify need an identity (`--identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// The definition as written, rendered again when a step starts.
    #[serde(skip)]
    #[schemars(skip)]
    pub written: RawParams,
}

/// `encryption:` of a repository: age recipients (public keys), inline or from a file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age recipients (`age1…`), e.g. from `age-keygen -y KEYFILE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// A file of age recipients, one per line, `#` comments; relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_file: Option<String>,
}

impl EncryptionConfig {
    /// The recipients, with the file (relative to `base_dir`) read now.
    pub fn recipients(
        &self,
        base_dir: &std::path::Path,
    ) -> Result<crate::repo::crypto::Recipients, String> {
        let file = self.recipients_file.as_deref().map(|f| base_dir.join(f));
        crate::repo::crypto::Recipients::load(&self.recipients, file.as_deref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SseAlgorithm {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl Repository {
    pub fn s3_options(&self) -> crate::repo::s3::S3Options {
        crate::repo::s3::S3Options {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
            part_size: self.part_size_mib.map(|m| m as usize * 1024 * 1024),
            sse: self.sse.map(|a| crate::repo::s3::Sse {
                algorithm: match a {
                    SseAlgorithm::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
                    SseAlgorithm::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
                },
                kms_key_id: self.sse_kms_key_id.clone(),
            }),
        }
    }
}

/// One step: the keys every step has, plus its type's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct StepDef {
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub kind: StepKind,
    /// The type's parameters exactly as written, templates unrendered; they are rendered
    /// and deserialized again when the step starts.
    #[serde(skip)]
    pub raw_params: RawParams,
    /// A stand-in for a step that failed to load (see `load::load_partial`); a plan with
    /// one never validates.
    #[serde(skip)]
    pub broken: bool,
}

impl StepDef {
    pub fn id(&self) -> &str {
        &self.common.id
    }
}

/// A step type's parameters as written, kept as compact JSON text. A parsed [`Value`]
/// costs over half a kilobyte per step even for one key (a map node is allocated whole),
/// many times the plan's own text; the parameters are parsed again only when a step is
/// checked, previewed or started.
#[derive(Debug, Clone, Default)]
pub struct RawParams(Box<str>);

impl RawParams {
    pub fn new(value: &Value) -> RawParams {
        RawParams(value.to_string().into_boxed_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn value(&self) -> Value {
        if self.0.is_empty() {
            return Value::Object(Default::default());
        }
        // The text is serde_json's own rendering of a value whose depth the YAML limits
        // bound far below serde_json's recursion limit, so it always parses.
        serde_json::from_str(&self.0).expect("raw parameters are JSON written by serde_json")
    }
}

/// Keys every step type accepts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Unique step id, used in `needs` and `{{ steps.ID.outputs.NAME }}`.
    pub id: String,
    /// Steps that must finish before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// When the step runs: `success()` (default: every need succeeded), `failure()` (some
    /// upstream step failed) or `always()`.
    #[serde(default, rename = "if")]
    pub condition: Condition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Upper bound for one attempt; child processes are killed when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// A failure of this step does not fail the run or skip its dependents.
    #[serde(default)]
    pub continue_on_error: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Condition {
    #[default]
    #[serde(rename = "success()")]
    Success,
    #[serde(rename = "failure()")]
    Failure,
    #[serde(rename = "always()")]
    Always,
    /// Only when the run was interrupted (SIGINT/SIGTERM): cleanup that a normal run does
    /// not need.
    #[serde(rename = "cancelled()")]
    Cancelled,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "success()",
            Condition::Failure => "failure()",
            Condition::Always => "always()",
            Condition::Cancelled => "cancelled()",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts, the first included (1 = no retry).
    pub attempts: u32,
    /// Pause before the second attempt.
    #[serde(default = "default_delay")]
    pub delay: HumanDuration,
    #[serde(default)]
    pub backoff: Backoff,
    /// Upper bound for the pause with exponential backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<HumanDuration>,
    /// Randomise each pause between half and all of its length, so that many runners
    /// retrying the same server do not retry in lockstep.
    #[serde(default)]
    pub jitter: bool,
}

fn default_delay() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    #[default]
    Fixed,
    Exponential,
}

/// The typed parameters of each step type.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    Shell(ShellParams),
    Sql(SqlParams),
    WaitReady(WaitReadyParams),
    Backup(BackupParams),
    Restore(RestoreParams),
    Verify(VerifyParams),
    Migrate(MigrateParams),
    Seed(SeedParams),
    Reset(ResetParams),
    Prune(PruneParams),
    Webhook(WebhookParams),
}

/// The names of all step types, for "unknown step type" suggestions.
pub const STEP_TYPES: &[&str] = &[
    "shell",
    "sql",
    "wait_ready",
    "backup",
    "restore",
    "verify",
    "migrate",
    "seed",
    "reset",
    "prune",
    "webhook",
];

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Shell(_) => "shell",
            StepKind::Sql(_) => "sql",
            StepKind::WaitReady(_) => "wait_ready",
            StepKind::Backup(_) => "backup",
            StepKind::Restore(_) => "restore",
            StepKind::Verify(_) => "verify",
            StepKind::Migrate(_) => "migrate",
            StepKind::Seed(_) => "seed",
            StepKind::Reset(_) => "reset",
            StepKind::Prune(_) => "prune",
            StepKind::Webhook(_) => "webhook",
        }
    }

    /// Where in the parameters the target (`field` = "target") or the repository is named.
    pub fn reference_path(&self, field: &str) -> &'static [&'static str] {
        match (self, field) {
            (StepKind::Restore(_), "target") => &["into", "target"],
            (StepKind::Verify(_), "target") => &["restore_into", "target"],
            (_, "target") => &["target"],
            _ => &["repository"],
        }
    }

    /// The schema of one step type's parameters (inline, not a reference).
    fn params_schema(type_name: &str, generator: &mut SchemaGenerator) -> Schema {
        match type_name {
            "shell" => ShellParams::json_schema(generator),
            "sql" => SqlParams::json_schema(generator),
            "wait_ready" => WaitReadyParams::json_schema(generator),
            "backup" => BackupParams::json_schema(generator),
            "restore" => RestoreParams::json_schema(generator),
            "verify" => VerifyParams::json_schema(generator),
            "migrate" => MigrateParams::json_schema(generator),
            "seed" => SeedParams::json_schema(generator),
            "reset" => ResetParams::json_schema(generator),
            "prune" => PruneParams::json_schema(generator),
            "webhook" => WebhookParams::json_schema(generator),
            other => unreachable!("no schema for step type {other}"),
        }
    }

    /// Names of the outputs a step of this type sets, for checking template references.
    pub fn output_names(&self) -> &'static [&'static str] {
        match self {
            StepKind::Shell(_) => &["exit_code", "stdout"],
            StepKind::Sql(_) => &["rows", "value"],
            StepKind::WaitReady(_) => &["waited_ms", "server_version"],
            StepKind::Backup(_) => &["backup_id", "uri", "bytes", "sha256"],
            StepKind::Restore(_) => &["backup_id", "database", "duration_ms"],
            StepKind::Verify(_) => &["backup_id", "checks", "restore_duration_ms", "backup_age_s"],
            StepKind::Migrate(_) => &["applied", "pending", "reverted"],
            StepKind::Seed(_) => &["applied", "files"],
            StepKind::Reset(_) => &["database", "migrations", "seeds"],
            StepKind::Prune(_) => &["deleted", "kept"],
            StepKind::Webhook(_) => &["status"],
        }
    }

    /// The target this step connects to, if any, for reference checks and guards.
    pub fn target(&self) -> Option<&str> {
        match self {
            StepKind::Shell(_) | StepKind::Prune(_) | StepKind::Webhook(_) => None,
            StepKind::Sql(p) => Some(&p.target),
            StepKind::WaitReady(p) => Some(&p.target),
            StepKind::Backup(p) => Some(&p.target),
            StepKind::Restore(p) => Some(&p.into.target),
            StepKind::Verify(p) => p.restore_into.as_ref().map(|n| n.target.as_str()),
            StepKind::Migrate(p) => Some(&p.target),
            StepKind::Seed(p) => Some(&p.target),
            StepKind::Reset(p) => Some(&p.target),
        }
    }

    /// The repository this step reads or writes, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            StepKind::Backup(p) => Some(&p.repository),
            StepKind::Restore(p) => Some(&p.repository),
            StepKind::Verify(p) => Some(&p.repository),
            StepKind::Prune(p) => Some(&p.repository),
            _ => None,
        }
    }

    /// Every target the step touches (a restore reads one and writes another).
    pub fn targets(&self) -> Vec<&str> {
        self.target().into_iter().collect()
    }
}

/// `shell`: runs a command with `sh -c`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// The command line, run by `sh -c`.
    pub command: String,
    /// Extra environment variables for the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the plan file's directory (default: that directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// `sql`: runs SQL against a target.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Database on the target's server (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// SQL text to run (give either `query` or `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A file of SQL, relative to the plan file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Run all statements in one transaction: all of them take effect, or none.
    #[serde(default)]
    pub transaction: bool,
    /// The SQL changes data. On a `protected` target, SQL runs in a read-only session
    /// unless the step says it writes; a step that writes is destructive there and needs
    /// `--confirm TARGET`.
    #[serde(default)]
    pub writes: bool,
}

/// `wait_ready`: waits until a target accepts connections. The step's `timeout` bounds the
/// wait (default 60s).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitReadyParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Pause between connection attempts.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

/// `backup`: pg_dump of a target's database into a repository, compressed and hashed by
/// opsrunner as it streams, published by writing its manifest last.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// Database to dump (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub format: DumpFormat,
    #[serde(default)]
    pub compression: Compression,
    /// Parallel pg_dump workers (directory format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    #[serde(default)]
    pub schema_only: bool,
    #[serde(default)]
    pub data_only: bool,
    /// Only these tables (pg_dump `-t` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Not these tables (pg_dump `-T` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    /// Table fingerprints recorded in the manifest, from the dump's own snapshot.
    #[serde(default)]
    pub fingerprint: FingerprintMode,
}

/// Where a restore goes: a database on a target (the "namespace").
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Database to create and restore into.
    pub database: String,
}

/// `restore`: a backup from a repository into a database.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// A backup id, or `latest` (default).
    #[serde(default = "latest")]
    pub backup: String,
    /// With `backup: latest`: the latest backup of this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_database: Option<String>,
    pub into: Namespace,
    /// Replace the database when it exists and is not empty (destructive).
    #[serde(default)]
    pub overwrite: bool,
    /// Parallel pg_restore workers (custom and directory formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// Do not restore object owners and privileges (when the roles do not exist there).
    #[serde(default)]
    pub no_owner: bool,
}

/// `verify`: proves a backup is intact and, with `restore_into`, that it restores.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// A backup id, or `latest` (default).
    #[serde(default = "latest")]
    pub backup: String,
    /// Restore into this scratch database (which must not exist), compare the table
    /// fingerprints with the manifest's, then drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_into: Option<Namespace>,
    /// Parallel pg_restore workers for the test restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrateAction {
    /// Apply pending migrations.
    #[default]
    Up,
    /// Report applied and pending migrations; change nothing.
    Status,
    /// Undo the last `steps` applied migrations (needs `.down.sql` files).
    Revert,
}

/// `migrate`: sqlx migrations from a directory (compatible with sqlx-cli's
/// `_sqlx_migrations` table); each migration and its bookkeeping row in one transaction,
/// under an advisory lock.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateParams {
    pub target: String,
    /// Database on the target's server (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub action: MigrateAction,
    /// Directory of migrations, relative to the plan file.
    #[serde(default = "default_migrations")]
    pub dir: String,
    /// `revert` only: how many migrations to undo (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}

fn default_migrations() -> String {
    "migrations".into()
}

/// `seed`: the SQL files and CSV files (loaded with COPY) under `DIR/ENVIRONMENT/`, in
/// name order, in one transaction. A seed set that already ran is not applied again
/// unless `force: true`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedParams {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `production`, `development` or `test`: the subdirectory of `dir` to use.
    pub environment: SeedEnvironment,
    /// Directory of seed sets, relative to the plan file.
    #[serde(default = "default_seeds")]
    pub dir: String,
    #[serde(default)]
    pub force: bool,
}

fn default_seeds() -> String {
    "seeds".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeedEnvironment {
    Production,
    Development,
    Test,
}

impl SeedEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedEnvironment::Production => "production",
            SeedEnvironment::Development => "development",
            SeedEnvironment::Test => "test",
        }
    }
}

/// `reset`: end other sessions, drop and recreate a database, run migrations, run seeds.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetParams {
    pub target: String,
    /// The database to drop and recreate.
    pub database: String,
    /// Migrations directory to apply afterwards, relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<String>,
    /// Seeds directory to apply afterwards, relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<String>,
    /// Which seed set to apply (default `development`).
    #[serde(default = "default_environment")]
    pub environment: SeedEnvironment,
}

fn default_environment() -> SeedEnvironment {
    SeedEnvironment::Development
}

/// `prune`: deletes the backups a retention policy does not keep (restic's `forget`
/// semantics, per database), never the newest verified one, nothing after a failed
/// verification of the newest.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    pub keep: crate::repo::retention::Keep,
    /// Never delete backups younger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age: Option<HumanDuration>,
    /// Only backups of this database (default: all, each database on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// `webhook`: an HTTP request to an alerting or chat service (Slack-compatible hooks, a
/// generic JSON receiver). The URL usually carries a token: it is treated as a secret,
/// never shown and never on a command line.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookParams {
    /// The URL, usually `{{ env.ALERT_WEBHOOK }}`.
    pub url: String,
    /// The HTTP method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers; values are secrets too (an `Authorization` token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body: any YAML value, its strings rendered, sent as `application/json`
    /// (a value with quotes or newlines stays valid JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

fn default_method() -> String {
    "POST".into()
}

fn latest() -> String {
    "latest".into()
}

fn default_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(500))
}

/// The JSON Schema of a step: one alternative per step type, each with the common keys, a
/// `type` constant and that type's parameters, and no other keys.
impl JsonSchema for StepDef {
    fn schema_name() -> Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let common = Common::json_schema(generator);
        let mut variants = Vec::new();
        for type_name in STEP_TYPES {
            let params = StepKind::params_schema(type_name, generator);
            let mut properties = serde_json::Map::new();
            let mut required = vec![Value::from("id"), Value::from("type")];
            for schema in [&common, &params] {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    properties.extend(props.clone());
                }
            }
            if let Some(req) = params.get("required").and_then(Value::as_array) {
                required.extend(req.iter().cloned());
            }
            properties.insert("type".into(), serde_json::json!({ "const": type_name }));
            let description = params.get("description").cloned().unwrap_or(Value::Null);
            let mut variant = serde_json::json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            });
            if !description.is_null() {
                variant["description"] = description;
            }
            variants.push(variant);
        }
        json_schema!({ "oneOf": variants })
    }
}
