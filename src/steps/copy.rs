//! `copy`: copies backups from one repository to another (see [`crate::repo::copy`]): the
//! off-site copy of the 3-2-1 rule, checked on the way, resumable, re-encrypted when the
//! destination encrypts to other recipients.

use super::probe::{Findings, Probe, Unread};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::progress::Meter;
use crate::exec::{StepContext, StepError};
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::copy::{self, Which};
use crate::repo::listing;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Backups by id: one (`latest`, `all`, an id) or a list.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Backups {
    One(String),
    Many(Vec<String>),
}

/// `copy`: copies backups from repository `from` to repository `to` (any backends), each
/// file checked against its SHA-256 on the way, encrypted again when `to` encrypts to
/// other recipients, the manifest last. What `to` holds already is skipped; a copy that was
/// stopped resumes. Base backups bring their parents and the archived WAL from their start
/// on, so that a point-in-time recovery works from the copy alone. Verification records
/// stay behind: verify the copy in its own repository.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyParams {
    /// The repository to copy from (declared under `repositories`).
    pub from: String,
    /// The repository to copy to (declared under `repositories`).
    pub to: String,
    /// Which backups: `latest` (the newest of each database; the default), `all`, an id, or
    /// a list of ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Backups>,
    /// Instead of `backups`: those this retention policy keeps in `from` (as `prune`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<crate::repo::retention::Keep>,
    /// Only backups of this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

pub struct Copy;

impl StepType for Copy {
    const NAME: &'static str = "copy";
    type Params = CopyParams;
    const OUTPUTS: &'static [&'static str] = &[
        "copied",
        "present",
        "bytes",
        "wal_copied",
        "reencrypted",
        "resumed",
    ];
    const REPOSITORY_PATH: &'static [&'static str] = &["to"];
    const SOURCE_PATH: &'static [&'static str] = &["from"];

    fn repository(p: &CopyParams) -> Option<&str> {
        Some(&p.to)
    }

    fn source_repository(p: &CopyParams) -> Option<&str> {
        Some(&p.from)
    }

    fn writes_repository(_: &CopyParams) -> bool {
        true
    }

    fn check(p: &CopyParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if p.from == p.to {
            problems.push(
                Problem::new(
                    &["to"],
                    "a copy needs two repositories: `from` and `to` are the same",
                )
                .help("name the repository the backups go to, declared under `repositories:`"),
            );
        }
        if p.backups.is_some() && p.keep.is_some() {
            problems.push(
                Problem::new(&["keep"], "give `backups` or `keep`, not both")
                    .help("`backups` names them (`latest`, `all`, ids); `keep` selects them by a retention policy"),
            );
        }
        if let Some(keep) = &p.keep
            && let Some(problem) = keep.problem()
        {
            problems.push(Problem::new(&["keep"], problem));
        }
        if let Some(Backups::Many(ids)) = &p.backups
            && ids.is_empty()
        {
            problems.push(
                Problem::new(&["backups"], "an empty list selects no backup")
                    .help("name at least one id, or `latest`"),
            );
        }
        problems
    }

    fn describe(p: &CopyParams) -> String {
        let what = match which(p) {
            Which::Latest => "the newest backup of each database".to_string(),
            Which::All => "every backup".to_string(),
            Which::Ids(ids) if ids.len() == 1 => format!("backup {}", ids[0]),
            Which::Ids(ids) => format!("backups {}", ids.join(", ")),
            Which::Keep(_) => "the backups its retention policy keeps".to_string(),
        };
        let scope = p
            .database
            .as_deref()
            .map(|d| format!(" of database `{d}`"))
            .unwrap_or_default();
        format!(
            "copy {what}{scope} from repository `{}` to repository `{}`",
            p.from, p.to
        )
    }

    fn reads(_: &CopyParams) -> Option<&'static str> {
        Some("which backups would be copied")
    }

    /// Which backups would be copied and which the destination holds already.
    async fn probe<'a>(p: &'a CopyParams, scope: Probe<'a>) -> Findings {
        const UNKNOWN: &str = "what would be copied is unknown";
        let later: Vec<&str> = match &p.backups {
            Some(Backups::One(id)) => vec![id.as_str()],
            Some(Backups::Many(ids)) => ids.iter().map(String::as_str).collect(),
            None => Vec::new(),
        }
        .into_iter()
        .filter(|id| id.starts_with("(known after "))
        .collect();
        if !later.is_empty() {
            return vec![format!(
                "copies the backup {} to `{}`, with the parents and the WAL it needs that `{}` lacks",
                later.join(", "),
                p.to,
                p.to
            )]
            .into();
        }
        let from = match scope.open_source(&p.from, UNKNOWN).await {
            Ok(store) => store,
            Err(unread) => return Findings::unread(unread),
        };
        let to = match scope.open(&p.to, UNKNOWN).await {
            Ok(store) => store,
            Err(unread) => return Findings::unread(unread),
        };
        let selected = match copy::select(&from, &which(p), p.database.as_deref()).await {
            Ok(ids) => ids,
            Err(e) => return Findings::unread(Unread::repository(&p.from, e, UNKNOWN)),
        };
        if selected.is_empty() {
            return vec![format!(
                "repository `{}` holds no backup to copy: nothing will be copied",
                p.from
            )]
            .into();
        }
        let backups = match copy::with_parents(&from, &selected).await {
            Ok(b) => b,
            Err(e) => return Findings::unread(Unread::repository(&p.from, e, UNKNOWN)),
        };
        let mut lines = Vec::new();
        for c in &backups {
            let m = &c.manifest;
            let there = listing::manifest(&to, &m.backup_id).await.is_ok();
            let kind = if m.base.is_some() {
                "base backup"
            } else {
                "backup"
            };
            lines.push(if there {
                format!(
                    "{kind} {} ({}) is already in `{}`: skipped",
                    m.backup_id, m.database, p.to
                )
            } else {
                format!(
                    "copy {kind} {} ({}, {}) to `{}`",
                    m.backup_id,
                    m.database,
                    crate::diag::bytes(m.total_bytes()),
                    p.to
                )
            });
        }
        if backups.iter().any(|c| c.manifest.base.is_some()) {
            lines.push(format!(
                "with the archived WAL from the oldest base backup's start on that `{}` lacks",
                p.to
            ));
        }
        lines.into()
    }

    fn run(
        p: &CopyParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// The selection the parameters ask for.
pub fn which(p: &CopyParams) -> Which {
    match (&p.keep, &p.backups) {
        (Some(keep), _) => Which::Keep(keep.clone()),
        (None, None) => Which::Latest,
        (None, Some(Backups::One(id))) if id == "latest" => Which::Latest,
        (None, Some(Backups::One(id))) if id == "all" => Which::All,
        (None, Some(Backups::One(id))) => Which::Ids(vec![id.clone()]),
        (None, Some(Backups::Many(ids))) => Which::Ids(ids.clone()),
    }
}

async fn run(p: &CopyParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let from = ctx.repository(&p.from).await?;
    let to = ctx.repository(&p.to).await?;
    let recipients = ctx.recipients(&p.to)?;
    let selected = copy::select(&from, &which(p), p.database.as_deref())
        .await
        .map_err(StepError::transient)?;
    let backups = copy::with_parents(&from, &selected)
        .await
        .map_err(StepError::permanent)?;
    let total = backups.iter().map(|c| c.manifest.total_bytes()).sum();
    let read = crate::counting::Counter::new();
    let _meter = Meter::start(&ctx.events, &ctx.step_id, "copy", read.clone(), Some(total));
    let copier = copy::Copy {
        from: &from,
        to: &to,
        recipients: recipients.as_ref(),
        identities: ctx.identities.as_ref(),
        read,
    };
    copier.check(&backups).map_err(StepError::permanent)?;
    let say = |line: String| ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    let cancelled = || ctx.cancel.is_cancelled();
    let summary = copier
        .backups(&backups, &say, &cancelled)
        .await
        .map_err(|e| {
            if ctx.cancel.is_cancelled() {
                StepError::cancelled()
            } else {
                StepError::transient(e)
            }
        })?;
    if backups.is_empty() {
        say(format!(
            "repository `{}` holds no backup to copy: nothing was copied",
            p.from
        ));
    }
    let mut outputs = Outputs::new();
    outputs.insert("copied".into(), summary.copied.join(" "));
    outputs.insert("present".into(), summary.present.join(" "));
    outputs.insert("reencrypted".into(), summary.recoded.join(" "));
    outputs.insert("bytes".into(), summary.bytes.to_string());
    outputs.insert("wal_copied".into(), summary.wal_copied.to_string());
    outputs.insert("resumed".into(), summary.files_resumed.to_string());
    Ok(outputs)
}
