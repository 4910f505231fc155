//! `wait_ready`: polls a target until it accepts connections and answers a query.

use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use crate::pg::conn::ConnInfo;
use crate::plan::duration::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::future::Future;
use std::time::{Duration, Instant};

/// `wait_ready`: waits until a target accepts connections. The step's `timeout` bounds the
/// wait (default 60s).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitReadyParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Pause between connection attempts.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

/// How long to wait when the step has no `timeout`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

pub struct WaitReady;

impl StepType for WaitReady {
    const NAME: &'static str = "wait_ready";
    type Params = WaitReadyParams;
    const OUTPUTS: &'static [&'static str] = &["waited_ms", "server_version"];

    fn target(p: &WaitReadyParams) -> Option<&str> {
        Some(&p.target)
    }

    fn describe(p: &WaitReadyParams) -> String {
        describe(p)
    }

    fn run(
        p: &WaitReadyParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(500))
}

pub fn describe(p: &WaitReadyParams) -> String {
    format!(
        "wait until target `{}` accepts connections (checking every {})",
        p.target, p.interval
    )
}

pub async fn run(p: &WaitReadyParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let conn = ConnInfo::parse(ctx.target_url(&p.target)?)?;
    let started = Instant::now();
    let limit = ctx.timeout.unwrap_or(DEFAULT_WAIT);
    let mut last_error = String::from("no attempt finished");
    loop {
        let attempt = async {
            let mut c = conn.connect().await?;
            let version: (String,) = sqlx::query_as("show server_version")
                .fetch_one(&mut c)
                .await?;
            let _ = c.close().await;
            Ok::<_, sqlx::Error>(version.0)
        };
        tokio::select! {
            result = attempt => match result {
                Ok(version) => {
                    let mut outputs = Outputs::new();
                    outputs.insert("waited_ms".into(), started.elapsed().as_millis().to_string());
                    outputs.insert("server_version".into(), version);
                    return Ok(outputs);
                }
                Err(e) => last_error = format!("{}: {}", conn.place(), crate::pg::server::error_text(&e)),
            },
            _ = ctx.cancel.cancelled() => return Err(StepError::transient(format!("last attempt: {last_error}"))),
        }
        if started.elapsed() >= limit {
            return Err(StepError::transient(format!(
                "target `{}` did not accept connections within {}; last attempt: {last_error}",
                p.target,
                crate::plan::duration::format(limit)
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(p.interval.0) => {}
            _ = ctx.cancel.cancelled() => return Err(StepError::transient(format!("last attempt: {last_error}"))),
        }
    }
}
