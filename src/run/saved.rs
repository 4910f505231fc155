//! Saved plans: `opsrunner plan FILE --out plan.json` keeps what the reviewed preview was
//! made from — the plan file's hash, the `--var` values, each step as resolved, each
//! target's identity and each repository's newest backup (`run::saved_state`) — and
//! `opsrunner apply plan.json` runs that plan only while all of it is still true. What
//! Terraform calls a stale saved plan, plus the case it misses: a repository that was empty
//! when the plan was reviewed (so its prune would delete nothing) and holds backups now.
//!
//! The JSON preview *is* the saved plan: one file to post for review and to apply.

use super::preview::PlanPreview;
use super::saved_state::{
    FORMAT, RepositoryState, SEAL_KEY, SavedState, StepDigest, TargetState, seal,
};
use crate::exit::Failure;
use crate::steps::probe::Unread;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The key that marks a JSON preview as a saved plan; its value is the format version.
pub const KEY: &str = "opsrunner_saved_plan";
/// The largest saved plan read (the preview of a plan of thousands of steps is megabytes).
const MAX_BYTES: u64 = 64 << 20;

/// The parts of a saved plan `apply` reads back.
#[derive(Debug, Deserialize)]
pub struct SavedPlan {
    pub plan: String,
    pub path: String,
    pub plan_sha256: String,
    #[serde(default)]
    pub review_only: Option<String>,
    #[serde(default)]
    pub saved: Option<SavedState>,
    #[serde(default)]
    pub unread: Vec<Unread>,
}

/// Whether `path` is a saved plan rather than a YAML plan: a JSON object with [`KEY`].
/// `None` for anything else (YAML plans are read as before).
pub fn detect(path: &Path) -> Result<Option<SavedPlan>, Failure> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes));
    if read.is_err() || bytes.len() as u64 > MAX_BYTES {
        // The plan loader reports it, with the same wording as for any plan.
        return Ok(None);
    }
    if !bytes.trim_ascii_start().starts_with(b"{") {
        return Ok(None);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(None);
    };
    let Some(map) = value.as_object_mut() else {
        return Ok(None);
    };
    let Some(format) = map.get(KEY) else {
        return Ok(None);
    };
    let shown = path.display();
    if format.as_u64() != Some(u64::from(FORMAT)) {
        return Err(Failure::Usage(format!(
            "{shown}: saved plan format {format} is not one this opsrunner reads ({FORMAT}); make a new one with `opsrunner plan PLAN --out {shown}`"
        )));
    }
    let seal_found = map.remove(SEAL_KEY);
    let plan: SavedPlan = serde_json::from_value(value.clone()).map_err(|e| {
        Failure::Usage(format!("{shown}: not a saved plan opsrunner can read: {e}"))
    })?;
    if let Some(why) = &plan.review_only {
        return Err(Failure::Usage(format!(
            "{shown} is a review-only preview (made with {why}): it read nothing and cannot be applied; save a plan with `opsrunner plan {} --out {shown}`",
            plan.path
        )));
    }
    let Some(_) = &plan.saved else {
        return Err(Failure::Usage(format!(
            "{shown} is a preview without saved state and cannot be applied; save a plan with `opsrunner plan {} --out {shown}`",
            plan.path
        )));
    };
    if seal_found.as_ref().and_then(Value::as_str) != Some(seal(&value).as_str()) {
        return Err(Failure::Refused(format!(
            "{shown} was changed after it was saved (its saved_plan_sha256 does not match): nothing was run; make and review a new plan"
        )));
    }
    Ok(Some(plan))
}

impl SavedPlan {
    pub fn state(&self) -> &SavedState {
        self.saved
            .as_ref()
            .expect("detect returns saved plans only")
    }

    /// The plan file it was made from: where it was, else where its path leads from here
    /// (a CI job applying in another checkout). Its hash decides whether it is the same.
    pub fn plan_file(&self) -> PathBuf {
        let at = &self.state().plan_file;
        if at.is_file() {
            at.clone()
        } else {
            PathBuf::from(&self.path)
        }
    }

    /// What makes this saved plan stale against the preview made now, one line each;
    /// empty when it may run.
    pub fn changes(&self, now: &PlanPreview) -> Vec<String> {
        let mut out = Vec::new();
        let was = self.state();
        for u in &self.unread {
            out.push(format!(
                "when the plan was saved, {}: it cannot be checked now",
                u.line()
            ));
        }
        if now.plan_sha256 != self.plan_sha256 {
            out.push(format!(
                "the plan file {} changed (SHA-256 {} when saved, {} now)",
                now.path,
                short(&self.plan_sha256),
                short(&now.plan_sha256)
            ));
        }
        let Some(is) = &now.saved else {
            out.push("the current state could not be read".into());
            return out;
        };
        out.extend(step_changes(&was.steps, &is.steps));
        for (id, before) in &was.deletes {
            let after = is.deletes.get(id).cloned().unwrap_or_default();
            if &after != before {
                out.push(format!(
                    "step `{id}` would delete {} now, {} when the plan was saved",
                    list(&after),
                    list(before)
                ));
            }
        }
        for (id, after) in &is.deletes {
            if !was.deletes.contains_key(id) {
                out.push(format!(
                    "step `{id}` would delete {} now, nothing when the plan was saved",
                    list(after)
                ));
            }
        }
        for (name, before) in &was.targets {
            let after = is.targets.get(name);
            if let TargetState::Unread { error } = before {
                out.push(format!(
                    "target `{name}` could not be read when the plan was saved ({error})"
                ));
            } else if after != Some(before) {
                out.push(format!(
                    "target `{name}` is {} now, {} when the plan was saved",
                    after.map_or("not used".into(), describe_target),
                    describe_target(before)
                ));
            }
        }
        for (name, before) in &was.repositories {
            let after = is.repositories.get(name);
            if let RepositoryState::Unread { error } = before {
                out.push(format!(
                    "repository `{name}` could not be read when the plan was saved ({error})"
                ));
            } else if after != Some(before) {
                out.push(format!(
                    "repository `{name}` {} now; it {} when the plan was saved",
                    after.map_or("is not used".into(), |s| describe_repository(s, "holds")),
                    describe_repository(before, "held")
                ));
            }
        }
        for name in is.targets.keys().filter(|n| !was.targets.contains_key(*n)) {
            out.push(format!(
                "target `{name}` was not used when the plan was saved"
            ));
        }
        for name in is
            .repositories
            .keys()
            .filter(|n| !was.repositories.contains_key(*n))
        {
            out.push(format!(
                "repository `{name}` was not used when the plan was saved"
            ));
        }
        out
    }
}

fn step_changes(was: &[StepDigest], is: &[StepDigest]) -> Vec<String> {
    let mut out = Vec::new();
    let by_id = |steps: &[StepDigest]| -> BTreeMap<String, String> {
        steps
            .iter()
            .map(|s| (s.id.clone(), s.sha256.clone()))
            .collect()
    };
    let (before, after) = (by_id(was), by_id(is));
    for StepDigest { id, sha256: digest } in is {
        match before.get(id) {
            None => out.push(format!("step `{id}` is new")),
            Some(d) if d != digest => out.push(format!(
                "step `{id}` would do something else (its resolved parameters, condition, target or repository changed)"
            )),
            Some(_) => {}
        }
    }
    for StepDigest { id, .. } in was {
        if !after.contains_key(id) {
            out.push(format!("step `{id}` is gone"));
        }
    }
    let order = |steps: &[StepDigest]| -> Vec<String> {
        steps
            .iter()
            .map(|s| s.id.clone())
            .filter(|id| before.contains_key(id) && after.contains_key(id))
            .collect()
    };
    if out.is_empty() && order(was) != order(is) {
        out.push("the steps run in another order".into());
    }
    out
}

fn describe_target(t: &TargetState) -> String {
    match t {
        TargetState::Ephemeral => "an ephemeral cluster".into(),
        TargetState::Server {
            system_identifier,
            database,
            database_exists,
            server_version_num,
        } => format!(
            "database `{database}`{} on server {} (version {server_version_num})",
            if *database_exists {
                ""
            } else {
                " (not created yet)"
            },
            system_identifier
                .as_deref()
                .unwrap_or("(system identifier not readable)")
        ),
        TargetState::Unread { error } => format!("unreadable ({error})"),
    }
}

fn describe_repository(r: &RepositoryState, verb: &str) -> String {
    match r {
        RepositoryState::Empty => format!("{verb} no backup"),
        RepositoryState::Holds { newest, backups } => format!(
            "{verb} {backups} backup{}, the newest {}",
            if *backups == 1 { "" } else { "s" },
            newest.as_ref().map_or("unreadable".into(), |n| format!(
                "`{}` (manifest {})",
                n.id,
                short(&n.manifest_sha256)
            ))
        ),
        RepositoryState::Unread { error } => format!("could not be read ({error})"),
    }
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "nothing".into()
    } else {
        ids.iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
