//! Snapshots of the dry-run preview in all three formats, with secrets in the environment
//! that must come out as `***`.

use opsrunner::commands::{self, PlanArgs, PreviewFormat};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "DATABASE_URL".to_string(),
            "postgres://app:pa55word@db.internal:5432/app".to_string(),
        ),
        ("API_TOKEN".to_string(), "tok-very-secret".to_string()),
    ])
}

async fn preview(format: PreviewFormat, confirm: Vec<String>) -> String {
    // A relative path keeps the snapshots independent of where the checkout lives.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let args = PlanArgs {
        file: PathBuf::from("tests/fixtures/preview.yaml"),
        vars: vec![("keep".into(), "14".into())],
        confirm: confirm.clone(),
        color: false,
        limits: Default::default(),
        untrusted: false,
        base: None,
        generated: None,
    };
    let prepared = commands::prepare(&args, fixture_env()).expect("fixture plan is valid");
    let preview = commands::build_preview(&prepared, &confirm).await;
    commands::render_preview(&preview, format)
}

fn assert_no_secrets(text: &str) {
    for secret in ["pa55word", "tok-very-secret"] {
        assert!(!text.contains(secret), "secret {secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn preview_text() {
    let out = preview(PreviewFormat::Text, vec![]).await;
    assert_no_secrets(&out);
    assert!(out.contains("(known after count)"));
    insta::assert_snapshot!(out);
}

#[tokio::test]
async fn preview_markdown() {
    let out = preview(PreviewFormat::Markdown, vec![]).await;
    assert_no_secrets(&out);
    insta::assert_snapshot!(out);
}

#[tokio::test]
async fn preview_json() {
    let out = preview(PreviewFormat::Json, vec!["app".into()]).await;
    assert_no_secrets(&out);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["confirmations_needed"], serde_json::json!([]));
    insta::assert_snapshot!(out);
}
