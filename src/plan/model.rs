//! The plan file's types. They are what serde deserializes each section into and what the
//! JSON Schema in `schemas/plan.schema.json` is generated from, so the schema editors use
//! and the loader's checks cannot disagree.

use super::duration::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub use super::step_params::StepKind;

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
    /// When the plan runs, for `opsrunner schedule systemd|k8s`: systemd OnCalendar syntax
    /// or a five-field cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::calendar::Schedule>,
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
    /// A directory of PostgreSQL programs (pg_dump, pg_restore, psql, initdb, …) searched
    /// before `PATH`, e.g. `/usr/lib/postgresql/17/bin`; relative to the plan file. A
    /// target's own `pg_bin_dir` comes first. See the README, "PostgreSQL versions".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bin_dir: Option<String>,
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
    /// A directory of PostgreSQL programs for this target's steps, searched before the
    /// plan's `pg_bin_dir` and `PATH`; relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bin_dir: Option<String>,
    /// The cluster's data directory, when opsrunner runs on the database host and may
    /// read it: `base_backup` then copies the files itself (in parallel, incremental by
    /// file and by block, on any supported version). Relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
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
    /// `file://path`, `s3://bucket/prefix` or `azure://container/prefix`.
    pub url: String,
    /// S3: the bucket's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3-compatible stores (MinIO, Ceph, R2, …) and Azure (Azurite, sovereign clouds):
    /// the service's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3-compatible stores: address buckets as `endpoint/bucket` rather than by host name.
    #[serde(default)]
    pub force_path_style: bool,
    /// S3: multipart part size, Azure: block size, in MiB (default 16, at least 5); memory
    /// use is about four parts.
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
    /// Create the repository on first use when the location holds nothing: for throwaway
    /// and CI repositories. Without it a location that is not a repository yet (no
    /// `opsrunner repo init`) is refused, so a mistyped path or bucket fails instead of
    /// becoming a new, empty repository.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SseAlgorithm {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
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
    /// The common keys exactly as written (`retry`, `timeout`, …): rendered and typed
    /// again when the step starts, so a value from `{{ env.X }}` is enforced too.
    #[serde(skip)]
    pub raw_common: RawParams,
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
