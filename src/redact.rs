//! Secret tracking. Every value that came from a secret source (environment variables the
//! plan lists under `secrets`, passwords inside URLs) is registered here, and everything
//! opsrunner writes — logs, previews, reports, errors — passes through [`Redactor::redact`].
//!
//! Two ways of masking, because a secret's text alone can be ambiguous. By position: the
//! password of every `scheme://user:password@host` in any text is masked wherever it
//! stands, whatever it is — so a password that is also the user's and the database's name
//! (`postgres://postgres:postgres@db/postgres`) hides the password and nothing else. By
//! text: every occurrence of a registered secret is masked anywhere, but only a secret long
//! enough to be unambiguous and not a word the plan uses openly (a target's, a database's
//! or a role's name); masking such a word would turn every `postgres` in every line into
//! `***` and refuse commands that merely name the database. Those weak secrets are
//! reported by `validate` (see [`Redactor::weak`]) instead of silently doing harm.

use std::sync::{Arc, RwLock};

pub const MASK: &str = "***";

/// The fewest characters a secret needs to be masked wherever its text appears.
pub const MIN_FREE_TEXT: usize = 4;

/// A shared, growing set of secret strings. Cloning shares the set.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    secrets: Arc<RwLock<Vec<String>>>,
    /// Words the plan uses openly: names of targets, roles, databases, hosts.
    open: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a word the plan uses openly (a role's, a database's, a host's name): a
    /// secret equal to it is masked by position only (see the module's documentation).
    pub fn add_open(&self, word: &str) {
        if word.is_empty() {
            return;
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        if !open.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            open.push(word.to_string());
        }
    }

    /// Registers the role, host and database of every PostgreSQL URL in `text` as open
    /// words: previews show them (only the password is masked). Other URLs add nothing —
    /// a webhook's user name may well be its token.
    pub fn add_url_names(&self, text: &str) {
        for word in text.split_whitespace() {
            let Ok(url) = url::Url::parse(word) else {
                continue;
            };
            if !matches!(url.scheme(), "postgres" | "postgresql") {
                continue;
            }
            self.add_open(&percent_decode(url.username()));
            if let Some(host) = url.host_str() {
                self.add_open(host);
            }
            if let Some(segment) = url.path_segments().and_then(|mut s| s.next()) {
                self.add_open(&percent_decode(segment));
            }
        }
    }

    /// Why `secret` is not masked wherever its text appears, if it is not.
    pub fn weakness(&self, secret: &str) -> Option<String> {
        let n = secret.chars().count();
        if n < MIN_FREE_TEXT {
            return Some(format!(
                "it is {n} character{} long (fewer than {MIN_FREE_TEXT})",
                if n == 1 { "" } else { "s" }
            ));
        }
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .find(|w| w.eq_ignore_ascii_case(secret))
            .map(|w| format!("it is also a name the plan uses openly (`{w}`)"))
    }

    /// The registered secrets that are masked only by position, each with why; for
    /// `validate`, which reports them once, the values themselves never shown.
    pub fn weak(&self) -> Vec<String> {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        secrets.iter().filter_map(|s| self.weakness(s)).collect()
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

    /// Registers a URL that is a secret as a whole (a webhook's, one the plan lists under
    /// `secrets:`) together with its parts, since a server may echo any of them back in
    /// text we did not write ("Cannot POST /services/T0/B0/xyz"): the user info, the path
    /// with and without the query, the query, and every path segment and query value that
    /// may be a token (see [`may_be_token`]), each as written and percent-decoded.
    pub fn add_url_parts(&self, text: &str) {
        for part in url_secret_parts(text) {
            self.add(&part);
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = mask_url_passwords(text);
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) && self.weakness(secret).is_none() {
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
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
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

/// The values to redact for a credential variable: its value, and in a connection string
/// (`Name=value;…`, Azure's) the values of its keys and signatures on their own, which a
/// program may print without the rest.
pub fn credential_values(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    for part in value.split(';') {
        if let Some((name, secret)) = part.split_once('=') {
            let name = name.trim().to_ascii_lowercase();
            if (name.contains("key") || name.contains("signature") || name.contains("password"))
                && secret.trim().chars().count() >= 4
            {
                out.push(secret.trim().to_string());
            }
        }
    }
    out
}

/// What [`Redactor::add_url_parts`] registers for a secret URL: the URL, its password,
/// and those of its parts that may be a token, as written and percent-decoded.
pub fn url_secret_parts(text: &str) -> Vec<String> {
    let mut out = vec![text.to_string()];
    for password in url_passwords(text) {
        out.push(percent_decode(&password));
        out.push(password);
    }
    let Ok(url) = url::Url::parse(text.trim()) else {
        return out;
    };
    if url.cannot_be_a_base() {
        return out;
    }
    let mut parts: Vec<String> = Vec::new();
    if !url.username().is_empty() {
        parts.push(url.username().to_string());
    }
    if let Some(password) = url.password() {
        parts.push(password.to_string());
    }
    if url.path() != "/" && !url.path().is_empty() {
        parts.push(url.path().to_string());
        if let Some(query) = url.query() {
            parts.push(format!("{}?{query}", url.path()));
        }
    }
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        parts.push(query.to_string());
        for pair in query.split('&') {
            parts.push(pair.split_once('=').map_or(pair, |(_, v)| v).to_string());
        }
    }
    if let Some(fragment) = url.fragment().filter(|f| !f.is_empty()) {
        parts.push(fragment.to_string());
    }
    parts.extend(
        url.path_segments()
            .into_iter()
            .flatten()
            .map(str::to_string),
    );
    for part in parts.iter().filter(|p| may_be_token(p)) {
        out.push(part.clone());
        out.push(percent_decode(part));
        out.push(percent_decode(&part.replace('+', " ")));
    }
    out.retain(|p| !p.is_empty());
    out.dedup();
    out
}

/// Whether a part of a secret URL is masked wherever it appears. A token is at least four
/// characters; a lowercase word (`hooks`, `services`, `api-v`) is the service's own
/// vocabulary and would mask half of every log, so it is masked only when it is long
/// enough to be random (20 characters or more). A path (`/a/b`) is always a candidate.
fn may_be_token(part: &str) -> bool {
    if part.chars().count() < 4 {
        return false;
    }
    let word = part
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_');
    part.contains('/') || !word || part.chars().count() >= 20
}

/// Masks the password of every `scheme://user:password@` in a text, by its position.
pub fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for range in password_ranges(text).into_iter().filter(|r| !r.is_empty()) {
        out.push_str(&text[from..range.start]);
        out.push_str(MASK);
        from = range.end;
    }
    out.push_str(&text[from..]);
    out
}

/// Finds `user:password@` in every `scheme://` URL of a text.
fn url_passwords(text: &str) -> Vec<String> {
    password_ranges(text)
        .into_iter()
        .map(|r| text[r].to_string())
        .collect()
}

/// Where the password of every `scheme://user:password@` URL in a text is (possibly
/// empty), in order: what masking and registering passwords both read.
fn password_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(pos) = text[start..].find("://") {
        let after = start + pos + 3;
        let rest = &text[after..];
        let authority_end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            found.push(after + colon + 1..after + at);
        }
        start = after;
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
    fn an_azure_account_key_is_masked_alone_and_within_its_connection_string() {
        assert!(is_credential_name("AZURE_STORAGE_KEY"));
        assert!(is_credential_name("AZURE_STORAGE_CONNECTION_STRING"));
        let text = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5PT0=;EndpointSuffix=core.windows.net";
        let r = Redactor::new();
        for secret in credential_values(text) {
            r.add(&secret);
        }
        assert_eq!(r.redact(text), "***");
        assert_eq!(r.redact("key c2VjcmV0a2V5PT0= leaked"), "key *** leaked");
        assert_eq!(r.redact("account acct"), "account acct");
    }

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
    fn a_secret_urls_parts_are_masked_wherever_they_appear() {
        let r = Redactor::new();
        r.add_url_parts(
            "https://bot:pa55@hooks.example.com/services/T0KEN-1/XyZ987abc?sig=a%2Fb-c9&mode=full#frag-77",
        );
        for echoed in [
            "Cannot POST /services/T0KEN-1/XyZ987abc?sig=a%2Fb-c9&mode=full",
            "unknown token XyZ987abc",
            "bad signature a/b-c9",
            "bad signature a%2Fb-c9",
            "user bot / pa55",
            "anchor frag-77",
        ] {
            let shown = r.redact(echoed);
            for part in [
                "T0KEN-1",
                "XyZ987abc",
                "a/b-c9",
                "a%2Fb-c9",
                "pa55",
                "frag-77",
            ] {
                assert!(!shown.contains(part), "{echoed} -> {shown}");
            }
        }
        // The service's own words stay readable.
        assert_eq!(r.redact("services mode full"), "services mode full");
    }

    #[test]
    fn a_password_equal_to_the_user_and_database_masks_only_the_password() {
        let r = Redactor::new();
        let url = "postgres://postgres:postgres@db.internal:5432/postgres";
        r.add_url_passwords(url);
        r.add_url_names(url);
        assert_eq!(
            r.redact(&format!("target app: {url}")),
            "target app: postgres://postgres:***@db.internal:5432/postgres"
        );
        assert_eq!(
            r.redact("using /usr/lib/postgresql/15/bin/pg_dump"),
            "using /usr/lib/postgresql/15/bin/pg_dump"
        );
        assert_eq!(r.weak().len(), 1, "{:?}", r.weak());
        assert!(r.weak()[0].contains("`postgres`"), "{:?}", r.weak());
    }

    #[test]
    fn a_one_character_secret_masks_nothing_by_text_and_is_reported() {
        let r = Redactor::new();
        r.add("7");
        assert_eq!(
            r.redact("restored 17 tables in 7 s"),
            "restored 17 tables in 7 s"
        );
        assert_eq!(
            r.weak(),
            vec!["it is 1 character long (fewer than 4)".to_string()]
        );
        // In a URL's password it is masked all the same, by position.
        assert_eq!(r.redact("postgres://u:7@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn any_url_password_is_masked_by_position() {
        assert_eq!(
            mask_url_passwords("a s3://k:v@b/x and postgres://u:p%40ss@h:1/d?x=1 end"),
            "a s3://k:***@b/x and postgres://u:***@h:1/d?x=1 end"
        );
        assert_eq!(mask_url_passwords("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(mask_url_passwords("no url"), "no url");
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
