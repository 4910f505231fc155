//! `apply --metrics FILE`: the run's outcome and the state of its repositories in the
//! Prometheus text format, written atomically for node_exporter's textfile collector (name
//! the file `*.prom` in its directory). One file per plan: it holds the last run's values.
//!
//! - per plan: `opsrunner_last_run_success`, `…_status` (one series per status, 1 for the
//!   run's), `…_start_timestamp_seconds`, `…_duration_seconds`;
//! - per backup step: `opsrunner_backup_bytes`, `opsrunner_backup_duration_seconds`;
//! - per verify step that test-restored: `opsrunner_verify_restore_duration_seconds` (RTO);
//! - per repository and database, read from the repository after the run:
//!   `opsrunner_newest_backup_timestamp_seconds`,
//!   `opsrunner_newest_verified_restore_timestamp_seconds` (a verification that restored and
//!   compared fingerprints, and passed), `opsrunner_backups`.

use super::report::{RunReport, RunStatus};
use crate::exec::events::StepStatus;
use crate::plan::ValidPlan;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What one repository holds, per database.
#[derive(Debug, Default, Clone)]
pub struct DatabaseState {
    pub backups: usize,
    pub newest_backup: Option<chrono::DateTime<chrono::Utc>>,
    pub newest_verified_restore: Option<chrono::DateTime<chrono::Utc>>,
}

/// Reads each repository the plan names: per database, how many backups, the newest, and
/// the newest whose verification restored it. A repository that cannot be read is left
/// out (its series go stale, which alerting on their age catches).
pub async fn repository_states(
    plan: &ValidPlan,
    repositories: &BTreeMap<String, crate::plan::model::Repository>,
    base_dir: &Path,
) -> BTreeMap<String, BTreeMap<String, DatabaseState>> {
    let mut out = BTreeMap::new();
    for name in plan.plan.repositories.keys() {
        let Some(repo) = repositories.get(name) else {
            continue;
        };
        let Ok(store) = crate::repo::open(repo, base_dir).await else {
            continue;
        };
        let Ok(listed) = crate::repo::listing::list(&store).await else {
            continue;
        };
        let mut databases: BTreeMap<String, DatabaseState> = BTreeMap::new();
        for entry in listed {
            let Ok(checked) = &entry.backup else { continue };
            let m = &checked.manifest;
            let state = databases.entry(m.database.clone()).or_default();
            state.backups += 1;
            state.newest_backup = state.newest_backup.max(Some(m.created_at));
            if let Some(v) = entry.trust.verification()
                && v.passed
                && v.restored
            {
                state.newest_verified_restore =
                    state.newest_verified_restore.max(Some(m.created_at));
            }
        }
        out.insert(name.clone(), databases);
    }
    out
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

fn seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The text of the metrics file.
pub fn render(
    report: &RunReport,
    plan: &ValidPlan,
    repositories: &BTreeMap<String, BTreeMap<String, DatabaseState>>,
) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    run_families(&mut f, report);
    step_families(&mut f, report, plan);
    repository_families(&mut f, repositories);
    out
}

/// The run's own families: success, status, start, duration.
fn run_families(f: &mut Family<'_>, report: &RunReport) {
    let plan_name = report.plan.name.as_str();
    let p = [("plan", plan_name)];
    f.header(
        "opsrunner_last_run_success",
        "gauge",
        "1 when the plan's last run succeeded, else 0.",
    );
    f.sample(
        "opsrunner_last_run_success",
        &p,
        f64::from(u8::from(report.status == RunStatus::Succeeded)),
    );
    f.header(
        "opsrunner_last_run_status",
        "gauge",
        "The plan's last run's outcome: 1 for its status, 0 for the others.",
    );
    for (status, text) in [
        (RunStatus::Succeeded, "succeeded"),
        (RunStatus::Failed, "failed"),
        (RunStatus::Cancelled, "cancelled"),
        (RunStatus::Refused, "refused"),
    ] {
        f.sample(
            "opsrunner_last_run_status",
            &[("plan", plan_name), ("status", text)],
            f64::from(u8::from(report.status == status)),
        );
    }
    f.header(
        "opsrunner_last_run_start_timestamp_seconds",
        "gauge",
        "When the plan's last run started (Unix time).",
    );
    f.sample(
        "opsrunner_last_run_start_timestamp_seconds",
        &p,
        seconds(report.started_at),
    );
    f.header(
        "opsrunner_last_run_duration_seconds",
        "gauge",
        "How long the plan's last run took.",
    );
    f.sample(
        "opsrunner_last_run_duration_seconds",
        &p,
        report.duration_ms as f64 / 1000.0,
    );
}

/// What the run's steps measured: backup sizes and durations, verify restore times.
fn step_families(f: &mut Family<'_>, report: &RunReport, plan: &ValidPlan) {
    let plan_name = report.plan.name.as_str();
    let steps: Vec<(usize, &super::report::StepReport)> = report
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == StepStatus::Succeeded && s.reused_from.is_none())
        .collect();
    let repository_of = |i: usize| {
        plan.plan.steps[i]
            .kind
            .repository()
            .unwrap_or("")
            .to_string()
    };
    let backups: Vec<_> = steps
        .iter()
        .filter(|(_, s)| s.step_type == "backup")
        .collect();
    if !backups.is_empty() {
        f.header(
            "opsrunner_backup_bytes",
            "gauge",
            "Size of the backup the step made in the last run, as stored.",
        );
        for (i, s) in &backups {
            if let Some(bytes) = s.outputs.get("bytes").and_then(|b| b.parse::<f64>().ok()) {
                let repository = repository_of(*i);
                f.sample(
                    "opsrunner_backup_bytes",
                    &[
                        ("plan", plan_name),
                        ("step", &s.id),
                        ("repository", &repository),
                    ],
                    bytes,
                );
            }
        }
        f.header(
            "opsrunner_backup_duration_seconds",
            "gauge",
            "How long the backup step took in the last run.",
        );
        for (i, s) in &backups {
            let repository = repository_of(*i);
            f.sample(
                "opsrunner_backup_duration_seconds",
                &[
                    ("plan", plan_name),
                    ("step", &s.id),
                    ("repository", &repository),
                ],
                s.duration_ms.unwrap_or(0) as f64 / 1000.0,
            );
        }
    }
    let restores: Vec<_> = steps
        .iter()
        .filter(|(_, s)| s.step_type == "verify")
        .filter_map(|(i, s)| {
            let ms = s.outputs.get("restore_duration_ms")?.parse::<f64>().ok()?;
            Some((*i, s, ms))
        })
        .collect();
    if !restores.is_empty() {
        f.header(
            "opsrunner_verify_restore_duration_seconds",
            "gauge",
            "How long the verify step's test restore took in the last run: the measured RTO.",
        );
        for (i, s, ms) in restores {
            let repository = repository_of(i);
            f.sample(
                "opsrunner_verify_restore_duration_seconds",
                &[
                    ("plan", plan_name),
                    ("step", &s.id),
                    ("repository", &repository),
                ],
                ms / 1000.0,
            );
        }
    }
}

/// Per repository and database: backups, the newest, the newest verified restore.
fn repository_families(
    f: &mut Family<'_>,
    repositories: &BTreeMap<String, BTreeMap<String, DatabaseState>>,
) {
    let rows: Vec<(&String, &String, &DatabaseState)> = repositories
        .iter()
        .flat_map(|(r, dbs)| dbs.iter().map(move |(d, s)| (r, d, s)))
        .collect();
    if !rows.is_empty() {
        f.header(
            "opsrunner_backups",
            "gauge",
            "Published, readable backups in the repository, per database.",
        );
        for (r, d, s) in &rows {
            f.sample(
                "opsrunner_backups",
                &[("repository", r), ("database", d)],
                s.backups as f64,
            );
        }
        f.header(
            "opsrunner_newest_backup_timestamp_seconds",
            "gauge",
            "When the newest readable backup of the database was made (Unix time).",
        );
        for (r, d, s) in &rows {
            if let Some(t) = s.newest_backup {
                f.sample(
                    "opsrunner_newest_backup_timestamp_seconds",
                    &[("repository", r), ("database", d)],
                    seconds(t),
                );
            }
        }
        f.header(
            "opsrunner_newest_verified_restore_timestamp_seconds",
            "gauge",
            "When the newest backup of the database that a verification restored and compared (and passed) was made (Unix time).",
        );
        for (r, d, s) in &rows {
            if let Some(t) = s.newest_verified_restore {
                f.sample(
                    "opsrunner_newest_verified_restore_timestamp_seconds",
                    &[("repository", r), ("database", d)],
                    seconds(t),
                );
            }
        }
    }
}

/// Writes `text` to `path` atomically: a collector never reads half a file.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    crate::atomic::write(path, text.as_bytes())
}
