//! `restore` with `to:` and `into: { data_directory: PATH }` — a point-in-time restore
//! into a new data directory, for the night production's cluster is lost: the operator
//! gets a directory that, started with their own configuration, is the cluster as it was
//! at the target.
//!
//! Everything is checked before the directory is touched (the backup and every WAL segment
//! to the target, exactly as for a throwaway cluster; the directory absent or empty; the
//! server programs of the backup's version). The backup is extracted, checked by
//! `pg_verifybackup`, and prepared for its first start (`recovery.signal`, the target, the
//! explicit timeline, `recovery_target_action = promote`, `restore_command`). For a
//! target other than `latest` recovery is then run here, paused at the target, read and
//! stopped still in recovery ([`crate::pg::data_directory`]), so the step reports the
//! moment reached and a WAL problem fails the step, not the operator's first start. The
//! end of the archive cannot be reached without promoting: with `latest: true` the
//! directory is prepared only, and says so. On failure the directory is left as it was
//! found.

use super::pitr::{self, PointInTime, Target};
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::pg::data_directory::{self as dd, Claim, RunDir, State};
use crate::pg::recovery::{self, Recovery};
use std::path::Path;
use std::time::Instant;

/// The name of the small plan `wal fetch` reads the repository from, in the restored
/// data directory (it names no secret: credentials come from the server's environment).
pub const FETCH_PLAN: &str = "opsrunner-wal-archive.yaml";

pub struct Request<'a> {
    pub repository: &'a str,
    pub backup: &'a str,
    pub data_directory: &'a Path,
    /// The owner of the files and the server's user, when opsrunner runs as root.
    pub run_as: &'a str,
    pub to: &'a PointInTime,
    /// Rewrite an existing, stopped data directory in place (file-level backups).
    pub delta: bool,
    /// With `delta`: even a directory of another cluster.
    pub force: bool,
    /// With `delta`: a file of the backup's size and modification time is not read.
    pub trust_timestamps: bool,
    pub tablespaces: &'a std::collections::BTreeMap<String, String>,
}

pub async fn run(p: &Request<'_>, ctx: &StepContext) -> Result<Outputs, StepError> {
    let clock = Instant::now();
    let untouched = |why: String| StepError::permanent(format!("{why}; nothing was touched"));
    if !p.delta
        && let Some(why) = State::of(p.data_directory).refusal(p.data_directory)
    {
        return Err(untouched(why));
    }
    let owner = dd::owner(p.run_as)?;
    let selected = pitr::select(ctx, p.repository, p.backup, p.to).await?;
    if p.delta {
        let base = selected.manifest.base.as_ref();
        if !base.is_some_and(|b| b.method == crate::repo::manifest::BaseMethod::Files) {
            return Err(untouched(format!(
                "base backup {} was taken by pg_basebackup: a delta restore needs a file-level one (a target with `data_directory`); leave out `delta` to restore into an empty directory",
                selected.manifest.backup_id
            )));
        }
        let id = base.map(|b| b.system_identifier.as_str()).unwrap_or("");
        if let Some(why) = dd::delta_refusal(p.data_directory, id, p.force) {
            return Err(untouched(why));
        }
    }
    if let Some(missing) = selected.choice.missing_text(p.repository) {
        return Err(untouched(missing));
    }
    let search = crate::pg::tools::Search::new(ctx.pg_bin_dirs.clone());
    let postgres = search
        .find("postgres", crate::pg::tools::Want::Exact(selected.major))
        .map(|f| f.path)
        .map_err(|e| {
            untouched(format!(
                "base backup {} is of PostgreSQL {}: {e}",
                selected.manifest.backup_id, selected.manifest.server_version
            ))
        })?;
    // The real directory of the server programs (a `postgres` found in PATH is often a
    // link into it), where pg_controldata of the same version is.
    let postgres = postgres.canonicalize().unwrap_or(postgres);
    let bin = postgres
        .parent()
        .expect("a file has a parent")
        .to_path_buf();
    let repo = ctx
        .repositories
        .get(p.repository)
        .ok_or_else(|| StepError::permanent("the repository is not available"))?;
    let claim = if p.delta {
        Claim::take_delta(p.data_directory, owner)?
    } else {
        Claim::take(p.data_directory, owner)?
    };
    let filled = fill(p, ctx, &selected, &bin, owner, repo).await;
    let mut outputs = match filled {
        Ok(outputs) => outputs,
        Err(e) => {
            let left = claim.abandon();
            return Err(StepError {
                message: format!("{}; {left}", e.message),
                ..e
            });
        }
    };
    claim.complete().map_err(|e| {
        StepError::transient(format!(
            "removing {} from {}: {e}",
            dd::INCOMPLETE,
            p.data_directory.display()
        ))
    })?;
    outputs.insert(
        "duration_ms".into(),
        clock.elapsed().as_millis().to_string(),
    );
    Ok(outputs)
}

async fn fill(
    p: &Request<'_>,
    ctx: &StepContext,
    selected: &pitr::Selected,
    bin: &Path,
    owner: Option<(u32, u32)>,
    repo: &crate::plan::model::Repository,
) -> Result<Outputs, StepError> {
    let data = p.data_directory;
    let manifest = &selected.manifest;
    let choice = &selected.choice;
    let chain = crate::repo::listing::base_chain(&selected.store, manifest)
        .await
        .map_err(StepError::permanent)?;
    let files = if manifest
        .base
        .as_ref()
        .is_some_and(|b| b.method == crate::repo::manifest::BaseMethod::Files)
    {
        let into = crate::pg::unpack::Into {
            delta: p.delta,
            trust_timestamps: p.trust_timestamps,
            tablespaces: p.tablespaces.clone(),
            tablespaces_within: None,
        };
        crate::pg::unpack::restore_files(ctx, &selected.store, &chain, data, owner, into)
            .await?
            .files
    } else {
        crate::pg::unpack::restore_base(
            ctx,
            &selected.store,
            &chain,
            data,
            owner,
            &[dd::INCOMPLETE],
        )
        .await?
    };
    let io = |e: std::io::Error| StepError::transient(format!("preparing recovery: {e}"));
    let config = data.join(FETCH_PLAN);
    crate::pg::recovery::write_owned(&config, &pitr::fetch_plan(repo), owner).map_err(io)?;
    // The first start reads the key where the operator keeps it (an absolute path: the
    // server does not run in opsrunner's directory).
    let identity = ctx
        .identities
        .as_ref()
        .map(|i| std::path::absolute(i.path()).map_err(io))
        .transpose()?;
    let target = pitr::target_settings(&choice.target, p.to.inclusive);
    let first_start = Recovery {
        restore_command: pitr::wal_fetch_command(&config, identity.as_deref())?,
        target: target.clone(),
        timeline: choice.path.target(),
    };
    recovery::prepare_first_start(data, owner, &first_start).map_err(io)?;
    let say = |line: String| ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), manifest.backup_id.clone());
    outputs.insert("data_directory".into(), data.display().to_string());
    outputs.insert("timeline".into(), choice.path.target().to_string());
    outputs.insert("wal_segments".into(), choice.needed.len().to_string());
    if let Some(identity) = &identity {
        say(format!(
            "the archive is encrypted: at its first start the server reads the key from {} (its user must be able to)",
            identity.display()
        ));
    }
    if !data.join("postgresql.conf").exists() {
        say("the base backup holds no postgresql.conf (a cluster configured outside its data directory): start it with your configuration's `data_directory` set to this directory".into());
    }
    if choice.target == Target::Latest {
        say(format!(
            "extracted {files} files of {}; prepared to recover to the end of the archive on timeline {} at its first start, which promotes it (recovery cannot stop at the end of an archive without promoting, so it was not run here)",
            manifest.backup_id,
            choice.path.target()
        ));
        return Ok(outputs);
    }
    let run_dir = RunDir::new(owner)?;
    let key = match &ctx.identities {
        // The server's user cannot read the operator's key file here: a private copy, for
        // this run only, removed with the run's directory.
        Some(identities) => {
            let path = run_dir.path().join("identity.txt");
            crate::pg::recovery::write_owned(
                &path,
                &pitr::key_copy(identities.secret_texts()),
                owner,
            )
            .map_err(io)?;
            Some(path)
        }
        None => None,
    };
    let start = dd::Start {
        bin,
        data,
        owner,
        user: p.run_as,
        major: selected.major,
        restore_command: pitr::wal_fetch_command(&config, key.as_deref())?,
    };
    let stopped = dd::recover_to_target(ctx, &run_dir, &start).await?;
    let base = choice
        .backup
        .manifest
        .base
        .as_ref()
        .expect("base backups only");
    if stopped.system_identifier != base.system_identifier {
        return Err(StepError::permanent(format!(
            "the recovered cluster is system {}, the backup's manifest says {}",
            stopped.system_identifier, base.system_identifier
        )));
    }
    let reached_time = stopped
        .time
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    if let Some(said) = &stopped.said {
        say(format!("the server: {said}"));
    }
    say(format!(
        "recovered {files} files of {} to WAL {}{}, stopped there in recovery on timeline {}; its first start with your configuration promotes it (and, if that configuration archives, archives the new timeline)",
        manifest.backup_id,
        stopped.lsn,
        if reached_time.is_empty() {
            String::new()
        } else {
            format!(", last transaction committed {reached_time}")
        },
        choice.path.target()
    ));
    outputs.insert("reached_lsn".into(), stopped.lsn);
    outputs.insert("reached_time".into(), reached_time);
    Ok(outputs)
}

/// The preview: what the directory holds now, then the backup and WAL the restore uses.
pub async fn preview(
    scope: super::probe::Probe<'_>,
    repository: &str,
    backup: &str,
    to: &PointInTime,
    data_directory: &Path,
    delta: bool,
) -> super::probe::Findings {
    let mut findings = pitr::preview(scope, repository, backup, to).await;
    let state = if delta {
        delta_state(data_directory)
    } else {
        State::of(data_directory).describe(data_directory)
    };
    findings.lines.insert(0, state);
    findings
}

/// What a delta restore would find in the directory, for the preview (the backup's own
/// cluster is checked when the step runs, once the backup is chosen).
fn delta_state(dir: &Path) -> String {
    match dd::delta_refusal(dir, "", true) {
        Some(why) => format!("apply would stop here: {why}"),
        None => match crate::pg::files::restore::system_identifier(dir) {
            Some(id) => format!(
                "data directory {} (delta): holds a stopped cluster {id}; only the files and blocks that differ from the backup are rewritten, files the backup does not hold are removed",
                dir.display()
            ),
            None => format!(
                "data directory {} (delta): holds no cluster; the step refuses it unless `force: true`",
                dir.display()
            ),
        },
    }
}
