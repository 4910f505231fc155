//! A repository in an S3 bucket (or any S3-compatible store): `s3://bucket/prefix` with
//! objects `<prefix>/<backup id>/<file>`. Files stream up as multipart uploads — parts of
//! `part_size` bytes, at most `parts_in_flight` uploading at once, so memory is bounded by
//! their product — and the manifest is put last. An upload that is not committed is
//! aborted, so an interrupted backup leaves no object behind.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity,
//! instance metadata), never from the plan. One TLS stack: rustls on ring, as sqlx uses.

use super::manifest::{MANIFEST_NAME, Manifest, VERIFICATION_NAME, Verification};
use super::{BackupStore, FileSink, Reader};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    parts_in_flight: usize,
    sse: Option<Sse>,
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
}

fn s3_error(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

/// An SDK error as an I/O error whose kind says whether trying again can help: 403 is
/// `PermissionDenied` (wrong credentials or policy: permanent); the SDK has already retried
/// what it considers transient.
fn sdk_error<E: std::error::Error + 'static>(
    context: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> io::Error {
    let kind = match e.raw_response().map(|r| r.status().as_u16()) {
        Some(401 | 403) => io::ErrorKind::PermissionDenied,
        Some(404) => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(
        kind,
        format!("{context}: {}", aws_sdk_s3::error::DisplayErrorContext(e)),
    )
}

impl S3Store {
    /// `s3://bucket/prefix`.
    pub async fn connect(url: &str, options: &S3Options) -> Result<S3Store, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}` is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 {
            return Err(format!("`{url}`: a bucket name has 3 to 63 characters"));
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
        let shared = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.force_path_style);
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            part_size: options
                .part_size
                .unwrap_or(DEFAULT_PART_SIZE)
                .max(5 * 1024 * 1024),
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            sse: options.sse.clone(),
        })
    }

    fn key(&self, backup_id: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{backup_id}/{name}")
        } else {
            format!("{}/{backup_id}/{name}", self.prefix)
        }
    }

    fn backup_prefix(&self, backup_id: &str) -> String {
        self.key(backup_id, "")
    }

    async fn put_small(&self, key: String, body: Vec<u8>) -> io::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_server_side_encryption(self.sse.as_ref().map(|s| s.algorithm.clone()))
            .set_ssekms_key_id(self.sse.as_ref().and_then(|s| s.kms_key_id.clone()))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("putting {key}"), e))?;
        Ok(())
    }

    async fn keys_under(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("listing the bucket", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => {
                return Err(sdk_error(&format!("reading {key}"), e));
            }
        };
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| s3_error(key, e))?
            .into_bytes();
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {e}")))
    }

    async fn delete_keys(&self, keys: Vec<String>) -> io::Result<()> {
        for key in keys {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("deleting {key}"), e))?;
        }
        Ok(())
    }
}

impl S3Store {
    /// Backup ids that have objects but no manifest, with their newest object's time.
    pub async fn orphans(&self) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut groups: std::collections::BTreeMap<String, (bool, std::time::SystemTime)> =
            Default::default();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&root)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("listing the bucket", e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some((id, name)) = key[root.len()..].split_once('/') else {
                    continue;
                };
                let modified = object
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let entry = groups
                    .entry(id.to_string())
                    .or_insert((false, std::time::UNIX_EPOCH));
                entry.0 |= name == MANIFEST_NAME;
                entry.1 = entry.1.max(modified);
            }
        }
        Ok(groups
            .into_iter()
            .filter(|(_, (published, _))| !published)
            .map(|(id, (_, t))| (id, t))
            .collect())
    }
}

enum Msg {
    Part(Vec<u8>),
    Finish,
}

/// Buffers writes into parts and hands them to the upload task; `commit` completes the
/// multipart upload, dropping the sink aborts it.
struct S3Sink {
    buffer: Vec<u8>,
    part_size: usize,
    tx: Option<PollSender<Msg>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl S3Sink {
    fn poll_send(&mut self, cx: &mut Context<'_>, msg_is_part: bool) -> Poll<io::Result<()>> {
        let tx = self.tx.as_mut().expect("open");
        match tx.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(io::Error::other(
                "the upload failed; see the error that follows",
            ))),
            Poll::Ready(Ok(())) => {
                let msg = if msg_is_part {
                    Msg::Part(std::mem::take(&mut self.buffer))
                } else {
                    Msg::Finish
                };
                let _ = tx.send_item(msg);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for S3Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buffer.len() >= self.part_size {
            match self.poll_send(cx, true) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        let room = self.part_size - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl FileSink for S3Sink {
    fn commit(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        Box::pin(async move {
            if !self.buffer.is_empty() {
                std::future::poll_fn(|cx| self.poll_send(cx, true)).await?;
            }
            std::future::poll_fn(|cx| self.poll_send(cx, false)).await?;
            self.tx = None;
            let task = self.task.take().expect("open");
            task.await.map_err(io::Error::other)?
        })
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        // Closing the channel without `Finish` makes the upload task abort the upload.
        self.tx = None;
    }
}

async fn upload(
    client: Client,
    bucket: String,
    key: String,
    mut rx: mpsc::Receiver<Msg>,
    in_flight: usize,
    sse: Option<Sse>,
) -> io::Result<()> {
    let created = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .set_server_side_encryption(sse.as_ref().map(|s| s.algorithm.clone()))
        .set_ssekms_key_id(sse.as_ref().and_then(|s| s.kms_key_id.clone()))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("starting the upload of {key}"), e))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let abort = |reason: String| {
        let (client, bucket, key, upload_id) = (
            client.clone(),
            bucket.clone(),
            key.clone(),
            upload_id.clone(),
        );
        async move {
            let _ = client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
            Err(io::Error::other(reason))
        }
    };
    let mut parts: Vec<CompletedPart> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut number = 0i32;
    let finished = loop {
        let msg = rx.recv().await;
        match msg {
            Some(Msg::Part(bytes)) => {
                while running.len() >= in_flight {
                    match running.join_next().await {
                        Some(Ok(Ok(part))) => parts.push(part),
                        Some(Ok(Err(e))) => return abort(e).await,
                        Some(Err(e)) => return abort(e.to_string()).await,
                        None => break,
                    }
                }
                number += 1;
                let (client, bucket, key, upload_id) = (
                    client.clone(),
                    bucket.clone(),
                    key.clone(),
                    upload_id.clone(),
                );
                let n = number;
                running.spawn(async move {
                    let out = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(n)
                        .body(ByteStream::from(bytes))
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "uploading part {n} of {key}: {}",
                                aws_sdk_s3::error::DisplayErrorContext(e)
                            )
                        })?;
                    Ok::<_, String>(
                        CompletedPart::builder()
                            .part_number(n)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    )
                });
            }
            Some(Msg::Finish) => break true,
            None => break false,
        }
    };
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(Ok(part)) => parts.push(part),
            Ok(Err(e)) => return abort(e).await,
            Err(e) => return abort(e.to_string()).await,
        }
    }
    if !finished {
        return abort(format!("the upload of {key} was not finished; aborted")).await;
    }
    parts.sort_by_key(|p| p.part_number());
    if let Err(e) = client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
    {
        return abort(format!(
            "completing the upload of {key}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        ))
        .await;
    }
    Ok(())
}

impl BackupStore for S3Store {
    fn uri(&self, backup_id: &str) -> String {
        format!(
            "s3://{}/{}",
            self.bucket,
            self.backup_prefix(backup_id).trim_end_matches('/')
        )
    }

    async fn create(&self, backup_id: &str, name: &str) -> io::Result<Box<dyn FileSink>> {
        // Memory: the part being filled, one waiting in the channel, `parts_in_flight` uploading.
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(upload(
            self.client.clone(),
            self.bucket.clone(),
            self.key(backup_id, name),
            rx,
            self.parts_in_flight,
            self.sse.clone(),
        ));
        Ok(Box::new(S3Sink {
            buffer: Vec::with_capacity(self.part_size),
            part_size: self.part_size,
            tx: Some(PollSender::new(tx)),
            task: Some(task),
        }))
    }

    async fn publish(&self, manifest: &Manifest) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
        self.put_small(self.key(&manifest.backup_id, MANIFEST_NAME), json)
            .await
    }

    async fn discard(&self, backup_id: &str) -> io::Result<()> {
        let keys = self.keys_under(&self.backup_prefix(backup_id)).await?;
        if keys
            .iter()
            .any(|k| k.ends_with(&format!("/{MANIFEST_NAME}")))
        {
            return Err(io::Error::other(format!(
                "backup {backup_id} is published; not discarding it"
            )));
        }
        self.delete_keys(keys).await
    }

    async fn list(&self) -> io::Result<Vec<Manifest>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        for key in self.keys_under(&root).await? {
            if key.ends_with(&format!("/{MANIFEST_NAME}"))
                && let Some(m) = self.get_json::<Manifest>(&key).await?
            {
                out.push(m);
            }
        }
        super::manifest::sort_oldest_first(&mut out);
        Ok(out)
    }

    async fn manifest(&self, backup_id: &str) -> io::Result<Manifest> {
        self.get_json(&self.key(backup_id, MANIFEST_NAME))
            .await?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no backup `{backup_id}` in s3://{}/{} (no manifest)",
                        self.bucket, self.prefix
                    ),
                )
            })
    }

    async fn open(&self, backup_id: &str, name: &str) -> io::Result<Reader> {
        let key = self.key(backup_id, name);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("reading {key}"), e))?;
        Ok(Box::pin(out.body.into_async_read()))
    }

    async fn record_verification(
        &self,
        backup_id: &str,
        verification: &Verification,
    ) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(verification).map_err(io::Error::other)?;
        self.put_small(self.key(backup_id, VERIFICATION_NAME), json)
            .await
    }

    async fn verification(&self, backup_id: &str) -> io::Result<Option<Verification>> {
        self.get_json(&self.key(backup_id, VERIFICATION_NAME)).await
    }

    async fn delete(&self, backup_id: &str) -> io::Result<()> {
        // The manifest first: from then on the backup does not exist.
        self.delete_keys(vec![self.key(backup_id, MANIFEST_NAME)])
            .await?;
        let rest = self.keys_under(&self.backup_prefix(backup_id)).await?;
        self.delete_keys(rest).await
    }
}
