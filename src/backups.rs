//! `opsrunner backups list|show|prune`: what a repository holds, for people and for machines,
//! and deleting what a retention policy does not keep (the `prune` step's own path).

use crate::exit::Failure;
use crate::plan::{self, PlanSource};
use crate::repo::listing::{self, Listed, Trust};
use crate::repo::manifest::{Manifest, Verification};
use crate::repo::{self, BackupStore};
use chrono::Utc;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// A repository given on the command line: a URL, or the name of one a plan declares
/// (rendered against the environment), with the directory relative paths are resolved in.
pub fn repository_definition(
    repository: &str,
    plan_file: Option<&Path>,
) -> Result<(crate::plan::model::Repository, std::path::PathBuf), Failure> {
    if repository.contains("://") {
        // Endpoint and region then come from the store's environment (AWS_ENDPOINT_URL and
        // AWS_REGION; Azure's connection string).
        let definition = crate::plan::model::Repository {
            url: repository.to_string(),
            region: None,
            endpoint: None,
            force_path_style: false,
            part_size_mib: None,
            sse: None,
            sse_kms_key_id: None,
            encryption: None,
            create: false,
            written: Default::default(),
        };
        return Ok((definition, std::path::PathBuf::from(".")));
    }
    let Some(plan_file) = plan_file else {
        return Err(Failure::Usage(format!(
            "--repository {repository}: not a URL; give the plan that declares it with --plan FILE, or a URL such as file:///var/backups"
        )));
    };
    let source = PlanSource::read(plan_file).map_err(Failure::Plan)?;
    let (source, valid) = plan::check(source).map_err(Failure::Plan)?;
    let Some(repo) = valid.plan.repositories.get(repository) else {
        let hint = crate::diag::did_you_mean(
            repository,
            valid.plan.repositories.keys().map(String::as_str),
        )
        .map(|h| format!("; {h}"))
        .unwrap_or_default();
        return Err(Failure::Usage(format!(
            "the plan declares no repository `{repository}`{hint}"
        )));
    };
    let env: serde_json::Value = serde_json::json!({ "env": std::env::vars().collect::<std::collections::BTreeMap<_, _>>(), "vars": valid.plan.vars });
    let repo = plan::resolve::repository(&plan::template::Templates::new(), repository, repo, &env)
        .map_err(Failure::Usage)?;
    Ok((repo, source.base_dir()))
}

/// Opens a repository given on the command line (see [`repository_definition`]).
pub async fn open_store(
    repository: &str,
    plan_file: Option<&Path>,
) -> Result<repo::AnyStore, Failure> {
    let (repo, base_dir) = repository_definition(repository, plan_file)?;
    repo::open(&repo, &base_dir).await.map_err(Failure::from)
}

/// `opsrunner repo init`: makes the location a repository (see [`repo::record`]).
pub async fn init(
    repository: &str,
    plan_file: Option<&Path>,
    force: bool,
) -> Result<String, Failure> {
    use repo::record::{self, Checked, RecordError};
    let (definition, base_dir) = repository_definition(repository, plan_file)?;
    let store = repo::open(&definition, &base_dir)
        .await
        .map_err(Failure::from)?;
    let recipients = record::recipients_of(&store, &definition, &base_dir)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let location = store.location();
    match record::init(&store, recipients.as_deref(), force).await {
        Ok(Checked::Created(r)) if force => Ok(format!(
            "recorded repository {location} as {} (--force)\n",
            r.describe_encryption()
        )),
        Ok(Checked::Created(r)) => Ok(format!(
            "created repository {location} ({})\n",
            r.describe_encryption()
        )),
        Ok(Checked::Adopted(r)) => Ok(format!(
            "adopted repository {location}, which already held backups ({})\n",
            r.describe_encryption()
        )),
        Ok(Checked::Present(r)) => Ok(format!(
            "{location} is already a repository (created {}, {})\n",
            r.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.describe_encryption()
        )),
        Err(e @ RecordError::Mismatch { .. }) => Err(Failure::Refused(e.to_string())),
        Err(e @ RecordError::Damaged { .. }) => Err(Failure::Usage(e.to_string())),
        Err(e) => Err(Failure::Io(e.to_string())),
    }
}

/// `opsrunner repo unlock`: removes the repository's lock left by a run that is not
/// running any more; refused (exit 3) while its holder is alive.
pub async fn unlock(repository: &str, plan_file: Option<&Path>) -> Result<String, Failure> {
    use crate::repo::lease::{self, UnlockError, Unlocked};
    let store = open_store(repository, plan_file).await?;
    match lease::unlock(&store, crate::run::apply::lease_ttl()).await {
        Ok(Unlocked::Free) => Ok(format!("{} is not locked\n", store.location())),
        Ok(Unlocked::Removed(holder)) => Ok(format!(
            "removed the lock of {} on {}\n",
            holder.map_or_else(|| "an unreadable holder".to_string(), |h| h.describe()),
            store.location()
        )),
        Err(e @ UnlockError::Alive(_)) => {
            Err(Failure::Refused(format!("{}: {e}", store.location())))
        }
        Err(UnlockError::Io(e)) => Err(Failure::Io(format!(
            "the lock of {}: {e}",
            store.location()
        ))),
    }
}

/// One backup for `--json`: the manifest with its verification, or the reason it is damaged.
#[derive(Serialize)]
#[serde(untagged)]
enum Entry {
    Backup {
        #[serde(flatten)]
        manifest: Box<Manifest>,
        /// The last verification, when its record vouches for this manifest.
        verification: Option<Verification>,
        /// Why a verification record exists but is not believed.
        #[serde(skip_serializing_if = "Option::is_none")]
        verification_problem: Option<String>,
    },
    Damaged {
        backup_id: String,
        damaged: String,
    },
}

impl Entry {
    fn from(listed: Listed) -> Entry {
        match listed.backup {
            Ok(checked) => {
                let (verification, verification_problem) = split_trust(listed.trust);
                Entry::Backup {
                    manifest: Box::new(checked.manifest),
                    verification,
                    verification_problem,
                }
            }
            Err(damaged) => Entry::Damaged {
                backup_id: listed.id,
                damaged,
            },
        }
    }
}

fn split_trust(trust: Trust) -> (Option<Verification>, Option<String>) {
    match trust {
        Trust::Never => (None, None),
        Trust::Recorded(v) => (Some(v), None),
        Trust::Distrusted(why) => (None, Some(why)),
    }
}

async fn entries(store: &repo::AnyStore) -> Result<Vec<Listed>, Failure> {
    listing::list(store)
        .await
        .map_err(|e| Failure::Io(format!("cannot list the repository: {e}")))
}

fn verification_text(trust: &Trust) -> String {
    match trust {
        Trust::Never => "never".into(),
        Trust::Distrusted(_) => "not trusted (see backups show)".into(),
        Trust::Recorded(v) if v.passed && v.restored => format!(
            "passed {} (test restore)",
            v.verified_at.format("%Y-%m-%d %H:%M")
        ),
        Trust::Recorded(v) if v.passed => format!(
            "passed {} (no restore)",
            v.verified_at.format("%Y-%m-%d %H:%M")
        ),
        Trust::Recorded(v) => format!("FAILED {}", v.verified_at.format("%Y-%m-%d %H:%M")),
    }
}

/// An age as precise as the JSON's seconds: `13s`, `2h5m13s`.
fn age(seconds: i64) -> String {
    crate::plan::duration::format(std::time::Duration::from_secs(seconds.max(0) as u64))
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub async fn list(store: &repo::AnyStore, json: bool) -> Result<String, Failure> {
    let entries = entries(store).await?;
    if json {
        // Newest first, as the text listing: `jq '.[0]'` is the newest backup.
        let entries: Vec<Entry> = entries.into_iter().rev().map(Entry::from).collect();
        return Ok(serde_json::to_string_pretty(&entries).expect("serializes") + "\n");
    }
    if entries.is_empty() {
        return Ok(format!("{}: no published backups\n", store.location()));
    }
    let now = Utc::now();
    let (good, damaged): (Vec<&Listed>, Vec<&Listed>) =
        entries.iter().partition(|e| e.backup.is_ok());
    // A parent whose last verification failed may leave its children unrestorable: each
    // child says so (the chain's own restore or verify tells for sure).
    let failed: std::collections::BTreeSet<&str> = good
        .iter()
        .filter(|e| e.trust.verification().is_some_and(|v| !v.passed))
        .map(|e| e.id.as_str())
        .collect();
    let rows: Vec<[String; 8]> = good
        .iter()
        .rev()
        .filter_map(|e| {
            let m = &e.backup.as_ref().ok()?.manifest;
            // An incremental or differential base backup says what it is built on: a
            // restore needs that one too, and prune keeps it.
            let database = match m
                .base
                .as_ref()
                .and_then(|b| Some((b.kind, b.parent.as_ref()?)))
            {
                Some((kind, parent)) if failed.contains(parent.as_str()) => format!(
                    "{} ({} of {parent}, which failed its last verification: this one may not restore)",
                    m.database,
                    kind.as_str()
                ),
                Some((kind, parent)) => format!("{} ({} of {parent})", m.database, kind.as_str()),
                None => m.database.clone(),
            };
            Some([
                m.backup_id.clone(),
                database,
                m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                age((now - m.created_at).num_seconds()),
                size(m.total_bytes()),
                m.compression.to_string(),
                if m.encryption.is_some() { "age" } else { "no" }.to_string(),
                verification_text(&e.trust),
            ])
        })
        .collect();
    let header = [
        "ID",
        "DATABASE",
        "CREATED (UTC)",
        "AGE",
        "SIZE",
        "COMPRESSION",
        "ENCRYPTED",
        "LAST VERIFICATION",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    let _ = writeln!(out, "\n{}", crate::diag::count(rows.len(), "backup"));
    if !damaged.is_empty() {
        let _ = writeln!(
            out,
            "\n{} damaged (never restored, never deleted by prune; inspect and remove by hand):",
            damaged.len()
        );
        for e in damaged {
            if let Err(reason) = &e.backup {
                let _ = writeln!(out, "  {}: {reason}", e.id);
            }
        }
    }
    Ok(out)
}

/// `backups prune`: the same selection and deletion as the `prune` step, and with
/// `orphans` the removal of unfinished backups untouched for that long.
/// What `backups prune` is asked to do.
pub struct PruneRequest {
    pub keep: crate::repo::retention::Keep,
    pub min_age: Option<std::time::Duration>,
    pub database: Option<String>,
    /// Also remove leftovers of unfinished backups untouched for this long.
    pub orphans: Option<std::time::Duration>,
    pub dry_run: bool,
    pub json: bool,
}

pub async fn prune(store: &repo::AnyStore, request: PruneRequest) -> Result<String, Failure> {
    if request.dry_run {
        return prune_held(store, request).await;
    }
    // Deleting is writing: only in a repository (adopting one made before records).
    let checked = repo::record::require_repository(store)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(said) = repo::record::said(&checked, &store.location()) {
        eprintln!("{said}");
    }
    // Deleting beside a run that writes to the repository (a backup being published, the
    // plan's own prune) is what the repository's lease exists to prevent.
    let lease = hold_lease(store, "prune", "nothing was deleted").await?;
    let result = prune_held(store, request).await;
    if let Err(e) = lease.release().await {
        tracing::warn!("could not release the repository's lease ({e}); it lapses on its own");
    }
    result
}

/// Takes the repository's lease for a command that writes to it (`what`), or says who
/// holds it and that `nothing` happened.
async fn hold_lease(
    store: &repo::AnyStore,
    what: &str,
    nothing: &str,
) -> Result<repo::lease::Lease, Failure> {
    let now = chrono::Utc::now();
    let me = repo::lease::Holder::this_process(
        &format!("{what}_{}", now.format("%Y%m%d_%H%M%S")),
        &format!("(opsrunner backups {what})"),
        now,
    );
    match repo::lease::try_acquire(
        store,
        &me,
        repo::lease::DEFAULT_TTL,
        std::sync::Arc::new(|why| tracing::error!("{why}")),
    )
    .await
    .map_err(|e| Failure::Io(format!("cannot take the repository's lease: {e}")))?
    {
        repo::lease::Attempt::Held(lease) => Ok(lease),
        repo::lease::Attempt::Busy(holder) => Err(Failure::Refused(format!(
            "the repository is locked by {}; {nothing}. Run again when it has finished",
            holder.map_or_else(|| "another run".to_string(), |h| h.describe())
        ))),
    }
}

/// The newest readable backup's id, for `latest` on the command line.
pub async fn latest_id(store: &repo::AnyStore) -> Result<String, Failure> {
    let (latest, _) = listing::latest_and_skipped(store, None)
        .await
        .map_err(|e| Failure::Io(e.to_string()))?;
    latest
        .map(|c| c.manifest.backup_id)
        .ok_or_else(|| Failure::Usage(format!("{} holds no backup", store.location())))
}

/// `opsrunner backups export ID FILE`: the backup (with its parents and WAL) as one file.
pub async fn export(store: &repo::AnyStore, id: &str, file: &Path) -> Result<String, Failure> {
    let summary = repo::export::export(store, id, file)
        .await
        .map_err(Failure::Io)?;
    Ok(format!(
        "exported {} to {} ({}{})\n",
        summary.backups.join(", "),
        file.display(),
        crate::diag::bytes(summary.bytes),
        if summary.wal > 0 {
            format!(
                ", with {}",
                crate::diag::count(summary.wal, "archived WAL file")
            )
        } else {
            String::new()
        }
    ))
}

/// `opsrunner backups import FILE`: an export checked whole and published into a
/// repository, under its lease.
pub async fn import(
    repository: &str,
    plan_file: Option<&Path>,
    file: &Path,
) -> Result<String, Failure> {
    let (definition, base_dir) = repository_definition(repository, plan_file)?;
    let store = repo::open(&definition, &base_dir)
        .await
        .map_err(Failure::from)?;
    let checked = repo::record::require_for(&store, &definition, &base_dir)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(said) = repo::record::said(&checked, &store.location()) {
        eprintln!("{said}");
    }
    let lease = hold_lease(&store, "import", "nothing was imported").await?;
    let result = repo::export::import(file, &store, definition.encryption.is_some()).await;
    if let Err(e) = lease.release().await {
        tracing::warn!("could not release the repository's lease ({e}); it lapses on its own");
    }
    let summary = result.map_err(Failure::Io)?;
    let mut out = String::new();
    for id in &summary.backups {
        out.push_str(&format!("imported {id} into {}\n", store.location()));
    }
    for id in &summary.present {
        out.push_str(&format!("{id} is already in {}\n", store.location()));
    }
    if summary.wal > 0 {
        out.push_str(&format!(
            "{} archived WAL\n",
            crate::diag::count(summary.wal, "file")
        ));
    }
    Ok(out)
}

async fn prune_held(store: &repo::AnyStore, request: PruneRequest) -> Result<String, Failure> {
    let PruneRequest {
        keep,
        min_age,
        database,
        orphans,
        dry_run,
        json,
    } = request;
    let mut out = String::new();
    let verb = if dry_run { "would delete" } else { "delete" };
    if let Some(age) = orphans {
        let now = std::time::SystemTime::now();
        for (id, changed) in store
            .orphans()
            .await
            .map_err(|e| Failure::Io(e.to_string()))?
        {
            let idle = now.duration_since(changed).unwrap_or_default();
            let idle_text =
                crate::plan::duration::format(std::time::Duration::from_secs(idle.as_secs()));
            if idle < age {
                let _ = writeln!(
                    out,
                    "keep   {id}: unfinished, but changed {idle_text} ago (may still be running)"
                );
                continue;
            }
            if !dry_run {
                store
                    .remove_orphan(&id)
                    .await
                    .map_err(|e| Failure::Io(format!("removing {id}: {e}")))?;
            }
            let _ = writeln!(
                out,
                "{verb} {id}: unfinished backup (no manifest), untouched for {idle_text}"
            );
        }
        if keep.is_empty() {
            if out.is_empty() {
                out.push_str("no unfinished backups\n");
            }
            return Ok(out);
        }
    }
    let policy = repo::prune::Policy {
        keep,
        min_age,
        database,
    };
    let decisions = repo::prune::decide(store, &policy)
        .await
        .map_err(Failure::Usage)?;
    let wal = repo::prune::wal_victims(store, &decisions)
        .await
        .map_err(|e| Failure::Io(format!("the WAL archive: {e}")))?;
    if !dry_run {
        repo::prune::delete(store, &decisions, || false)
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        repo::prune::delete_wal(store, &wal, || false)
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
    }
    if json {
        // One entry per WAL file deleted, beside the backups, in the same shape.
        let mut entries = decisions.clone();
        entries.extend(wal.as_decisions());
        return Ok(serde_json::to_string_pretty(&entries).expect("serializes") + "\n");
    }
    for d in &decisions {
        let _ = writeln!(out, "{}", repo::prune::describe(d));
    }
    if let Some(line) = wal.describe() {
        let _ = writeln!(out, "{line}");
    }
    let gone = decisions.iter().filter(|d| !d.keep).count();
    let _ = writeln!(
        out,
        "{gone} of {} backups {}",
        decisions.iter().filter(|d| !d.damaged).count(),
        if dry_run {
            "would be deleted (dry run: nothing was deleted)"
        } else {
            "deleted"
        }
    );
    Ok(out)
}

/// `backups check`: whether the repository holds a backup young enough (and, with
/// `require_verified`, a test-restored one young enough). Unhealthy is exit 1 with the
/// reason in one line; damaged backups never count.
pub async fn check(
    store: &repo::AnyStore,
    max_age: std::time::Duration,
    require_verified: bool,
    database: Option<&str>,
    json: bool,
) -> Result<String, Failure> {
    let entries = entries(store).await?;
    let now = Utc::now();
    let usable = entries.iter().filter_map(|e| {
        let m = &e.backup.as_ref().ok()?.manifest;
        // An export of rows is not a backup of the database.
        (m.format != crate::repo::manifest::DumpFormat::Rows
            && database.is_none_or(|d| d == m.database))
        .then_some((e, m))
    });
    let newest = usable.clone().max_by_key(|(_, m)| m.created_at);
    let newest_verified = usable
        .filter(|(e, _)| {
            e.trust
                .verification()
                .is_some_and(|v| v.passed && v.restored)
        })
        .max_by_key(|(_, m)| m.created_at);
    let limit = crate::plan::duration::format(max_age);
    let age_of = |created: chrono::DateTime<Utc>| (now - created).num_seconds().max(0);
    let scope = database
        .map(|d| format!(" of database `{d}`"))
        .unwrap_or_default();
    // What is wrong with the newest backup of one kind: missing, or older than the limit.
    let problem = |found: Option<(&Listed, &Manifest)>, what: &str, missing: String| match found {
        None => Some(missing),
        Some((_, m)) if age_of(m.created_at) as u64 > max_age.as_secs() => Some(format!(
            "the newest backup{scope}{what}, {}, is {} old (more than {limit})",
            m.backup_id,
            age(age_of(m.created_at))
        )),
        Some(_) => None,
    };
    let mut problems: Vec<String> = Vec::new();
    problems.extend(problem(
        newest,
        "",
        format!("no backup{scope} in {}", store.location()),
    ));
    if require_verified {
        problems.extend(problem(
            newest_verified,
            " that passed a test restore",
            format!("no backup{scope} has passed a test restore"),
        ));
    }
    let healthy = problems.is_empty();
    let line = if healthy {
        let (_, m) = newest.expect("healthy means a newest backup");
        let verified = newest_verified
            .map(|(_, v)| {
                format!(
                    "; newest verified {}, {} old",
                    v.backup_id,
                    age(age_of(v.created_at))
                )
            })
            .unwrap_or_default();
        format!(
            "ok: newest backup{scope} {}, {} old{verified}",
            m.backup_id,
            age(age_of(m.created_at))
        )
    } else {
        problems.join("; ")
    };
    let out = if json {
        let record = serde_json::json!({
            "healthy": healthy,
            "reason": line,
            "newest": newest.map(|(_, m)| serde_json::json!({ "backup_id": m.backup_id, "age_s": age_of(m.created_at) })),
            "newest_verified": newest_verified.map(|(_, m)| serde_json::json!({ "backup_id": m.backup_id, "age_s": age_of(m.created_at) })),
        });
        serde_json::to_string_pretty(&record).expect("serializes") + "\n"
    } else {
        format!("{line}\n")
    };
    if healthy {
        Ok(out)
    } else {
        // Monitoring reads the exit code; people and logs the line.
        print!("{out}");
        Err(Failure::StepsFailed)
    }
}

pub async fn show(
    store: &repo::AnyStore,
    id: &str,
    json: bool,
    identities: Option<&crate::repo::crypto::Identities>,
) -> Result<String, Failure> {
    let checked = listing::manifest(store, id)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let trust = listing::trust(store, &checked).await;
    let mut manifest = checked.manifest;
    if let Some(identities) = identities {
        manifest
            .unseal(identities)
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    if json {
        let (verification, verification_problem) = split_trust(trust);
        return Ok(serde_json::to_string_pretty(&Entry::Backup {
            manifest: Box::new(manifest),
            verification,
            verification_problem,
        })
        .expect("serializes")
            + "\n");
    }
    let m = &manifest;
    let mut out = String::new();
    let _ = writeln!(out, "backup       {}", m.backup_id);
    let _ = writeln!(out, "location     {}", store.uri(id));
    let _ = writeln!(
        out,
        "database     {} (server {})",
        m.database, m.server_version
    );
    let _ = writeln!(
        out,
        "created      {} (took {})",
        m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        crate::plan::duration::format(std::time::Duration::from_millis(m.duration_ms))
    );
    let _ = writeln!(
        out,
        "format       {:?}, compression {}",
        m.format, m.compression
    );
    let _ = writeln!(
        out,
        "made by      {}, opsrunner {}",
        m.pg_dump_version, m.opsrunner_version
    );
    if let Some(b) = &m.base {
        let _ = writeln!(
            out,
            "base         {} {} copy{}, WAL {} to {} on timeline {}; these files add {} to the repository",
            b.kind.as_str(),
            b.method.as_str(),
            b.parent
                .as_ref()
                .map(|p| format!(" of {p} (a restore needs it, and its own parents)"))
                .unwrap_or_default(),
            b.start_lsn,
            b.stop_lsn,
            b.timeline,
            size(m.total_bytes())
        );
    }
    match &m.encryption {
        Some(e) => {
            let _ = writeln!(
                out,
                "encryption   {}, to {}",
                e.scheme,
                e.recipients.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "encryption   none");
        }
    }
    let _ = writeln!(out, "verification {}", verification_text(&trust));
    match &trust {
        Trust::Recorded(v) => {
            let _ = writeln!(out, "             {}", v.checks);
        }
        Trust::Distrusted(why) => {
            let _ = writeln!(out, "             the record is not believed: {why}");
        }
        Trust::Never => {}
    }
    let _ = writeln!(
        out,
        "files        {} ({})",
        m.files.len(),
        size(m.total_bytes())
    );
    for f in &m.files {
        let _ = writeln!(out, "  {}  {}  sha256 {}", f.name, size(f.size), f.sha256);
    }
    if m.sealed.is_some() {
        let _ = writeln!(
            out,
            "tables       encrypted (pass --identity FILE to show tables and fingerprints)"
        );
    }
    if !m.fingerprints.is_empty() {
        let _ = writeln!(
            out,
            "tables       {} (fingerprints: {:?})",
            m.fingerprints.len(),
            m.fingerprint
        );
        for (table, fp) in &m.fingerprints {
            let _ = writeln!(out, "  {table}  {} rows", fp.rows);
        }
    }
    Ok(out)
}
