//! Loading: YAML nodes to the typed [`Plan`]. Each section, each target and each step is
//! deserialized on its own, so one mistake does not hide the others: every problem in the
//! file is reported in one go, each with its line, column and key path.

use super::model::{Common, Plan, Repository, STEP_TYPES, StepDef, StepKind, Target};
use super::model::{ParamsError, RawParams, SUPPORTED_VERSIONS};
use super::yaml::{self, Node, NodeKind, PathSegment, format_path};
use crate::diag::{Diagnostic, Span, did_you_mean};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "vars",
    "secrets",
    "targets",
    "repositories",
    "steps",
];

/// Keys every step accepts besides its type's parameters.
pub const COMMON_STEP_KEYS: &[&str] =
    &["id", "needs", "if", "retry", "timeout", "continue_on_error"];

/// Parses and type-checks a plan.
pub fn load_str(source: &str) -> Result<Plan, Vec<Diagnostic>> {
    let (plan, problems) = load_partial(source, yaml::Limits::default())?;
    match plan {
        Some(plan) if problems.is_empty() => Ok(plan),
        _ => Err(problems),
    }
}

/// Like [`load_str`], but also returns a plan when only some steps are broken: those
/// steps stand in as placeholders (`broken: true`), so that the semantic checks can still
/// run on the rest and every problem is reported in one go.
///
/// Steps are typed one by one while the YAML is parsed and their node trees dropped at
/// once (see [`yaml::parse_streaming_steps`]): the tree of a large plan is many times the
/// size of its typed steps, and it is not needed again unless a later check has to place
/// an error, which re-parses the text.
pub fn load_partial(
    source: &str,
    limits: yaml::Limits,
) -> Result<(Option<Plan>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut loader = Loader {
        problems: Vec::new(),
    };
    let mut steps = Vec::new();
    let root = yaml::parse_streaming_steps(source, limits, &mut |index, node| {
        let step = loader
            .step(index, &node)
            .unwrap_or_else(|| placeholder(&node));
        steps.push(step);
    })?;
    // Problems are reported in the file's order of sections: the steps' come last.
    let step_problems = std::mem::take(&mut loader.problems);
    let plan = loader.plan(&root, steps);
    let mut problems = loader.problems;
    problems.extend(step_problems);
    Ok((plan, problems))
}

struct Loader {
    problems: Vec<Diagnostic>,
}

impl Loader {
    fn plan(&mut self, root: &Node, steps: Vec<StepDef>) -> Option<Plan> {
        let Some(entries) = root.as_map() else {
            self.problems.push(
                Diagnostic::new(format!(
                    "a plan must be a mapping of keys (`version`, `name`, `steps`, …), found {}",
                    root.type_name()
                ))
                .at(root.span),
            );
            return None;
        };
        for (key, _) in entries {
            if !TOP_LEVEL_KEYS.contains(&key.name.as_str()) {
                self.unknown_key(&[], &key.name, key.span, TOP_LEVEL_KEYS);
            }
        }
        let version: Option<u32> = self.required(root, "version");
        if let Some(v) = version
            && !SUPPORTED_VERSIONS.contains(&v)
        {
            let span = root.get("version").map(|n| n.span);
            self.problems.push(
                Diagnostic::new(format!(
                    "plan version {v} is not supported by this opsrunner"
                ))
                .at_opt(span)
                .with_path("version")
                .with_help(format!(
                    "this build understands version {}; upgrade opsrunner or write `version: 1`",
                    SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1]
                )),
            );
        }
        let name: Option<String> = self.required(root, "name");
        let description: Option<Option<String>> = self.optional(root, "description");
        let vars = self.vars(root);
        let secrets: Option<Vec<String>> = self.optional(root, "secrets");
        let targets: Option<BTreeMap<String, Target>> = self.named_map(root, "targets");
        let repositories: Option<BTreeMap<String, Repository>> =
            self.named_map(root, "repositories");
        let steps = self.steps(root, steps);
        // Sections that failed would make the semantic checks report phantom problems
        // ("unknown target"), so a partial plan is only built when just steps are broken.
        Some(Plan {
            version: version?,
            name: name?,
            description: description?,
            vars: vars?,
            secrets: secrets?,
            targets: targets?,
            repositories: repositories?,
            steps: steps?,
        })
    }

    fn required<T: DeserializeOwned>(&mut self, root: &Node, key: &str) -> Option<T> {
        match root.get(key) {
            Some(node) => self.deserialize(&[PathSegment::Key(key.into())], node, node, &[]),
            None => {
                self.problems.push(
                    Diagnostic::new(format!("missing key `{key}`"))
                        .at(Span::new(1, 1))
                        .with_help(format!(
                            "every plan needs `version`, `name` and `steps`; add `{key}:`"
                        )),
                );
                None
            }
        }
    }

    fn optional<T: DeserializeOwned + Default>(&mut self, root: &Node, key: &str) -> Option<T> {
        match root.get(key) {
            Some(node) => self.deserialize(&[PathSegment::Key(key.into())], node, node, &[]),
            None => Some(T::default()),
        }
    }

    /// `vars`: any values under names. The JSON form of the section already is the typed
    /// value, so it is taken as it is rather than deserialized into a second copy (a plan
    /// with 200,000 variables would hold three at once).
    fn vars(&mut self, root: &Node) -> Option<BTreeMap<String, Value>> {
        match root.get("vars").map(|node| (node, node.to_json())) {
            None => Some(BTreeMap::new()),
            Some((_, Value::Object(map))) => Some(map.into_iter().collect()),
            Some((node, other)) => {
                self.deserialize(&[PathSegment::Key("vars".into())], node, &other, &[])
            }
        }
    }

    /// A mapping of names to entries (targets, repositories), each entry checked on its own.
    fn named_map<T: DeserializeOwned>(
        &mut self,
        root: &Node,
        key: &str,
    ) -> Option<BTreeMap<String, T>> {
        let Some(node) = root.get(key) else {
            return Some(BTreeMap::new());
        };
        let Some(entries) = node.as_map() else {
            self.problems.push(
                Diagnostic::new(format!(
                    "`{key}` must be a mapping of names, found {}",
                    node.type_name()
                ))
                .at(node.span)
                .with_path(key),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, value) in entries {
            let path = [
                PathSegment::Key(key.into()),
                PathSegment::Key(name.name.clone()),
            ];
            match self.deserialize(&path, value, value, &[]) {
                Some(v) => {
                    out.insert(name.name.clone(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The `steps` section, whose items were typed while parsing (`loaded`).
    fn steps(&mut self, root: &Node, loaded: Vec<StepDef>) -> Option<Vec<StepDef>> {
        let Some(node) = root.get("steps") else {
            self.required::<Value>(root, "steps");
            return None;
        };
        let NodeKind::Seq(items) = &node.kind else {
            self.problems.push(
                Diagnostic::new(format!(
                    "`steps` must be a list of steps, found {}",
                    node.type_name()
                ))
                .at(node.span)
                .with_path("steps"),
            );
            return None;
        };
        if items.is_empty() {
            self.problems.push(
                Diagnostic::new("`steps` is empty: a plan needs at least one step")
                    .at(node.span)
                    .with_path("steps"),
            );
        }
        if loaded.len() == items.len() {
            return Some(loaded);
        }
        // The sequence came whole from an alias (`steps: *all`), so nothing was typed while
        // parsing: the items are still in the tree.
        let steps = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.step(i, item).unwrap_or_else(|| placeholder(item)))
            .collect();
        Some(steps)
    }

    fn step(&mut self, index: usize, node: &Node) -> Option<StepDef> {
        let prefix = [PathSegment::Key("steps".into()), PathSegment::Index(index)];
        let path = format_path(&prefix);
        let Some(entries) = node.as_map() else {
            self.problems.push(
                Diagnostic::new(format!(
                    "a step must be a mapping, found {}",
                    node.type_name()
                ))
                .at(node.span)
                .with_path(path),
            );
            return None;
        };
        let type_name = match node.get("type") {
            None => {
                self.problems.push(
                    Diagnostic::new("missing key `type`")
                        .at(node.span)
                        .with_path(path)
                        .with_help(format!(
                            "every step has a type: one of {}",
                            STEP_TYPES.join(", ")
                        )),
                );
                None
            }
            Some(t) => match t.as_str() {
                Some(s) if STEP_TYPES.contains(&s) => Some(s.to_string()),
                other => {
                    let shown =
                        other.map_or_else(|| t.type_name().to_string(), |s| format!("`{s}`"));
                    let help = other
                        .and_then(|s| did_you_mean(s, STEP_TYPES.iter().copied()))
                        .unwrap_or_else(|| format!("step types are: {}", STEP_TYPES.join(", ")));
                    self.problems.push(
                        Diagnostic::new(format!("unknown step type {shown}"))
                            .at(t.span)
                            .with_len(other.map_or(1, |s| s.chars().count()))
                            .with_path(format!("{path}.type"))
                            .with_help(help),
                    );
                    None
                }
            },
        };
        let mut common = serde_json::Map::new();
        let mut params = serde_json::Map::new();
        for (key, value) in entries {
            if key.name == "type" {
                continue;
            }
            let target = if COMMON_STEP_KEYS.contains(&key.name.as_str()) {
                &mut common
            } else {
                &mut params
            };
            target.insert(key.name.clone(), value.to_json());
        }
        let common: Option<Common> = self.deserialize(&prefix, node, &Value::Object(common), &[]);
        let type_name = type_name?;
        let params = Value::Object(params);
        let kind = match StepKind::from_params(&type_name, &params) {
            Ok(kind) => Some(kind),
            Err(ParamsError::Invalid(e)) => {
                let mut extra: Vec<&str> = COMMON_STEP_KEYS.to_vec();
                extra.push("type");
                let d = self.serde_diagnostic(&prefix, node, e, &extra);
                self.problems.push(d);
                None
            }
            Err(ParamsError::UnknownType) => None,
        };
        Some(StepDef {
            common: common?,
            kind: kind?,
            raw_params: RawParams::new(&params),
            broken: false,
        })
    }

    /// Deserializes `value`, which was read from `node` (at `prefix`); errors point into
    /// `node`.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        prefix: &[PathSegment],
        node: &Node,
        value: impl AsJson,
        extra_keys: &[&str],
    ) -> Option<T> {
        let json = value.as_json();
        match serde_path_to_error::deserialize::<_, T>(&json) {
            Ok(v) => Some(v),
            Err(e) => {
                let d = self.serde_diagnostic(prefix, node, e, extra_keys);
                self.problems.push(d);
                None
            }
        }
    }

    fn unknown_key(&mut self, parent: &[PathSegment], name: &str, span: Span, candidates: &[&str]) {
        let mut path = parent.to_vec();
        path.push(PathSegment::Key(name.into()));
        let help = did_you_mean(name, candidates.iter().copied())
            .unwrap_or_else(|| format!("expected one of: {}", candidates.join(", ")));
        self.problems.push(
            Diagnostic::new(format!("unknown key `{name}`"))
                .at(span)
                .with_len(name.chars().count())
                .with_path(format_path(&path))
                .with_help(help),
        );
    }

    /// Turns a serde error into a diagnostic that points at the offending key or value.
    fn serde_diagnostic(
        &self,
        prefix: &[PathSegment],
        node: &Node,
        err: serde_path_to_error::Error<serde_json::Error>,
        extra_keys: &[&str],
    ) -> Diagnostic {
        let mut path = prefix.to_vec();
        for seg in err.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => {
                    path.push(PathSegment::Index(*index))
                }
                serde_path_to_error::Segment::Map { key } => {
                    path.push(PathSegment::Key(key.clone()))
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    path.push(PathSegment::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = err.inner().to_string();
        let expected = backticked_after(&message, "expected");
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            let mut candidates: Vec<&str> = expected.iter().map(String::as_str).collect();
            candidates.extend(extra_keys.iter().copied());
            let help = did_you_mean(name, candidates.iter().copied())
                .unwrap_or_else(|| format!("expected one of: {}", candidates.join(", ")));
            if path.last() != Some(&PathSegment::Key(name.into())) {
                path.push(PathSegment::Key(name.into()));
            }
            let span = node
                .lookup(&path[prefix.len()..])
                .and_then(|(_, k)| k.map(|k| k.span));
            return Diagnostic::new(format!("unknown key `{name}`"))
                .at_opt(span.or_else(|| span_of(node, prefix, &path)))
                .with_len(name.chars().count())
                .with_path(format_path(&path))
                .with_help(help);
        }
        if let Some(name) = message
            .strip_prefix("unknown variant `")
            .and_then(|rest| rest.split('`').next())
        {
            let help = did_you_mean(name, expected.iter().map(String::as_str))
                .unwrap_or_else(|| format!("expected one of: {}", expected.join(", ")));
            return Diagnostic::new(format!("unknown value `{name}`"))
                .at_opt(span_of(node, prefix, &path))
                .with_len(name.chars().count())
                .with_path(format_path(&path))
                .with_help(help);
        }
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            return Diagnostic::new(format!("missing key `{name}`"))
                .at_opt(span_of(node, prefix, &path))
                .with_path(format_path(&path))
                .with_help(format!("add `{name}:` here"));
        }
        let help = if message.starts_with("invalid duration") {
            Some(super::duration::DURATION_HELP.to_string())
        } else {
            None
        };
        let message = message
            .replace("invalid type: ", "wrong type: found ")
            .replace("map, expected", "mapping, expected")
            .replace("expected u32", "expected a whole number")
            .replace("expected a boolean", "expected `true` or `false`");
        Diagnostic::new(message)
            .at_opt(span_of(node, prefix, &path))
            .with_path(format_path(&path))
            .with_help_opt(help)
    }
}

/// The position of the node at `path`, or of its nearest ancestor that exists, where
/// `node` is the one at `prefix`.
fn span_of(node: &Node, prefix: &[PathSegment], path: &[PathSegment]) -> Option<Span> {
    let relative = path.get(prefix.len()..).unwrap_or_default();
    (0..=relative.len())
        .rev()
        .find_map(|n| node.lookup(&relative[..n]).map(|(node, _)| node.span))
}

/// A stand-in for a step that did not load: its id and needs as far as they can be read,
/// so that references to it do not produce phantom errors.
fn placeholder(node: &Node) -> StepDef {
    let id = node
        .get("id")
        .and_then(Node::as_str)
        .unwrap_or_default()
        .to_string();
    let needs = match node.get("needs").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    StepDef {
        common: Common {
            id,
            needs,
            condition: Default::default(),
            retry: None,
            timeout: None,
            continue_on_error: false,
        },
        kind: StepKind::Shell(super::model::ShellParams {
            command: String::new(),
            env: BTreeMap::new(),
            workdir: None,
        }),
        raw_params: RawParams::default(),
        broken: true,
    }
}

/// The words in backticks after `marker` in a serde message: the expected keys or values.
fn backticked_after(message: &str, marker: &str) -> Vec<String> {
    let Some(pos) = message.find(marker) else {
        return Vec::new();
    };
    message[pos..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Lets `deserialize` take either a YAML node or an already built JSON value.
trait AsJson {
    fn as_json(&self) -> Value;
}

impl AsJson for &Node {
    fn as_json(&self) -> Value {
        self.to_json()
    }
}

impl AsJson for &Value {
    fn as_json(&self) -> Value {
        (*self).clone()
    }
}
