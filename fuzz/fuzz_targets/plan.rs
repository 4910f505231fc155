//! Any text as a plan file: loading, validation, error rendering and template rendering
//! must never panic and must finish (libFuzzer's timeout and RSS limits catch the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opsrunner::plan::template::Templates;
use opsrunner::plan::{PlanSource, check};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = opsrunner::plan::duration::parse(text);
    match check(PlanSource::from_text("fuzz.yaml", text)) {
        Err(e) => {
            let _ = e.render(false);
        }
        Ok((_, valid)) => {
            let templates = Templates::new();
            let context = serde_json::json!({
                "vars": valid.plan.vars,
                "env": { "HOME": "/root", "DATABASE_URL": "postgres://u:p@h/db" },
                "run": { "id": "r", "started_at": "t", "plan": "p" },
                "steps": {},
            });
            // The resolver preview and apply use: rendering and typing every step and
            // repository with what the run would know.
            for step in &valid.plan.steps {
                let _ = opsrunner::plan::resolve::step(&templates, step, &context);
            }
            for (name, repo) in &valid.plan.repositories {
                let _ = opsrunner::plan::resolve::repository(&templates, name, repo, &context);
            }
            let _ = valid.dag.upstream(valid.plan.steps.len().saturating_sub(1));
        }
    }
});
