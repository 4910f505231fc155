//! Templates in plan values: `{{ vars.x }}`, `{{ env.NAME }}`, `{{ run.id }}`,
//! `{{ steps.ID.outputs.NAME }}`. Rendering uses handlebars in strict mode (a missing value
//! is an error, never an empty string) without HTML escaping; references are also
//! extracted statically so that validation can reject unknown names before anything runs.

use handlebars::Handlebars;
use serde_json::Value;

/// A `{{ … }}` reference found in a string, e.g. `steps.backup.outputs.backup_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The dotted path, split.
    pub path: Vec<String>,
    /// Byte offset of the path inside the string.
    pub offset: usize,
    /// The first argument of `{{ default PATH "fallback" }}`: it may have no value.
    pub optional: bool,
}

impl Reference {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

pub fn has_template(text: &str) -> bool {
    text.contains("{{")
}

/// Checks a string's template syntax and lists the paths it refers to.
pub fn references(text: &str) -> Result<Vec<Reference>, String> {
    if !has_template(text) {
        return Ok(Vec::new());
    }
    // A template names one value: `{{ vars.x }}`. Helpers, blocks and partials would make
    // rendering a program (a partial even names a file), which a plan has no need for.
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        // `{{{ path }}}` (raw, for shell commands) names a value too.
        let inner = rest[start + 2..start + len]
            .trim_start_matches('{')
            .trim()
            .trim_matches('~')
            .trim();
        if !is_path(inner) && !inner.is_empty() && default_helper(inner).is_none() {
            return Err(format!(
                "invalid template `{{{{ {inner} }}}}`: a template names one value, such as `{{{{ vars.NAME }}}}`, `{{{{ env.NAME }}}}` or `{{{{ steps.ID.outputs.NAME }}}}`, or one with a fallback, `{{{{ default steps.ID.outputs.NAME \"n/a\" }}}}`; other helpers, blocks and partials are not supported"
            ));
        }
        rest = &rest[start + len + 2..];
    }
    handlebars::Template::compile(text).map_err(|e| {
        if text.matches("{{").count() != text.matches("}}").count() {
            "invalid template: a `{{` is not closed by `}}`".to_string()
        } else {
            format!("invalid template: {}", e.reason())
        }
    })?;
    Ok(scan_references(text))
}

/// `default PATH "fallback"`: the path and the fallback text, when `inner` (the inside of
/// `{{ … }}`) is exactly that.
fn default_helper(inner: &str) -> Option<(&str, &str)> {
    let rest = inner.strip_prefix("default")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest.find(char::is_whitespace)?;
    let (path, literal) = (&rest[..end], rest[end..].trim());
    let text = literal.strip_prefix('"')?.strip_suffix('"')?;
    (is_path(path) && !text.contains(['"', '\\'])).then_some((path, text))
}

/// Lists the paths a string refers to without checking its syntax (validation did).
pub fn scan_references(text: &str) -> Vec<Reference> {
    let mut refs = Vec::new();
    let mut pos = 0;
    while let Some(start) = text[pos..].find("{{") {
        let open = pos + start;
        let Some(len) = text[open..].find("}}") else {
            break;
        };
        let inner_start = open + 2;
        let inner = &text[inner_start..open + len];
        let trimmed = inner
            .trim_start_matches('{')
            .trim()
            .trim_matches('~')
            .trim();
        if let Some((path, _)) = default_helper(trimmed) {
            let at = inner_start + inner.find(path).unwrap_or(0);
            refs.push(Reference {
                path: path.split('.').map(str::to_string).collect(),
                offset: at,
                optional: true,
            });
            pos = open + len + 2;
            continue;
        }
        let mut tokens = Vec::new();
        let mut offset = 0;
        for token in inner.split_whitespace() {
            let at = inner[offset..].find(token).map_or(0, |p| p + offset);
            offset = at + token.len();
            tokens.push((token, inner_start + at));
        }
        // `{{ path }}` names a value; `{{#helper a b}}` and `{{helper a b}}` pass paths as
        // parameters after the helper's name.
        let params = if tokens.len() > 1
            || tokens
                .first()
                .is_some_and(|(t, _)| t.starts_with(['#', '/', '~', '^', '!', '>']))
        {
            &tokens[1.min(tokens.len())..]
        } else {
            &tokens[..]
        };
        for (token, at) in params {
            let token = token.trim_matches(|c| c == '~' || c == '(' || c == ')');
            if is_path(token) {
                refs.push(Reference {
                    path: token.split('.').map(str::to_string).collect(),
                    offset: *at,
                    optional: false,
                });
            }
        }
        pos = open + len + 2;
    }
    refs
}

fn is_path(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(token, "true" | "false" | "null" | "else")
}

/// Looks a reference up in a render context.
pub fn lookup<'a>(context: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(context, |v, key| v.get(key))
}

/// The renderer. One per run; cheap to share.
pub struct Templates {
    registry: Handlebars<'static>,
    /// For shell commands: every value is shell-quoted; `{{{ … }}}` inserts it raw.
    shell: Handlebars<'static>,
}

/// `{{ default PATH "fallback" }}`: the value at PATH, or the fallback when it has none (or
/// is empty). The renderer hands a missing PATH in as null.
fn default_value(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    out.write(&default_text(h))?;
    Ok(())
}

/// [`default_value`] in a shell command: one shell word, like every other value there.
fn default_shell_word(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    out.write(&shell_quote(&default_text(h)))?;
    Ok(())
}

fn default_text(h: &handlebars::Helper<'_>) -> String {
    let value = h.param(0).map(|p| p.value());
    let fallback = h.param(1).and_then(|p| p.value().as_str()).unwrap_or("");
    match value {
        None | Some(Value::Null) => fallback.to_string(),
        Some(Value::String(s)) if s.is_empty() => fallback.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A value as one shell word: left alone when it has no character the shell would
/// interpret, otherwise in single quotes (a quote inside as `'\''`).
pub fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper("default", Box::new(default_value));
        let mut shell = Handlebars::new();
        shell.set_strict_mode(true);
        shell.register_escape_fn(shell_quote);
        shell.register_helper("default", Box::new(default_shell_word));
        Templates { registry, shell }
    }

    /// Renders one string. Missing values are reported by their path, e.g.
    /// "`env.DATABASE_URL` is not set".
    ///
    /// Handlebars serializes the whole data it is given on every render; the context of a
    /// large plan holds every step's outputs, so each string is rendered against a copy of
    /// just the values it refers to.
    pub fn render_str(&self, text: &str, context: &Value) -> Result<String, String> {
        self.render_with(&self.registry, text, context)
    }

    /// Renders a step's parameters. The fields in `shell_quoted` (a shell step's `command`,
    /// as its step type says) get every value shell-quoted,
    /// so that a variable holding `x; rm -rf ~` stays one word; `{{{ … }}}` is the explicit
    /// way to insert shell text. Preview and apply both render through here.
    pub fn render_params(
        &self,
        shell_quoted: &[&str],
        params: &Value,
        context: &Value,
    ) -> Result<Value, String> {
        let mut rendered = self.render_value(params, context)?;
        for field in shell_quoted {
            if let Some(Value::String(text)) = params.get(*field) {
                rendered[*field] = Value::String(self.render_with(&self.shell, text, context)?);
            }
        }
        Ok(rendered)
    }

    fn render_with(
        &self,
        registry: &Handlebars<'static>,
        text: &str,
        context: &Value,
    ) -> Result<String, String> {
        if !has_template(text) {
            return Ok(text.to_string());
        }
        let mut needed = Value::Object(serde_json::Map::new());
        for reference in scan_references(text) {
            let value = match lookup(context, &reference.path) {
                // The fallback stands in (see `default_value`).
                None if reference.optional => Some(&Value::Null),
                found => found,
            };
            let Some(value) = value else {
                let dotted = reference.dotted();
                return Err(match reference.path.first().map(String::as_str) {
                    Some("env") => format!(
                        "`{dotted}` is not set: the environment has no variable {}",
                        reference.path[1..].join(".")
                    ),
                    _ => format!("`{dotted}` has no value"),
                });
            };
            if value.is_object() || value.is_array() {
                // Handlebars would print `[object]`: never what a plan means.
                return Err(format!(
                    "`{}` is a group of values, not one value; name one of them",
                    reference.dotted()
                ));
            }
            insert_path(&mut needed, &reference.path, value.clone());
        }
        registry
            .render_template(text, &needed)
            .map_err(|e| format!("template error: {}", e.reason()))
    }

    /// Renders the strings of a step's parameters whose every reference is
    /// in `context`, and leaves the others as written: what the loader does with the
    /// plan's variables, the only values known before the run. The same registries as
    /// [`Templates::render_params`], so a shell command is quoted the same way.
    pub fn render_known(&self, shell_quoted: &[&str], params: &Value, context: &Value) -> Value {
        let known = |text: &str| {
            references(text).is_ok_and(|refs| {
                refs.iter().all(|r| {
                    lookup(context, &r.path).is_some_and(|v| !v.is_object() && !v.is_array())
                })
            })
        };
        let render = |registry: &Handlebars<'static>, text: &str| {
            if has_template(text) && known(text) {
                self.render_with(registry, text, context)
                    .unwrap_or_else(|_| text.to_string())
            } else {
                text.to_string()
            }
        };
        fn walk(value: &Value, render: &dyn Fn(&str) -> String) -> Value {
            match value {
                Value::String(s) => Value::String(render(s)),
                Value::Array(items) => {
                    Value::Array(items.iter().map(|v| walk(v, render)).collect())
                }
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), walk(v, render)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        let mut out = walk(params, &|t| render(&self.registry, t));
        for field in shell_quoted {
            if let Some(Value::String(text)) = params.get(*field) {
                out[*field] = Value::String(render(&self.shell, text));
            }
        }
        out
    }

    /// Renders every string inside a JSON value.
    pub fn render_value(&self, value: &Value, context: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(s) => Value::String(self.render_str(s, context)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_value(v, context))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.render_value(v, context)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }
}

/// A copy of `context` holding only the values at `paths` (those that exist).
pub fn subset(context: &Value, paths: &[Vec<String>]) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    for path in paths {
        if let Some(value) = lookup(context, path) {
            insert_path(&mut out, path, value.clone());
        }
    }
    out
}

/// Every reference path in the strings of a JSON value and in `extra` texts.
pub fn reference_paths<'a>(
    value: &Value,
    extra: impl IntoIterator<Item = &'a str>,
) -> Vec<Vec<String>> {
    let mut texts = Vec::new();
    strings(value, &mut texts);
    texts.extend(extra.into_iter().map(str::to_string));
    let mut paths: Vec<Vec<String>> = texts
        .iter()
        .flat_map(|t| scan_references(t))
        .map(|r| r.path)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Sets `path` inside `target`, creating objects on the way.
fn insert_path(target: &mut Value, path: &[String], value: Value) {
    let mut node = target;
    for key in &path[..path.len() - 1] {
        if !node.get(key).is_some_and(Value::is_object) {
            node[key.as_str()] = Value::Object(serde_json::Map::new());
        }
        node = node.get_mut(key.as_str()).expect("just inserted");
    }
    node[path[path.len() - 1].as_str()] = value;
}

/// Every string inside a JSON value, for collecting references.
pub fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_references_with_offsets() {
        let refs = references("x {{ steps.my-step.outputs.id }} y {{vars.a}}").unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].dotted(), "steps.my-step.outputs.id");
        assert_eq!(refs[0].offset, 5);
        assert_eq!(refs[1].dotted(), "vars.a");
    }

    #[test]
    fn shell_commands_get_quoted_values_unless_raw() {
        let t = Templates::new();
        let ctx = json!({"vars": {"v": "hello; echo INJECTED", "q": "it's", "w": "plain-1.2"}});
        let params = json!({"command": "echo {{ vars.v }} {{ vars.q }} {{ vars.w }} {{{ vars.w }}}", "env": {"A": "{{ vars.v }}"}});
        let out = t.render_params(&["command"], &params, &ctx).unwrap();
        assert_eq!(
            out["command"],
            "echo 'hello; echo INJECTED' 'it'\\''s' plain-1.2 plain-1.2"
        );
        assert_eq!(out["env"]["A"], "hello; echo INJECTED");
        let out = t
            .render_params(&[], &json!({"query": "{{ vars.q }}"}), &ctx)
            .unwrap();
        assert_eq!(out["query"], "it's");
        assert!(references("echo {{{ vars.v }}}").is_ok());
    }

    #[test]
    fn helpers_blocks_and_partials_are_refused() {
        for text in [
            "{{#if vars.loud}}LOUD{{/if}}",
            "{{> /etc/passwd }}",
            "{{ lookup env \"HOME\" }}",
            "{{ vars.a vars.b }}",
        ] {
            let e = references(text).unwrap_err();
            assert!(e.contains("helpers, blocks and partials"), "{text}: {e}");
        }
        assert!(references("{{~ vars.a ~}}").is_ok());
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(references("{{ vars.a ").is_err());
    }

    #[test]
    fn renders_strictly_without_escaping() {
        let t = Templates::new();
        let ctx = json!({"vars": {"a": "<&>"}, "steps": {"my-step": {"outputs": {"id": "42"}}}, "env": {}});
        assert_eq!(t.render_str("{{ vars.a }}", &ctx).unwrap(), "<&>");
        assert_eq!(
            t.render_str("{{ steps.my-step.outputs.id }}", &ctx)
                .unwrap(),
            "42"
        );
        let err = t.render_str("{{ env.NOPE }}", &ctx).unwrap_err();
        assert!(err.contains("`env.NOPE` is not set"), "{err}");
    }
}
