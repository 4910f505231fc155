//! `prune`: applies a retention policy to a repository. The selection is computed the same
//! way for the preview (which lists every backup it would delete and the rule that keeps
//! each kept one) and for the run.

use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::plan::model::PruneParams;
use crate::repo::prune;

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
    let deleted = prune::delete(&store, &decisions, || ctx.cancel.is_cancelled())
        .await
        .map_err(|e| match e {
            prune::Stopped::Cancelled => StepError::cancelled(),
            e => StepError::transient(e.to_string()),
        })?;
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
