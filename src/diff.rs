//! `opsrunner diff OLD NEW`: what a change to a plan does to its behaviour, for reviewers —
//! steps added, removed and changed (each changed key with its old and new value, as
//! written), conditions, retention, schedule, and the targets and repositories, with the
//! changes that weaken a guard or change what is deleted called out.

use crate::plan::model::Plan;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One difference, in the order a reviewer reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub sign: char,
    /// What changed: "step `prune` (prune)", "target `app`", "schedule".
    pub subject: String,
    /// `key: old → new` lines.
    pub details: Vec<String>,
    /// Why a reviewer should look twice, if there is a reason.
    pub warning: Option<String>,
}

pub fn between(old: &Plan, new: &Plan) -> Vec<Change> {
    let mut out = Vec::new();
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    let (old_schedule, new_schedule) = (
        old.schedule.as_ref().map(|s| s.to_string()),
        new.schedule.as_ref().map(|s| s.to_string()),
    );
    if old_schedule != new_schedule {
        out.push(Change {
            sign: '~',
            subject: "schedule".into(),
            details: vec![format!("{} → {}", text(&old_schedule), text(&new_schedule))],
            warning: None,
        });
    }
    let as_value = |m: &BTreeMap<String, Value>| Value::Object(m.clone().into_iter().collect());
    let vars = changed_keys(&as_value(&old.vars), &as_value(&new.vars));
    if !vars.is_empty() {
        out.push(Change {
            sign: '~',
            subject: "vars".into(),
            details: vars,
            warning: None,
        });
    }
    if old.secrets != new.secrets {
        let removed: Vec<&String> = old
            .secrets
            .iter()
            .filter(|s| !new.secrets.contains(s))
            .collect();
        out.push(Change {
            sign: '~',
            subject: "secrets".into(),
            details: vec![format!("{:?} → {:?}", old.secrets, new.secrets)],
            warning: (!removed.is_empty()).then(|| {
                format!(
                    "no longer redacted: {}",
                    removed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
        });
    }
    named(&mut out, "target", &old.targets, &new.targets, |o, n| {
        let was = o.is_some_and(|t| t.protected);
        let is = n.is_some_and(|t| t.protected);
        (was && !is).then(|| "no longer protected: destructive steps run without --confirm".into())
    });
    named(
        &mut out,
        "repository",
        &old.repositories,
        &new.repositories,
        |_, _| None,
    );

    let old_steps: BTreeMap<&str, Value> =
        old.steps.iter().map(|s| (s.id(), step_value(s))).collect();
    for step in &new.steps {
        let kind = step.kind.type_name();
        let subject = format!("step `{}` ({kind})", step.id());
        let now = step_value(step);
        match old_steps.get(step.id()) {
            None => out.push(Change {
                sign: '+',
                subject,
                details: vec![format!("if: {}", step.common.condition.as_str())],
                warning: destructive_warning(kind),
            }),
            Some(before) => {
                let details = changed_keys(before, &now);
                if !details.is_empty() {
                    let retention = details
                        .iter()
                        .any(|d| d.starts_with("keep") || d.starts_with("min_age"));
                    out.push(Change {
                        sign: '~',
                        subject,
                        details,
                        warning: if retention {
                            Some("retention changed: which backups are deleted changes".into())
                        } else {
                            destructive_warning(kind)
                        },
                    });
                }
            }
        }
    }
    for step in &old.steps {
        if !new.steps.iter().any(|s| s.id() == step.id()) {
            out.push(Change {
                sign: '-',
                subject: format!("step `{}` ({})", step.id(), step.kind.type_name()),
                details: Vec::new(),
                warning: (step.kind.type_name() == "verify")
                    .then(|| "a verification is no longer run".into()),
            });
        }
    }
    out
}

/// A step as written: its type, common keys and parameters, in one map.
fn step_value(step: &crate::plan::model::StepDef) -> Value {
    let mut v = serde_json::to_value(&step.common).unwrap_or(Value::Null);
    if let (Value::Object(map), Value::Object(params)) = (&mut v, step.raw_params.value()) {
        map.remove("id");
        map.insert("type".into(), Value::from(step.kind.type_name()));
        map.extend(params);
    }
    v
}

fn destructive_warning(kind: &str) -> Option<String> {
    matches!(kind, "prune" | "restore" | "reset")
        .then(|| format!("a {kind} step may delete or replace data"))
}

fn named<T: serde::Serialize>(
    out: &mut Vec<Change>,
    what: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    warn: impl Fn(Option<&T>, Option<&T>) -> Option<String>,
) {
    let value = |t: &T| serde_json::to_value(t).unwrap_or(Value::Null);
    for (name, def) in new {
        match old.get(name) {
            None => out.push(Change {
                sign: '+',
                subject: format!("{what} `{name}`"),
                details: Vec::new(),
                warning: None,
            }),
            Some(before) => {
                let details = changed_keys(&value(before), &value(def));
                if !details.is_empty() {
                    out.push(Change {
                        sign: '~',
                        subject: format!("{what} `{name}`"),
                        details,
                        warning: warn(Some(before), Some(def)),
                    });
                }
            }
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(Change {
            sign: '-',
            subject: format!("{what} `{name}`"),
            details: Vec::new(),
            warning: None,
        });
    }
}

/// `path: old → new` for every leaf that differs (maps by key; lists compared whole).
fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show =
                |v: Option<&Value>| v.map_or_else(|| "(absent)".to_string(), |v| v.to_string());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

pub fn render_text(changes: &[Change], old: &str, new: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{old} → {new}: {}", summary(changes));
    for c in changes {
        let _ = writeln!(out, "{} {}", c.sign, c.subject);
        for d in &c.details {
            let _ = writeln!(out, "    {d}");
        }
        if let Some(w) = &c.warning {
            let _ = writeln!(out, "    !! {w}");
        }
    }
    out
}

pub fn render_markdown(changes: &[Change], old: &str, new: &str) -> String {
    use crate::run::markdown::code;
    let mut out = String::new();
    let _ = writeln!(out, "### opsrunner diff {} → {}\n", code(old), code(new));
    let _ = writeln!(out, "{}\n", summary(changes));
    for c in changes {
        let sign = match c.sign {
            '+' => "➕ added",
            '-' => "➖ removed",
            _ => "✏️ changed",
        };
        let _ = writeln!(out, "- {sign}: {}", c.subject);
        if let Some(w) = &c.warning {
            let _ = writeln!(out, "  - ⚠️ **{w}**");
        }
        for d in &c.details {
            let _ = writeln!(out, "  - {}", code(d));
        }
    }
    out
}

fn summary(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no change in behaviour".into();
    }
    let count = |sign: char| changes.iter().filter(|c| c.sign == sign).count();
    let warnings = changes.iter().filter(|c| c.warning.is_some()).count();
    format!(
        "{} added, {} removed, {} changed{}",
        count('+'),
        count('-'),
        count('~'),
        if warnings > 0 {
            format!(", {warnings} to look at twice")
        } else {
            String::new()
        }
    )
}
