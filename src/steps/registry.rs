//! The one list of step types. The loader, the schema, validation, the preview and the
//! executor ask [`TYPES`] (or a step's [`StepKind`], which a registered type made) rather
//! than matching on step types. Adding a step type is one file implementing
//! [`StepType`] and one line here (see CONTRIBUTING.md).

use super::probe::Probe;
pub use super::step_type::{ProbeFuture, StepFuture, StepType};
use crate::exec::StepContext;
use crate::plan::step_params::{CheckScope, Problem, StepKind, StepParams};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

// What the plan's checks ask of the layers above `plan/` besides step types: whether a
// repository URL has a backend and what it finds wrong (`repo::registry`), and whether an
// age recipient parses. Named here so that the one import from `plan/` upward stays this
// file (CONTRIBUTING, "The layers").
pub use crate::repo::crypto::{is_private_key, parse_recipient};
pub use crate::repo::registry::{
    UrlProblem, supported as supported_repositories, url_problem as repository_url_problem,
};

/// A step type's parameters behind [`StepParams`].
struct Typed<T: StepType>(T::Params, PhantomData<fn() -> T>);

impl<T: StepType> fmt::Debug for Typed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(T::NAME).field(&self.0).finish()
    }
}

impl<T: StepType> StepParams for Typed<T> {
    fn type_name(&self) -> &'static str {
        T::NAME
    }
    fn output_names(&self) -> &'static [&'static str] {
        T::OUTPUTS
    }
    fn target(&self) -> Option<&str> {
        T::target(&self.0)
    }
    fn reference_path(&self, field: &str) -> &'static [&'static str] {
        match field {
            "target" => T::TARGET_PATH,
            "source" => T::SOURCE_PATH,
            _ => T::REPOSITORY_PATH,
        }
    }
    fn repository(&self) -> Option<&str> {
        T::repository(&self.0)
    }
    fn source_repository(&self) -> Option<&str> {
        T::source_repository(&self.0)
    }
    fn jobs(&self) -> Option<u32> {
        T::jobs(&self.0)
    }
    fn writes_target(&self) -> bool {
        T::writes_target(&self.0)
    }
    fn writes_repository(&self) -> bool {
        T::writes_repository(&self.0)
    }
    fn check(&self, scope: &CheckScope<'_>) -> Vec<Problem> {
        T::check(&self.0, scope)
    }
    fn destructive(&self, base_dir: &Path, read_files: bool) -> bool {
        T::destructive(&self.0, base_dir, read_files)
    }
    fn describe(&self) -> String {
        T::describe(&self.0)
    }
    fn secrets(&self) -> Vec<String> {
        T::secrets(&self.0)
    }
    fn to_value(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }
    fn clone_box(&self) -> Box<dyn StepParams> {
        Box::new(Typed::<T>(self.0.clone(), PhantomData))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Wraps typed parameters of step type `T`.
pub fn kind<T: StepType>(params: T::Params) -> StepKind {
    StepKind::new(Box::new(Typed::<T>(params, PhantomData)))
}

/// The parameters of a step of type `T`; `None` for another type.
pub fn params<T: StepType>(kind: &StepKind) -> Option<&T::Params> {
    kind.downcast::<Typed<T>>().map(|t| &t.0)
}

pub type ParseError = serde_path_to_error::Error<serde_json::Error>;

/// What the registry holds of one step type: the functions that need the type itself.
pub struct Registration {
    pub name: &'static str,
    pub shell_quoted: &'static [&'static str],
    parse: fn(&Value) -> Result<StepKind, ParseError>,
    schema: fn(&mut SchemaGenerator) -> Schema,
    run: for<'a> fn(&'a StepKind, &'a StepContext) -> StepFuture<'a>,
    probe: for<'a> fn(&'a StepKind, Probe<'a>) -> ProbeFuture<'a>,
    reads: fn(&StepKind) -> Option<&'static str>,
}

fn parse<T: StepType>(value: &Value) -> Result<StepKind, ParseError> {
    serde_path_to_error::deserialize::<_, T::Params>(value).map(kind::<T>)
}

fn schema<T: StepType>(generator: &mut SchemaGenerator) -> Schema {
    T::Params::json_schema(generator)
}

fn own<T: StepType>(kind: &StepKind) -> &T::Params {
    params::<T>(kind).expect("a step kind is dispatched to the type that made it")
}

fn run<'a, T: StepType>(kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a> {
    Box::pin(T::run(own::<T>(kind), ctx))
}

fn probe<'a, T: StepType>(kind: &'a StepKind, scope: Probe<'a>) -> ProbeFuture<'a> {
    Box::pin(T::probe(own::<T>(kind), scope))
}

fn reads<T: StepType>(kind: &StepKind) -> Option<&'static str> {
    T::reads(own::<T>(kind))
}

const fn register<T: StepType>() -> Registration {
    Registration {
        name: T::NAME,
        shell_quoted: T::SHELL_QUOTED,
        parse: parse::<T>,
        schema: schema::<T>,
        run: run::<T>,
        probe: probe::<T>,
        reads: reads::<T>,
    }
}

/// Every step type, in the order the schema and the error messages list them.
pub static TYPES: &[Registration] = &[
    register::<super::shell::Shell>(),
    register::<super::sql::Sql>(),
    register::<super::wait_ready::WaitReady>(),
    register::<super::backup::Backup>(),
    register::<super::base_backup::BaseBackupStep>(),
    register::<super::restore::Restore>(),
    register::<super::verify::Verify>(),
    register::<super::migrate::Migrate>(),
    register::<super::seed::Seed>(),
    register::<super::reset::Reset>(),
    register::<super::prune::Prune>(),
    register::<super::copy::Copy>(),
    register::<super::export::Export>(),
    register::<super::import::Import>(),
    register::<super::wal_status::WalStatus>(),
    register::<super::pitr_mark::PitrMark>(),
    register::<super::webhook::Webhook>(),
];

/// The registration of a step type by name.
pub fn get(name: &str) -> Option<&'static Registration> {
    TYPES.iter().find(|r| r.name == name)
}

fn of(kind: &StepKind) -> &'static Registration {
    get(kind.type_name()).expect("every step kind comes from a registered type")
}

/// A shell step that does nothing: what a step that failed to load stands in as (such a
/// plan never validates, so it never runs).
pub fn stand_in() -> StepKind {
    kind::<super::shell::Shell>(super::shell::ShellParams {
        command: String::new(),
        env: Default::default(),
        workdir: None,
    })
}

/// The names of all step types, for "unknown step type" messages.
pub fn names() -> impl Iterator<Item = &'static str> + Clone {
    TYPES.iter().map(|r| r.name)
}

impl Registration {
    /// Types rendered parameters as this step type's.
    pub fn parse(&self, value: &Value) -> Result<StepKind, ParseError> {
        (self.parse)(value)
    }

    /// The JSON Schema of this type's parameters (inline).
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }
}

/// Runs a step.
pub fn run_step<'a>(kind: &'a StepKind, ctx: &'a StepContext) -> StepFuture<'a> {
    (of(kind).run)(kind, ctx)
}

/// The preview's read-only look-ups for a step.
pub fn probe_step<'a>(kind: &'a StepKind, scope: Probe<'a>) -> ProbeFuture<'a> {
    (of(kind).probe)(kind, scope)
}

/// What [`probe_step`] would read, when it may not.
pub fn reads_of(kind: &StepKind) -> Option<&'static str> {
    (of(kind).reads)(kind)
}

/// The JSON Schema of a step: one alternative per step type, each with the common keys, a
/// `type` constant and that type's parameters, and no other keys.
impl JsonSchema for crate::plan::model::StepDef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let common = crate::plan::model::Common::json_schema(generator);
        let mut variants = Vec::new();
        for registration in TYPES {
            let type_name = registration.name;
            let params = registration.schema(generator);
            let mut properties = serde_json::Map::new();
            let mut required = vec![Value::from("id"), Value::from("type")];
            for schema in [&common, &params] {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    properties.extend(props.clone());
                }
            }
            if let Some(req) = params.get("required").and_then(Value::as_array) {
                required.extend(req.iter().cloned());
            }
            properties.insert("type".into(), serde_json::json!({ "const": type_name }));
            let description = params.get("description").cloned().unwrap_or(Value::Null);
            let mut variant = serde_json::json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            });
            if !description.is_null() {
                variant["description"] = description;
            }
            variants.push(variant);
        }
        schemars::json_schema!({ "oneOf": variants })
    }
}
