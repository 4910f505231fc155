//! Secret tracking. Every value that came from a secret source (environment variables the
//! plan lists under `secrets`, passwords inside URLs) is registered here, and everything
//! opsrunner writes — logs, previews, reports, errors — passes through [`Redactor::redact`].

use std::sync::{Arc, RwLock};

pub const MASK: &str = "***";

/// A shared, growing set of secret strings. Cloning shares the set.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    secrets: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a secret value. Empty strings are ignored: they would match everywhere.
    pub fn add(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_string());
            // Longest first, so that a secret containing another is masked whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Registers the password of every `scheme://user:password@host` URL inside `text`, both
    /// as written and percent-decoded, since either form may show up in an error.
    pub fn add_url_passwords(&self, text: &str) {
        for password in url_passwords(text) {
            self.add(&percent_decode(&password));
            self.add(&password);
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        let mut out = text.to_string();
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    /// Redacts every string inside a JSON value.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }
}

/// Environment variables that hold credentials whatever the plan declares: PostgreSQL's and
/// AWS's by name, and any whose name says it is a secret. Their values are redacted
/// everywhere, even when a step prints them.
pub fn is_credential_name(name: &str) -> bool {
    const ALWAYS: &[&str] = &[
        "PGPASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
    ];
    const MARKS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "PRIVATE_KEY",
        "API_KEY",
        "CREDENTIAL",
    ];
    let upper = name.to_ascii_uppercase();
    ALWAYS.contains(&upper.as_str()) || MARKS.iter().any(|m| upper.contains(m))
}

/// Finds `user:password@` in every `scheme://` URL of a text.
fn url_passwords(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let after = &rest[pos + 3..];
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                found.push(userinfo[colon + 1..].to_string());
            }
        }
        rest = after;
    }
    found
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords_raw_and_decoded() {
        let r = Redactor::new();
        r.add_url_passwords("postgres://app:s%40cret@db:5432/app");
        assert_eq!(
            r.redact("postgres://app:s%40cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(r.redact("password s@cret failed"), "password *** failed");
    }

    #[test]
    fn urls_without_password_add_nothing() {
        let r = Redactor::new();
        r.add_url_passwords("postgres://app@db/app s3://bucket/x");
        assert_eq!(r.redact("app bucket"), "app bucket");
    }

    #[test]
    fn redacts_nested_json() {
        let r = Redactor::new();
        r.add("hunter2");
        let mut v = serde_json::json!({"a": ["x hunter2 y"], "b": {"c": "hunter2"}});
        r.redact_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["x *** y"], "b": {"c": "***"}}));
    }
}
