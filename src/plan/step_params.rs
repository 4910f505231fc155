//! What the plan language knows of a step type: a step's typed parameters behind one
//! object-safe trait. Each step type (a file under `steps/`) implements `steps::StepType`;
//! the step registry wraps its parameters so that the loader, the validator, the preview
//! and the executor ask them rather than matching on step types. This file names no step
//! type: the plan layer stays below the steps.

use serde::{Serialize, Serializer};
use serde_json::Value;
use std::any::Any;
use std::fmt;
use std::path::Path;

/// A step type's parameters, typed, with the facts every layer asks about them.
pub trait StepParams: Any + fmt::Debug + Send + Sync {
    /// The `type:` of the step.
    fn type_name(&self) -> &'static str;
    /// Names of the outputs a step of this type sets, for checking template references.
    fn output_names(&self) -> &'static [&'static str];
    /// The target the step connects to, if any, for reference checks, guards and locks.
    fn target(&self) -> Option<&str>;
    /// Where in the parameters the target (`field` = "target") or the repository is named.
    fn reference_path(&self, field: &str) -> &'static [&'static str];
    /// The repository the step reads or writes, if any.
    fn repository(&self) -> Option<&str>;
    /// A second repository the step only reads (a copy's source).
    fn source_repository(&self) -> Option<&str>;
    /// Whether the step writes to its target (a restore, a migration, SQL that says it
    /// writes) or its repository (a backup, a verification record, a prune): a run holds
    /// an exclusive lock on what it writes to.
    fn writes_target(&self) -> bool;
    fn writes_repository(&self) -> bool;
    /// Parallel workers the step asks for, bounded by validation.
    fn jobs(&self) -> Option<u32>;
    /// The type's own rules beyond what its parameter type says.
    fn check(&self, scope: &CheckScope<'_>) -> Vec<Problem>;
    /// Whether the step may destroy data: marked in previews, and it needs `--confirm
    /// TARGET` on protected targets. `read_files: false` (an untrusted preview reads no
    /// file) must answer for files it may not read.
    fn destructive(&self, base_dir: &Path, read_files: bool) -> bool;
    /// What the step will do, in one line, for previews.
    fn describe(&self) -> String;
    /// Values in the rendered parameters that are secrets whatever their name (a webhook's
    /// URL), redacted everywhere before anything is shown.
    fn secrets(&self) -> Vec<String>;
    /// The parameters as JSON, for the JSON forms of the plan.
    fn to_value(&self) -> Value;
    fn clone_box(&self) -> Box<dyn StepParams>;
    fn as_any(&self) -> &dyn Any;
}

/// What a type's [`StepParams::check`] may consult in the rest of the plan.
pub struct CheckScope<'a> {
    pub step_id: &'a str,
    /// Names of the plan's secret environment variables.
    pub secrets: &'a [String],
}

/// A rule a step's parameters break, placed by the validator.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Key path inside the step (`["keep", "daily"]`); empty for the step itself.
    pub at: Vec<String>,
    pub message: String,
    pub help: Option<String>,
    /// Text inside the field to point the caret at (a template reference).
    pub narrow_to: Option<String>,
}

impl Problem {
    pub fn new(at: &[&str], message: impl Into<String>) -> Problem {
        Problem {
            at: at.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
            help: None,
            narrow_to: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    pub fn narrow_to(mut self, text: impl Into<String>) -> Problem {
        self.narrow_to = Some(text.into());
        self
    }
}

/// A step's typed parameters, whatever its type.
pub struct StepKind(Box<dyn StepParams>);

impl StepKind {
    pub fn new(params: Box<dyn StepParams>) -> StepKind {
        StepKind(params)
    }

    /// The parameters as the type that wrote them, for that type's own code.
    pub fn downcast<T: StepParams>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// Every target the step touches.
    pub fn targets(&self) -> Vec<&str> {
        self.target().into_iter().collect()
    }
}

impl std::ops::Deref for StepKind {
    type Target = dyn StepParams;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Clone for StepKind {
    fn clone(&self) -> StepKind {
        StepKind(self.0.clone_box())
    }
}

impl fmt::Debug for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// `{"type": NAME, …parameters}`, as a plan writes it.
impl Serialize for StepKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serde_json::Map::new();
        map.insert("type".into(), Value::from(self.type_name()));
        if let Value::Object(params) = self.to_value() {
            map.extend(params);
        }
        Value::Object(map).serialize(serializer)
    }
}
