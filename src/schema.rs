//! JSON Schemas of the plan file and the run report, generated from the Rust types. The
//! checked-in copies under `schemas/` are compared with these by a test.

use crate::plan::model::Plan;
use crate::run::report::RunReport;

pub fn plan_schema() -> String {
    let schema = schemars::schema_for!(Plan);
    serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n"
}

pub fn report_schema() -> String {
    let schema = schemars::schema_for!(RunReport);
    serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n"
}
