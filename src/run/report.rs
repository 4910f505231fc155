//! The JSON run report: what ran, how each attempt went, what came out. Built only from
//! executor events, and redacted on the way in (see `events.rs`).

use crate::exec::events::{Attempt, Event, Outputs, StepStatus, Stream};
use crate::plan::{PlanSource, ValidPlan};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

pub const SCHEMA_VERSION: u32 = 1;
/// How many output lines of each step the report keeps.
pub const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Apply,
    DryRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    /// A guard refused the run before any step started.
    Refused,
    /// Dry-run: nothing was run.
    Planned,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "opsrunner run report")]
pub struct RunReport {
    /// Version of this report format.
    pub schema_version: u32,
    pub run_id: String,
    pub opsrunner_version: String,
    pub plan: PlanInfo,
    pub mode: Mode,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Why the run did not start, when a guard refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run this one resumed (`apply --resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// Steps in plan order.
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PlanInfo {
    pub name: String,
    pub path: String,
    /// SHA-256 of the plan file's bytes, hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    pub id: String,
    #[serde(rename = "type")]
    pub step_type: String,
    pub status: StepStatus,
    /// Why the step was skipped, or its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub attempts: Vec<Attempt>,
    pub outputs: Outputs,
    /// The last lines the step printed (stdout and stderr interleaved).
    pub log_tail: Vec<String>,
    /// What the step's outputs depend on, hashed (see `plan::identity`): `apply --resume`
    /// reuses them only while it is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_sha256: Option<String>,
    /// The run whose outputs this step reused instead of running (`apply --resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// What a failed verification found: `backup_too_old` or `backup_corrupt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::exec::events::Verdict>,
    /// Numbers the step measured, also when it failed. A verify's `restore_duration_ms` is
    /// the drill's recovery time (RTO), its `backup_age_s` the age of what it restored (RPO).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measurements: BTreeMap<String, u64>,
}

/// Collects events into a report.
pub struct ReportBuilder {
    report: RunReport,
    tails: Vec<VecDeque<String>>,
    plan_index: std::collections::HashMap<String, usize>,
}

impl ReportBuilder {
    pub fn new(
        source: &PlanSource,
        plan: &ValidPlan,
        run_id: &str,
        mode: Mode,
        started_at: DateTime<Utc>,
    ) -> Self {
        let steps = plan
            .plan
            .steps
            .iter()
            .map(|s| StepReport {
                id: s.id().to_string(),
                step_type: s.kind.type_name().to_string(),
                status: if mode == Mode::DryRun {
                    StepStatus::Planned
                } else {
                    StepStatus::Skipped
                },
                reason: None,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                attempts: Vec::new(),
                outputs: Outputs::new(),
                log_tail: Vec::new(),
                definition_sha256: None,
                reused_from: None,
                verdict: None,
                measurements: BTreeMap::new(),
            })
            .collect::<Vec<_>>();
        ReportBuilder {
            tails: vec![VecDeque::new(); steps.len()],
            plan_index: plan.index.clone(),
            report: RunReport {
                schema_version: SCHEMA_VERSION,
                run_id: run_id.to_string(),
                opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
                plan: PlanInfo {
                    name: plan.plan.name.clone(),
                    path: source.display.clone(),
                    sha256: source.sha256.clone(),
                },
                mode,
                status: if mode == Mode::DryRun {
                    RunStatus::Planned
                } else {
                    RunStatus::Succeeded
                },
                started_at,
                finished_at: started_at,
                duration_ms: 0,
                error: None,
                resumed_from: None,
                steps,
            },
        }
    }

    /// Records each step's identity (with the run's variables, after `--var`), so that a
    /// later `apply --resume` of this run can tell whether a step changed.
    pub fn identify(
        &mut self,
        plan: &ValidPlan,
        vars: &std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        for (i, s) in self.report.steps.iter_mut().enumerate() {
            s.definition_sha256 = Some(crate::plan::identity::step_sha256(&plan.plan, i, vars));
        }
    }

    /// This run resumes `run_id`.
    pub fn resumes(&mut self, run_id: &str) {
        self.report.resumed_from = Some(run_id.to_string());
    }

    fn step(&mut self, id: &str) -> Option<&mut StepReport> {
        let i = *self.plan_index.get(id)?;
        self.report.steps.get_mut(i)
    }

    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::RunStarted { .. }
            | Event::AttemptFailed { .. }
            | Event::Notice { .. }
            | Event::Progress { .. } => {}
            Event::StepReused {
                step,
                from_run,
                outputs,
                ..
            } => {
                if let Some(s) = self.step(step) {
                    s.status = StepStatus::Succeeded;
                    s.outputs = outputs.clone();
                    s.reused_from = Some(from_run.clone());
                    s.reason = Some(format!("reused from run {from_run}"));
                }
            }
            Event::StepStarted { step, at } => {
                if let Some(s) = self.step(step) {
                    s.started_at = Some(*at);
                }
            }
            Event::Output { step, stream, line } => {
                if let Some(&i) = self.plan_index.get(step) {
                    let tail = &mut self.tails[i];
                    if tail.len() == LOG_TAIL_LINES {
                        tail.pop_front();
                    }
                    let prefix = if *stream == Stream::Stderr {
                        "stderr: "
                    } else {
                        ""
                    };
                    tail.push_back(format!("{prefix}{line}"));
                }
            }
            Event::StepFinished {
                step,
                status,
                at,
                duration_ms,
                attempts,
                outputs,
                error,
                verdict,
            } => {
                if let Some(s) = self.step(step) {
                    s.verdict = *verdict;
                    s.status = *status;
                    s.finished_at = Some(*at);
                    s.duration_ms = Some(*duration_ms);
                    s.attempts = attempts.clone();
                    s.outputs = outputs.clone();
                    s.reason = error.clone();
                }
            }
            Event::Measured {
                step, name, value, ..
            } => {
                if let Some(s) = self.step(step) {
                    s.measurements.insert(name.clone(), *value);
                }
            }
            Event::StepSkipped { step, reason, .. } => {
                if let Some(s) = self.step(step) {
                    s.status = StepStatus::Skipped;
                    s.reason = Some(reason.clone());
                }
            }
            Event::RunFinished {
                at, duration_ms, ..
            } => {
                self.report.finished_at = *at;
                self.report.duration_ms = *duration_ms;
            }
        }
    }

    /// The run ended before any step started: refused by a guard, or its preparation failed.
    pub fn not_started(&mut self, status: RunStatus, message: String) {
        self.report.status = status;
        self.report.error = Some(message);
        let reason = match status {
            RunStatus::Refused => "the run was refused before any step started",
            _ => "the run failed before any step started",
        };
        for s in &mut self.report.steps {
            s.reason = Some(reason.into());
        }
    }

    pub fn finish(mut self, status: RunStatus) -> RunReport {
        for (s, tail) in self.report.steps.iter_mut().zip(self.tails) {
            s.log_tail = tail.into_iter().collect();
        }
        if self.report.error.is_none() && self.report.mode == Mode::Apply {
            self.report.status = status;
        }
        if self.report.finished_at == self.report.started_at {
            self.report.finished_at = Utc::now();
            self.report.duration_ms = (self.report.finished_at - self.report.started_at)
                .num_milliseconds()
                .max(0) as u64;
        }
        self.report
    }
}

/// Writes a report atomically: a reader never sees half a report.
pub fn write(report: &RunReport, path: &std::path::Path) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(report).expect("reports serialize");
    crate::atomic::write(path, (json + "\n").as_bytes())
}
