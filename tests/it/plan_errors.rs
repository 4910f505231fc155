//! Every bad plan under `tests/bad_plans/` must be rejected, and the rendered errors (file,
//! line, column, key path, the offending line with a caret, help) are snapshot-tested.

use opsrunner::plan::{self, PlanSource};
use std::path::Path;

fn render(path: &Path) -> String {
    let source = PlanSource::read(path).expect("fixture is readable");
    match plan::check(source) {
        Ok(_) => panic!("{} was accepted but must be rejected", path.display()),
        Err(e) => e.render(false),
    }
}

#[test]
fn bad_plans_are_rejected_with_located_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_plans");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "at least 20 bad plans, found {}",
        files.len()
    );
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        // Relative display path so the snapshots do not depend on the checkout location.
        let shown = format!("tests/bad_plans/{name}.yaml");
        let rendered = render(&file).replace(&file.display().to_string(), &shown);
        assert!(rendered.contains(&shown), "{name}: error names the file");
        insta::assert_snapshot!(name, rendered);
    }
}

#[test]
fn all_problems_are_reported_together() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_plans/several_problems.yaml");
    let rendered = render(&file);
    for expected in [
        "invalid duration",
        "unknown step type `shel`",
        "unknown key `comand`",
    ] {
        assert!(
            rendered.contains(expected),
            "missing `{expected}` in:\n{rendered}"
        );
    }
}
