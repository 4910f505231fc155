//! Typed events the executor emits while a run goes on. Reporters (the live log, the run
//! report) consume them; nothing else learns what happened.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::sync::mpsc::UnboundedSender;

use crate::redact::Redactor;

pub type Outputs = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    /// Dry-run only: the step would run.
    Planned,
}

impl StepStatus {
    /// The name in reports and in `{{ steps.ID.status }}`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Planned => "planned",
        }
    }
}

/// What a failed verification found, for CI to branch on (exit codes 5 and 6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The backup is intact but older than the verify's `max_age`: backups stopped.
    BackupTooOld,
    /// The backup's manifest, files or archive are damaged, it does not restore, or the
    /// restored content differs from what the backup recorded.
    BackupCorrupt,
}

/// One attempt at running a step.
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Attempt {
    /// 1 for the first try.
    pub number: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Why the attempt failed; absent when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the failure was judged transient (worth retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        plan: String,
        steps: usize,
        at: DateTime<Utc>,
    },
    StepStarted {
        step: String,
        at: DateTime<Utc>,
    },
    Output {
        step: String,
        stream: Stream,
        line: String,
    },
    AttemptFailed {
        step: String,
        attempt: Attempt,
        retry_in_ms: Option<u64>,
    },
    StepFinished {
        step: String,
        status: StepStatus,
        at: DateTime<Utc>,
        duration_ms: u64,
        attempts: Vec<Attempt>,
        outputs: Outputs,
        error: Option<String>,
        /// What a failed verification found about the backup.
        #[serde(skip_serializing_if = "Option::is_none")]
        verdict: Option<Verdict>,
    },
    /// A number a step measured (a verify's restore time and backup age: RTO and RPO),
    /// reported as it is known, also when the step then fails.
    Measured {
        step: String,
        name: String,
        value: u64,
        at: DateTime<Utc>,
    },
    StepSkipped {
        step: String,
        reason: String,
        at: DateTime<Utc>,
    },
    /// How far a step's transfer has come: `bytes` of `total` (when known), reported about
    /// once a second; `done` on the last report.
    Progress {
        step: String,
        what: String,
        bytes: u64,
        total: Option<u64>,
        done: bool,
        at: DateTime<Utc>,
    },
    /// A step taken as done from an earlier run (`apply --resume`), with its outputs.
    StepReused {
        step: String,
        from_run: String,
        outputs: Outputs,
        at: DateTime<Utc>,
    },
    /// Something the run did on its own account: a lock taken, waited for or lost.
    Notice {
        step: Option<String>,
        message: String,
        at: DateTime<Utc>,
    },
    RunFinished {
        /// `succeeded`, `failed` or `cancelled`.
        status: String,
        cancelled: bool,
        at: DateTime<Utc>,
        duration_ms: u64,
    },
}

impl Event {
    fn redact(&mut self, r: &Redactor) {
        let fix = |s: &mut String| *s = r.redact(s);
        match self {
            Event::Output { line, .. } => fix(line),
            Event::AttemptFailed { attempt, .. } => {
                if let Some(e) = &mut attempt.error {
                    fix(e)
                }
            }
            Event::StepFinished {
                attempts,
                outputs,
                error,
                ..
            } => {
                for a in attempts {
                    if let Some(e) = &mut a.error {
                        fix(e)
                    }
                }
                outputs.values_mut().for_each(fix);
                if let Some(e) = error {
                    fix(e)
                }
            }
            Event::StepSkipped { reason, .. }
            | Event::Notice {
                message: reason, ..
            } => fix(reason),
            Event::StepReused { outputs, .. } => outputs.values_mut().for_each(fix),
            Event::RunStarted { .. }
            | Event::StepStarted { .. }
            | Event::Measured { .. }
            | Event::RunFinished { .. }
            | Event::Progress { .. } => {}
        }
    }
}

/// Where steps and the executor send events. Every event is redacted on the way out, so no
/// reporter can leak a secret by forgetting to.
#[derive(Clone)]
pub struct Events {
    tx: UnboundedSender<Event>,
    redactor: Redactor,
}

impl Events {
    pub fn new(tx: UnboundedSender<Event>, redactor: Redactor) -> Self {
        Events { tx, redactor }
    }

    pub fn emit(&self, mut event: Event) {
        event.redact(&self.redactor);
        // A closed channel means the reporters are gone (the process is exiting); there is
        // nobody left to tell.
        let _ = self.tx.send(event);
    }

    pub fn output(&self, step: &str, stream: Stream, line: String) {
        self.emit(Event::Output {
            step: step.to_string(),
            stream,
            line,
        });
    }

    pub fn notice(&self, step: Option<&str>, message: String) {
        self.emit(Event::Notice {
            step: step.map(str::to_string),
            message,
            at: Utc::now(),
        });
    }

    pub fn measured(&self, step: &str, name: &str, value: u64) {
        self.emit(Event::Measured {
            step: step.to_string(),
            name: name.to_string(),
            value,
            at: Utc::now(),
        });
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}
