//! `webhook`: one HTTP request to an alerting or chat service, in-process (the URL, which
//! usually carries a token, never appears on a command line or in any output).

use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// `webhook`: an HTTP request to an alerting or chat service (Slack-compatible hooks, a
/// generic JSON receiver). The URL usually carries a token: it is treated as a secret,
/// never shown and never on a command line.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookParams {
    /// The URL, usually `{{ env.ALERT_WEBHOOK }}`.
    pub url: String,
    /// The HTTP method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers; values are secrets too (an `Authorization` token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body: any YAML value, its strings rendered, sent as `application/json`
    /// (a value with quotes or newlines stays valid JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

fn default_method() -> String {
    "POST".into()
}

pub struct Webhook;

impl StepType for Webhook {
    const NAME: &'static str = "webhook";
    type Params = WebhookParams;
    const OUTPUTS: &'static [&'static str] = &["status"];

    fn secrets(p: &WebhookParams) -> Vec<String> {
        secrets(p)
    }

    fn describe(p: &WebhookParams) -> String {
        describe(p)
    }

    fn run(
        p: &WebhookParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// How long one request may take when the step has no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The URL without its path and query, where tokens live: `https://hooks.slack.com/…`.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default())
        }
        _ => "(a URL)".into(),
    }
}

pub fn describe(p: &WebhookParams) -> String {
    format!(
        "{} a JSON message to {} (the full URL is a secret)",
        p.method.to_uppercase(),
        shown_url(&p.url)
    )
}

/// The values a webhook step holds that must never be shown: its URL with every part of
/// it that may be a token (a receiver may echo its path back), and the header values.
pub fn secrets(p: &WebhookParams) -> Vec<String> {
    crate::redact::url_secret_parts(&p.url)
        .into_iter()
        .chain(p.headers.values().cloned())
        .collect()
}

/// The most of a receiver's answer read for an error message, and the most shown of it.
const ANSWER_READ_LIMIT: usize = 64 * 1024;
const ANSWER_SHOWN_CHARS: usize = 300;

pub async fn run(p: &WebhookParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    for secret in secrets(p) {
        ctx.redactor().add(&secret);
    }
    let method = hyper::Method::from_bytes(p.method.to_uppercase().as_bytes())
        .map_err(|_| StepError::permanent(format!("`{}` is not an HTTP method", p.method)))?;
    let uri: hyper::Uri = p
        .url
        .parse()
        .map_err(|_| StepError::permanent("the webhook URL is not a valid URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(StepError::permanent(
            "the webhook URL must start with https:// (or http://)",
        ));
    }
    let body = match &p.body {
        Some(v) => serde_json::to_vec(v).expect("JSON values serialize"),
        None => Vec::new(),
    };
    let mut request = hyper::Request::builder().method(method).uri(uri).header(
        "user-agent",
        concat!("opsrunner/", env!("CARGO_PKG_VERSION")),
    );
    if p.body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in &p.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| StepError::permanent(format!("cannot build the request: {e}")))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| {
            StepError::permanent(format!("cannot load the system's CA certificates: {e}"))
        })?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(https);
    let limit = ctx.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        // Read a bounded part of the answer for the error message; receivers explain there.
        let mut incoming = response.into_body();
        let mut body = Vec::new();
        while body.len() < ANSWER_READ_LIMIT {
            match incoming.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        body.extend_from_slice(&data[..data.len().min(ANSWER_READ_LIMIT)]);
                    }
                }
                _ => break,
            }
        }
        Ok::<_, hyper_util::client::legacy::Error>((status, body))
    };
    let (status, answer) = tokio::select! {
        result = tokio::time::timeout(limit, exchange) => match result {
            Ok(Ok(done)) => done,
            // Connection trouble may pass: the step's retry policy decides.
            Ok(Err(e)) => return Err(StepError::transient(format!("the webhook could not be reached: {}", crate::diag::error_chain(&e)))),
            Err(_) => return Err(StepError::transient(format!(
                "the webhook did not answer within {}",
                crate::plan::duration::format(limit)
            ))),
        },
        _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
    };
    let mut outputs = Outputs::new();
    outputs.insert("status".into(), status.as_u16().to_string());
    if status.is_success() {
        return Ok(outputs);
    }
    // Redacted whole before it is cut: a cut first could leave the first half of a token.
    let text = shown_answer(&ctx.redactor().redact(&String::from_utf8_lossy(&answer)));
    let message = format!(
        "the webhook answered HTTP {}{}",
        status.as_u16(),
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    );
    // A busy or failing receiver may recover; a refused request will be refused again.
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Err(StepError::transient(message))
    } else {
        Err(StepError::permanent(message))
    }
}

/// A receiver's answer (already redacted) on one line, at most [`ANSWER_SHOWN_CHARS`].
fn shown_answer(redacted: &str) -> String {
    let one_line: String = redacted.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(ANSWER_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}
