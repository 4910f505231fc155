//! A repository in an S3 bucket (or any S3-compatible store): `s3://bucket/prefix` with
//! objects `<prefix>/<backup id>/<file>`. Files stream up as multipart uploads — parts of
//! `part_size` bytes, at most `parts_in_flight` uploading at once, so memory is bounded by
//! their product — each part with a CRC32 the store checks (a file smaller than one part
//! is put in a single request), and the manifest is put last.
//! After completion the object's size is compared with what was sent. An upload that is
//! not committed is aborted, so an interrupted backup leaves no object behind; one that a
//! killed process could not abort is noted in `<backup>/.uploads/<upload id>`, which
//! `prune --orphans` finds even on stores that cannot list multipart uploads.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity,
//! instance metadata), never from the plan. One TLS stack: rustls on ring, as sqlx uses.

use super::parts::{Msg, PartPool, PartSink, SMALL_READ_ATTEMPTS, STALL_TIMEOUT, StallGuard};
use super::store::{
    BoxFuture, Condition, FileSink, Listed, MAX_SMALL_FILE, Reader, Small, Stat, Store, check_key,
    check_prefix, not_found,
};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// How long a connection (TCP and TLS) may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer's first byte may take, from when the request starts; an upload's
/// body is sent in that time too, so uploads get longer (see [`upload_timeouts`]).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may take with all its attempts; longer for uploads.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The slowest upload before its attempt counts as hung: 256 KiB/s.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// Deadlines for every request, so that a store that accepts connections and never
/// answers fails each request instead of hanging it (the SDK sets no read timeout by
/// default): the connection, the answer's first byte, and the request with its retries.
fn timeouts() -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// [`timeouts`] for a request that sends `bytes`: its answer comes after the body is sent.
fn upload_timeouts(bytes: u64) -> aws_sdk_s3::config::Builder {
    let read = READ_TIMEOUT.max(Duration::from_secs(bytes / SLOWEST_UPLOAD_BYTES_PER_SEC));
    aws_sdk_s3::config::Builder::default().timeout_config(
        aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read)
            .operation_timeout(OPERATION_TIMEOUT.max(read * 4))
            .build(),
    )
}

pub const DEFAULT_PARTS_IN_FLIGHT: usize = 2;
/// Attempts per S3 request (the SDK retries 5xx, throttling, timeouts and dropped
/// connections; never 403).
pub const MAX_ATTEMPTS: u32 = 8;
/// Where an upload in progress is noted: `<backup>/.uploads/<upload id>`, holding the
/// object key. A killed process leaves it behind, so that `prune --orphans` can abort the
/// upload even on stores that cannot list multipart uploads.
const UPLOADS_DIR: &str = ".uploads";
/// How often an upload in progress touches its note, so that `prune --orphans` (which
/// removes only leftovers untouched for `--orphan-age`) never takes a live backup.
const NOTE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// `bucket `B` at ENDPOINT`, for errors: which store did not answer.
    place: Arc<str>,
    bucket: String,
    prefix: String,
    part_size: usize,
    parts_in_flight: usize,
    sse: Option<Sse>,
    checksums: bool,
    parts: Arc<PartPool>,
}

/// Server-side encryption of the objects opsrunner writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sse {
    /// `AES256` or `aws:kms`.
    pub algorithm: aws_sdk_s3::types::ServerSideEncryption,
    /// With `aws:kms`: the key (default: the bucket's AWS-managed key).
    pub kms_key_id: Option<String>,
}

/// Settings of an S3 repository besides its URL.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub part_size: Option<usize>,
    pub sse: Option<Sse>,
    /// Keys given in code instead of the standard chain, for tests and benchmarks that talk
    /// to a store from inside their own process (the environment is shared there). Plans
    /// never set them.
    #[doc(hidden)]
    pub static_keys: Option<StaticKeys>,
}

/// An access key and its secret (see [`S3Options::static_keys`]).
#[derive(Clone)]
pub struct StaticKeys {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKeys(***)")
    }
}

fn s3_error(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

/// An SDK error as an I/O error whose kind says whether trying again can help: 403 is
/// `PermissionDenied` (wrong credentials or policy: permanent); the SDK has already retried
/// what it considers transient.
fn sdk_error<E>(
    place: &str,
    context: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> io::Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let status = e.raw_response().map(|r| r.status().as_u16());
    let kind = match status {
        Some(401 | 403) => io::ErrorKind::PermissionDenied,
        Some(404) => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    // The store's own words (status, code, message) rather than the SDK's debug dump.
    let text = match (&e, status) {
        (SdkError::ServiceError(service), Some(status)) => {
            let err = service.err();
            let mut text = format!("HTTP {status}");
            if let Some(code) = err.code() {
                text.push_str(&format!(" {code}"));
            }
            if let Some(message) = err.message().filter(|m| !m.is_empty()) {
                text.push_str(&format!(": {message}"));
            }
            if matches!(status, 401 | 403) {
                text.push_str(" (check the credentials — AWS_* environment, profile or instance role — and that the bucket policy allows this request)");
            }
            text
        }
        _ => error_chain(&e),
    };
    io::Error::new(kind, format!("{context} in {place}: {text}"))
}

/// An SDK error and its sources in their own words, joined like `anyhow`'s chain: "dispatch
/// failure: io error: … Connection refused (os error 111)". The SDK's `DisplayErrorContext`
/// appends a debug dump of its internal structures (response headers and bodies included)
/// that tells an operator nothing more. Missing credentials get a hint.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = crate::diag::error_chain(e);
    if text.contains("loading credentials") || text.contains("no credentials") {
        text.push_str(" (no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance or pod role provides them)");
    }
    text
}

/// `s3://bucket/prefix`, with the credentials of the standard AWS chain.
pub const BACKEND: super::store::Backend = super::store::Backend {
    scheme: "s3",
    example: "s3://bucket/prefix",
    url_problem: |url| {
        url_carries_credentials(url).then(|| {
            super::store::UrlProblem::Credentials("the S3 URL carries credentials".to_string())
        })
    },
    open: |definition, _| {
        Box::pin(async move {
            let store: std::sync::Arc<dyn Store> =
                std::sync::Arc::new(S3Store::connect(&definition.url, &options(definition)).await?);
            Ok(store)
        })
    },
    describe: |definition| {
        let options = options(definition);
        let mut s = format!(
            "S3 multipart upload, {} MiB parts",
            options.part_size.unwrap_or(DEFAULT_PART_SIZE).max(5 << 20) >> 20
        );
        if let Some(sse) = &options.sse {
            s.push_str(&format!(
                ", server-side encryption {}",
                sse.algorithm.as_str()
            ));
        }
        vec![s]
    },
};

/// The S3 settings of a repository as the plan defines it.
pub fn options(definition: &crate::plan::model::Repository) -> S3Options {
    use crate::plan::model::SseAlgorithm;
    S3Options {
        region: definition.region.clone(),
        endpoint: definition.endpoint.clone(),
        force_path_style: definition.force_path_style,
        part_size: definition.part_size_mib.map(|m| m as usize * 1024 * 1024),
        sse: definition.sse.map(|a| Sse {
            algorithm: match a {
                SseAlgorithm::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
                SseAlgorithm::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
            },
            kms_key_id: definition.sse_kms_key_id.clone(),
        }),
        static_keys: None,
    }
}

/// `s3://KEY:SECRET@bucket/…`: credentials where they must never be.
pub fn url_carries_credentials(url: &str) -> bool {
    url.strip_prefix("s3://")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|bucket| bucket.contains('@'))
}

impl S3Store {
    /// `s3://bucket/prefix`.
    pub async fn connect(
        url: &str,
        options: &S3Options,
    ) -> Result<S3Store, super::store::OpenError> {
        use super::store::OpenError;
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| OpenError::Definition(format!("`{url}` is not an s3:// URL")))?;
        if url_carries_credentials(url) {
            return Err(OpenError::CredentialsInUrl);
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 || bucket.len() > 63 {
            return Err(OpenError::BadBucket(url.to_string()));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(keys) = &options.static_keys {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                &keys.access_key,
                &keys.secret_key,
                None,
                None,
                "static",
            ));
        }
        let shared = loader.load().await;
        // An endpoint that is an IP address or `localhost` (a MinIO or test server on this
        // machine) cannot be addressed by bucket host names: path style there, as other
        // S3 clients do, whether the endpoint came from the plan or the environment.
        let endpoint = options.endpoint.clone().or_else(|| {
            std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok()
        });
        let by_path = endpoint.as_deref().is_some_and(|e| {
            url::Url::parse(e).ok().is_some_and(|u| match u.host() {
                Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            })
        });
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.force_path_style || by_path);
        // A backup of hours is thousands of parts; the SDK's default of three attempts per
        // request lets one short network outage fail all of it. AWS_MAX_ATTEMPTS still rules.
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            config = config.retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_max_backoff(std::time::Duration::from_secs(20)),
            );
        }
        // CRC32 on every part, checked by the store where it supports checksums, unless the
        // standard AWS_REQUEST_CHECKSUM_CALCULATION=when_required turns them off for a store
        // that rejects them.
        let checksums = !matches!(
            shared.request_checksum_calculation(),
            Some(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        );
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let part_size = options
            .part_size
            .unwrap_or(DEFAULT_PART_SIZE)
            .max(5 * 1024 * 1024);
        config = config.timeout_config(timeouts());
        let at = match (&options.endpoint, &options.region) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(region)) => format!("AWS S3 ({region})"),
            (None, None) => match std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            {
                Ok(endpoint) => endpoint,
                Err(_) => "AWS S3".into(),
            },
        };
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            place: Arc::from(format!("bucket `{bucket}` at {at}")),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            part_size,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            sse: options.sse.clone(),
            checksums,
            parts: Arc::new(PartPool::new(DEFAULT_PARTS_IN_FLIGHT)),
        })
    }

    pub(super) fn root(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Multipart uploads in progress under `prefix`: (key, upload id, initiated). Empty on
    /// stores that cannot list them (the notes in `.uploads/` cover those).
    async fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> Vec<(String, String, std::time::SystemTime)> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = match self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!("listing multipart uploads: {}", error_chain(&e));
                    return out;
                }
            };
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    let initiated = u
                        .initiated()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    out.push((key.to_string(), id.to_string(), initiated));
                }
            }
            if page.is_truncated() != Some(true) {
                return out;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return out;
            }
        }
    }
}

/// Where one file goes, and how.
struct UploadTarget {
    client: Client,
    place: Arc<str>,
    bucket: String,
    key: String,
    /// `<backup>/.uploads/`: the upload's note goes here.
    notes: String,
    sse: Option<Sse>,
    checksums: bool,
    in_flight: usize,
    pool: Arc<PartPool>,
}

impl UploadTarget {
    /// Writes (or touches) the note of an upload in progress: the object key it is for.
    /// With the repository's SSE like every other object, so that a bucket policy refusing
    /// unencrypted writes does not fail the backup.
    async fn put_note(&self, note: &str) -> io::Result<()> {
        put(
            &self.place,
            &self.client,
            &self.bucket,
            note,
            self.key.clone().into_bytes(),
            self.sse.as_ref(),
        )
        .await
    }
}

/// Uploads the parts that arrive on `rx`; completes the upload on `Finish` and aborts it
/// on any failure or when the channel closes without `Finish`. A file smaller than a part
/// arrives `Whole` and is put in one request.
async fn upload(t: UploadTarget, mut rx: mpsc::Receiver<Msg>) -> io::Result<()> {
    let first = match rx.recv().await {
        Some(Msg::Whole(bytes)) => {
            let body = ByteStream::from(t.pool.body(bytes));
            return put(&t.place, &t.client, &t.bucket, &t.key, body, t.sse.as_ref()).await;
        }
        Some(Msg::Part(bytes)) => bytes,
        Some(Msg::Finish) | None => {
            return Err(s3_error(&t.key, "the upload was not finished"));
        }
    };
    let created = t
        .client
        .create_multipart_upload()
        .bucket(&t.bucket)
        .key(&t.key)
        .set_server_side_encryption(t.sse.as_ref().map(|s| s.algorithm.clone()))
        .set_ssekms_key_id(t.sse.as_ref().and_then(|s| s.kms_key_id.clone()))
        .set_checksum_algorithm(t.checksums.then_some(ChecksumAlgorithm::Crc32))
        .send()
        .await
        .map_err(|e| sdk_error(&t.place, &format!("starting the upload of {}", t.key), e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| s3_error(&t.key, "the store returned no upload id"))?
        .to_string();
    let note = format!("{}{upload_id}", t.notes);
    let result = match t.put_note(&note).await {
        Ok(()) => upload_parts(&t, &upload_id, &note, first, rx).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        abort_upload(&t.client, &t.bucket, &t.key, &upload_id).await;
    }
    // Once completed or aborted, the note has served; a note that cannot be deleted only
    // makes `prune --orphans` try an abort that is no longer needed.
    if let Err(e) = delete(&t.place, &t.client, &t.bucket, &note).await {
        tracing::warn!("{e}");
    }
    result
}

async fn upload_parts(
    t: &UploadTarget,
    upload_id: &str,
    note: &str,
    first: Vec<u8>,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<()> {
    let mut parts: Vec<CompletedPart> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut number = 0i32;
    let mut total = 0u64;
    let mut touched = std::time::Instant::now();
    let mut first = Some(Msg::Part(first));
    let finished = loop {
        let msg = match first.take() {
            Some(msg) => Some(msg),
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Part(bytes)) => {
                while running.len() >= t.in_flight {
                    match running.join_next().await {
                        Some(joined) => parts.push(joined.map_err(io::Error::other)??),
                        None => break,
                    }
                }
                if touched.elapsed() >= NOTE_REFRESH {
                    t.put_note(note).await?;
                    touched = std::time::Instant::now();
                }
                number += 1;
                total += bytes.len() as u64;
                let size = bytes.len() as u64;
                let request = t
                    .client
                    .upload_part()
                    .bucket(&t.bucket)
                    .key(&t.key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .set_checksum_algorithm(t.checksums.then_some(ChecksumAlgorithm::Crc32))
                    .body(ByteStream::from(t.pool.body(bytes)))
                    .customize();
                // A part with a CRC32 the store checks is not also hashed with SHA-256 for
                // the signature (`UNSIGNED-PAYLOAD`, as the AWS CLI sends over TLS): that
                // was a third pass over every byte on a machine with two cores, and the
                // file's own SHA-256 is in the manifest for `verify`. Without checksums the
                // signature stays the part's only check.
                let request = if t.checksums {
                    request.disable_payload_signing()
                } else {
                    request
                };
                let request = request.config_override(upload_timeouts(size));
                let (n, key, place) = (number, t.key.clone(), t.place.clone());
                running.spawn(async move {
                    let out = request.send().await.map_err(|e| {
                        sdk_error(&place, &format!("uploading part {n} of {key}"), e)
                    })?;
                    Ok::<_, io::Error>(
                        CompletedPart::builder()
                            .part_number(n)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                            .build(),
                    )
                });
            }
            Some(Msg::Finish) => break true,
            Some(Msg::Whole(_)) | None => break false,
        }
    };
    while let Some(joined) = running.join_next().await {
        parts.push(joined.map_err(io::Error::other)??);
    }
    if !finished {
        return Err(s3_error(&t.key, "the upload was not finished; aborted"));
    }
    parts.sort_by_key(|p| p.part_number());
    t.client
        .complete_multipart_upload()
        .bucket(&t.bucket)
        .key(&t.key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error(&t.place, &format!("completing the upload of {}", t.key), e))?;
    // The store's own account of what it assembled must match what was sent; a store
    // that dropped bytes of a part is caught here, not at restore time.
    let head = t
        .client
        .head_object()
        .bucket(&t.bucket)
        .key(&t.key)
        .send()
        .await
        .map_err(|e| sdk_error(&t.place, &format!("checking {}", t.key), e))?;
    let stored = head.content_length().unwrap_or(-1);
    if stored != total as i64 {
        let _ = delete(&t.place, &t.client, &t.bucket, &t.key).await;
        return Err(s3_error(
            &t.key,
            format!("the store holds {stored} bytes, {total} were uploaded; deleted"),
        ));
    }
    Ok(())
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(
            "aborting the upload of {key}: {} (prune --orphans retries)",
            error_chain(&e)
        );
    }
}

async fn put(
    place: &str,
    client: &Client,
    bucket: &str,
    key: &str,
    body: impl Into<ByteStream>,
    sse: Option<&Sse>,
) -> io::Result<()> {
    let body = body.into();
    let size = body.size_hint().1.unwrap_or(MAX_SMALL_FILE);
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .set_server_side_encryption(sse.map(|s| s.algorithm.clone()))
        .set_ssekms_key_id(sse.and_then(|s| s.kms_key_id.clone()))
        .body(body)
        .customize()
        .config_override(upload_timeouts(size))
        .send()
        .await
        .map_err(|e| sdk_error(place, &format!("putting {key}"), e))?;
    Ok(())
}

async fn delete(place: &str, client: &Client, bucket: &str, key: &str) -> io::Result<()> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk_error(place, &format!("deleting {key}"), e))?;
    Ok(())
}

/// Whether a conditional request failed because its condition did not hold: 412, 404 (an
/// `If-Match` on an object that is gone) or 409 (another conditional write to the key was
/// in flight).
fn condition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    matches!(
        e.raw_response().map(|r| r.status().as_u16()),
        Some(404 | 409 | 412)
    )
}

/// A time the store gives (Last-Modified), as opsrunner keeps times.
fn store_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// The notes of unfinished multipart uploads live under `.uploads/` beside the object;
/// they are not objects of the repository.
fn is_upload_note(key: &str) -> bool {
    key.split('/').any(|part| part == UPLOADS_DIR)
}

impl S3Store {
    /// The bucket's key of a repository key.
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.root())
    }

    /// `<dir of key>/.uploads/`: where the note of `key`'s multipart upload goes.
    fn notes_for(&self, key: &str) -> String {
        match key.rsplit_once('/') {
            Some((dir, _)) => self.full_key(&format!("{dir}/{UPLOADS_DIR}/")),
            None => self.full_key(&format!("{UPLOADS_DIR}/")),
        }
    }

    /// Every key under `prefix` (relative to the repository's root, upload notes
    /// included), sorted, with what the listing says of it.
    async fn everything_under(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        check_prefix(prefix)?;
        let root = self.root();
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(&self.place, "listing the repository", e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&root)) else {
                    continue;
                };
                out.push(Listed {
                    key: key.to_string(),
                    stat: Stat {
                        size: object.size().unwrap_or(0).max(0) as u64,
                        modified: object.last_modified().and_then(store_time),
                        tag: object.e_tag().unwrap_or_default().to_string(),
                    },
                    problem: None,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_now(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        let mut out = self.everything_under(prefix).await?;
        out.retain(|o| !is_upload_note(&o.key) && check_key(&o.key).is_ok());
        Ok(out)
    }
}

impl Store for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        Box::pin(async move {
            check_key(key)?;
            // Memory: the part being filled, one waiting in the channel, `parts_in_flight`
            // uploading.
            let (tx, rx) = mpsc::channel(1);
            let task = tokio::spawn(upload(
                UploadTarget {
                    client: self.client.clone(),
                    place: Arc::clone(&self.place),
                    bucket: self.bucket.clone(),
                    key: self.full_key(key),
                    notes: self.notes_for(key),
                    sse: self.sse.clone(),
                    checksums: self.checksums,
                    in_flight: self.parts_in_flight,
                    pool: Arc::clone(&self.parts),
                },
                rx,
            ));
            let sink: Box<dyn FileSink> = Box::new(PartSink::new(
                Arc::clone(&self.parts),
                self.part_size,
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
            let key = self.full_key(key);
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .set_server_side_encryption(self.sse.as_ref().map(|s| s.algorithm.clone()))
                .set_ssekms_key_id(self.sse.as_ref().and_then(|s| s.kms_key_id.clone()));
            let size = bytes.len() as u64;
            let request = match condition {
                Condition::Always => request,
                Condition::Absent => request.if_none_match("*"),
                Condition::Matches(etag) => request.if_match(etag),
            }
            .body(ByteStream::from(bytes))
            .customize()
            .config_override(upload_timeouts(size));
            match request.send().await {
                Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
                Err(e) if condition != Condition::Always && condition_failed(&e) => Ok(None),
                Err(e) => Err(sdk_error(&self.place, &format!("writing {key}"), e)),
            }
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
            let full = self.full_key(key);
            if length == Some(0) {
                // A range of no bytes cannot be asked for; the object must still exist.
                return match self.stat(key).await? {
                    Some(_) => Ok(Box::pin(tokio::io::empty()) as Reader),
                    None => Err(not_found(self.location(key))),
                };
            }
            let range = match (offset, length) {
                (0, None) => None,
                (start, None) => Some(format!("bytes={start}-")),
                (start, Some(n)) => Some(format!("bytes={start}-{}", start + n - 1)),
            };
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_range(range)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Err(not_found(self.location(key)));
                }
                // A range that starts at or past the end: nothing to read.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                    return Ok(Box::pin(tokio::io::empty()));
                }
                Err(e) => return Err(sdk_error(&self.place, &format!("reading {full}"), e)),
            };
            let reader: Reader =
                Box::pin(StallGuard::new(out.body.into_async_read(), STALL_TIMEOUT));
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
            let full = self.full_key(key);
            let mut attempt = 1;
            loop {
                let out = match self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send()
                    .await
                {
                    Ok(o) => o,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(sdk_error(&self.place, &format!("reading {full}"), e)),
                };
                let stat = Stat {
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    modified: out.last_modified().and_then(store_time),
                    tag: out.e_tag().unwrap_or_default().to_string(),
                };
                if stat.size > limit {
                    return Ok(Some(Small { bytes: None, stat }));
                }
                let mut bytes = Vec::new();
                match StallGuard::new(out.body.into_async_read(), STALL_TIMEOUT)
                    .take(limit + 1)
                    .read_to_end(&mut bytes)
                    .await
                {
                    Ok(_) => {
                        let bytes = (bytes.len() as u64 <= limit).then_some(bytes);
                        return Ok(Some(Small { bytes, stat }));
                    }
                    // The SDK retries requests, not an answer that breaks off midway (a
                    // dropped connection, an object replaced while it was sent): a small
                    // object is simply read again.
                    Err(_) if attempt < SMALL_READ_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        return Err(io::Error::new(e.kind(), format!("reading {full}: {e}")));
                    }
                }
            }
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        Box::pin(async move {
            check_key(key)?;
            let full = self.full_key(key);
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(head) => Ok(Some(Stat {
                    size: head.content_length().unwrap_or(0).max(0) as u64,
                    modified: head.last_modified().and_then(store_time),
                    tag: head.e_tag().unwrap_or_default().to_string(),
                })),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
                Err(e) => Err(sdk_error(&self.place, &format!("looking up {full}"), e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(self.list_now(prefix))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            check_key(key)?;
            let full = self.full_key(key);
            let request = self.client.delete_object().bucket(&self.bucket).key(&full);
            let request = match condition {
                Condition::Always => request,
                // S3 has no delete-if-absent: an absent object is deleted already.
                Condition::Absent => return Ok(false),
                Condition::Matches(etag) => request.if_match(etag),
            };
            match request.send().await {
                Ok(_) => Ok(true),
                Err(e) if condition != Condition::Always && condition_failed(&e) => Ok(false),
                Err(e) => Err(sdk_error(&self.place, &format!("deleting {full}"), e)),
            }
        })
    }

    /// Multipart uploads left open under the prefix: those noted in `.uploads/` (the
    /// note's time) and, where the store lists them, any others (when they started).
    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let root = self.root();
            let full = self.full_key(prefix);
            let mut out = self.everything_under(prefix).await?;
            out.retain(|o| is_upload_note(&o.key));
            for (key, upload_id, initiated) in self.multipart_uploads(&full).await {
                let Some(key) = key.strip_prefix(&root) else {
                    continue;
                };
                out.push(Listed {
                    key: key.to_string(),
                    stat: Stat {
                        size: 0,
                        modified: Some(initiated.into()),
                        tag: upload_id,
                    },
                    problem: None,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    /// Also aborts the multipart uploads left open under the prefix (noted in `.uploads/`
    /// or, where the store lists them, found by listing) and deletes their notes.
    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let full = self.full_key(prefix);
            let everything = self.everything_under(prefix).await?;
            for note in everything.iter().filter(|o| is_upload_note(&o.key)) {
                let upload_id = note.key.rsplit('/').next().unwrap_or_default();
                if let Some(Small {
                    bytes: Some(key), ..
                }) = self.read_small(&note.key, MAX_SMALL_FILE).await?
                {
                    let key = String::from_utf8_lossy(&key);
                    abort_upload(&self.client, &self.bucket, &key, upload_id).await;
                }
            }
            for (key, upload_id, _) in self.multipart_uploads(&full).await {
                abort_upload(&self.client, &self.bucket, &key, &upload_id).await;
            }
            for object in everything {
                delete(
                    &self.place,
                    &self.client,
                    &self.bucket,
                    &self.full_key(&object.key),
                )
                .await?;
            }
            Ok(())
        })
    }
}
