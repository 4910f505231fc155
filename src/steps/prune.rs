//! `prune`: applies a retention policy to a repository. The selection is computed the same
//! way for the preview (which lists every backup it would delete and the rule that keeps
//! each kept one) and for the run.

use super::probe::{Findings, Probe, Unread};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::plan::duration::HumanDuration;
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::prune;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;

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

pub struct Prune;

impl StepType for Prune {
    const NAME: &'static str = "prune";
    type Params = PruneParams;
    const OUTPUTS: &'static [&'static str] = &["deleted", "kept", "damaged", "wal_deleted"];

    fn repository(p: &PruneParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn writes_repository(_: &PruneParams) -> bool {
        true
    }

    /// A policy that keeps nothing, or a count of 0, would delete every backup.
    fn check(p: &PruneParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems: Vec<Problem> = p
            .keep
            .zero_counts()
            .into_iter()
            .map(|name| {
                Problem::new(
                    &["keep", name],
                    format!("`{name}: 0` would keep none and delete every backup"),
                )
                .help(
                    "give a count of at least 1; the newest backup of each database is always kept",
                )
            })
            .collect();
        if p.keep.is_empty() {
            problems.push(
                Problem::new(
                    &["keep"],
                    "a retention policy that keeps nothing would delete every backup",
                )
                .help("give at least one of last, hourly, daily, weekly, monthly, yearly, within"),
            );
        }
        problems
    }

    fn destructive(_: &PruneParams, _: &std::path::Path, _: bool) -> bool {
        true
    }

    fn describe(p: &PruneParams) -> String {
        describe(p)
    }

    fn reads(_: &PruneParams) -> Option<&'static str> {
        Some("which backups the policy would delete")
    }

    /// Every backup the policy would delete, and the rule that keeps each kept one.
    async fn probe<'a>(p: &'a PruneParams, scope: Probe<'a>) -> Findings {
        const UNKNOWN: &str = "prune victims unknown";
        let store = match scope.open(&p.repository, UNKNOWN).await {
            Ok(store) => store,
            Err(unread) => return Findings::unread(unread),
        };
        match prune::decide(&store, &policy(p)).await {
            Ok(decisions) if decisions.is_empty() => {
                vec!["the repository holds no backup to consider: nothing will be deleted".into()]
                    .into()
            }
            Ok(decisions) => {
                let wal = match prune::wal_victims(&store, &decisions).await {
                    Ok(wal) => wal,
                    Err(e) => {
                        return Findings::unread(Unread::repository(
                            &p.repository,
                            format!("the WAL archive: {e}"),
                            UNKNOWN,
                        ));
                    }
                };
                let mut lines: Vec<String> = decisions.iter().map(prune::describe).collect();
                lines.extend(wal.describe());
                Findings {
                    lines,
                    deletes: decisions
                        .iter()
                        .filter(|d| !d.keep)
                        .map(|d| d.id.clone())
                        .chain(wal.names.iter().map(|n| format!(".wal/{n}")))
                        .collect(),
                    ..Findings::default()
                }
            }
            Err(e) => Findings::unread(Unread::repository(&p.repository, e, UNKNOWN)),
        }
    }

    fn run(
        p: &PruneParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// The step's parameters as the policy `backups prune` applies too.
pub fn policy(p: &PruneParams) -> prune::Policy {
    prune::Policy {
        keep: p.keep.clone(),
        min_age: p.min_age.map(|d| d.0),
        database: p.database.clone(),
    }
}

pub fn describe(p: &PruneParams) -> String {
    let k = &p.keep;
    let mut rules = Vec::new();
    for (name, v) in k.counts() {
        if let Some(v) = v {
            rules.push(format!("{name} {v}"));
        }
    }
    if let Some(w) = k.within {
        rules.push(format!("within {w}"));
    }
    if let Some(m) = p.min_age {
        rules.push(format!("min_age {m}"));
    }
    let scope = p
        .database
        .as_deref()
        .map(|d| format!(" of database `{d}`"))
        .unwrap_or_default();
    format!(
        "delete the backups{scope} in repository `{}` that no rule keeps ({})",
        p.repository,
        rules.join(", ")
    )
}

pub async fn run(p: &PruneParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let decisions = prune::decide(&store, &policy(p))
        .await
        .map_err(StepError::permanent)?;
    for d in &decisions {
        ctx.events
            .output(&ctx.step_id, Stream::Stdout, prune::describe(d));
    }
    // Decided before any backup is deleted: the WAL the remaining base backups need.
    let wal = prune::wal_victims(&store, &decisions)
        .await
        .map_err(|e| crate::exec::io_error("reading the WAL archive", &e))?;
    if let Some(line) = wal.describe() {
        ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    }
    let stopped = |e| match e {
        prune::Stopped::Cancelled => StepError::cancelled(),
        e => StepError::transient(e.to_string()),
    };
    let deleted = prune::delete(&store, &decisions, || ctx.cancel.is_cancelled())
        .await
        .map_err(stopped)?;
    let wal_deleted = prune::delete_wal(&store, &wal, || ctx.cancel.is_cancelled())
        .await
        .map_err(stopped)?;
    let mut outputs = Outputs::new();
    outputs.insert("deleted".into(), deleted.join(" "));
    outputs.insert("wal_deleted".into(), wal_deleted.to_string());
    outputs.insert(
        "kept".into(),
        decisions
            .iter()
            .filter(|d| d.keep && !d.damaged)
            .count()
            .to_string(),
    );
    outputs.insert(
        "damaged".into(),
        decisions
            .iter()
            .filter(|d| d.damaged)
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    Ok(outputs)
}
