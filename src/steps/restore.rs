//! `restore`: a backup into a database (the namespace) on a target.

use super::probe::{Findings, Probe, Unread};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::pg::database as db;
use crate::pg::server::{Server, classify, connect};
use crate::pg::{fingerprint, restore, swap};
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::AnyStore;
use crate::repo::listing::{self, Checked};
use crate::repo::manifest::{FingerprintMode, Manifest, TableFingerprint};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::future::Future;
use std::time::Instant;

/// Where a restore goes: a database on a target, or (with `to:`) the whole throwaway
/// cluster of an ephemeral target.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Name of a target declared under `targets` (with `to:`, an ephemeral one).
    pub target: String,
    /// Database to create and restore into (not with `to:`, which recovers the whole cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// Where a `restore` goes: a database on a target; with `to:`, the whole throwaway cluster of
/// an ephemeral target, or a new data directory.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreInto {
    /// Name of a target declared under `targets` (with `to:`, an ephemeral one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Database to create and restore into (not with `to:`, which recovers the whole cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// With `to:` instead of `target`: an absolute path, absent or an empty directory, that
    /// becomes the recovered cluster's data directory. Recovery is run to the target and
    /// stopped there without promoting; the server's first start (with your configuration)
    /// promotes it. With `latest: true` it is only prepared: recovery runs at that start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
    /// With `data_directory`, when opsrunner runs as root: the user that owns the files and
    /// runs the server (default `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// With `data_directory` and a file-level base backup: rewrite an existing data
    /// directory of a stopped copy of the cluster in place — only files and blocks that
    /// differ from the backup are written, files it does not hold are removed. Refused
    /// while a server runs on it, and for another cluster's directory unless `force`.
    #[serde(default)]
    pub delta: bool,
    /// With `delta`: rewrite a directory that holds another cluster, or none.
    #[serde(default)]
    pub force: bool,
    /// With `delta`: how a file is judged equal to the backup's — `checksum` (default:
    /// every file is read and its SHA-256 compared) or `timestamp` (a file of the backup's
    /// size and modification time, as a restore leaves it, is not read; faster, but blind
    /// to a change that kept both).
    #[serde(default)]
    pub delta_compare: DeltaCompare,
    /// Tablespaces to put elsewhere than they were: `{OLD: NEW}`, absolute paths. Without
    /// it a file-level backup's tablespaces go back where they were (which must be absent
    /// or empty); a throwaway cluster's go inside its own directory.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tablespaces: std::collections::BTreeMap<String, String>,
}

/// How a delta restore tells a file unchanged.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeltaCompare {
    #[default]
    Checksum,
    Timestamp,
}

/// `restore`: a backup from a repository into a database; with `to:`, a base backup and
/// the WAL archive into a throwaway cluster, recovered to a point in time.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// A backup id, or `latest` (default; with `to:`, the newest base backup that ends
    /// before the target).
    #[serde(default = "latest")]
    pub backup: String,
    /// With `backup: latest`: the latest backup of this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_database: Option<String>,
    /// Point-in-time recovery: where to stop replaying the WAL archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<super::pitr::PointInTime>,
    pub into: RestoreInto,
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

pub struct Restore;

impl StepType for Restore {
    const NAME: &'static str = "restore";
    type Params = RestoreParams;
    const OUTPUTS: &'static [&'static str] = &[
        "backup_id",
        "database",
        "duration_ms",
        "reached_lsn",
        "reached_time",
        "timeline",
        "new_timeline",
        "wal_segments",
        "data_directory",
        "replaced",
        "skipped",
    ];
    const TARGET_PATH: &'static [&'static str] = &["into", "target"];

    fn target(p: &RestoreParams) -> Option<&str> {
        p.into.target.as_deref()
    }

    fn writes_target(_: &RestoreParams) -> bool {
        true
    }

    fn repository(p: &RestoreParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn jobs(p: &RestoreParams) -> Option<u32> {
        p.jobs
    }

    fn destructive(p: &RestoreParams, _: &std::path::Path, _: bool) -> bool {
        p.overwrite
    }

    fn check(p: &RestoreParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = p.into.problems(p.to.is_some());
        if let Some(to) = &p.to {
            problems.extend(to.problems("to"));
            for (set, key) in [
                (p.overwrite, "overwrite"),
                (p.jobs.is_some(), "jobs"),
                (p.no_owner, "no_owner"),
                (p.source_database.is_some(), "source_database"),
            ] {
                if set {
                    problems.push(Problem::new(
                        &[key],
                        format!("`{key}` is for restoring a logical backup into a database, not with `to:`"),
                    ));
                }
            }
        }
        problems
    }

    fn describe(p: &RestoreParams) -> String {
        describe(p)
    }

    fn reads(p: &RestoreParams) -> Option<&'static str> {
        if p.to.is_some() {
            return Some("which base backup and WAL the restore uses");
        }
        (p.backup == "latest").then_some("which backup `latest` is")
    }

    async fn probe<'a>(p: &'a RestoreParams, scope: Probe<'a>) -> Findings {
        let mut findings = if let Some(to) = &p.to {
            if let Some(dir) = &p.into.data_directory {
                let dir = std::path::Path::new(dir);
                super::pitr_directory::preview(
                    scope,
                    &p.repository,
                    &p.backup,
                    to,
                    dir,
                    p.into.delta,
                )
                .await
            } else {
                super::pitr::preview(scope, &p.repository, &p.backup, to).await
            }
        } else if p.backup != "latest" {
            Findings::default()
        } else {
            describe_latest(scope, &p.repository, p.source_database.as_deref()).await
        };
        findings
            .lines
            .extend(loading_programs(&scope, p.to.is_some(), false).await);
        findings
    }

    fn run(
        p: &RestoreParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

impl RestoreInto {
    /// What is wrong with this destination; `pitr` says whether the restore has `to:`.
    fn problems(&self, pitr: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&self.target, &self.data_directory) {
            (None, None) => problems.push(Problem::new(
                &["into"],
                if pitr {
                    "`into` needs a `target` (an ephemeral one) or a `data_directory`"
                } else {
                    "`into` needs the `target` and `database` to restore into"
                },
            )),
            (Some(_), Some(_)) => problems.push(Problem::new(
                &["into", "data_directory"],
                "`into` takes a `target` or a `data_directory`, not both",
            )),
            _ => {}
        }
        if (self.delta || self.force) && (self.data_directory.is_none() || !pitr) {
            problems.push(Problem::new(
                &["into", if self.delta { "delta" } else { "force" }],
                "`delta` and `force` rewrite an existing data directory: they go with `to:` and `into: { data_directory: … }`",
            ));
        }
        if self.delta_compare != DeltaCompare::Checksum && !self.delta {
            problems.push(Problem::new(
                &["into", "delta_compare"],
                "`delta_compare` says how a delta restore compares files: it goes with `delta: true`",
            ));
        }
        if self.force && !self.delta {
            problems.push(Problem::new(
                &["into", "force"],
                "`force` lets a delta restore rewrite another cluster's directory: it goes with `delta: true`",
            ));
        }
        for (old, new) in &self.tablespaces {
            if !old.starts_with('/') || !new.starts_with('/') {
                problems.push(Problem::new(
                    &["into", "tablespaces"],
                    format!("tablespace `{old}` → `{new}`: both must be absolute paths"),
                ));
            }
        }
        if let Some(dir) = &self.data_directory {
            if !pitr {
                problems.push(
                    Problem::new(
                        &["into", "data_directory"],
                        "a data directory is the destination of a point-in-time restore (`to:`) only",
                    )
                    .help("a logical backup restores into a `database` on a `target`"),
                );
            } else if !std::path::Path::new(dir).is_absolute() {
                problems.push(Problem::new(
                    &["into", "data_directory"],
                    format!("`{dir}` is not an absolute path; a data directory is named from the root (/var/lib/postgresql/15/restored)"),
                ));
            }
        } else if self.run_as.is_some() {
            problems.push(Problem::new(
                &["into", "run_as"],
                "`run_as` names the owner of a `data_directory`; an ephemeral target has its own `run_as`",
            ));
        }
        match (pitr, &self.database) {
            (false, None) if self.target.is_some() => problems.push(Problem::new(
                &["into", "database"],
                "`into` needs the `database` to restore into",
            )),
            (true, Some(_)) => problems.push(
                Problem::new(
                    &["into", "database"],
                    "a point-in-time restore (`to:`) recovers a whole cluster, not one database",
                )
                .help("remove `database`; the whole cluster becomes the recovered copy"),
            ),
            _ => {}
        }
        problems
    }

    /// The target's name, for the restores that go into one.
    fn target_name(&self) -> Result<&str, StepError> {
        self.target
            .as_deref()
            .ok_or_else(|| StepError::permanent("`into` names no target"))
    }
}

/// The default of `backup:`.
pub fn latest() -> String {
    "latest".into()
}

pub fn describe(p: &RestoreParams) -> String {
    if let Some(to) = &p.to {
        let which = if p.backup == "latest" {
            "the newest base backup that ends before the target".to_string()
        } else {
            format!("base backup {}", p.backup)
        };
        if let Some(dir) = &p.into.data_directory {
            let end = if to.latest {
                "prepared to replay the archived WAL to its end at the server's first start, which promotes it"
            } else {
                "the archived WAL replayed to the target and stopped there; the server's first start promotes it"
            };
            let into = if p.into.delta {
                format!(
                    "rewriting the stopped data directory {dir} in place (delta: only files and blocks that differ, {}{})",
                    match p.into.delta_compare {
                        DeltaCompare::Checksum => "every file compared by SHA-256",
                        DeltaCompare::Timestamp =>
                            "files of the backup's size and modification time taken as they are",
                    },
                    if p.into.force {
                        "; even another cluster's directory"
                    } else {
                        ""
                    }
                )
            } else {
                format!("into the new data directory {dir}")
            };
            let moved: Vec<String> = p
                .into
                .tablespaces
                .iter()
                .map(|(old, new)| format!("tablespace {old} → {new}"))
                .collect();
            return format!(
                "point-in-time restore from repository `{}` {into}: {which}, {end} ({}){}",
                p.repository,
                to.describe(),
                if moved.is_empty() {
                    String::new()
                } else {
                    format!("; {}", moved.join(", "))
                }
            );
        }
        return format!(
            "point-in-time restore from repository `{}` into the throwaway cluster of target `{}`: {which}, then the archived WAL replayed to {}; promoted there",
            p.repository,
            p.into.target.as_deref().unwrap_or_default(),
            to.describe()
        );
    }
    let which = if p.backup == "latest" {
        match &p.source_database {
            Some(db) => format!("the latest backup of `{db}`"),
            None => "the latest backup".to_string(),
        }
    } else {
        format!("backup {}", p.backup)
    };
    let mut s = format!(
        "restore {which} from repository `{}` into database `{}` on target `{}`",
        p.repository,
        p.into.database.as_deref().unwrap_or_default(),
        p.into.target.as_deref().unwrap_or_default()
    );
    if p.overwrite {
        s.push_str(
            ", replacing the database if it exists (restored beside it first, swapped in only when complete and checked)",
        );
    }
    if let Some(j) = p.jobs {
        s.push_str(&format!(", {j} jobs"));
    }
    s
}

/// Finds and checks the manifest of `backup` (an id or `latest`). A damaged manifest is an
/// error naming what is wrong, before anything is touched.
pub async fn resolve(
    store: &AnyStore,
    backup: &str,
    database: Option<&str>,
    repository: &str,
) -> Result<(Checked, Vec<(String, String)>), StepError> {
    if backup == "latest" {
        let (chosen, skipped) =
            listing::latest_and_skipped(store, database)
                .await
                .map_err(|e| {
                    crate::exec::io_error(&format!("cannot list repository `{repository}`"), &e)
                })?;
        let chosen = chosen.ok_or_else(|| {
            StepError::permanent(format!(
                "repository `{repository}` holds no published backup{}{}",
                database
                    .map(|d| format!(" of database `{d}`"))
                    .unwrap_or_default(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        " that is intact (damaged: {})",
                        listing::skipped_text(&skipped)
                    )
                }
            ))
        })?;
        return Ok((chosen, skipped));
    }
    listing::manifest(store, backup)
        .await
        .map(|c| (c, Vec::new()))
        .map_err(|e| StepError::permanent(e.to_string()))
}

/// Says in the log which newer backups `latest` passed over and why, and returns the
/// `skipped` output (empty when none was).
pub fn say_skipped(ctx: &StepContext, chosen: &str, skipped: &[(String, String)]) -> String {
    for (id, why) in skipped {
        ctx.events.notice(
            Some(&ctx.step_id),
            format!("`latest` is not the newest backup: {id} is newer but damaged ({why}); using {chosen}"),
        );
    }
    listing::skipped_text(skipped)
}

/// Restores beside, checks, then swaps (see [`crate::pg::swap`]): nothing happens to the
/// database being replaced until a complete restore has passed its checks.
pub async fn run(p: &RestoreParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    if let Some(to) = &p.to {
        if let Some(dir) = &p.into.data_directory {
            let request = super::pitr_directory::Request {
                repository: &p.repository,
                backup: &p.backup,
                data_directory: std::path::Path::new(dir),
                run_as: p.into.run_as.as_deref().unwrap_or("postgres"),
                to,
                delta: p.into.delta,
                trust_timestamps: p.into.delta_compare == DeltaCompare::Timestamp,
                force: p.into.force,
                tablespaces: &p.into.tablespaces,
            };
            return super::pitr_directory::run(&request, ctx).await;
        }
        let request = super::pitr::Request {
            repository: &p.repository,
            backup: &p.backup,
            target: p.into.target_name()?,
            to,
        };
        return super::pitr::run(&request, ctx).await;
    }
    let store = ctx.repository(&p.repository).await?;
    let (checked, skipped) = resolve(
        &store,
        &p.backup,
        p.source_database.as_deref(),
        &p.repository,
    )
    .await?;
    let skipped = say_skipped(ctx, &checked.manifest.backup_id, &skipped);
    listing::files_present(&store, &checked)
        .await
        .map_err(|e| crate::exec::io_error("before restoring", &e))?;
    let mut manifest = checked.manifest;
    // Before the target is touched: without the right key there is nothing to restore.
    ctx.unseal(&mut manifest)?;
    let database = p
        .into
        .database
        .as_deref()
        .ok_or_else(|| StepError::permanent("`into` names no database"))?;
    let target = p.into.target_name()?;
    let mut server = maintenance(ctx.target_url(target)?, database, target).await?;
    swap::lock(&mut server.conn, database, target).await?;
    for leftover in swap::clean_leftovers(&mut server.conn, database).await? {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!("removed `{leftover}`, left by an interrupted restore into `{database}`"),
        );
    }
    let existing = db::exists(&mut server.conn, database).await?;
    if existing && !p.overwrite && !db::is_empty(&server.info.with_database(database)).await? {
        return Err(StepError {
            kind: ErrorKind::Refused,
            message: format!(
                "database `{database}` on target `{target}` exists and is not empty; nothing was touched. Set `overwrite: true` to replace it"
            ),
        });
    }
    let staging = swap::staging_name(database);
    db::create(&mut server.conn, &staging, existing.then_some(database)).await?;
    let clock = Instant::now();
    let restored = restore_and_check(ctx, &store, &manifest, &server, &staging, p).await;
    let swapped = match restored {
        Ok(()) => swap::promote(&mut server.conn, database).await,
        Err(e) => Err(e),
    };
    if let Err(e) = swapped {
        let cleanup = match db::drop(&mut server.conn, &staging).await {
            Ok(()) => format!("`{database}` was not touched"),
            Err(_) => format!(
                "`{database}` was not touched; the partial restore `{staging}` could not be dropped now and is removed by the next restore into `{database}`"
            ),
        };
        // A restore failed by the destination (a role, an extension) is the operator's to
        // mend there: say what is missing before pg_restore's own words.
        let cause = match restore::environment_problem(&e.message) {
            Some(cause) if cause.contains("role") => format!(
                "{cause}: create it there, or set `no_owner: true` to restore without owners and grants; "
            ),
            Some(cause) => format!("{cause}; "),
            None => String::new(),
        };
        return Err(StepError {
            message: format!("{cause}{}; {cleanup}", e.message),
            ..e
        });
    }
    let _ = server.conn.close().await;
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), manifest.backup_id.clone());
    outputs.insert("database".into(), database.to_string());
    outputs.insert("replaced".into(), existing.to_string());
    outputs.insert("skipped".into(), skipped);
    outputs.insert(
        "duration_ms".into(),
        clock.elapsed().as_millis().to_string(),
    );
    Ok(outputs)
}

/// A connection for creating, renaming and dropping databases: to the target's own
/// database unless that is the one being replaced (a session cannot rename or drop the
/// database it is in), then to `postgres` (or `template1` when `postgres` is replaced).
async fn maintenance(url: &str, database: &str, target: &str) -> Result<Server, StepError> {
    let what = format!("target `{target}`");
    let server = connect(url, None, &what).await?;
    if server.database != database
        && server.database != swap::staging_name(database)
        && server.database != swap::replaced_name(database)
    {
        return Ok(server);
    }
    let _ = server.conn.close().await;
    let other = if database == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    connect(url, Some(other), &what).await
}

/// Streams the backup into the staging database, then compares its row counts with the
/// manifest's fingerprints where the backup recorded them.
async fn restore_and_check(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    server: &Server,
    staging: &str,
    p: &RestoreParams,
) -> Result<(), StepError> {
    let into = server.info.with_database(staging);
    let wanted = manifest.fingerprint != FingerprintMode::None && !manifest.fingerprints.is_empty();
    let early = wanted.then(|| fingerprint::EarlyCounts::start(into.clone(), p.jobs.unwrap_or(1)));
    restore::restore(
        ctx,
        store,
        manifest,
        &into,
        server.major,
        p.jobs,
        p.no_owner,
        early.as_ref(),
    )
    .await?;
    let Some(early) = early else {
        return Ok(());
    };
    let counted = early
        .finish()
        .await
        .map_err(|e| classify(&e, "counting the restored rows failed"))?;
    let actual = fingerprint::count_rows(&into, p.jobs.unwrap_or(1), counted)
        .await
        .map_err(|e| classify(&e, "counting the restored rows failed"))?;
    // Row counts only: content hashes cost a full read of every table, verify's job.
    let expected: std::collections::BTreeMap<_, _> = manifest
        .fingerprints
        .iter()
        .map(|(t, f)| {
            (
                t.clone(),
                TableFingerprint {
                    rows: f.rows,
                    hash: None,
                },
            )
        })
        .collect();
    let problems = fingerprint::compare(&expected, &actual);
    if problems.is_empty() {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!(
                "row counts of {} match the backup",
                crate::diag::count(actual.len(), "table")
            ),
        );
        Ok(())
    } else {
        Err(StepError::permanent(format!(
            "the restored database does not match the backup: {}",
            problems.join("; ")
        )))
    }
}

/// Which backup `latest` stands for right now, for the previews of restore and verify.
/// The preview's lines on the programs a restore (or a verify's test restore) runs.
/// `verify`: whether its test restore in a throwaway cluster runs under the backup's own
/// major (a restore stays in the target's cluster, for the steps after it).
pub async fn loading_programs(scope: &Probe<'_>, pitr: bool, verify: bool) -> Vec<String> {
    use super::probe::{Uses, programs};
    if pitr {
        return programs(scope, &["postgres"], Uses::Cluster).await;
    }
    let mut lines = programs(scope, &["pg_restore", "psql"], Uses::Loading).await;
    if verify && matches!(scope.target, super::probe::TargetView::Ephemeral) {
        let search = crate::pg::tools::Search::new(scope.pg_bin_dirs.to_vec());
        lines.push(format!(
            "programs: the test restore runs in a throwaway cluster of the backup's own major when that server is installed (installed: {})",
            search
                .majors("initdb")
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    lines
}

pub async fn describe_latest(
    scope: Probe<'_>,
    repository: &str,
    database: Option<&str>,
) -> Findings {
    const UNKNOWN: &str = "which backup `latest` is unknown";
    let store = match scope.open(repository, UNKNOWN).await {
        Ok(store) => store,
        Err(unread) => return Findings::unread(unread),
    };
    match listing::latest_and_skipped(&store, database).await {
        Err(e) => Findings::unread(Unread::repository(repository, e.to_string(), UNKNOWN)),
        Ok((None, _)) => vec![format!(
            "latest: repository `{repository}` holds no published backup{}; apply will fail unless one is made first",
            database
                .map(|d| format!(" of database `{d}`"))
                .unwrap_or_default()
        )]
        .into(),
        Ok((Some(checked), skipped)) => {
            let m = &checked.manifest;
            let mut lines = vec![format!(
                "latest is {} (database {}, created {}, {} bytes)",
                m.backup_id,
                m.database,
                m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                m.total_bytes()
            )];
            if !skipped.is_empty() {
                lines.push(format!(
                    "not the newest backup: newer ones are damaged and are passed over ({})",
                    listing::skipped_text(&skipped)
                ));
            }
            if let Some(e) = &m.encryption {
                lines.push(format!(
                    "encrypted with age to {}: apply needs --identity FILE or {}",
                    e.recipients.join(", "),
                    crate::repo::crypto::IDENTITY_ENV
                ));
            }
            lines.into()
        }
    }
}
