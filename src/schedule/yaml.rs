//! Writing Kubernetes manifests: JSON values as block YAML. Every string is written
//! double-quoted (JSON's escaping is valid YAML), except multi-line text that a literal
//! block carries unchanged, so nothing a plan holds can change a manifest's structure.

use serde_json::Value;

pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0, Position::Top);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Position {
    Top,
    /// After `key:`.
    Mapped,
    /// After `- `.
    Listed,
}

fn write_value(out: &mut String, value: &Value, indent: usize, at: Position) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            if at == Position::Mapped {
                out.push('\n');
            }
            for (i, (k, v)) in ordered(map).into_iter().enumerate() {
                // The first key of a list item continues the `- ` line.
                if !(at == Position::Listed && i == 0) {
                    out.push_str(&pad);
                }
                out.push_str(&key(k));
                out.push(':');
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        write_value(out, v, indent + 2, Position::Mapped)
                    }
                    Value::Array(a) if !a.is_empty() => {
                        write_value(out, v, indent, Position::Mapped)
                    }
                    _ => {
                        out.push(' ');
                        write_scalar(out, v, indent + 2);
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if at == Position::Mapped {
                out.push('\n');
            }
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        write_value(out, item, indent + 2, Position::Listed)
                    }
                    Value::Array(a) if !a.is_empty() => {
                        // A list in a list: `- ` then the inner list below.
                        out.push('\n');
                        write_value(out, item, indent + 2, Position::Top)
                    }
                    _ => {
                        write_scalar(out, item, indent + 2);
                        out.push('\n');
                    }
                }
            }
        }
        _ => {
            write_scalar(out, value, indent);
            out.push('\n');
        }
    }
}

/// Keys a reader looks for first (`apiVersion`, `kind`, `name`) lead; the rest follow in
/// alphabetical order, as the map holds them.
fn ordered(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    const FIRST: &[&str] = &["apiVersion", "kind", "metadata", "name"];
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
    entries
}

fn write_scalar(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::String(s) if literal_block_fits(s) => {
            out.push_str("|\n");
            let pad = " ".repeat(indent);
            for line in s.lines() {
                if !line.is_empty() {
                    out.push_str(&pad);
                    out.push_str(line);
                }
                out.push('\n');
            }
            // The caller ends the line; a literal block already did.
            out.pop();
        }
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        other => out.push_str(&other.to_string()),
    }
}

/// A literal block keeps text exactly when it ends in one newline, has no tabs, carriage
/// returns or trailing spaces, and its first line does not start with a space (which
/// would have to be declared with an indentation indicator).
fn literal_block_fits(s: &str) -> bool {
    s.contains('\n')
        && s.ends_with('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with(' ')
        && !s.starts_with('\n')
        && s.chars().all(|c| c == '\n' || !c.is_control())
        && s.lines().all(|l| !l.ends_with(' '))
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !k.starts_with(['-', '.'])
        && !matches!(
            k.to_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists() {
        let v = json!({
            "a": { "b": 1, "c": ["x", { "d": true, "e": [] }] },
            "text": "line 1\nline 2\n",
            "odd": "a: b # c",
            "on": "quoted key"
        });
        assert_eq!(
            to_yaml(&v),
            "a:\n  b: 1\n  c:\n  - \"x\"\n  - d: true\n    e: []\nodd: \"a: b # c\"\n\"on\": \"quoted key\"\ntext: |\n  line 1\n  line 2\n"
        );
    }
}
