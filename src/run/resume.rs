//! `apply --resume RUN_ID`: which steps of an earlier run are taken as done, with the
//! outputs it recorded, so that only what failed, was skipped or was cancelled runs again
//! (a verify after a failed verify reuses the backup already taken).
//!
//! A step is reused when it succeeded in that run under `if: success()`, every step it
//! needs is reused too, and its identity (`plan::identity`: type, parameters, target and
//! repository definitions, the variables they use) is unchanged. Cleanup and alert steps
//! (`always()`, `failure()`, `cancelled()`) run again: they report on this run. A reused
//! output that was redacted (it held a secret) cannot be handed on, and a changed step
//! means its outputs describe something else: both refuse the resume.

use super::report::{Mode, RunReport, RunStatus};
use crate::exec::events::{Outputs, StepStatus};
use crate::plan::ValidPlan;
use crate::plan::model::Condition;
use crate::redact::MASK;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The steps taken from the earlier run, by index in the plan, with their outputs.
#[derive(Debug, Default)]
pub struct Reuse {
    pub from_run: String,
    pub steps: BTreeMap<usize, Outputs>,
}

/// What `--resume` takes from `old` for `plan`, or why it cannot.
pub fn reuse(
    old: &RunReport,
    plan: &ValidPlan,
    vars: &BTreeMap<String, Value>,
) -> Result<Reuse, String> {
    let id = &old.run_id;
    if old.mode != Mode::Apply {
        return Err(format!(
            "run {id} was a dry run: nothing ran that could be reused"
        ));
    }
    if old.plan.name != plan.plan.name {
        return Err(format!(
            "run {id} ran plan `{}`, not `{}`",
            old.plan.name, plan.plan.name
        ));
    }
    if old.status == RunStatus::Succeeded {
        return Err(format!(
            "run {id} succeeded: there is nothing to resume; run the plan without --resume"
        ));
    }
    let before: BTreeMap<&str, &super::report::StepReport> =
        old.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let steps = &plan.plan.steps;
    let mut reused = Reuse {
        from_run: id.clone(),
        steps: BTreeMap::new(),
    };
    for &i in &plan.dag.order {
        let step = &steps[i];
        let Some(earlier) = before.get(step.id()) else {
            continue;
        };
        if earlier.status != StepStatus::Succeeded
            || step.common.condition != Condition::Success
            || !plan.dag.needs[i]
                .iter()
                .all(|n| reused.steps.contains_key(n))
        {
            continue;
        }
        let now = crate::plan::identity::step_sha256(&plan.plan, i, vars);
        match &earlier.definition_sha256 {
            Some(then) if *then == now => {}
            Some(_) => {
                return Err(format!(
                    "step `{}` changed since run {id} (its parameters, its target or repository, or a variable it uses), so the outputs recorded then describe something else; run the plan without --resume to start over",
                    step.id()
                ));
            }
            None => {
                return Err(format!(
                    "run {id} was recorded without step identities (an older opsrunner); run the plan without --resume"
                ));
            }
        }
        reused.steps.insert(i, earlier.outputs.clone());
    }
    // A redacted output cannot be handed to a step that runs again.
    let reused_ids: BTreeSet<&str> = reused.steps.keys().map(|&i| steps[i].id()).collect();
    for (i, step) in steps.iter().enumerate() {
        if reused.steps.contains_key(&i) {
            continue;
        }
        let mut strings = Vec::new();
        crate::plan::template::strings(&step.raw_params.value(), &mut strings);
        for r in strings
            .iter()
            .flat_map(|s| crate::plan::template::scan_references(s))
        {
            if let [root, from, what, name] = r.path.as_slice()
                && root == "steps"
                && what == "outputs"
                && reused_ids.contains(from.as_str())
            {
                let index = plan.index[from.as_str()];
                if reused.steps[&index]
                    .get(name)
                    .is_some_and(|v| v.contains(MASK))
                {
                    return Err(format!(
                        "step `{}` needs `steps.{from}.outputs.{name}` from run {id}, which was recorded redacted (it held a secret); run the plan without --resume",
                        step.id()
                    ));
                }
            }
        }
    }
    Ok(reused)
}
