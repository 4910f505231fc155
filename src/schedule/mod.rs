//! `opsrunner schedule systemd|k8s`: the units and manifests that run a plan on its
//! `schedule:` — a systemd service and timer on one machine, a Kubernetes CronJob per
//! plan for a fleet. opsrunner does not schedule anything itself; these engines do.

pub mod k8s;
pub mod systemd;
pub mod yaml;

use crate::exit::Failure;
use crate::plan::calendar;
use crate::plan::{self, PlanSource, ValidPlan};
use std::path::Path;

/// A plan read for scheduling: valid, with a schedule.
pub struct Scheduled {
    pub source: PlanSource,
    pub plan: ValidPlan,
    pub calendar: calendar::Calendar,
    /// A name for units and objects derived from the plan's name.
    pub unit_name: String,
}

impl Scheduled {
    /// The plan's `file://` repositories: name, URL as written, and the path in it.
    pub fn local_repositories(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.plan
            .plan
            .repositories
            .iter()
            .filter_map(|(name, repo)| {
                crate::repo::registry::local_path(&repo.url)
                    .map(|path| (name.as_str(), repo.url.as_str(), path))
            })
    }
}

/// Reads and validates a plan and takes its `schedule:` (or `on_calendar` instead).
pub fn read(file: &Path, schedule: Option<&str>) -> Result<Scheduled, Failure> {
    let source = PlanSource::read(file).map_err(Failure::Plan)?;
    let (source, plan) = plan::check(source).map_err(Failure::Plan)?;
    let calendar = match (schedule, &plan.plan.schedule) {
        (Some(text), _) => calendar::Calendar::parse(text)
            .map_err(|e| Failure::Usage(format!("--schedule `{text}`: {e}")))?,
        (None, Some(s)) => s.0.clone(),
        (None, None) => {
            return Err(Failure::Usage(format!(
                "{}: the plan has no `schedule:`; add one (e.g. `schedule: \"*-*-* 02:00\"` or `schedule: \"0 2 * * *\"`) or pass --schedule",
                source.display
            )));
        }
    };
    let unit_name = unit_name(&plan.plan.name).ok_or_else(|| {
        Failure::Usage(format!(
            "plan name `{}` has no letter or digit to name a unit after",
            plan.plan.name
        ))
    })?;
    Ok(Scheduled {
        source,
        plan,
        calendar,
        unit_name,
    })
}

/// `opsrunner-NAME`, with NAME lower-cased and reduced to letters, digits and `-`: valid as
/// a systemd unit name and as a Kubernetes object name (RFC 1123, at most 52 characters so
/// that a CronJob's generated Job names fit).
fn unit_name(plan_name: &str) -> Option<String> {
    let mut name = String::new();
    for c in plan_name.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        return None;
    }
    let full = format!("opsrunner-{name}");
    Some(
        full.chars()
            .take(52)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string(),
    )
}

/// Files to write: name and content.
pub type Files = Vec<(String, String)>;

/// Writes `files` into `dir` (created when missing), or returns them for stdout, each
/// after a `# ---- NAME ----` line.
pub fn emit(files: Files, out: Option<&Path>) -> Result<String, Failure> {
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::Io(format!("cannot create {}: {e}", dir.display())))?;
            let mut written = String::new();
            for (name, text) in files {
                let path = dir.join(&name);
                crate::atomic::write(&path, text.as_bytes())
                    .map_err(|e| Failure::Io(format!("cannot write {}: {e}", path.display())))?;
                written.push_str(&format!("wrote {}\n", path.display()));
            }
            Ok(written)
        }
        None => Ok(files
            .into_iter()
            .map(|(name, text)| format!("# ---- {name} ----\n{text}"))
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_names_are_safe_for_systemd_and_kubernetes() {
        assert_eq!(
            super::unit_name("nightly").as_deref(),
            Some("opsrunner-nightly")
        );
        assert_eq!(
            super::unit_name("Nightly Backup (EU)").as_deref(),
            Some("opsrunner-nightly-backup-eu")
        );
        assert_eq!(super::unit_name("../../"), None);
        assert!(super::unit_name(&"x".repeat(100)).unwrap().len() <= 52);
    }
}
