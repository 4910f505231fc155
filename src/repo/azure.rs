//! A repository in Azure Blob Storage: `azure://CONTAINER/PREFIX` with blobs
//! `<prefix>/<key>`. Files stream up as block blobs — blocks of `part_size_mib` (default
//! 16 MiB), at most two uploading at once, committed by one block list when the file is
//! complete, so memory is bounded and nothing is visible before the commit; a file smaller
//! than one block is one Put Blob. After the commit the blob's size is compared with what
//! was sent. Leases and WAL use Azure's conditional requests (`If-None-Match: *`,
//! `If-Match`), deletes included.
//!
//! The account comes from the standard variables, never from the plan:
//! `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY`
//! (Shared Key authorization); the plan's `endpoint` overrides the service's address
//! (Azurite, sovereign clouds).
//!
//! Why not a client crate: the official `azure_storage_blob` authorizes only with Entra ID
//! tokens (no account key, so no Azurite and none of the standard variables above), the
//! community `azure_storage_blobs` it replaced is no longer maintained, and `object_store`
//! cannot delete conditionally (a lease must be released only while it is ours) and
//! brings a second HTTP stack. The REST calls used here are few and stable; they go through
//! the HTTP client the webhook step already uses, signed with HMAC-SHA256.

use super::parts::{Msg, PartPool, PartSink, SMALL_READ_ATTEMPTS, STALL_TIMEOUT, StallGuard};
use super::store::{
    BoxFuture, Condition, FileSink, Listed, OpenError, Reader, Small, Stat, Store, UrlProblem,
    check_key, check_prefix,
};
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

/// Block size when the plan sets no `part_size_mib`.
pub const DEFAULT_BLOCK_SIZE: usize = 16 * 1024 * 1024;
const BLOCKS_IN_FLIGHT: usize = 2;
/// Attempts per request: 5xx, 408, 429, timeouts and dropped connections are tried again,
/// with a growing pause; nothing else is.
const MAX_ATTEMPTS: u32 = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take to begin, for a request without a body.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest upload before its attempt counts as hung: 256 KiB/s.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;
/// The REST API version the requests are written for.
const API_VERSION: &str = "2021-12-02";
/// Azurite's well-known development account (`UseDevelopmentStorage=true`); public.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// `azure://container/prefix`.
pub const BACKEND: super::store::Backend = super::store::Backend {
    scheme: "azure",
    example: "azure://container/prefix",
    url_problem,
    open: |definition, _| {
        Box::pin(async move {
            let options = AzureOptions {
                endpoint: definition.endpoint.clone(),
                block_size: definition.part_size_mib.map(|m| m as usize * 1024 * 1024),
                account: None,
            };
            let store: Arc<dyn Store> = Arc::new(AzureStore::connect(&definition.url, options)?);
            Ok(store)
        })
    },
    describe: |definition| {
        let block = definition
            .part_size_mib
            .map_or(DEFAULT_BLOCK_SIZE, |m| m as usize * 1024 * 1024);
        vec![format!(
            "Azure block blob, {} MiB blocks, {BLOCKS_IN_FLIGHT} uploading at once",
            block >> 20
        )]
    },
};

/// What is wrong with an `azure://` URL, said without echoing it.
fn url_problem(url: &str) -> Option<UrlProblem> {
    let rest = url.strip_prefix("azure://")?;
    let container = rest.split('/').next().unwrap_or_default();
    if container.contains('@') || container.contains(':') {
        return Some(UrlProblem::Credentials(
            "the Azure URL carries credentials".into(),
        ));
    }
    let valid = (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    (!valid).then(|| {
        UrlProblem::Invalid("an Azure container name has 3 to 63 lowercase letters, digits and single hyphens (azure://CONTAINER/PREFIX)".into())
    })
}

/// Settings of an Azure repository besides its URL.
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// The Blob service's address, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    pub block_size: Option<usize>,
    /// The account and its key; `None`: from the environment. Set by tests, which run in
    /// one process and must not change its environment.
    #[doc(hidden)]
    pub account: Option<SharedKey>,
}

/// An account name and its (base64) key.
#[derive(Clone)]
pub struct SharedKey {
    pub account: String,
    pub key: String,
    /// The Blob service's address, when not the public cloud's.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedKey({}, ***)", self.account)
    }
}

const NO_ACCOUNT: &str = "no Azure account: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY";

impl SharedKey {
    /// The account of the standard variables.
    pub fn from_environment() -> Result<SharedKey, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(text) = var("AZURE_STORAGE_CONNECTION_STRING") {
            return SharedKey::from_connection_string(&text);
        }
        match (var("AZURE_STORAGE_ACCOUNT"), var("AZURE_STORAGE_KEY")) {
            (Some(account), Some(key)) => Ok(SharedKey {
                account,
                key,
                endpoint: None,
            }),
            (Some(_), None) => Err(format!("{NO_ACCOUNT} (AZURE_STORAGE_KEY is not set)")),
            _ => Err(NO_ACCOUNT.into()),
        }
    }

    /// `DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=…` or
    /// `…;BlobEndpoint=…`, or `UseDevelopmentStorage=true` (Azurite's defaults). Errors
    /// name the missing part, never a value.
    pub fn from_connection_string(text: &str) -> Result<SharedKey, String> {
        let mut parts = std::collections::HashMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(
                    "AZURE_STORAGE_CONNECTION_STRING is not `Name=value;…` pairs".to_string(),
                );
            };
            parts.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        if parts
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(SharedKey {
                account: DEV_ACCOUNT.into(),
                key: DEV_KEY.into(),
                endpoint: Some(
                    parts
                        .get("developmentstorageproxyuri")
                        .cloned()
                        .unwrap_or_else(|| DEV_ENDPOINT.into()),
                ),
            });
        }
        let (Some(account), Some(key)) = (parts.get("accountname"), parts.get("accountkey")) else {
            return Err(if parts.contains_key("sharedaccesssignature") {
                "AZURE_STORAGE_CONNECTION_STRING holds a shared access signature; opsrunner needs the account key (AccountName and AccountKey)".into()
            } else {
                "AZURE_STORAGE_CONNECTION_STRING lacks AccountName or AccountKey".into()
            });
        };
        let endpoint = parts.get("blobendpoint").cloned().or_else(|| {
            let protocol = parts
                .get("defaultendpointsprotocol")
                .map_or("https", String::as_str);
            parts
                .get("endpointsuffix")
                .map(|suffix| format!("{protocol}://{account}.blob.{suffix}"))
        });
        Ok(SharedKey {
            account: account.clone(),
            key: key.clone(),
            endpoint,
        })
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A repository in one container of one account.
#[derive(Clone)]
pub struct AzureStore {
    shared: Arc<Shared>,
}

struct Shared {
    http: HttpClient,
    /// `https://account.blob.core.windows.net`, without a trailing slash.
    endpoint: String,
    /// The endpoint's path (`/devstoreaccount1` for Azurite), part of what is signed.
    endpoint_path: String,
    account: String,
    /// The decoded account key. Never printed.
    key: Vec<u8>,
    container: String,
    /// `""` or `prefix/`.
    prefix: String,
    block_size: usize,
    parts: Arc<PartPool>,
}

/// One REST call, before it is signed.
struct Call<'a> {
    method: Method,
    /// The blob (its full name in the container), or `None` for a call on the container.
    blob: Option<&'a str>,
    /// Query parameters, sorted by name (they are signed in that order).
    query: Vec<(&'static str, String)>,
    /// Headers besides date, version, length and authorization.
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl<'a> Call<'a> {
    fn new(method: Method, blob: Option<&'a str>) -> Call<'a> {
        Call {
            method,
            blob,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self.query.sort_by(|a, b| a.0.cmp(b.0));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn condition(self, condition: Condition<'_>) -> Self {
        match condition {
            Condition::Always => self,
            Condition::Absent => self.header("if-none-match", "*"),
            Condition::Matches(tag) => self.header("if-match", tag),
        }
    }

    fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// Characters left as they are in a blob's path (the rest is percent-encoded).
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl AzureStore {
    /// `azure://container/prefix`, with the account of `options` or the environment.
    /// Nothing is contacted.
    pub fn connect(url: &str, options: AzureOptions) -> Result<AzureStore, OpenError> {
        use base64::Engine as _;
        let rest = url
            .strip_prefix("azure://")
            .ok_or_else(|| OpenError::Definition(format!("`{url}` is not an azure:// URL")))?;
        match url_problem(url) {
            Some(UrlProblem::Credentials(_)) => return Err(OpenError::CredentialsInUrl),
            Some(UrlProblem::Invalid(problem)) => return Err(OpenError::Definition(problem)),
            None => {}
        }
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let account = match options.account {
            Some(account) => account,
            None => SharedKey::from_environment().map_err(OpenError::Definition)?,
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(account.key.trim())
            .map_err(|_| {
                OpenError::Definition("the Azure account key is not valid base64".into())
            })?;
        let endpoint = options
            .endpoint
            .or(account.endpoint)
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", account.account));
        let parsed = url::Url::parse(&endpoint).map_err(|e| {
            OpenError::Definition(format!("the Azure endpoint `{endpoint}` is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(OpenError::Definition(format!(
                "the Azure endpoint must be an http:// or https:// address without credentials, not `{}://…`",
                parsed.scheme()
            )));
        }
        let endpoint_path = parsed.path().trim_end_matches('/').to_string();
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| {
                OpenError::Definition(format!("cannot load the system's CA certificates: {e}"))
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        let prefix = prefix.trim_matches('/');
        Ok(AzureStore {
            shared: Arc::new(Shared {
                http,
                endpoint: endpoint.trim_end_matches('/').to_string(),
                endpoint_path,
                account: account.account,
                key,
                container: container.to_string(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                block_size: options
                    .block_size
                    .unwrap_or(DEFAULT_BLOCK_SIZE)
                    .max(64 * 1024),
                parts: Arc::new(PartPool::new(BLOCKS_IN_FLIGHT)),
            }),
        })
    }

    /// Creates the container (tests; a repository's container is made by its owner).
    #[doc(hidden)]
    pub async fn create_container(&self) -> io::Result<()> {
        let call = Call::new(Method::PUT, None).query("restype", "container");
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::CONFLICT => Ok(()),
            _ => Err(self.failure("creating the container", None, response).await),
        }
    }

    fn blob_name(&self, key: &str) -> String {
        format!("{}{key}", self.shared.prefix)
    }

    fn blob_location(&self, blob: &str) -> String {
        format!("azure://{}/{blob}", self.shared.container)
    }

    /// The signed request of one attempt of `call`.
    fn request(&self, call: &Call<'_>) -> io::Result<hyper::Request<Full<Bytes>>> {
        use base64::Engine as _;
        use hmac::{KeyInit as _, Mac as _};
        let s = &*self.shared;
        let mut path = format!("/{}", s.container);
        if let Some(blob) = call.blob {
            path.push('/');
            path.push_str(&percent_encoding::utf8_percent_encode(blob, PATH).to_string());
        }
        let query: Vec<String> = call
            .query
            .iter()
            .map(|(name, value)| {
                format!(
                    "{name}={}",
                    percent_encoding::utf8_percent_encode(value, QUERY)
                )
            })
            .collect();
        let mut uri = format!("{}{path}", s.endpoint);
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query.join("&"));
        }
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let length = call.body.len();
        let mut ms_headers: Vec<(&str, &str)> =
            vec![("x-ms-date", &date), ("x-ms-version", API_VERSION)];
        ms_headers.extend(
            call.headers
                .iter()
                .filter(|(n, _)| n.starts_with("x-ms-"))
                .map(|(n, v)| (*n, v.as_str())),
        );
        ms_headers.sort_by(|a, b| a.0.cmp(b.0));
        let standard = |name: &str| {
            call.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, v)| v.as_str())
        };
        // Shared Key authorization (the Blob service's string to sign, version 2015-02-21
        // and later: an empty Content-Length when there is no body).
        let mut to_sign = format!(
            "{}\n\n\n{}\n\n{}\n\n\n{}\n{}\n\n{}\n",
            call.method.as_str(),
            if length == 0 {
                String::new()
            } else {
                length.to_string()
            },
            standard("content-type"),
            standard("if-match"),
            standard("if-none-match"),
            standard("range"),
        );
        for (name, value) in &ms_headers {
            to_sign.push_str(&format!("{name}:{}\n", value.trim()));
        }
        to_sign.push_str(&format!("/{}{}{path}", s.account, s.endpoint_path));
        for (name, value) in &call.query {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&s.key)
            .expect("HMAC takes keys of any length");
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut request = hyper::Request::builder()
            .method(call.method.clone())
            .uri(&uri)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header(
                "authorization",
                format!("SharedKey {}:{signature}", s.account),
            )
            .header(
                "user-agent",
                concat!("opsrunner/", env!("CARGO_PKG_VERSION")),
            );
        if call.method == Method::PUT || length > 0 {
            request = request.header("content-length", length);
        }
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        request
            .body(Full::new(call.body.clone()))
            .map_err(|e| io::Error::other(format!("cannot build a request for {uri}: {e}")))
    }

    /// Sends `call`, trying again what may pass (see [`MAX_ATTEMPTS`]); the answer of the
    /// last attempt, whatever its status, is the caller's to judge.
    async fn send(&self, call: &Call<'_>) -> io::Result<Response<Incoming>> {
        let limit = ANSWER_TIMEOUT.max(Duration::from_secs(
            call.body.len() as u64 / SLOWEST_UPLOAD_BYTES_PER_SEC,
        ));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.request(call)?;
            let problem = match tokio::time::timeout(limit, self.shared.http.request(request)).await
            {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let passing = matches!(status.as_u16(), 408 | 429 | 500..=599);
                    if !passing || attempt >= MAX_ATTEMPTS {
                        return Ok(response);
                    }
                    format!("answered {status}")
                }
                Ok(Err(e)) => {
                    let text = format!(
                        "cannot reach the Azure Blob service at {}: {}",
                        self.shared.endpoint,
                        crate::diag::error_chain(&e)
                    );
                    if attempt >= MAX_ATTEMPTS {
                        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, text));
                    }
                    text
                }
                Err(_) => {
                    let text = format!(
                        "the Azure Blob service at {} did not answer within {}s",
                        self.shared.endpoint,
                        limit.as_secs()
                    );
                    if attempt >= MAX_ATTEMPTS {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, text));
                    }
                    text
                }
            };
            let pause = Duration::from_millis((100u64 << attempt.min(7)).min(10_000))
                + Duration::from_millis(fastrand::u64(0..100));
            tracing::debug!(
                "Azure {} {}: {problem}; attempt {attempt} of {MAX_ATTEMPTS}, again in {}ms",
                call.method,
                call.blob.unwrap_or(""),
                pause.as_millis()
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// An answer that is not the one hoped for, as an error naming what was done, where,
    /// and what the service said.
    async fn failure(
        &self,
        what: &str,
        blob: Option<&str>,
        response: Response<Incoming>,
    ) -> io::Error {
        let status = response.status();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = Vec::new();
        let mut incoming = response.into_body();
        while body.len() < 16 * 1024 {
            match incoming.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        body.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&body);
        let message = xml_field(&text, "Message")
            .map(|m| m.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let place = match blob {
            Some(blob) => self.blob_location(blob),
            None => format!("azure://{}", self.shared.container),
        };
        let mut said = status.to_string();
        if !code.is_empty() {
            said.push_str(&format!(" {code}"));
        }
        if !message.is_empty() {
            said.push_str(&format!(": {message}"));
        }
        if code == "ContainerNotFound" {
            said.push_str(" (create the container first; opsrunner does not create it)");
        }
        let kind = match status.as_u16() {
            401 | 403 => io::ErrorKind::PermissionDenied,
            404 => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(
            kind,
            format!("Azure: {what} {place} at {}: {said}", self.shared.endpoint),
        )
    }

    /// Put Blob: `bytes` as the whole blob, if `condition` holds (`None` when it did not).
    async fn put_blob(
        &self,
        blob: &str,
        bytes: Bytes,
        condition: Condition<'_>,
    ) -> io::Result<Option<String>> {
        let call = Call::new(Method::PUT, Some(blob))
            .header("x-ms-blob-type", "BlockBlob")
            .condition(condition)
            .body(bytes);
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::CREATED => Ok(Some(etag(&response))),
            // 409: the blob exists (If-None-Match), or another writer holds it at this moment.
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT | StatusCode::NOT_FOUND
                if condition != Condition::Always =>
            {
                Ok(None)
            }
            _ => Err(self.failure("writing", Some(blob), response).await),
        }
    }

    async fn delete_blob(&self, blob: &str, condition: Condition<'_>) -> io::Result<bool> {
        let call = Call::new(Method::DELETE, Some(blob)).condition(condition);
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(condition == Condition::Always),
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT
                if condition != Condition::Always =>
            {
                Ok(false)
            }
            _ => Err(self.failure("deleting", Some(blob), response).await),
        }
    }

    async fn head(&self, blob: &str) -> io::Result<Option<Stat>> {
        let response = self.send(&Call::new(Method::HEAD, Some(blob))).await?;
        match response.status() {
            StatusCode::OK => Ok(Some(stat_of(&response))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure("looking up", Some(blob), response).await),
        }
    }

    /// Every blob whose name starts with `prefix` (the container's names), committed ones,
    /// or with `uncommitted` also those that have only uncommitted blocks.
    async fn list_blobs(&self, prefix: &str, uncommitted: bool) -> io::Result<Vec<(String, Stat)>> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let mut call = Call::new(Method::GET, None)
                .query("restype", "container")
                .query("comp", "list")
                .query("maxresults", "5000");
            if !prefix.is_empty() {
                call = call.query("prefix", prefix);
            }
            if !marker.is_empty() {
                call = call.query("marker", marker.clone());
            }
            if uncommitted {
                call = call.query("include", "uncommittedblobs");
            }
            let response = self.send(&call).await?;
            if response.status() != StatusCode::OK {
                return Err(self.failure("listing", None, response).await);
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| io::Error::other(format!("reading a listing: {e}")))?
                .to_bytes();
            let page = parse_listing(&String::from_utf8_lossy(&body))
                .map_err(|e| io::Error::other(format!("Azure: an unreadable listing: {e}")))?;
            out.extend(page.blobs);
            match page.next_marker {
                Some(next) if !next.is_empty() => marker = next,
                _ => break,
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Blobs under `prefix` (repository keys) that have only uncommitted blocks: uploads
    /// that never finished.
    async fn uncommitted(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        let full = self.blob_name(prefix);
        let committed: std::collections::BTreeSet<String> = self
            .list_blobs(&full, false)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok(self
            .list_blobs(&full, true)
            .await?
            .into_iter()
            .filter(|(name, _)| !committed.contains(name))
            .filter_map(|(name, stat)| self.listed(&name, stat))
            .collect())
    }

    /// A listed blob as the repository's object: its key below the prefix.
    fn listed(&self, name: &str, stat: Stat) -> Option<Listed> {
        let key = name.strip_prefix(&self.shared.prefix)?.to_string();
        Some(Listed {
            key,
            stat,
            problem: None,
        })
    }
}

/// An answer's body as a reader that fails when the service stops sending midway.
fn body(response: Response<Incoming>) -> impl tokio::io::AsyncRead + Send + Unpin {
    fn broken(e: hyper::Error) -> io::Error {
        io::Error::other(format!("reading from Azure: {e}"))
    }
    let stream = http_body_util::BodyDataStream::new(response.into_body())
        .map_err(broken as fn(hyper::Error) -> io::Error);
    StallGuard::new(tokio_util::io::StreamReader::new(stream), STALL_TIMEOUT)
}

/// The blob's ETag, as `If-Match` wants it (quoted).
fn etag(response: &Response<Incoming>) -> String {
    quoted(
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    )
}

/// Listings give ETags without quotes, answers' headers with them: one form for both.
fn quoted(tag: &str) -> String {
    if tag.starts_with('"') || tag.is_empty() {
        tag.to_string()
    } else {
        format!("\"{tag}\"")
    }
}

fn stat_of(response: &Response<Incoming>) -> Stat {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    Stat {
        size: header("content-length").parse().unwrap_or(0),
        modified: http_time(header("last-modified")),
        tag: etag(response),
    }
}

/// `Mon, 07 Dec 2026 13:31:26 GMT`.
fn http_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc2822(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The first `<name>` element's text in a small XML answer (an error's message).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

struct ListingPage {
    blobs: Vec<(String, Stat)>,
    next_marker: Option<String>,
}

/// A List Blobs answer: `<EnumerationResults><Blobs><Blob><Name>…</Name><Properties>
/// <Last-Modified>…</Last-Modified><Etag>…</Etag><Content-Length>…</Content-Length>…`,
/// then `<NextMarker>`.
fn parse_listing(xml: &str) -> Result<ListingPage, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut page = ListingPage {
        blobs: Vec::new(),
        next_marker: None,
    };
    let mut name = String::new();
    let mut stat = Stat {
        size: 0,
        modified: None,
        tag: String::new(),
    };
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::CData(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => {
                let entity = r.decode().map_err(|e| e.to_string())?;
                match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => text.push(c),
                    None => text.push_str(
                        quick_xml::escape::resolve_predefined_entity(&entity)
                            .ok_or_else(|| format!("unknown entity &{entity};"))?,
                    ),
                }
            }
            Event::End(_) => {
                let element = path.join("/");
                match element.as_str() {
                    "EnumerationResults/Blobs/Blob/Name" => name = std::mem::take(&mut text),
                    "EnumerationResults/Blobs/Blob/Properties/Content-Length" => {
                        stat.size = text.trim().parse().map_err(|_| "a bad Content-Length")?;
                    }
                    "EnumerationResults/Blobs/Blob/Properties/Last-Modified" => {
                        stat.modified = http_time(text.trim());
                    }
                    "EnumerationResults/Blobs/Blob/Properties/Etag" => {
                        stat.tag = quoted(text.trim())
                    }
                    "EnumerationResults/Blobs/Blob" => {
                        let done = std::mem::replace(
                            &mut stat,
                            Stat {
                                size: 0,
                                modified: None,
                                tag: String::new(),
                            },
                        );
                        page.blobs.push((std::mem::take(&mut name), done));
                    }
                    "EnumerationResults/NextMarker" => {
                        page.next_marker = Some(std::mem::take(&mut text));
                    }
                    _ => {}
                }
                path.pop();
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(page)
}

/// A block's id: the same length for every block of a blob, as Azure requires, and
/// distinct between two uploads of one name (`upload`).
fn block_id(upload: u64, number: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{upload:016x}-{number:08}"))
}

/// Uploads the blocks that arrive on `rx` and commits them on `Finish`; a file smaller than
/// one block arrives `Whole` and is one Put Blob. Blocks never committed are not a blob:
/// the service discards them (after a week), and `prune --orphans` sooner.
async fn upload(store: AzureStore, blob: String, mut rx: mpsc::Receiver<Msg>) -> io::Result<()> {
    let pool = Arc::clone(&store.shared.parts);
    let mut next = match rx.recv().await {
        Some(Msg::Whole(bytes)) => {
            return store
                .put_blob(&blob, pool.body(bytes), Condition::Always)
                .await
                .map(|_| ());
        }
        Some(Msg::Part(bytes)) => Some(bytes),
        Some(Msg::Finish) | None => {
            return Err(io::Error::other(format!(
                "{}: the upload was not finished",
                store.blob_location(&blob)
            )));
        }
    };
    let upload = fastrand::u64(..);
    let mut ids = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut total = 0u64;
    let finished = loop {
        let bytes = match next.take() {
            Some(bytes) => bytes,
            None => match rx.recv().await {
                Some(Msg::Part(bytes)) => bytes,
                Some(Msg::Finish) => break true,
                Some(Msg::Whole(_)) | None => break false,
            },
        };
        while running.len() >= BLOCKS_IN_FLIGHT {
            if let Some(joined) = running.join_next().await {
                joined.map_err(io::Error::other)??;
            }
        }
        let id = block_id(upload, ids.len());
        ids.push(id.clone());
        total += bytes.len() as u64;
        let (store, blob, body) = (store.clone(), blob.clone(), pool.body(bytes));
        running.spawn(async move {
            let call = Call::new(Method::PUT, Some(&blob))
                .query("comp", "block")
                .query("blockid", id)
                .body(body);
            let response = store.send(&call).await?;
            if response.status() == StatusCode::CREATED {
                Ok(())
            } else {
                Err(store
                    .failure("uploading a block of", Some(&blob), response)
                    .await)
            }
        });
    };
    while let Some(joined) = running.join_next().await {
        joined.map_err(io::Error::other)??;
    }
    if !finished {
        return Err(io::Error::other(format!(
            "{}: the upload was not finished; its blocks were not committed",
            store.blob_location(&blob)
        )));
    }
    let mut list = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for id in &ids {
        list.push_str(&format!("<Latest>{id}</Latest>"));
    }
    list.push_str("</BlockList>");
    let call = Call::new(Method::PUT, Some(&blob))
        .query("comp", "blocklist")
        .header("content-type", "application/xml")
        .body(Bytes::from(list));
    let response = store.send(&call).await?;
    if response.status() != StatusCode::CREATED {
        return Err(store.failure("committing", Some(&blob), response).await);
    }
    // The service's account of what it assembled must match what was sent.
    let stored = store.head(&blob).await?.map(|s| s.size);
    if stored != Some(total) {
        let _ = store.delete_blob(&blob, Condition::Always).await;
        return Err(io::Error::other(format!(
            "{}: the service holds {} bytes, {total} were uploaded; deleted",
            store.blob_location(&blob),
            stored.map_or("no".to_string(), |n| n.to_string())
        )));
    }
    Ok(())
}

impl Store for AzureStore {
    fn location(&self, key: &str) -> String {
        self.blob_location(&self.blob_name(key))
    }

    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        Box::pin(async move {
            check_key(key)?;
            let (tx, rx) = mpsc::channel(1);
            let task = tokio::spawn(upload(self.clone(), self.blob_name(key), rx));
            let sink: Box<dyn FileSink> = Box::new(PartSink::new(
                Arc::clone(&self.shared.parts),
                self.shared.block_size,
                tx,
                task,
            ));
            Ok(sink)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async move {
            check_key(key)?;
            self.put_blob(&self.blob_name(key), Bytes::from(bytes), condition)
                .await
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: Option<u64>,
    ) -> BoxFuture<'a, io::Result<Reader>> {
        Box::pin(async move {
            check_key(key)?;
            let blob = self.blob_name(key);
            let not_found = || super::store::not_found(self.blob_location(&blob));
            if length == Some(0) {
                // A range of no bytes cannot be asked for; the blob must still exist.
                return match self.head(&blob).await? {
                    Some(_) => Ok(Box::pin(tokio::io::empty()) as Reader),
                    None => Err(not_found()),
                };
            }
            let mut call = Call::new(Method::GET, Some(&blob));
            match (offset, length) {
                (0, None) => {}
                (start, None) => call = call.header("x-ms-range", format!("bytes={start}-")),
                (start, Some(n)) => {
                    call = call.header("x-ms-range", format!("bytes={start}-{}", start + n - 1));
                }
            }
            let response = self.send(&call).await?;
            match response.status() {
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
                StatusCode::NOT_FOUND => return Err(not_found()),
                // A range that starts at or past the end: nothing to read.
                StatusCode::RANGE_NOT_SATISFIABLE => return Ok(Box::pin(tokio::io::empty())),
                _ => return Err(self.failure("reading", Some(&blob), response).await),
            }
            let reader: Reader = Box::pin(body(response));
            Ok(reader)
        })
    }

    fn read_small<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, io::Result<Option<Small>>> {
        Box::pin(async move {
            check_key(key)?;
            let blob = self.blob_name(key);
            let mut attempt = 1;
            loop {
                let response = self.send(&Call::new(Method::GET, Some(&blob))).await?;
                match response.status() {
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND => return Ok(None),
                    _ => return Err(self.failure("reading", Some(&blob), response).await),
                }
                let stat = stat_of(&response);
                if stat.size > limit {
                    return Ok(Some(Small { bytes: None, stat }));
                }
                let mut bytes = Vec::new();
                match body(response).take(limit + 1).read_to_end(&mut bytes).await {
                    Ok(_) => {
                        let bytes = (bytes.len() as u64 <= limit).then_some(bytes);
                        return Ok(Some(Small { bytes, stat }));
                    }
                    // An answer that breaks off midway: a small blob is read again.
                    Err(_) if attempt < SMALL_READ_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("reading {}: {e}", self.blob_location(&blob)),
                        ));
                    }
                }
            }
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        Box::pin(async move {
            check_key(key)?;
            self.head(&self.blob_name(key)).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            Ok(self
                .list_blobs(&self.blob_name(prefix), false)
                .await?
                .into_iter()
                .filter_map(|(name, stat)| self.listed(&name, stat))
                .filter(|o| check_key(&o.key).is_ok())
                .collect())
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            check_key(key)?;
            if condition == Condition::Absent {
                // An absent blob is deleted already.
                return Ok(false);
            }
            self.delete_blob(&self.blob_name(key), condition).await
        })
    }

    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            self.uncommitted(prefix).await
        })
    }

    /// Also discards uploads that never finished: a blob of only uncommitted blocks cannot
    /// be deleted, but an empty blob put in its place takes its blocks with it, and is then
    /// deleted. `If-None-Match: *` cannot guard that put (Azurite counts uncommitted blocks
    /// as a blob), so it is put only where no committed blob was found a moment before:
    /// this runs on what a backup that never finished left behind, which nothing writes.
    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            for open in self.uncommitted(prefix).await? {
                let blob = self.blob_name(&open.key);
                if self.head(&blob).await?.is_none()
                    && let Some(tag) = self
                        .put_blob(&blob, Bytes::new(), Condition::Always)
                        .await?
                {
                    self.delete_blob(&blob, Condition::Matches(&tag)).await?;
                }
            }
            for object in self.list(prefix).await? {
                self.delete(&object.key, Condition::Always).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_and_credentials_in_urls_are_refused_without_echoing_them() {
        assert_eq!(url_problem("azure://backups/nightly"), None);
        assert_eq!(url_problem("azure://backups"), None);
        for bad in [
            "azure://Backups/x",
            "azure://ab/x",
            "azure://a--b/x",
            "azure:///x",
        ] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
        let Some(UrlProblem::Credentials(problem)) = url_problem("azure://acct:s3cr3t@backups/x")
        else {
            panic!("credentials in an Azure URL were not found");
        };
        assert!(!problem.contains("s3cr3t"));
    }

    #[test]
    fn connection_strings_give_the_account_and_its_endpoint() {
        let k = SharedKey::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5PQ==;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(k.account, "acct");
        assert_eq!(k.key, "a2V5PQ==", "a value may hold `=`");
        assert_eq!(
            k.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        let dev = SharedKey::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.account, DEV_ACCOUNT);
        assert_eq!(dev.endpoint.as_deref(), Some(DEV_ENDPOINT));
        let e = SharedKey::from_connection_string(
            "BlobEndpoint=https://x;SharedAccessSignature=sv=2020&sig=SECRET",
        )
        .unwrap_err();
        assert!(e.contains("account key") && !e.contains("SECRET"), "{e}");
        assert!(format!("{k:?}").contains("***") && !format!("{k:?}").contains("a2V5"));
    }

    #[test]
    fn listings_are_read_with_entities_and_markers() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://x/" ContainerName="c"><Prefix>p/</Prefix><Blobs><Blob><Name>p/a&amp;b &#233;</Name><Properties><Last-Modified>Mon, 07 Dec 2026 13:31:26 GMT</Last-Modified><Etag>0x8DD1</Etag><Content-Length>42</Content-Length></Properties></Blob><Blob><Name>p/z</Name><Properties><Etag>"0x8DD2"</Etag><Content-Length>0</Content-Length></Properties></Blob></Blobs><NextMarker>abc</NextMarker></EnumerationResults>"#;
        let page = parse_listing(xml).unwrap();
        assert_eq!(page.blobs.len(), 2);
        assert_eq!(page.blobs[0].0, "p/a&b é");
        assert_eq!(page.blobs[0].1.size, 42);
        assert_eq!(page.blobs[0].1.tag, "\"0x8DD1\"");
        assert_eq!(
            page.blobs[0].1.modified.unwrap().to_rfc3339(),
            "2026-12-07T13:31:26+00:00"
        );
        assert_eq!(page.blobs[1].1.tag, "\"0x8DD2\"");
        assert_eq!(page.next_marker.as_deref(), Some("abc"));
        assert!(parse_listing("<EnumerationResults><Blobs><Blob><Name>&bogus;</Name>").is_err());
    }

    #[test]
    fn block_ids_have_one_length() {
        assert_eq!(block_id(0, 0).len(), block_id(u64::MAX, 99_999_999).len());
        assert_ne!(block_id(1, 5), block_id(2, 5));
    }
}
