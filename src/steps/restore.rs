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
    /// Only these tables (`orders`, `sales.orders`, or `{ name: sales.orders, overwrite:
    /// true }`), with what hangs on them (sequences, defaults, indexes, constraints,
    /// triggers, grants), into the existing database `into` names — beside the live ones,
    /// in the schema `as`. `overwrite` on a table replaces the live table's rows instead.
    /// From a custom- or directory-format backup (or with `to:`, a base backup).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableSpec>,
    /// Every table of these schemas, as `tables`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// The new schema restored tables land in (default `restored_` and the backup's date,
    /// e.g. `restored_20261207`; with tables of several schemas, `AS_SCHEMA` each).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_schema: Option<String>,
}

/// A table to restore: its name, or its name and whether its rows replace the live ones.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum TableSpec {
    Name(String),
    Spec {
        name: String,
        /// Replace the live table's rows with the backup's (in one transaction; the live
        /// definition stays). Destructive: `--confirm` on a protected target.
        #[serde(default)]
        overwrite: bool,
    },
}

impl TableSpec {
    pub fn name(&self) -> &str {
        match self {
            TableSpec::Name(n) | TableSpec::Spec { name: n, .. } => n,
        }
    }

    pub fn overwrite(&self) -> bool {
        matches!(
            self,
            TableSpec::Spec {
                overwrite: true,
                ..
            }
        )
    }
}

impl RestoreParams {
    /// A restore of some tables rather than of a whole database.
    pub fn by_table(&self) -> bool {
        !self.tables.is_empty() || !self.schemas.is_empty()
    }
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
        "tables",
        "schema",
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
        p.overwrite || p.tables.iter().any(TableSpec::overwrite)
    }

    fn check(p: &RestoreParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = p.into.problems(p.to.is_some() && !p.by_table());
        for (i, t) in p.tables.iter().enumerate() {
            if let Err(e) = crate::pg::tables::parse_name(t.name()) {
                let index = i.to_string();
                problems.push(Problem::new(&["tables", &index], e));
            }
        }
        if p.by_table() {
            if p.overwrite {
                problems.push(
                    Problem::new(&["overwrite"], "with `tables`, `overwrite` is said per table")
                        .help("write `{ name: TABLE, overwrite: true }` for a table whose rows are replaced"),
                );
            }
            if p.to.is_some() && p.into.data_directory.is_some() {
                problems.push(Problem::new(
                    &["into", "data_directory"],
                    "tables recovered to a point in time go into a database (`into: { target, database }`), not a data directory",
                ));
            }
            if p.into.database.is_none() {
                problems.push(Problem::new(
                    &["into", "database"],
                    "tables are restored into a database: name it",
                ));
            }
        } else if p.as_schema.is_some() {
            problems.push(
                Problem::new(&["as"], "`as` names the schema restored `tables` land in")
                    .help("add `tables:` or `schemas:`, or remove `as`"),
            );
        }
        if let Some(to) = &p.to {
            problems.extend(to.problems("to"));
            // With `tables`, the recovered copy is a source of tables for a database.
            let by_table = p.by_table();
            for (set, key) in [
                (p.overwrite, "overwrite"),
                (p.jobs.is_some(), "jobs"),
                (p.no_owner && !by_table, "no_owner"),
                (p.source_database.is_some() && !by_table, "source_database"),
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
    if p.by_table() {
        let mut what: Vec<String> = p.tables.iter().map(|t| t.name().to_string()).collect();
        what.extend(
            p.schemas
                .iter()
                .map(|s| format!("every table of schema {s}")),
        );
        let overwritten: Vec<&str> = p
            .tables
            .iter()
            .filter(|t| t.overwrite())
            .map(TableSpec::name)
            .collect();
        return format!(
            "restore {} of backup {} from repository `{}` into database `{}` on target `{}`, with their sequences, indexes, constraints, triggers and grants, beside the live tables in the new schema {}{}",
            what.join(", "),
            p.backup,
            p.repository,
            p.into.database.as_deref().unwrap_or("?"),
            p.into.target.as_deref().unwrap_or("?"),
            p.as_schema
                .clone()
                .unwrap_or_else(|| "restored_<the backup's date>".into()),
            if overwritten.is_empty() {
                String::new()
            } else {
                format!(
                    "; then the rows of {} replace the live rows (the restored copies are dropped)",
                    overwritten.join(", ")
                )
            }
        );
    }
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
    if let (Some(to), true) = (&p.to, p.by_table()) {
        return tables_at(p, ctx, to).await;
    }
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
    if p.by_table() {
        return run_tables(p, ctx).await;
    }
    let (store, mut manifest, skipped) = chosen(p, ctx).await?;
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

/// The backup a logical restore uses, its files there and said, and the newer damaged
/// backups `latest` passed over.
async fn chosen(
    p: &RestoreParams,
    ctx: &StepContext,
) -> Result<
    (
        crate::repo::AnyStore,
        crate::repo::manifest::Manifest,
        String,
    ),
    StepError,
> {
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
    Ok((store, checked.manifest, skipped))
}

/// `tables:`: some tables of a custom- or directory-format backup into an existing database, beside
/// the live ones (see [`crate::pg::tables`]).
async fn run_tables(p: &RestoreParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let clock = Instant::now();
    let (store, mut manifest, skipped) = chosen(p, ctx).await?;
    ctx.unseal(&mut manifest)?;
    use crate::repo::manifest::DumpFormat;
    let why = match manifest.format {
        DumpFormat::Custom | DumpFormat::Directory => None,
        DumpFormat::Plain => Some(
            "a plain SQL script, which has no table of contents to choose tables from: tables are restored from a custom-format (the `backup` step's default) or directory-format backup",
        ),
        DumpFormat::Base => {
            Some("a base backup: its tables are restored to a point in time, with `to:`")
        }
        DumpFormat::Rows => Some("an export of rows: load it into a table with an `import` step"),
    };
    if let Some(why) = why {
        return Err(StepError::permanent(format!(
            "backup {} is {why}",
            manifest.backup_id
        )));
    }
    let database = p
        .into
        .database
        .as_deref()
        .ok_or_else(|| StepError::permanent("`into` names no database"))?;
    let target = p.into.target_name()?;
    let mut server = maintenance(ctx.target_url(target)?, database, target).await?;
    into_exists(&mut server.conn, database, target).await?;
    let as_schema = p
        .as_schema
        .clone()
        .unwrap_or_else(|| format!("restored_{}", manifest.created_at.format("%Y%m%d")));
    let spool = tempfile::Builder::new()
        .prefix("opsrunner-restore-")
        .tempdir()
        .map_err(|e| StepError::permanent(format!("cannot make a temporary directory: {e}")))?;
    let archive = if manifest.format == DumpFormat::Directory {
        restore::unpack_directory(ctx, &store, &manifest, spool.path()).await?
    } else {
        let archive = spool.path().join("archive.pgdump");
        restore::unpack_file(ctx, &store, &manifest, &manifest.files[0].name, &archive).await?;
        archive
    };
    let mut outputs = tables_into(
        p,
        ctx,
        &mut server,
        &archive,
        manifest.pg_dump_major(),
        &as_schema,
    )
    .await?;
    outputs.insert("backup_id".into(), manifest.backup_id.clone());
    outputs.insert("skipped".into(), skipped);
    outputs.insert(
        "duration_ms".into(),
        clock.elapsed().as_millis().to_string(),
    );
    Ok(outputs)
}

/// Tables are restored into a database that exists.
async fn into_exists(
    conn: &mut sqlx::PgConnection,
    database: &str,
    target: &str,
) -> Result<(), StepError> {
    if db::exists(conn, database).await? {
        return Ok(());
    }
    Err(StepError::permanent(format!(
        "database `{database}` does not exist on target `{target}`: tables are restored into an existing database (restore the whole backup to make one)"
    )))
}

/// The tables of the custom archive `archive` (written by a pg_dump of `archive_major`)
/// into the database `into` names, through [`crate::pg::tables::restore`].
async fn tables_into(
    p: &RestoreParams,
    ctx: &StepContext,
    server: &mut Server,
    archive: &std::path::Path,
    archive_major: u32,
    as_schema: &str,
) -> Result<Outputs, StepError> {
    let database = p
        .into
        .database
        .as_deref()
        .ok_or_else(|| StepError::permanent("`into` names no database"))?;
    let target = p.into.target_name()?;
    into_exists(&mut server.conn, database, target).await?;
    let wanted = p
        .tables
        .iter()
        .map(|t| {
            let (schema, name) =
                crate::pg::tables::parse_name(t.name()).map_err(StepError::permanent)?;
            Ok(crate::pg::tables::Wanted {
                schema,
                name,
                overwrite: t.overwrite(),
            })
        })
        .collect::<Result<Vec<_>, StepError>>()?;
    let into = server.info.with_database(database);
    let request = crate::pg::tables::Request {
        into: &into,
        database,
        tables: &wanted,
        schemas: &p.schemas,
        as_schema,
        no_owner: p.no_owner,
        archive_major,
        server_major: server.major,
    };
    let restored = crate::pg::tables::restore(ctx, archive, &request).await?;
    for note in &restored.left_out {
        ctx.events
            .output(&ctx.step_id, Stream::Stdout, note.clone());
    }
    for (table, rows) in &restored.tables {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!("{table}: {}", crate::diag::count(*rows as usize, "row")),
        );
    }
    let mut outputs = Outputs::new();
    outputs.insert("database".into(), database.to_string());
    outputs.insert(
        "tables".into(),
        restored
            .tables
            .iter()
            .map(|(t, _)| t.clone())
            .collect::<Vec<_>>()
            .join(" "),
    );
    outputs.insert("schema".into(), restored.schemas.join(" "));
    Ok(outputs)
}

/// `tables:` with `to:`: the base backup recovered to the moment in a throwaway cluster
/// of its major, the database dumped from it, its tables restored from that dump as from
/// a logical backup (the "someone deleted rows at 14:02" case, in one step).
async fn tables_at(
    p: &RestoreParams,
    ctx: &StepContext,
    to: &super::pitr::PointInTime,
) -> Result<Outputs, StepError> {
    const RECOVERY: &str = "(the recovered copy)";
    let clock = Instant::now();
    // Where the tables go is checked before anything is recovered.
    let target = p.into.target_name()?;
    let into_db = p
        .into
        .database
        .as_deref()
        .ok_or_else(|| StepError::permanent("`into` names no database"))?;
    let mut server = maintenance(ctx.target_url(target)?, into_db, target).await?;
    into_exists(&mut server.conn, into_db, target).await?;
    let store = ctx.repository(&p.repository).await?;
    let bases = listing::base_backups(&store)
        .await
        .map_err(|e| crate::exec::io_error("listing the base backups", &e))?;
    let chosen = match p.backup.as_str() {
        "latest" => bases.last(),
        id => bases.iter().find(|c| c.manifest.backup_id == id),
    }
    .ok_or_else(|| {
        StepError::permanent(format!(
            "repository `{}` holds no base backup {}",
            p.repository,
            if p.backup == "latest" { "" } else { &p.backup }
        ))
    })?;
    let major = chosen.manifest.server_major();
    let search = crate::pg::tools::Search::new(ctx.pg_bin_dirs.clone());
    let run_as = p.into.run_as.clone().unwrap_or_else(|| "postgres".into());
    let cluster = tokio::task::spawn_blocking(move || {
        crate::pg::cluster::EphemeralCluster::start_major(&run_as, &search, major)
    })
    .await
    .map_err(|e| StepError::permanent(format!("starting a throwaway cluster: {e}")))?
    .map_err(|e| {
        StepError::permanent(format!(
            "cannot start a throwaway PostgreSQL {major} cluster to recover into: {e}"
        ))
    })?;
    let mut inner = ctx.clone();
    inner.ephemeral.insert(RECOVERY.into(), cluster.handle());
    inner
        .targets
        .insert(RECOVERY.into(), cluster.url("postgres"));
    let request = super::pitr::Request {
        repository: &p.repository,
        backup: &p.backup,
        target: RECOVERY,
        to,
    };
    let recovered = super::pitr::run(&request, &inner).await?;
    let database = p
        .source_database
        .as_deref()
        .or(p.into.database.as_deref())
        .ok_or_else(|| StepError::permanent("`into` names no database"))?;
    let spool = tempfile::Builder::new()
        .prefix("opsrunner-restore-")
        .tempdir()
        .map_err(|e| StepError::permanent(format!("cannot make a temporary directory: {e}")))?;
    let archive = spool.path().join("recovered.pgdump");
    let pg_dump = crate::pg::server::tool(ctx, "pg_dump", crate::pg::tools::Want::Client(major))?;
    let source = crate::pg::conn::ConnInfo::parse(&cluster.url(database))?;
    crate::pg::process::PgProcess::spawn(
        &pg_dump.path,
        &[
            "--format=custom".into(),
            // Read once, from a local disk: compressing it would only cost CPU.
            "--compress=0".into(),
            "--no-sync".into(),
            format!("--file={}", archive.display()),
            format!("--dbname={}", source.public_url()),
        ],
        ctx,
        |c| source.apply_to(c),
        false,
        false,
    )?
    .finish(ctx)
    .await
    .map_err(|e| StepError {
        message: format!(
            "dumping database `{database}` of the recovered copy: {} (`source_database` names the database the tables are in)",
            e.message
        ),
        ..e
    })?;
    let reached = recovered.get("reached_time").cloned().unwrap_or_default();
    let as_schema = p.as_schema.clone().unwrap_or_else(|| {
        let at = chrono::DateTime::parse_from_rfc3339(&reached)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y%m%d_%H%M%S")
                    .to_string()
            })
            .unwrap_or_else(|_| chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string());
        format!("restored_{at}")
    });
    let mut outputs = tables_into(p, ctx, &mut server, &archive, major, &as_schema).await?;
    drop(cluster);
    for key in [
        "backup_id",
        "reached_lsn",
        "reached_time",
        "timeline",
        "wal_segments",
    ] {
        if let Some(v) = recovered.get(key) {
            outputs.insert(key.into(), v.clone());
        }
    }
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
