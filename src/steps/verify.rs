//! `verify`: checks a backup by name — manifest, every file's size and SHA-256, the
//! archive's table of contents — and with `restore_into` restores it into a scratch
//! database, compares the table fingerprints with the manifest's and drops the scratch
//! database again (also when something failed).

use super::probe::{Findings, Probe};
use super::restore::resolve;
use super::restore::{Destination, latest};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream, Verdict};
use crate::exec::{StepContext, StepError};
use crate::pg::cluster::EphemeralCluster;
use crate::pg::database as db;
use crate::pg::process::PgProcess;
use crate::pg::server::classify;
use crate::pg::server::{connect, tool};
use crate::pg::tools::Want;
use crate::pg::{fingerprint, restore};
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::AnyStore;
use crate::repo::listing;
use crate::repo::manifest::{DumpFormat, FingerprintMode, Manifest, Verification};
use crate::repo::pipeline;
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::future::Future;
use std::time::Instant;
use tokio::io::AsyncReadExt;

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
    /// fingerprints with the manifest's, then drop it. With `to:`, an ephemeral target
    /// (no database): the whole cluster is recovered there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_into: Option<Destination>,
    /// Point-in-time verify: recover the newest base backup (or `backup`) and the archived
    /// WAL to this point in `restore_into`'s throwaway cluster, then check it with
    /// `pg_amcheck`, and for a `mark` compare its tables with the mark's fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<super::pitr::PointInTime>,
    /// Parallel pg_restore workers for the test restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// The oldest the backup may be (e.g. `26h`): an older one fails the `age` check, and
    /// the run exits 5 ("backup too old") unless a backup is also corrupt (exit 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<crate::plan::duration::HumanDuration>,
    /// Record the outcome beside the backup (`verification.json`, which prune relies on).
    /// `false` leaves the repository untouched, so a drill needs only read access.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub record: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

pub struct Verify;

impl StepType for Verify {
    const NAME: &'static str = "verify";
    type Params = VerifyParams;
    const OUTPUTS: &'static [&'static str] = &[
        "backup_id",
        "checks",
        "restore_duration_ms",
        "backup_age_s",
        "reached_time",
        "rpo_s",
        "skipped",
    ];
    const TARGET_PATH: &'static [&'static str] = &["restore_into", "target"];

    fn target(p: &VerifyParams) -> Option<&str> {
        p.restore_into.as_ref().map(|n| n.target.as_str())
    }

    fn repository(p: &VerifyParams) -> Option<&str> {
        Some(&p.repository)
    }

    /// The scratch database on the target. The repository is not locked: a verify only adds
    /// its record beside a published backup, and holding the repository through an hour of
    /// test restore would hold up the next backup.
    fn writes_target(p: &VerifyParams) -> bool {
        p.restore_into.is_some()
    }

    fn jobs(p: &VerifyParams) -> Option<u32> {
        p.jobs
    }

    fn check(p: &VerifyParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&p.to, &p.restore_into) {
            (None, Some(ns)) if ns.database.is_none() => problems.push(Problem::new(
                &["restore_into", "database"],
                "`restore_into` needs the scratch `database` to restore into",
            )),
            (Some(_), None) => problems.push(Problem::new(
                &["restore_into"],
                "a point-in-time verify (`to:`) recovers into `restore_into: { target: EPHEMERAL }`",
            )),
            (Some(_), Some(ns)) if ns.database.is_some() => problems.push(Problem::new(
                &["restore_into", "database"],
                "a point-in-time verify recovers a whole cluster, not one database: remove `database`",
            )),
            _ => {}
        }
        if let Some(to) = &p.to {
            problems.extend(to.problems("to"));
            if p.jobs.is_some() {
                problems.push(Problem::new(
                    &["jobs"],
                    "`jobs` is for a logical test restore, not with `to:`",
                ));
            }
        }
        problems
    }

    fn describe(p: &VerifyParams) -> String {
        describe(p)
    }

    fn reads(p: &VerifyParams) -> Option<&'static str> {
        if p.to.is_some() {
            return Some("which base backup and WAL the verify uses");
        }
        (p.backup == "latest").then_some("which backup `latest` is")
    }

    async fn probe<'a>(p: &'a VerifyParams, scope: Probe<'a>) -> Findings {
        let mut findings = if let Some(to) = &p.to {
            super::pitr::preview(scope, &p.repository, &p.backup, to).await
        } else if p.backup != "latest" {
            Findings::default()
        } else {
            super::restore::describe_latest(scope, &p.repository, None).await
        };
        if p.restore_into.is_some() {
            findings
                .lines
                .extend(super::restore::loading_programs(&scope, p.to.is_some(), true).await);
        }
        findings
    }

    fn run(
        p: &VerifyParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

pub fn describe(p: &VerifyParams) -> String {
    if let (Some(to), Some(ns)) = (&p.to, &p.restore_into) {
        let which = if p.backup == "latest" {
            "the newest base backup that ends before the point".to_string()
        } else {
            format!("base backup {}", p.backup)
        };
        let mut s = format!(
            "point-in-time verify in repository `{}`: recover {which} and the archived WAL to {} in the throwaway cluster of target `{}`, then pg_amcheck every database",
            p.repository,
            to.describe(),
            ns.target
        );
        if let Some(age) = p.max_age {
            s.push_str(&format!("; fail if the base backup is older than {age}"));
        }
        if !p.record {
            s.push_str("; record nothing in the repository");
        }
        return s;
    }
    let which = if p.backup == "latest" {
        "the latest backup".to_string()
    } else {
        format!("backup {}", p.backup)
    };
    let mut s = format!(
        "verify {which} in repository `{}`: manifest, file sizes and SHA-256, archive contents",
        p.repository
    );
    if let Some(ns) = &p.restore_into {
        s.push_str(&format!(
            "; test-restore into scratch database `{}` on target `{}`, compare fingerprints, drop it",
            ns.database.as_deref().unwrap_or_default(),
            ns.target
        ));
    }
    if let Some(age) = p.max_age {
        s.push_str(&format!("; fail if older than {age}"));
    }
    if !p.record {
        s.push_str("; record nothing in the repository");
    }
    s
}

struct Checks {
    results: Vec<(&'static str, Result<String, String>)>,
}

impl Checks {
    fn record(&mut self, ctx: &StepContext, name: &'static str, result: Result<String, String>) {
        let line = match &result {
            Ok(detail) => format!(
                "check {name}: pass{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
            Err(e) => format!("check {name}: FAIL: {e}"),
        };
        ctx.events.output(&ctx.step_id, Stream::Stdout, line);
        self.results.push((name, result));
    }

    fn summary(&self) -> String {
        self.results
            .iter()
            .map(|(n, r)| format!("{n}={}", if r.is_ok() { "pass" } else { "fail" }))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A backup is corrupt when any check but `age` failed.
    fn verdict(&self) -> Option<Verdict> {
        let failed = |name: &str| self.results.iter().any(|(n, r)| *n == name && r.is_err());
        if self.results.iter().any(|(n, r)| *n != "age" && r.is_err()) {
            Some(Verdict::BackupCorrupt)
        } else if failed("age") {
            Some(Verdict::BackupTooOld)
        } else {
            None
        }
    }

    fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect()
    }
}

pub async fn run(p: &VerifyParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    if let (Some(to), Some(ns)) = (&p.to, &p.restore_into) {
        let request = super::pitr::Request {
            repository: &p.repository,
            backup: &p.backup,
            target: &ns.target,
            to,
        };
        return super::pitr_verify::run(&request, p.max_age.map(|d| d.0), p.record, ctx).await;
    }
    let store = ctx.repository(&p.repository).await?;
    let mut checks = Checks {
        results: Vec::new(),
    };
    // A damaged manifest fails here, before anything reads the files it names.
    let (checked, skipped) = match resolve(&store, &p.backup, None, &p.repository).await {
        Ok(c) => c,
        Err(e) => {
            checks.record(ctx, "manifest", Err(e.message.clone()));
            let message = format!("verify failed: manifest: {}", e.message);
            // A manifest that is there but cannot be trusted is a damaged backup; no backup
            // at all, or a repository that cannot be read, is not a verdict on one.
            return Err(if manifest_damaged(&store, &p.backup).await {
                StepError::verdict(Verdict::BackupCorrupt, message)
            } else {
                StepError { message, ..e }
            });
        }
    };
    let skipped = super::restore::say_skipped(ctx, &checked.manifest.backup_id, &skipped);
    let age_s = (Utc::now() - checked.manifest.created_at)
        .num_seconds()
        .max(0) as u64;
    ctx.events.measured(&ctx.step_id, "backup_age_s", age_s);
    // The scratch database is checked before anything else: one left by an earlier run is
    // a problem of this plan, not of the backup.
    if let Some(ns) = &p.restore_into {
        let database = ns
            .database
            .as_deref()
            .ok_or_else(|| StepError::permanent("`restore_into` names no database"))?;
        scratch_is_free(ctx, &ns.target, database).await?;
    }
    let mut manifest = checked.manifest.clone();
    // An encrypted backup checked without a key and without a test restore (a copy
    // verified where the key is not, as plans/offsite.yaml does): every stored file is
    // checked against its SHA-256, which needs no key; what only the key opens (the
    // archive's contents) is said to be unread.
    let sealed_only =
        manifest.encryption.is_some() && ctx.identities.is_none() && p.restore_into.is_none();
    // Without the right key nothing else can be checked; that is a configuration problem,
    // not a verdict on the backup, so no verification is recorded.
    if !sealed_only && let Err(e) = ctx.unseal(&mut manifest) {
        checks.record(ctx, "manifest", Err(e.message.clone()));
        return Err(e);
    }
    checks.record(
        ctx,
        "manifest",
        Ok(format!(
            "{}, {} bytes{}",
            crate::diag::count(manifest.files.len(), "file"),
            manifest.total_bytes(),
            if sealed_only {
                "; its encrypted part not read (no --identity)"
            } else {
                ""
            }
        )),
    );

    if let Some(max) = p.max_age {
        checks.record(ctx, "age", age_check(age_s, max));
    }

    let files_ok = check_files(ctx, &store, &manifest, &p.repository, &mut checks).await?;

    // The rest reads the archive; with damaged files that can only fail in confusing ways.
    let mut restore_ms = None;
    if files_ok && sealed_only {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            "archive: not read (the backup is encrypted and no --identity was given); the stored files were checked".into(),
        );
    } else if files_ok {
        let toc = archive_contents(ctx, &store, &manifest).await;
        let toc_ok = toc.is_ok();
        if let Err(e) = &toc
            && let Some(cause) = restore::environment_problem(e)
        {
            checks.record(ctx, "archive", toc.clone());
            return Err(no_verdict(
                &manifest.backup_id,
                "read its archive",
                cause,
                e,
            ));
        }
        checks.record(ctx, "archive", toc);
        if let (Some(ns), true, false) =
            (&p.restore_into, toc_ok, manifest.format == DumpFormat::Rows)
        {
            restore_ms =
                restore_and_compare(ctx, &store, &manifest, ns, p.jobs, &mut checks).await?;
        }
    }

    let failures = checks.failures();
    let verdict = checks.verdict();
    // Prune relies on these records: the newest verified backup is kept, and nothing is
    // deleted after a failed verification. Age says nothing about the backup itself, so a
    // backup that is only too old is recorded as passed.
    let record = Verification {
        verified_at: Utc::now(),
        passed: verdict != Some(Verdict::BackupCorrupt),
        restored: checks
            .results
            .iter()
            .any(|(n, r)| *n == "fingerprints" && r.is_ok()),
        checks: checks.summary(),
        run_id: ctx.run_id.clone(),
        manifest_sha256: None,
        seal: None,
    };
    if p.record {
        listing::record(&store, &checked, record)
            .await
            .map_err(|e| {
                StepError::transient(format!(
                    "cannot record the verification of {}: {e}",
                    manifest.backup_id
                ))
            })?;
    }
    if let Some(verdict) = verdict {
        return Err(StepError::verdict(
            verdict,
            format!(
                "verify of {} failed: {}",
                manifest.backup_id,
                failures.join("; ")
            ),
        ));
    }
    // `latest` is asked to prove the newest backup: a newer one that is damaged is a
    // damaged backup in the repository, whatever the older one's checks say (that one
    // passed, and is recorded so).
    if !skipped.is_empty() {
        return Err(StepError::verdict(
            Verdict::BackupCorrupt,
            format!(
                "verify of `latest`: newer backups are damaged ({skipped}); {}, the newest intact one, passed",
                manifest.backup_id
            ),
        ));
    }
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), manifest.backup_id.clone());
    outputs.insert("skipped".into(), skipped);
    outputs.insert("checks".into(), checks.summary());
    outputs.insert(
        "restore_duration_ms".into(),
        restore_ms.map(|m| m.to_string()).unwrap_or_default(),
    );
    outputs.insert("backup_age_s".into(), age_s.to_string());
    Ok(outputs)
}

/// The `age` check: how old the backup is against `max_age`. Age says nothing about the
/// backup itself.
fn age_check(age_s: u64, max: crate::plan::duration::HumanDuration) -> Result<String, String> {
    let shown = crate::plan::duration::format(std::time::Duration::from_secs(age_s));
    if age_s > max.0.as_secs() {
        Err(format!(
            "the backup is {shown} old, older than max_age {max}: are backups still being made?"
        ))
    } else {
        Ok(format!("{shown} old, at most {max}"))
    }
}

/// The `files` check: every stored file against the manifest's size and SHA-256; whether
/// all passed. A repository that cannot be read just now says nothing about the backup:
/// that fails the step without a verdict (a retry may read it), nothing recorded.
async fn check_files(
    ctx: &StepContext,
    store: &crate::repo::AnyStore,
    manifest: &crate::repo::manifest::Manifest,
    repository: &str,
    checks: &mut Checks,
) -> Result<bool, StepError> {
    let mut file_problems = Vec::new();
    for entry in &manifest.files {
        match pipeline::check(store, &manifest.backup_id, entry).await {
            Ok(()) => {}
            Err(e) if pipeline::is_damage(&e) => file_problems.push(e.to_string()),
            Err(e) => {
                checks.record(ctx, "files", Err(format!("could not be read: {e}")));
                return Err(StepError::transient(format!(
                    "verify of {} could not read it from repository `{repository}` ({e}); no verdict on the backup",
                    manifest.backup_id
                )));
            }
        }
    }
    let files_ok = file_problems.is_empty();
    checks.record(
        ctx,
        "files",
        if files_ok {
            Ok(String::new())
        } else {
            Err(file_problems.join("; "))
        },
    );
    Ok(files_ok)
}

/// The `restore` and `fingerprints` checks: a test restore into the scratch database and
/// the comparison with what the backup recorded; the restore's time when it restored.
async fn restore_and_compare(
    ctx: &StepContext,
    store: &crate::repo::AnyStore,
    manifest: &crate::repo::manifest::Manifest,
    ns: &Destination,
    jobs: Option<u32>,
    checks: &mut Checks,
) -> Result<Option<u128>, StepError> {
    let clock = Instant::now();
    let database = ns.database.as_deref().unwrap_or_default();
    let (url, own) = scratch_server(ctx, &ns.target, manifest).await?;
    let restored = test_restore(ctx, store, manifest, (&url, &ns.target), database, jobs).await;
    if let Some(cluster) = own {
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
    match restored {
        Ok(result) => {
            ctx.events.measured(
                &ctx.step_id,
                "restore_duration_ms",
                clock.elapsed().as_millis() as u64,
            );
            checks.record(
                ctx,
                "restore",
                Ok(format!("{} ms", clock.elapsed().as_millis())),
            );
            checks.record(ctx, "fingerprints", result);
            Ok(Some(clock.elapsed().as_millis()))
        }
        Err(e) if e.kind == crate::exec::ErrorKind::Cancelled => Err(e),
        // The stored files matched their checksums: a restore that failed for the
        // destination's or the tools' sake says nothing about the backup.
        Err(e)
            if e.kind == crate::exec::ErrorKind::Transient
                || restore::environment_problem(&e.message).is_some() =>
        {
            checks.record(ctx, "restore", Err(e.message.clone()));
            let cause = restore::environment_problem(&e.message)
                .unwrap_or("the destination failed in a way that may pass on a retry");
            Err(StepError {
                message: no_verdict(&manifest.backup_id, "test-restore it", cause, &e.message)
                    .message,
                ..e
            })
        }
        Err(e) => {
            checks.record(ctx, "restore", Err(e.message));
            Ok(None)
        }
    }
}

/// A verify that could not do its work for a reason outside the backup: the step fails
/// (exit 1), and no verification is recorded, since nothing was learnt about the backup.
fn no_verdict(backup_id: &str, what: &str, cause: &str, detail: &str) -> StepError {
    StepError::permanent(format!(
        "verify of {backup_id} could not {what}: {cause}. This is not a verdict on the backup (its files match their checksums); nothing was recorded. {detail}"
    ))
}

/// Whether `backup` has a manifest that failed to load (rather than none at all).
async fn manifest_damaged(store: &AnyStore, backup: &str) -> bool {
    match listing::list(store).await {
        Ok(entries) => {
            entries
                .iter()
                .any(|e| e.backup.is_err() && (backup == "latest" || e.id == backup))
                && (backup != "latest" || entries.iter().all(|e| e.backup.is_err()))
        }
        Err(_) => false,
    }
}

async fn scratch_is_free(ctx: &StepContext, target: &str, database: &str) -> Result<(), StepError> {
    let mut server = connect(ctx.target_url(target)?, None, &format!("target `{target}`")).await?;
    // One of ours (an interrupted verify's, removed before the test restore) does not count.
    let taken = match db::exists(&mut server.conn, database).await {
        Ok(true) => SCRATCH
            .is_marked(&mut server.conn, database)
            .await
            .map(|ours| !ours),
        other => other,
    };
    let _ = server.conn.close().await;
    if taken? {
        return Err(StepError::permanent(format!(
            "scratch database `{database}` already exists on target `{target}`; nothing was checked. verify only restores into a new database (e.g. `verify_{{{{ run.id }}}}`)"
        )));
    }
    Ok(())
}

/// Lists the archive's table of contents with `pg_restore --list` (plain dumps: reads the
/// whole script through decompression). Returns a short description.
async fn archive_contents(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
) -> Result<String, String> {
    match manifest.format {
        DumpFormat::Rows => crate::pg::rows::count_stored(ctx, store, manifest).await,
        DumpFormat::Base => {
            let dir = tempfile::Builder::new()
                .prefix("opsrunner-verify-")
                .tempdir()
                .map_err(|e| format!("cannot create a directory to extract into: {e}"))?;
            let chain = crate::repo::listing::base_chain(store, manifest).await?;
            let files = crate::pg::unpack::restore_base(ctx, store, &chain, dir.path(), None, &[])
                .await
                .map_err(|e| e.message)?;
            let file_level = manifest
                .base
                .as_ref()
                .is_some_and(|b| b.method == crate::repo::manifest::BaseMethod::Files);
            Ok(if file_level {
                format!("{files} files written, each checked against its SHA-256")
            } else {
                format!("{files} files extracted, each as the server's backup_manifest records it")
            })
        }
        DumpFormat::Plain => {
            // The files were checked already; the verdict is not waited for.
            let pipeline::Loaded { mut reader, .. } = pipeline::load(
                store,
                manifest,
                &manifest.files[0].name,
                ctx.identities.as_ref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf).await.map_err(|e| {
                    format!("{}: decompression failed: {e}", manifest.files[0].name)
                })?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            Ok(format!("SQL script, {total} bytes"))
        }
        DumpFormat::Custom | DumpFormat::Directory => {
            let pg_restore = tools_for(ctx, manifest).map_err(|e| e.message)?;
            let list = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
            let list_arg = format!("--file={}", list.path().display());
            let result = if manifest.format == DumpFormat::Custom {
                let process = PgProcess::spawn(
                    &pg_restore,
                    &["--list".into(), list_arg],
                    ctx,
                    |_| {},
                    true,
                    false,
                )
                .map_err(|e| e.message)?;
                restore::feed(
                    ctx,
                    store,
                    manifest,
                    &manifest.files[0].name,
                    process,
                    false,
                )
                .await
            } else {
                let spool = tempfile::tempdir().map_err(|e| e.to_string())?;
                let dir = restore::unpack_directory(ctx, store, manifest, spool.path())
                    .await
                    .map_err(|e| e.message)?;
                let args = vec![
                    "--list".into(),
                    "--format=directory".into(),
                    list_arg,
                    dir.display().to_string(),
                ];
                PgProcess::spawn(&pg_restore, &args, ctx, |_| {}, false, false)
                    .map_err(|e| e.message)?
                    .finish(ctx)
                    .await
            };
            result.map_err(|e| e.message)?;
            let text = std::fs::read_to_string(list.path()).map_err(|e| e.to_string())?;
            let entries = text
                .lines()
                .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
                .count();
            let data = text.lines().filter(|l| l.contains(" TABLE DATA ")).count();
            Ok(format!("{entries} entries, {data} with table data"))
        }
    }
}

fn tools_for(ctx: &StepContext, manifest: &Manifest) -> Result<std::path::PathBuf, StepError> {
    tool(ctx, "pg_restore", Want::Client(manifest.pg_dump_major())).map(|f| f.path)
}

/// A verify's scratch database: what its comment starts with, from its creation until it
/// is dropped, is how a later verify recognises one that a killed run left behind.
const SCRATCH: db::Scratch = db::Scratch {
    mark: "opsrunner verify scratch database",
    purpose: "verify",
    ended_by: "the verify",
};

/// Where a test restore goes: the target's server, or — when the target is ephemeral and
/// its throwaway cluster runs another major than the server the backup was taken from —
/// a throwaway cluster of the backup's own major, for this step alone, when that server
/// is installed: a restore is proven where it would be needed, with the same extensions
/// and behaviour. The cluster (if any) is the caller's to drop.
async fn scratch_server(
    ctx: &StepContext,
    target: &str,
    manifest: &Manifest,
) -> Result<(String, Option<EphemeralCluster>), StepError> {
    let url = ctx.target_url(target)?.to_string();
    let major = manifest.server_major();
    let Some(dir) = ctx
        .ephemeral
        .get(target)
        .filter(|d| d.major != major && major > 0)
    else {
        return Ok((url, None));
    };
    let search = crate::pg::tools::Search::new(ctx.pg_bin_dirs.clone());
    if search.find("initdb", Want::Exact(major)).is_err() {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!(
                "the backup is of PostgreSQL {major}, whose server is not installed: restoring into the throwaway cluster of `{target}` (PostgreSQL {})",
                dir.major
            ),
        );
        return Ok((url, None));
    }
    let run_as = dir.run_as.clone();
    let cluster =
        tokio::task::spawn_blocking(move || EphemeralCluster::start_major(&run_as, &search, major))
            .await
            .map_err(|e| {
                StepError::permanent(format!("starting a PostgreSQL {major} cluster: {e}"))
            })?
            .map_err(|e| {
                StepError::permanent(format!("starting a PostgreSQL {major} cluster: {e}"))
            })?;
    ctx.events.output(
        &ctx.step_id,
        Stream::Stdout,
        format!(
            "the backup is of PostgreSQL {major}: restoring into a throwaway PostgreSQL {major} cluster instead of `{target}`'s PostgreSQL {}",
            dir.major
        ),
    );
    Ok((cluster.url("postgres"), Some(cluster)))
}

/// Restores into a new scratch database, compares fingerprints, and drops it whatever
/// happened. The outer result is the restore; the inner one the fingerprint comparison.
async fn test_restore(
    ctx: &StepContext,
    store: &AnyStore,
    manifest: &Manifest,
    (url, target): (&str, &str),
    database: &str,
    jobs: Option<u32>,
) -> Result<Result<String, String>, StepError> {
    let mut server = connect(url, None, &format!("target `{target}`")).await?;
    // Held until the scratch database is dropped (or the connection closes, when the run
    // is killed): what tells a scratch database in use from one left behind.
    if !SCRATCH.try_lock(&mut server.conn, database).await? {
        return Err(StepError::transient(format!(
            "another verify is using scratch database `{database}` on target `{target}`; nothing was checked"
        )));
    }
    for leftover in SCRATCH.remove_left(&mut server.conn).await? {
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!("removed scratch database `{leftover}` on target `{target}`, left by an interrupted verify"),
        );
    }
    if db::exists(&mut server.conn, database).await? {
        return Err(StepError::permanent(format!(
            "scratch database `{database}` already exists on target `{target}`; verify only restores into a new database (e.g. `verify_{{{{ run.id }}}}`)"
        )));
    }
    db::create(&mut server.conn, database, None).await?;
    SCRATCH
        .mark(&mut server.conn, database, &ctx.run_id)
        .await?;
    let into = server.info.with_database(database);
    let outcome = async {
        restore::restore(ctx, store, manifest, &into, server.major, jobs, true, None).await?;
        if manifest.fingerprint == FingerprintMode::None {
            return Ok(Ok("not recorded in this backup".to_string()));
        }
        let mut conn = into.connect_to("the scratch database").await?;
        let actual = fingerprint::take(&mut conn, manifest.fingerprint, None)
            .await
            .map_err(|e| classify(&e, "fingerprinting the restore failed"))?;
        let _ = conn.close().await;
        let problems = fingerprint::compare(&manifest.fingerprints, &actual);
        Ok(if problems.is_empty() {
            Ok(format!(
                "{} {}",
                crate::diag::count(actual.len(), "table"),
                if actual.len() == 1 {
                    "matches"
                } else {
                    "match"
                }
            ))
        } else {
            Err(problems.join("; "))
        })
    }
    .await;
    // Cleanup happens even after a failed or cancelled restore.
    if let Err(e) = db::drop(&mut server.conn, database).await {
        tracing::warn!("dropping scratch database {database}: {e}");
    }
    SCRATCH.unlock(&mut server.conn, database).await;
    let _ = server.conn.close().await;
    outcome
}
