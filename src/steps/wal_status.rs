//! `wal_status`: the point-in-time recovery check for a schedule — the repository's WAL
//! archive has a recent segment (the RPO) and no gap where recovery would need WAL (see
//! [`crate::repo::archive`]). Fails with exit 5 when nothing was archived within `max_age`,
//! 6 on a gap, like `verify` for a stale or damaged backup.

use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream, Verdict};
use crate::exec::{StepContext, StepError};
use crate::repo::archive::{self, Problem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// `wal_status`: checks a repository's WAL archive.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WalStatusParams {
    /// Name of a repository declared under `repositories`.
    pub repository: String,
    /// The oldest the newest archived segment may be (e.g. `15m`); older fails with exit 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<crate::plan::duration::HumanDuration>,
}

pub struct WalStatus;

impl StepType for WalStatus {
    const NAME: &'static str = "wal_status";
    type Params = WalStatusParams;
    const OUTPUTS: &'static [&'static str] = &["newest", "newest_age_s", "segments", "gaps"];

    fn repository(p: &WalStatusParams) -> Option<&str> {
        Some(&p.repository)
    }

    fn describe(p: &WalStatusParams) -> String {
        let mut s = format!(
            "check the WAL archive of repository `{}`: no segment missing from the oldest base backup on",
            p.repository
        );
        if let Some(age) = p.max_age {
            s.push_str(&format!(", the newest archived within {age}"));
        }
        s
    }

    fn run(
        p: &WalStatusParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

pub async fn run(p: &WalStatusParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let state = archive::inspect(&store)
        .await
        .map_err(|e| crate::exec::io_error("reading the WAL archive", &e))?;
    for line in state.text().lines() {
        ctx.events
            .output(&ctx.step_id, Stream::Stdout, line.to_string());
    }
    if let Some(age) = state.newest_age_s {
        ctx.events.measured(&ctx.step_id, "wal_age_s", age);
    }
    match state.problem(p.max_age.map(|d| d.0)) {
        Some(Problem::Gap(message)) => Err(StepError::verdict(Verdict::BackupCorrupt, message)),
        Some(Problem::TooOld(message)) => Err(StepError::verdict(Verdict::BackupTooOld, message)),
        None => {
            let mut outputs = Outputs::new();
            outputs.insert("newest".into(), state.newest.clone().unwrap_or_default());
            outputs.insert(
                "newest_age_s".into(),
                state
                    .newest_age_s
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            );
            outputs.insert("segments".into(), state.segments.to_string());
            outputs.insert("gaps".into(), state.gaps.len().to_string());
            Ok(outputs)
        }
    }
}
