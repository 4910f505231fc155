//! `opsrunner runs list|show`: the run history (see `run::history`), text or JSON.

use crate::exit::Failure;
use crate::run::history::History;
use crate::run::report::RunReport;
use serde::Serialize;
use std::fmt::Write as _;

fn history() -> Result<History, Failure> {
    History::open().ok_or_else(|| {
        Failure::Usage("no state directory: set OPSRUNNER_STATE_DIR (or HOME)".into())
    })
}

/// One line of `runs list --json`.
#[derive(Serialize)]
struct RunSummary<'a> {
    run_id: &'a str,
    plan: &'a str,
    status: crate::run::report::RunStatus,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: chrono::DateTime<chrono::Utc>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_from: Option<&'a str>,
    /// Steps that failed, for a glance at what went wrong.
    failed_steps: Vec<&'a str>,
}

fn summary(r: &RunReport) -> RunSummary<'_> {
    RunSummary {
        run_id: &r.run_id,
        plan: &r.plan.name,
        status: r.status,
        started_at: r.started_at,
        finished_at: r.finished_at,
        duration_ms: r.duration_ms,
        resumed_from: r.resumed_from.as_deref(),
        failed_steps: r
            .steps
            .iter()
            .filter(|s| s.status == crate::exec::events::StepStatus::Failed)
            .map(|s| s.id.as_str())
            .collect(),
    }
}

fn status_text(status: crate::run::report::RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The kept runs, newest first; `plan` keeps one plan's, `limit` the newest N.
pub fn list(plan: Option<&str>, limit: usize, json: bool) -> Result<String, Failure> {
    let history = history()?;
    let runs = history
        .list()
        .map_err(|e| Failure::Io(format!("{}: {e}", history.dir().display())))?;
    let runs: Vec<&RunReport> = runs
        .iter()
        .filter(|r| plan.is_none_or(|p| r.plan.name == p))
        .take(limit)
        .collect();
    if json {
        let rows: Vec<RunSummary> = runs.iter().map(|r| summary(r)).collect();
        return Ok(serde_json::to_string_pretty(&rows).expect("serializes") + "\n");
    }
    if runs.is_empty() {
        return Ok(format!("no runs recorded in {}\n", history.dir().display()));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:<10} {:<20} {:>9}  FAILED",
        "RUN", "PLAN", "STATUS", "STARTED (UTC)", "DURATION"
    );
    for r in runs {
        let s = summary(r);
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<10} {:<20} {:>9}  {}",
            s.run_id,
            s.plan,
            status_text(s.status),
            s.started_at.format("%Y-%m-%d %H:%M:%S"),
            crate::plan::duration::format(std::time::Duration::from_millis(s.duration_ms)),
            s.failed_steps.join(", ")
        );
    }
    Ok(out)
}

/// One run: its report as JSON, or each step's outcome as text.
pub fn show(run_id: &str, json: bool) -> Result<String, Failure> {
    let history = history()?;
    let report = history.load(run_id).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => {
            Failure::Usage(e.to_string())
        }
        _ => Failure::Io(e.to_string()),
    })?;
    if json {
        return Ok(serde_json::to_string_pretty(&report).expect("serializes") + "\n");
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} of plan `{}` ({}): {} in {}",
        report.run_id,
        report.plan.name,
        report.plan.path,
        status_text(report.status),
        crate::plan::duration::format(std::time::Duration::from_millis(report.duration_ms))
    );
    let _ = writeln!(
        out,
        "started {}",
        report.started_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(from) = &report.resumed_from {
        let _ = writeln!(out, "resumed run {from}");
    }
    if let Some(e) = &report.error {
        let _ = writeln!(out, "error: {e}");
    }
    for s in &report.steps {
        let status = serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let took = s
            .duration_ms
            .map(|ms| {
                format!(
                    " in {}",
                    crate::plan::duration::format(std::time::Duration::from_millis(ms))
                )
            })
            .unwrap_or_default();
        let _ = write!(out, "  {:<24} {status}{took}", s.id);
        if let Some(reason) = &s.reason {
            let _ = write!(out, ": {reason}");
        }
        out.push('\n');
        for (k, v) in &s.outputs {
            let _ = writeln!(out, "      {k} = {v}");
        }
    }
    use crate::run::report::{Mode, RunStatus};
    if report.mode == Mode::Apply
        && matches!(
            report.status,
            RunStatus::Failed | RunStatus::Cancelled | RunStatus::Refused
        )
    {
        let _ = writeln!(
            out,
            "to run again only what did not succeed: opsrunner apply {} --resume {}",
            report.plan.path, report.run_id
        );
    }
    Ok(out)
}
