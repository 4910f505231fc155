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

/// Parses a whole plan document. Syntax errors, duplicate keys and non-string keys are
/// returned together as diagnostics.
pub fn parse(source: &str) -> Result<Node, Vec<Diagnostic>> {
    let mut builder = Builder::default();
    for item in Parser::new_from_str(source) {
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

enum Frame {
    Seq(Vec<Node>, Span, usize),
    Map(Vec<(Key, Node)>, Option<Key>, Span, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    problems: Vec<Diagnostic>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, at: Span) {
        match event {
            Event::DocumentStart(_) => self.documents += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    kind: resolve_scalar(&text, style),
                    span: at,
                };
                self.push(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.span = at;
                    self.push(node, 0);
                }
                None => self
                    .problems
                    .push(Diagnostic::new("alias to an unknown anchor").at(at)),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), at, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, at, anchor))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, span, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Seq(items),
                            span,
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, span, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Map(entries),
                            span,
                        },
                        anchor,
                    );
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, pending, ..)) => match pending.take() {
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
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        self.problems.push(
                            Diagnostic::new(format!("duplicate key `{name}`"))
                                .at(node.span)
                                .with_len(name.chars().count())
                                .with_help(format!(
                                    "`{name}` is first set on line {}; remove one of them",
                                    first.span.line
                                )),
                        );
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
    fn anchors_and_aliases_resolve() {
        let node = parse("x: &r { attempts: 3 }\ny: *r\n").unwrap();
        assert_eq!(node.to_json()["y"]["attempts"], 3);
    }
}
