//! A step's identity for `apply --resume`: what its outputs depend on, as written. Two runs
//! whose step has the same identity made the same thing (a backup of the same database
//! into the same repository), so the later run may reuse the earlier one's outputs.

use super::model::Plan;
use super::template::scan_references;
use crate::digest::hex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// SHA-256 (hex) of step `i`'s type and parameters, the definitions of its target and
/// repository, and the values of the variables any of them use (`vars`: after `--var`).
/// Environment values are not part of it: they are the machine's, not the plan's.
pub fn step_sha256(plan: &Plan, i: usize, vars: &BTreeMap<String, Value>) -> String {
    let step = &plan.steps[i];
    let params = step.raw_params.value();
    let target = step
        .kind
        .target()
        .and_then(|t| plan.targets.get(t))
        .map(|t| t.written.value());
    let repository = step
        .kind
        .repository()
        .and_then(|r| plan.repositories.get(r))
        .map(|r| r.written.value());
    let source = step
        .kind
        .source_repository()
        .and_then(|r| plan.repositories.get(r))
        .map(|r| r.written.value());
    let mut strings = Vec::new();
    for value in [
        Some(&params),
        target.as_ref(),
        repository.as_ref(),
        source.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        super::template::strings(value, &mut strings);
    }
    let used: BTreeMap<&str, &Value> = strings
        .iter()
        .flat_map(|s| scan_references(s))
        .filter(|r| r.path.first().is_some_and(|root| root == "vars") && r.path.len() > 1)
        .filter_map(|r| {
            let name = plan
                .vars
                .get_key_value(&r.path[1])
                .map(|(k, _)| k.as_str())?;
            Some((name, vars.get(name)?))
        })
        .collect();
    let identity = json!({
        "type": step.kind.type_name(),
        "params": params,
        "target": target,
        "repository": repository,
        "vars": used,
    });
    hex(&Sha256::digest(identity.to_string().as_bytes()))
}
