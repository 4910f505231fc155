//! The one resolver: a step's parameters, a target or a repository, rendered with the
//! values known at that moment and typed. The loader calls it with the plan's variables
//! (all that is known before the run), the preview and the executor with everything known
//! when the step starts, so validate, preview and apply read every field the same way.
//!
//! Rendering gives text; a field that takes a number or a boolean reads the rendered text
//! as YAML would read it unquoted (`"4"` → 4, `"true"` → true). A template left for later
//! (`{{ env.X }}`, `{{ run.id }}` while loading) in such a field is set aside and the
//! field keeps its default until the step starts; a step's output there is refused, since
//! the field is checked before anything runs.

use super::model::{Repository, StepDef, StepKind};
use super::template::{Templates, has_template, scan_references};
use super::yaml::{PathSegment, plain_scalar};
use crate::steps::registry;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A step's parameters rendered with everything in `context` and typed: what the preview
/// shows and what apply runs, from this one function. The rendered parameters come back
/// too, for redaction and display.
pub fn step(
    templates: &Templates,
    step: &StepDef,
    context: &Value,
) -> Result<(Value, StepKind), String> {
    let written = step.raw_params.value();
    let type_name = step.kind.type_name();
    let quoted = registry::get(type_name).map_or(&[][..], |r| r.shell_quoted);
    let rendered = templates.render_params(quoted, &written, context)?;
    let kind = step_kind(type_name, &written, rendered.clone(), true).map_err(|e| match e {
        ParamsError::Invalid(e) => e.message(),
        ParamsError::UnknownType => format!("unknown step type `{type_name}`"),
    })?;
    Ok((rendered, kind))
}

/// A step's common keys (`retry`, `timeout`, …) rendered with everything in `context` and
/// typed: what apply enforces, also when a value comes from `{{ env.X }}` or `{{ run.* }}`
/// (the loader can only set those aside). An error names the key:
/// "`timeout`: … (rendered from `{{ env.T }}`)".
pub fn common(
    templates: &Templates,
    step: &StepDef,
    context: &Value,
) -> Result<super::model::Common, String> {
    if step.raw_common.is_empty() {
        return Ok(step.common.clone());
    }
    let written = step.raw_common.value();
    let rendered = templates.render_value(&written, context)?;
    typed(&written, rendered, true).map_err(|e| e.message())
}

#[derive(Debug)]
pub enum ParamsError {
    UnknownType,
    Invalid(ResolveError),
}

/// Types a step's parameters: `rendered` is `written` with the values known now rendered
/// in (`complete` when every template is). The step type is asked for by name.
pub fn step_kind(
    type_name: &str,
    written: &Value,
    rendered: Value,
    complete: bool,
) -> Result<StepKind, ParamsError> {
    let registration = registry::get(type_name).ok_or(ParamsError::UnknownType)?;
    typed_with(written, rendered, complete, |v| registration.parse(v)).map_err(ParamsError::Invalid)
}

/// A repository with every setting rendered (`endpoint: "{{ env.S3_ENDPOINT }}"` too) and
/// typed again.
pub fn repository(
    templates: &Templates,
    name: &str,
    repo: &Repository,
    context: &Value,
) -> Result<Repository, String> {
    let in_repository = |e: String| format!("repository `{name}`: {e}");
    if repo.written.is_empty() {
        let url = templates
            .render_str(&repo.url, context)
            .map_err(in_repository)?;
        return Ok(Repository {
            url,
            ..repo.clone()
        });
    }
    let written = repo.written.value();
    let rendered = templates
        .render_value(&written, context)
        .map_err(in_repository)?;
    let mut typed: Repository =
        typed(&written, rendered, true).map_err(|e| in_repository(e.message()))?;
    typed.written = repo.written.clone();
    Ok(typed)
}

/// Why a value could not be typed.
#[derive(Debug)]
pub enum ResolveError {
    /// The value, literal or rendered, is not what the field takes. `from` is the template
    /// it was rendered from.
    Invalid {
        error: serde_path_to_error::Error<serde_json::Error>,
        from: Option<String>,
    },
    /// A template in a field whose value must be known before the run refers to something
    /// known only later (a step's output).
    TooLate {
        path: Vec<PathSegment>,
        template: String,
    },
}

impl ResolveError {
    /// The error in one line, for places without a source position (a step that starts).
    pub fn message(&self) -> String {
        match self {
            ResolveError::Invalid { error, from } => {
                let path = super::yaml::format_path(&segments(error));
                let at = if path.is_empty() {
                    String::new()
                } else {
                    format!("`{path}`: ")
                };
                match from {
                    Some(t) => format!("{at}{} (rendered from `{t}`)", error.inner()),
                    None => format!("{at}{}", error.inner()),
                }
            }
            ResolveError::TooLate { path, template } => too_late(path, template),
        }
    }
}

/// "`format` takes its value before the run …".
pub fn too_late(path: &[PathSegment], template: &str) -> String {
    let from_a_step = scan_references(template)
        .iter()
        .any(|r| r.path.first().is_some_and(|root| root == "steps"));
    let when = if from_a_step {
        "only when that step has run"
    } else {
        "only when the step starts"
    };
    format!(
        "`{}` must be known before the run, but `{template}` is known {when}",
        super::yaml::format_path(path)
    )
}

/// The key path of a serde error.
pub fn segments(error: &serde_path_to_error::Error<serde_json::Error>) -> Vec<PathSegment> {
    error
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(PathSegment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => {
                Some(PathSegment::Key(variant.clone()))
            }
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn get<'a>(value: &'a Value, path: &[PathSegment]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        PathSegment::Key(k) => v.get(k),
        PathSegment::Index(i) => v.get(i),
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[PathSegment]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        PathSegment::Key(k) => v.get_mut(k),
        PathSegment::Index(i) => v.get_mut(i),
    })
}

/// Types `rendered` (the rendering of `written`). `complete` says every template has been
/// rendered (a step starting); otherwise templates left for later are set aside.
pub fn typed<T: DeserializeOwned>(
    written: &Value,
    rendered: Value,
    complete: bool,
) -> Result<T, ResolveError> {
    typed_with(written, rendered, complete, |v| {
        serde_path_to_error::deserialize::<_, T>(v)
    })
}

/// [`typed`] with the deserializer given (a step type's, chosen by name).
fn typed_with<T>(
    written: &Value,
    mut rendered: Value,
    complete: bool,
    deserialize: impl Fn(&Value) -> Result<T, serde_path_to_error::Error<serde_json::Error>>,
) -> Result<T, ResolveError> {
    let mut coerced: Vec<Vec<PathSegment>> = Vec::new();
    let mut set_aside: Vec<(Vec<PathSegment>, String)> = Vec::new();
    // Each round fixes one field or gives up, so the rounds are bounded by the fields.
    loop {
        let error = match deserialize(&rendered) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let path = segments(&error);
        // A field that was set aside and turns out to be required.
        if let Some(name) = error
            .inner()
            .to_string()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            let mut missing = path.clone();
            missing.push(PathSegment::Key(name.to_string()));
            if let Some((p, template)) = set_aside.iter().find(|(p, _)| *p == missing) {
                return Err(ResolveError::TooLate {
                    path: p.clone(),
                    template: template.clone(),
                });
            }
        }
        let template = match get(written, &path) {
            Some(Value::String(t)) if has_template(t) => t.clone(),
            _ => return Err(ResolveError::Invalid { error, from: None }),
        };
        let Some(current) = get_mut(&mut rendered, &path) else {
            return Err(ResolveError::Invalid { error, from: None });
        };
        let text = current.as_str().map(str::to_string);
        match text {
            Some(text) if has_template(&text) => {
                let later_only = scan_references(&text)
                    .iter()
                    .all(|r| matches!(r.path.first().map(String::as_str), Some("env" | "run")));
                let (parent, last) = path.split_at(path.len().saturating_sub(1));
                let removable = matches!(last, [PathSegment::Key(_)]);
                if complete || !later_only || !removable {
                    return Err(ResolveError::TooLate { path, template });
                }
                if let (Some(Value::Object(map)), [PathSegment::Key(key)]) =
                    (get_mut(&mut rendered, parent), last)
                {
                    map.remove(key);
                }
                set_aside.push((path, template));
            }
            Some(text) if !coerced.contains(&path) => {
                *current = plain_scalar(&text);
                coerced.push(path);
            }
            _ => {
                return Err(ResolveError::Invalid {
                    error,
                    from: Some(template),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::backup::BackupParams;
    use serde_json::json;

    #[test]
    fn rendered_text_becomes_the_type_the_field_takes() {
        let written = json!({ "target": "t", "repository": "r", "jobs": "{{ vars.j }}", "format": "{{ vars.f }}", "schema_only": "{{ vars.s }}" });
        let rendered = json!({ "target": "t", "repository": "r", "jobs": "4", "format": "directory", "schema_only": "true" });
        let p: BackupParams = typed(&written, rendered, true).unwrap();
        assert_eq!(p.jobs, Some(4));
        assert!(p.schema_only);
        assert_eq!(p.format, crate::repo::manifest::DumpFormat::Directory);
    }

    #[test]
    fn a_bad_rendered_value_names_its_template() {
        let written = json!({ "target": "t", "repository": "r", "format": "{{ vars.f }}" });
        let rendered = json!({ "target": "t", "repository": "r", "format": "tarball" });
        let e = typed::<BackupParams>(&written, rendered, true).unwrap_err();
        let message = e.message();
        assert!(
            message.contains("tarball") && message.contains("{{ vars.f }}"),
            "{message}"
        );
    }

    #[test]
    fn later_values_wait_and_step_outputs_are_refused() {
        let written = json!({ "target": "t", "repository": "r", "jobs": "{{ env.J }}" });
        let p: BackupParams = typed(&written, written.clone(), false).unwrap();
        assert_eq!(p.jobs, None);
        let written =
            json!({ "target": "t", "repository": "r", "jobs": "{{ steps.a.outputs.n }}" });
        let e = typed::<BackupParams>(&written, written.clone(), false).unwrap_err();
        assert!(matches!(e, ResolveError::TooLate { .. }), "{e:?}");
        // A string field keeps a template for later as it is.
        let written =
            json!({ "target": "t", "repository": "r", "database": "{{ steps.a.outputs.db }}" });
        let p: BackupParams = typed(&written, written.clone(), false).unwrap();
        assert_eq!(p.database.as_deref(), Some("{{ steps.a.outputs.db }}"));
    }
}
