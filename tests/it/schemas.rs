//! The checked-in JSON Schemas must match the ones generated from the Rust types.
//! After changing the plan or report types: `cargo run -- schema plan > schemas/plan.schema.json`
//! (and likewise `report`).

use std::path::Path;

fn check(name: &str, generated: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "{} is out of date; regenerate it with `cargo run -- schema {}` > {}",
        path.display(),
        name.split('.').next().unwrap(),
        path.display()
    );
}

#[test]
fn plan_schema_is_current() {
    check("plan.schema.json", opsrunner::schema::plan_schema());
}

#[test]
fn report_schema_is_current() {
    check("report.schema.json", opsrunner::schema::report_schema());
}

#[test]
fn example_plans_carry_the_schema_line_and_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["plans", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../schemas/plan.schema.json"),
                "{} lacks the schema line",
                path.display()
            );
            let source = opsrunner::plan::PlanSource::read(&path).unwrap();
            if let Err(e) = opsrunner::plan::check(source) {
                panic!("{}", e.render(false));
            }
        }
    }
}
