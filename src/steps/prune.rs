//! `prune`: applies a retention policy to a repository. The selection is computed the same
//! way for the preview (which lists every backup it would delete and the rule that keeps
//! each kept one) and for the run.

use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::plan::model::PruneParams;
use crate::repo::AnyStore;
use crate::repo::BackupStore;
use crate::repo::listing;
use crate::repo::retention::{self, Candidate, Decision};
use chrono::Utc;

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

/// Decisions for every backup in scope, identified by location. Damaged backups are
/// listed as such, never deleted and never counted as keepers.
pub async fn decide(store: &AnyStore, p: &PruneParams) -> Result<Vec<Decision>, String> {
    if let Some(problem) = p.keep.problem() {
        return Err(problem);
    }
    let mut candidates = Vec::new();
    let mut damaged = Vec::new();
    for entry in listing::list(store)
        .await
        .map_err(|e| format!("cannot list the repository: {e}"))?
    {
        match entry.backup {
            Ok(checked) => {
                let m = checked.manifest;
                if p.database.as_ref().is_some_and(|d| *d != m.database) {
                    continue;
                }
                candidates.push(Candidate {
                    id: entry.id,
                    database: m.database,
                    created_at: m.created_at,
                    verification: entry.trust.verification().cloned(),
                });
            }
            Err(reason) => damaged.push(Decision {
                id: entry.id,
                database: "?".into(),
                keep: true,
                damaged: true,
                reasons: vec![format!(
                    "{reason}; never deleted by a policy, not counted as a keeper"
                )],
            }),
        }
    }
    let mut decisions =
        retention::select(&candidates, &p.keep, p.min_age.map(|d| d.0), Utc::now())?;
    decisions.extend(damaged);
    Ok(decisions)
}

pub fn describe_decision(d: &Decision) -> String {
    if d.damaged {
        format!("skip   {} (damaged): {}", d.id, d.reasons.join("; "))
    } else if d.keep {
        format!("keep   {} ({}): {}", d.id, d.database, d.reasons.join("; "))
    } else {
        format!("delete {} ({}): {}", d.id, d.database, d.reasons.join("; "))
    }
}

pub async fn run(p: &PruneParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let decisions = decide(&store, p).await.map_err(StepError::permanent)?;
    let mut deleted = Vec::new();
    for d in &decisions {
        ctx.events
            .output(&ctx.step_id, Stream::Stdout, describe_decision(d));
        if !d.keep {
            if ctx.cancel.is_cancelled() {
                return Err(StepError::cancelled());
            }
            store
                .delete(&d.id)
                .await
                .map_err(|e| StepError::transient(format!("deleting {}: {e}", d.id)))?;
            deleted.push(d.id.clone());
        }
    }
    let mut outputs = Outputs::new();
    outputs.insert("deleted".into(), deleted.join(" "));
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
