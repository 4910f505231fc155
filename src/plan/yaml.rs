//! The first stage of loading: YAML text to a tree of nodes that remember where they came
//! from. Serde deserializers forget positions, and every user error must point at a line and
//! column, so the plan is parsed here into [`Node`]s and only then handed to serde, one
//! section at a time, by `load.rs`.

use crate::diag::{Diagnostic, Span};
use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// One YAML value with the position of its first character.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always a string in a plan, kept with its own position so that "unknown
/// key" errors can point at the key rather than at its value.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

impl Node {
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the node's YAML type, for "expected a mapping, found a sequence".
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) | NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// The node as a JSON value, the form serde deserializes the typed model from.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::Number((*i).into()),
            NodeKind::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    map.insert(k.name.clone(), v.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// Finds the node (and, for map entries, the key) at a serde path such as
    /// `["steps", 2, "retry", "delay"]`.
    pub fn lookup<'a>(&'a self, path: &[PathSegment]) -> Option<(&'a Node, Option<&'a Key>)> {
        let mut node = self;
        let mut key = None;
        for seg in path {
            match (seg, &node.kind) {
                (PathSegment::Index(i), NodeKind::Seq(items)) => {
                    node = items.get(*i)?;
                    key = None;
                }
                (PathSegment::Key(name), NodeKind::Map(entries)) => {
                    let (k, v) = entries.iter().find(|(k, _)| &k.name == name)?;
                    node = v;
                    key = Some(k);
                }
                _ => return None,
            }
        }
        Some((node, key))
    }
}

/// One step of a key path, e.g. `steps`, `[2]`, `retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Formats a key path the way users write it: `steps[2].retry.delay`.
pub fn format_path(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
            PathSegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// What one plan may cost to load. Every plan is accepted or refused in time and memory
/// linear in its size: YAML aliases could otherwise expand a few hundred bytes into
/// billions of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The plan file's size in bytes.
    pub max_bytes: u64,
    /// Nodes (scalars, sequences, mappings) after alias expansion.
    pub max_nodes: usize,
    /// Nesting of sequences and mappings.
    pub max_depth: usize,
}

/// Aliases may add at most this many times the document's own nodes, plus
/// [`ALIAS_ALLOWANCE`]: plenty for anchors shared by every step, nothing like a bomb.
pub const ALIAS_FACTOR: usize = 10;
pub const ALIAS_ALLOWANCE: usize = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_nodes: 2_000_000,
            max_depth: 64,
        }
    }
}

/// Parses a whole plan document within the default [`Limits`].
pub fn parse(source: &str) -> Result<Node, Vec<Diagnostic>> {
    parse_within(source, Limits::default())
}

/// Parses a whole plan document. Syntax errors, duplicate keys, non-string keys and
/// control characters are returned together as diagnostics; exceeding a limit stops the
/// parse at once.
pub fn parse_within(source: &str, limits: Limits) -> Result<Node, Vec<Diagnostic>> {
    build(source, limits, None)
}

/// Like [`parse_within`], but hands each item of the top-level `steps` sequence to `sink`
/// as soon as it is complete (with its index) and keeps only a null node at its position
/// in the returned tree. A plan of many steps then never holds all of their node trees at
/// once: the loader turns each into its typed step and drops it, so memory follows the
/// typed plan, not the far larger tree. Nothing is handed over when parsing fails.
pub fn parse_streaming_steps(
    source: &str,
    limits: Limits,
    sink: &mut dyn FnMut(usize, Node),
) -> Result<Node, Vec<Diagnostic>> {
    build(source, limits, Some(sink))
}

fn build(
    source: &str,
    limits: Limits,
    sink: Option<&mut dyn FnMut(usize, Node)>,
) -> Result<Node, Vec<Diagnostic>> {
    if let Some(problem) = control_character(source) {
        return Err(vec![problem]);
    }
    let mut builder = Builder {
        limits,
        sink,
        ..Builder::default()
    };
    for item in Parser::new_from_str(source) {
        if builder.over_budget {
            return Err(builder.problems);
        }
        match item {
            Ok((event, span)) => {
                let mut at = Span::new(span.start.line(), span.start.col() + 1);
                if matches!(event, Event::Scalar(..)) && span.end.line() == span.start.line() {
                    at.len = span.end.col().saturating_sub(span.start.col()).max(1);
                }
                builder.event(event, at);
            }
            Err(e) => {
                let m = e.marker();
                let at = Span::new(m.line(), m.col() + 1);
                builder
                    .problems
                    .push(Diagnostic::new(format!("invalid YAML: {}", e.info())).at(at));
                return Err(builder.problems);
            }
        }
    }
    if builder.documents > 1 {
        builder.problems.push(Diagnostic::new(
            "a plan file holds exactly one YAML document, found several (`---`)",
        ));
    }
    match builder.root {
        Some(root) if builder.problems.is_empty() => Ok(root),
        Some(_) => Err(builder.problems),
        None if builder.problems.is_empty() => Err(vec![
            Diagnostic::new("the plan file is empty").with_help("start with `version: 1`"),
        ]),
        None => Err(builder.problems),
    }
}

/// The first control character in a plan (NUL, escape, …; tabs and line ends are fine):
/// a plan is text, and such characters would otherwise reach terminals and logs raw.
fn control_character(source: &str) -> Option<Diagnostic> {
    for (i, line) in source.lines().enumerate() {
        if let Some((col, c)) = line
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\r'))
        {
            return Some(
                Diagnostic::new(format!(
                    "the plan holds the control character U+{:04X}; a plan is plain text",
                    c as u32
                ))
                .at(Span::new(i + 1, col + 1))
                .with_help("remove it; write escapes such as \\e inside double quotes if a value needs one"),
            );
        }
    }
    None
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    /// Entries, the key waiting for its value, the keys seen (for duplicates in time linear
    /// in the map's size), position, anchor.
    Map(
        Vec<(Key, Node)>,
        Option<Key>,
        HashMap<String, usize>,
        Span,
        usize,
    ),
}

#[derive(Default)]
struct Builder<'s> {
    stack: Vec<Frame>,
    /// Anchored nodes with their size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    documents: usize,
    problems: Vec<Diagnostic>,
    limits: Limits,
    /// Nodes written in the document, and nodes added by alias expansion.
    own_nodes: usize,
    aliased_nodes: usize,
    /// Nodes inside each open sequence or mapping, to know a node's size when it closes.
    sizes: Vec<usize>,
    over_budget: bool,
    /// Where top-level steps go, see [`parse_streaming_steps`].
    sink: Option<&'s mut dyn FnMut(usize, Node)>,
}

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, at: Span) {
        match event {
            Event::DocumentStart(_) => self.documents += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                if let Some(c) = text
                    .chars()
                    .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                {
                    self.problems.push(
                        Diagnostic::new(format!(
                            "this value holds the control character U+{:04X}",
                            c as u32
                        ))
                        .at(at)
                        .with_help("plans hold text; control characters would reach terminals and logs raw"),
                    );
                }
                let kind = resolve_scalar(&text, style);
                if matches!(kind, NodeKind::Float(f) if !f.is_finite()) {
                    self.problems.push(
                        Diagnostic::new(format!("`{text}` is not a number a plan can use"))
                            .at(at)
                            .with_help("write a finite number, or quote it to mean the text"),
                    );
                }
                if self.count(1, at) {
                    self.push(Node { kind, span: at }, anchor, 1);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).map(|(_, size)| *size) {
                Some(size) => {
                    self.aliased_nodes += size;
                    let allowed = ALIAS_FACTOR * self.own_nodes + ALIAS_ALLOWANCE;
                    if self.aliased_nodes > allowed {
                        self.stop(
                            format!(
                                "YAML aliases expand to more than {allowed} nodes here ({} times the plan's own nodes, plus {ALIAS_ALLOWANCE}): refused, as an alias bomb would be",
                                ALIAS_FACTOR
                            ),
                            at,
                            "write the repeated parts out, or alias smaller pieces",
                        );
                        return;
                    }
                    if self.count(0, at) {
                        let mut node = self.anchors[&id].0.clone();
                        node.span = at;
                        self.push(node, 0, size);
                    }
                }
                None => self
                    .problems
                    .push(Diagnostic::new("alias to an unknown anchor").at(at)),
            },
            Event::SequenceStart(anchor, _) if self.open(at) => {
                self.stack.push(Frame::Seq(Vec::new(), at, anchor));
            }
            Event::MappingStart(anchor, _) if self.open(at) => {
                self.stack
                    .push(Frame::Map(Vec::new(), None, HashMap::new(), at, anchor));
            }
            Event::SequenceEnd => {
                let size = self.sizes.pop().unwrap_or(0) + 1;
                if let Some(Frame::Seq(items, span, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Seq(items),
                            span,
                        },
                        anchor,
                        size,
                    );
                }
            }
            Event::MappingEnd => {
                let size = self.sizes.pop().unwrap_or(0) + 1;
                if let Some(Frame::Map(entries, _, _, span, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Map(entries),
                            span,
                        },
                        anchor,
                        size,
                    );
                }
            }
            _ => {}
        }
    }

    /// Records an error that ends the parse.
    fn stop(&mut self, message: String, at: Span, help: &str) {
        self.problems
            .push(Diagnostic::new(message).at(at).with_help(help.to_string()));
        self.over_budget = true;
    }

    /// Counts `own` new nodes written in the document; false when the budget is exceeded.
    fn count(&mut self, own: usize, at: Span) -> bool {
        self.own_nodes += own;
        if self.own_nodes + self.aliased_nodes > self.limits.max_nodes {
            let max = self.limits.max_nodes;
            self.stop(
                format!("the plan has more than {max} nodes"),
                at,
                "split the plan, or raise the limit with --max-plan-nodes if it really needs this many",
            );
            return false;
        }
        true
    }

    /// Opens a sequence or mapping; false when that is nested too deep or over budget.
    fn open(&mut self, at: Span) -> bool {
        if self.stack.len() >= self.limits.max_depth {
            let max = self.limits.max_depth;
            self.stop(
                format!("sequences and mappings are nested more than {max} deep"),
                at,
                "no plan key needs this much nesting",
            );
            return false;
        }
        self.sizes.push(0);
        self.count(1, at)
    }

    fn push(&mut self, mut node: Node, anchor: usize, size: usize) {
        if let Some(open) = self.sizes.last_mut() {
            *open += size;
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        if let (Some(sink), [Frame::Map(_, Some(key), ..), Frame::Seq(items, ..)]) =
            (self.sink.as_mut(), self.stack.as_slice())
            && key.name == "steps"
            && self.problems.is_empty()
        {
            let span = node.span;
            sink(items.len(), node);
            node = Node {
                kind: NodeKind::Null,
                span,
            };
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, pending, seen, ..)) => match pending.take() {
                None => {
                    let name = match &node.kind {
                        NodeKind::Str(s) => s.clone(),
                        NodeKind::Int(i) => i.to_string(),
                        NodeKind::Bool(b) => b.to_string(),
                        NodeKind::Null => "null".to_string(),
                        _ => {
                            self.problems.push(
                                Diagnostic::new("mapping keys must be plain strings").at(node.span),
                            );
                            String::new()
                        }
                    };
                    if let Some(first_line) = seen.get(&name) {
                        self.problems.push(
                            Diagnostic::new(format!("duplicate key `{name}`"))
                                .at(node.span)
                                .with_len(name.chars().count())
                                .with_help(format!(
                                    "`{name}` is first set on line {first_line}; remove one of them"
                                )),
                        );
                    } else {
                        seen.insert(name.clone(), node.span.line);
                    }
                    *pending = Some(Key {
                        name,
                        span: node.span,
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

/// What `text` means written unquoted in YAML: a number, a boolean, null or a string. A
/// rendered template is read this way where its field takes a number or a boolean.
pub fn plain_scalar(text: &str) -> Value {
    Node {
        kind: resolve_scalar(text, ScalarStyle::Plain),
        span: Span::new(1, 1),
    }
    .to_json()
}

/// Resolves a scalar with the YAML 1.2 core schema: only plain (unquoted) scalars can be
/// null, booleans or numbers; quoted ones are always strings.
fn resolve_scalar(text: &str, style: ScalarStyle) -> NodeKind {
    if style != ScalarStyle::Plain {
        return NodeKind::Str(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return NodeKind::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeKind::Int(i);
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if looks_float && let Ok(f) = text.parse::<f64>() {
        return NodeKind::Float(f);
    }
    NodeKind::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_the_core_schema() {
        let node = parse("a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: 10s\ng: -3\n").unwrap();
        let json = node.to_json();
        assert_eq!(json["a"], 1);
        assert_eq!(json["b"], "1");
        assert_eq!(json["c"], 1.5);
        assert_eq!(json["d"], true);
        assert!(json["e"].is_null());
        assert_eq!(json["f"], "10s");
        assert_eq!(json["g"], -3);
    }

    #[test]
    fn spans_are_one_based_and_point_at_values() {
        let node = parse("steps:\n  - id: x\n    retry: 3\n").unwrap();
        let path = [
            PathSegment::Key("steps".into()),
            PathSegment::Index(0),
            PathSegment::Key("retry".into()),
        ];
        let (value, key) = node.lookup(&path).unwrap();
        assert_eq!((value.span.line, value.span.col), (3, 12));
        assert_eq!((key.unwrap().span.line, key.unwrap().span.col), (3, 5));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let problems = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("duplicate key `a`"));
    }

    #[test]
    fn budgets_refuse_bombs_depth_and_controls_quickly() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let problems = parse(&bomb).unwrap_err();
        assert!(
            problems[0].message.contains("alias bomb"),
            "{:?}",
            problems[0]
        );
        let deep = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
        assert!(
            parse(&deep).unwrap_err()[0]
                .message
                .contains("nested more than 64")
        );
        let many = Limits {
            max_nodes: 10,
            ..Limits::default()
        };
        assert!(parse_within("a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", many).is_err());
        assert!(
            parse("a: \"x\\e[31m\"").unwrap_err()[0]
                .message
                .contains("U+001B")
        );
        assert!(
            parse("a: x\u{0}y").unwrap_err()[0]
                .message
                .contains("U+0000")
        );
        assert!(
            parse("a: .inf").unwrap_err()[0]
                .message
                .contains("not a number")
        );
        // Anchors shared by many entries are fine.
        let mut shared = String::from("r: &r { attempts: 3, delay: 1s }\ns:\n");
        for i in 0..1000 {
            shared.push_str(&format!("  - {{ id: s{i}, retry: *r }}\n"));
        }
        assert!(parse(&shared).is_ok());
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let node = parse("x: &r { attempts: 3 }\ny: *r\n").unwrap();
        assert_eq!(node.to_json()["y"]["attempts"], 3);
    }
}
