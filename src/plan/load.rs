//! Loading: YAML nodes to the typed [`Plan`]. Each section, each target and each step is
//! deserialized on its own, so one mistake does not hide the others: every problem in the
//! file is reported in one go, each with its line, column and key path.

use super::model::{Common, Plan, Repository, StepDef, Target};
use super::model::{RawParams, SUPPORTED_VERSIONS};
use super::resolve::{ParamsError, ResolveError};
use super::template::{Templates, has_template, scan_references};
use super::yaml::{self, Node, NodeKind, PathSegment, format_path};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::steps::registry;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "schedule",
    "vars",
    "secrets",
    "targets",
    "repositories",
    "pg_bin_dir",
    "steps",
];

/// Keys every step accepts besides its type's parameters.
pub const COMMON_STEP_KEYS: &[&str] =
    &["id", "needs", "if", "retry", "timeout", "continue_on_error"];

/// Parses and type-checks a plan.
pub fn load_str(source: &str) -> Result<Plan, Vec<Diagnostic>> {
    let (plan, problems) = load_partial(source, yaml::Limits::default(), &BTreeMap::new())?;
    match plan {
        Some(plan) if problems.is_empty() => Ok(plan),
        _ => Err(problems),
    }
}

/// Like [`load_str`], but also returns a plan when only some steps are broken: those
/// steps stand in as placeholders (`broken: true`), so that the semantic checks can still
/// run on the rest and every problem is reported in one go. `overrides` are the `--var`
/// values: with the plan's own `vars` they are all that is known before the run, and they
/// are rendered into every field before it is typed (see [`super::resolve`]).
///
/// While the YAML is parsed, each step is kept only as compact JSON text and its node tree
/// dropped at once (see [`yaml::parse_streaming_steps`]): the tree of a large plan is many
/// times the size of its typed steps. Steps are typed once the variables are known; the
/// tree is parsed again only when an error has to be placed.
pub fn load_partial(
    source: &str,
    limits: yaml::Limits,
    overrides: &BTreeMap<String, Value>,
) -> Result<(Option<Plan>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut written = Vec::new();
    let root = yaml::parse_streaming_steps(source, limits, &mut |_, node| {
        written.push(RawParams::new(&node.to_json()));
    })?;
    let tree = Tree {
        source,
        limits,
        cell: Default::default(),
    };
    let mut loader = Loader {
        problems: Vec::new(),
        templates: Templates::new(),
        known: Value::Null,
    };
    let plan = loader.plan(&root, written, &tree, overrides);
    Ok((plan, loader.problems))
}

/// The whole YAML tree, parsed again only when a step's problem has to be placed.
struct Tree<'a> {
    source: &'a str,
    limits: yaml::Limits,
    cell: std::cell::OnceCell<Option<Node>>,
}

impl Tree<'_> {
    /// The node at `path`, or a stand-in at the file's start when there is none.
    fn node(&self, path: &[PathSegment]) -> &Node {
        static NOWHERE: Node = Node {
            kind: NodeKind::Null,
            span: Span {
                line: 1,
                col: 1,
                len: 1,
            },
        };
        // The text parsed once already within the same limits, so this parse succeeds.
        self.cell
            .get_or_init(|| yaml::parse_within(self.source, self.limits).ok())
            .as_ref()
            .and_then(|root| root.lookup(path))
            .map_or(&NOWHERE, |(node, _)| node)
    }
}

struct Loader {
    problems: Vec<Diagnostic>,
    templates: Templates,
    /// What is known before the run: `{ "vars": … }`.
    known: Value,
}

impl Loader {
    fn plan(
        &mut self,
        root: &Node,
        steps: Vec<RawParams>,
        tree: &Tree,
        overrides: &BTreeMap<String, Value>,
    ) -> Option<Plan> {
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
        let schedule: Option<Option<super::calendar::Schedule>> = self.optional(root, "schedule");
        let vars = self.vars(root);
        self.no_templates(
            root,
            "vars",
            "variables are values, never rendered themselves",
        );
        // The variables move into the render context while fields are typed, and back into
        // the plan afterwards, with the --var values of declared variables in place: a copy
        // would double what a plan of many variables costs.
        let vars_loaded = vars.is_some();
        let mut known_vars: serde_json::Map<String, Value> =
            vars.unwrap_or_default().into_iter().collect();
        for (name, value) in overrides {
            if let Some(slot) = known_vars.get_mut(name) {
                *slot = value.clone();
            }
        }
        self.known = serde_json::json!({ "vars": known_vars });
        let secrets: Option<Vec<String>> = self.optional(root, "secrets");
        self.no_templates(
            root,
            "secrets",
            "a secret is the name of an environment variable",
        );
        let targets: Option<BTreeMap<String, Target>> = self.named_map(root, "targets");
        let repositories: Option<BTreeMap<String, Repository>> =
            self.named_map(root, "repositories");
        let pg_bin_dir: Option<Option<String>> = self.optional(root, "pg_bin_dir");
        self.no_templates(
            root,
            "pg_bin_dir",
            "a directory of programs is written out, never rendered",
        );
        let steps = self.steps(root, steps, tree);
        let vars = match std::mem::take(&mut self.known)["vars"].take() {
            Value::Object(map) => vars_loaded.then(|| map.into_iter().collect::<BTreeMap<_, _>>()),
            _ => None,
        };
        // Sections that failed would make the semantic checks report phantom problems
        // ("unknown target"), so a partial plan is only built when just steps are broken.
        Some(Plan {
            version: version?,
            name: name?,
            description: description?,
            schedule: schedule?,
            vars: vars?,
            secrets: secrets?,
            targets: targets?,
            repositories: repositories?,
            pg_bin_dir: pg_bin_dir?,
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
    fn named_map<T: DeserializeOwned + Written>(
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
            if let Some(protected) = value.get("protected")
                && protected.as_str().is_some_and(has_template)
            {
                self.problems.push(
                    Diagnostic::new(
                        "`protected` takes no template: a guard must not depend on a variable",
                    )
                    .at(protected.span)
                    .with_path(format!("{key}.{}.protected", name.name))
                    .with_help("write `protected: true` (or false) as it is"),
                );
                ok = false;
                continue;
            }
            let written = value.to_json();
            match self.resolved::<T>(&path, value, &written) {
                Some(v) => {
                    out.insert(name.name.clone(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The `steps` section; its items were kept as JSON while parsing (`written`).
    fn steps(&mut self, root: &Node, written: Vec<RawParams>, tree: &Tree) -> Option<Vec<StepDef>> {
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
        // When the sequence came whole from an alias (`steps: *all`), nothing was handed
        // over while parsing: the items are still in the tree.
        // One step's JSON at a time: all of them parsed at once would be the large tree
        // again.
        let mut type_one = |i: usize, step: Value| {
            self.step(i, &step, tree)
                .unwrap_or_else(|| placeholder(&step))
        };
        let steps = if written.len() == items.len() {
            written
                .into_iter()
                .enumerate()
                .map(|(i, step)| type_one(i, step.value()))
                .collect()
        } else {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| type_one(i, item.to_json()))
                .collect()
        };
        Some(steps)
    }

    fn step(&mut self, index: usize, step: &Value, tree: &Tree) -> Option<StepDef> {
        let prefix = [PathSegment::Key("steps".into()), PathSegment::Index(index)];
        let path = format_path(&prefix);
        let node = || tree.node(&prefix);
        let Some(entries) = step.as_object() else {
            self.problems.push(
                Diagnostic::new(format!(
                    "a step must be a mapping, found {}",
                    node().type_name()
                ))
                .at(node().span)
                .with_path(path),
            );
            return None;
        };
        let type_name = match entries.get("type") {
            None => {
                self.problems.push(
                    Diagnostic::new("missing key `type`")
                        .at(node().span)
                        .with_path(path)
                        .with_help(format!("every step has a type: one of {}", type_list())),
                );
                None
            }
            Some(t) => match t.as_str() {
                Some(s) if registry::get(s).is_some() => Some(s.to_string()),
                other => {
                    let t = node().get("type").unwrap_or(node());
                    let shown =
                        other.map_or_else(|| t.type_name().to_string(), |s| format!("`{s}`"));
                    let help = other
                        .and_then(|s| did_you_mean(s, registry::names()))
                        .unwrap_or_else(|| format!("step types are: {}", type_list()));
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
            if key == "type" {
                continue;
            }
            let target = if COMMON_STEP_KEYS.contains(&key.as_str()) {
                &mut common
            } else {
                &mut params
            };
            target.insert(key.clone(), value.clone());
        }
        // The step's identity and place in the graph are read before anything is rendered.
        for key in ["id", "needs", "if"] {
            let mut texts = Vec::new();
            if let Some(value) = common.get(key) {
                super::template::strings(value, &mut texts);
            }
            if texts.iter().any(|t| has_template(t)) {
                let at = common_key(&prefix, key);
                self.problems.push(
                    Diagnostic::new(format!(
                        "`{key}` takes no template: a step's id, needs and condition are fixed in the plan"
                    ))
                    .at_opt(span_of(node(), &prefix, &at))
                    .with_path(format_path(&at))
                    .with_help("write the value as it is"),
                );
                return None;
            }
        }
        let common = Value::Object(common);
        // Which steps fail the run is decided as steps finish, from the plan: it must be
        // known before the run, like the step's place in the graph.
        if let Some(text) = common.get("continue_on_error").and_then(Value::as_str)
            && scan_references(text)
                .iter()
                .any(|r| r.path.first().is_some_and(|root| root != "vars"))
        {
            let at = common_key(&prefix, "continue_on_error");
            self.problems.push(
                Diagnostic::new(format!(
                    "`continue_on_error` must be known before the run: `{text}` is not (only `vars` are)"
                ))
                .at_opt(span_of(node(), &prefix, &at))
                .with_path(format_path(&at))
                .with_help("write true or false, or take it from `{{ vars.NAME }}` and set it with --var"),
            );
            return None;
        }
        let rendered = self.templates.render_known(&[], &common, &self.known);
        let raw_common = RawParams::new(&common);
        let common: Option<Common> = match super::resolve::typed(&common, rendered, false) {
            Ok(c) => Some(c),
            Err(e) => {
                let d = self.resolve_diagnostic(&prefix, node(), e, &[]);
                self.problems.extend(d);
                None
            }
        };
        let type_name = type_name?;
        let params = Value::Object(params);
        let quoted = registry::get(&type_name).map_or(&[][..], |r| r.shell_quoted);
        let rendered = self.templates.render_known(quoted, &params, &self.known);
        let kind = match super::resolve::step_kind(&type_name, &params, rendered, false) {
            Ok(kind) => Some(kind),
            Err(ParamsError::Invalid(e)) => {
                let mut extra: Vec<&str> = COMMON_STEP_KEYS.to_vec();
                extra.push("type");
                let d = self.resolve_diagnostic(&prefix, node(), e, &extra);
                self.problems.extend(d);
                None
            }
            Err(ParamsError::UnknownType) => None,
        };
        let kind = kind?;
        // Which target and repository a step uses decides what validate checks, which
        // guard applies and what the preview probes: known before the run, or refused.
        for (field, name) in [
            ("target", kind.target()),
            ("repository", kind.repository()),
            ("source", kind.source_repository()),
        ] {
            if let Some(name) = name.filter(|n| has_template(n)) {
                let at = kind.reference_path(field);
                let mut full = prefix.to_vec();
                full.extend(at.iter().map(|k| PathSegment::Key(k.to_string())));
                self.problems.push(
                    Diagnostic::new(format!(
                        "the {field} must be known before the run: `{name}` is not (only `vars` are)"
                    ))
                    .at_opt(span_of(node(), &prefix, &full))
                    .with_path(format_path(&full))
                    .with_help(format!("name the {field}, or take it from `{{{{ vars.NAME }}}}` and set it with --var")),
                );
                return None;
            }
        }
        Some(StepDef {
            common: common?,
            kind,
            raw_params: RawParams::new(&params),
            raw_common,
            broken: false,
        })
    }

    /// Renders what is known into `written` (read from `node`, at `prefix`) and types it;
    /// problems point into `node`.
    fn resolved<T: DeserializeOwned + Written>(
        &mut self,
        prefix: &[PathSegment],
        node: &Node,
        written: &Value,
    ) -> Option<T> {
        let rendered = self.templates.render_known(&[], written, &self.known);
        match super::resolve::typed::<T>(written, rendered, false) {
            Ok(mut v) => {
                v.set_written(RawParams::new(written));
                Some(v)
            }
            Err(e) => {
                let d = self.resolve_diagnostic(prefix, node, e, &[]);
                self.problems.extend(d);
                None
            }
        }
    }

    fn resolve_diagnostic(
        &self,
        prefix: &[PathSegment],
        node: &Node,
        error: ResolveError,
        extra_keys: &[&str],
    ) -> Vec<Diagnostic> {
        match error {
            ResolveError::Invalid { error, from } => {
                let mut all = self.serde_diagnostic(prefix, node, error, extra_keys);
                if let Some(t) = from {
                    let d = all.remove(0);
                    let help = d.help.clone().map(|h| format!("; {h}")).unwrap_or_default();
                    all.insert(
                        0,
                        d.with_help(format!("the value was rendered from `{t}`{help}")),
                    );
                }
                all
            }
            ResolveError::TooLate { path, template } => {
                let mut full = prefix.to_vec();
                full.extend(path.iter().cloned());
                vec![Diagnostic::new(super::resolve::too_late(&path, &template))
                    .at_opt(span_of(node, prefix, &full))
                    .with_path(format_path(&full))
                    .with_help("take the value from `{{ vars.NAME }}` (set with --var), or move it into a field that is rendered when the step starts, such as a command or a query")]
            }
        }
    }

    /// Refuses templates in a section whose values are never rendered.
    fn no_templates(&mut self, root: &Node, key: &str, why: &str) {
        let Some(node) = root.get(key) else { return };
        let mut strings = Vec::new();
        collect_nodes(node, &mut strings);
        for (text, span) in strings {
            if has_template(&text) {
                self.problems.push(
                    Diagnostic::new(format!("`{key}` takes no template: {why}"))
                        .at(span)
                        .with_path(key)
                        .with_help("write the value as it is"),
                );
                return;
            }
        }
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
                self.problems.extend(d);
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

    /// Turns a serde error into diagnostics that point at the offending key or value: one,
    /// or for an unknown key every unknown key of the same mapping (serde stops at the
    /// first; three misspellings in a step are three problems to fix, not one a run).
    fn serde_diagnostic(
        &self,
        prefix: &[PathSegment],
        node: &Node,
        err: serde_path_to_error::Error<serde_json::Error>,
        extra_keys: &[&str],
    ) -> Vec<Diagnostic> {
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
            let mut all = vec![
                Diagnostic::new(format!("unknown key `{name}`"))
                    .at_opt(span.or_else(|| span_of(node, prefix, &path)))
                    .with_len(name.chars().count())
                    .with_path(format_path(&path))
                    .with_help(help),
            ];
            let parent = &path[..path.len() - 1];
            let siblings = parent
                .get(prefix.len()..)
                .and_then(|relative| node.lookup(relative))
                .and_then(|(n, _)| n.as_map());
            for (key, _) in siblings.unwrap_or_default() {
                if key.name == name || candidates.contains(&key.name.as_str()) {
                    continue;
                }
                let mut at = parent.to_vec();
                at.push(PathSegment::Key(key.name.clone()));
                let help = did_you_mean(&key.name, candidates.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", candidates.join(", ")));
                all.push(
                    Diagnostic::new(format!("unknown key `{}`", key.name))
                        .at(key.span)
                        .with_len(key.name.chars().count())
                        .with_path(format_path(&at))
                        .with_help(help),
                );
            }
            all.sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
            return all;
        }
        if let Some(name) = message
            .strip_prefix("unknown variant `")
            .and_then(|rest| rest.split('`').next())
        {
            let help = did_you_mean(name, expected.iter().map(String::as_str))
                .unwrap_or_else(|| format!("expected one of: {}", expected.join(", ")));
            return vec![
                Diagnostic::new(format!("unknown value `{name}`"))
                    .at_opt(span_of(node, prefix, &path))
                    .with_len(name.chars().count())
                    .with_path(format_path(&path))
                    .with_help(help),
            ];
        }
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            return vec![
                Diagnostic::new(format!("missing key `{name}`"))
                    .at_opt(span_of(node, prefix, &path))
                    .with_path(format_path(&path))
                    .with_help(format!("add `{name}:` here")),
            ];
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
        vec![
            Diagnostic::new(message)
                .at_opt(span_of(node, prefix, &path))
                .with_path(format_path(&path))
                .with_help_opt(help),
        ]
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

/// The path of common key `key` of the step at `prefix` (`steps[N]`).
fn common_key(prefix: &[PathSegment], key: &str) -> [PathSegment; 3] {
    [
        prefix[0].clone(),
        prefix[1].clone(),
        PathSegment::Key(key.into()),
    ]
}

/// A stand-in for a step that did not load: its id and needs as far as they can be read,
/// so that references to it do not produce phantom errors.
fn placeholder(step: &Value) -> StepDef {
    let id = step
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let needs = match step.get("needs") {
        Some(Value::Array(items)) => items
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
        kind: registry::stand_in(),
        raw_params: RawParams::default(),
        raw_common: RawParams::default(),
        broken: true,
    }
}

/// Every string in a node with its position.
fn collect_nodes(node: &Node, out: &mut Vec<(String, Span)>) {
    match &node.kind {
        NodeKind::Str(s) => out.push((s.clone(), node.span)),
        NodeKind::Seq(items) => items.iter().for_each(|n| collect_nodes(n, out)),
        NodeKind::Map(entries) => entries.iter().for_each(|(_, n)| collect_nodes(n, out)),
        _ => {}
    }
}

/// Sections that keep their written form beside the typed one, to be rendered again when
/// a step starts.
pub trait Written {
    fn set_written(&mut self, written: RawParams);
}

impl Written for Target {
    fn set_written(&mut self, written: RawParams) {
        self.written = written;
    }
}

impl Written for Repository {
    fn set_written(&mut self, written: RawParams) {
        self.written = written;
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

/// "shell, sql, …": every step type, for messages.
fn type_list() -> String {
    registry::names().collect::<Vec<_>>().join(", ")
}
