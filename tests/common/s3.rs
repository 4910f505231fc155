//! A real S3-compatible HTTP server for tests and benchmarks: s3s with its file-system
//! backend, SigV4-authenticated, served by hyper on a loopback port, on a runtime of its
//! own. In front of it sits a small layer that can misbehave on part uploads the way
//! networks and busy stores do: 503 SlowDown, 500, a reset connection, a part cut off
//! midway, a 403 — and that counts what it saw.

// Each test binary and the benchmark server use a different part of this.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ACCESS_KEY: &str = "AKIAOPSRUNNERTEST";
pub const SECRET_KEY: &str = "opsrunner-test-secret-key-0123456789";
pub const BUCKET: &str = "backups-bucket";

/// What to do to one part upload instead of serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 SlowDown, as S3 answers when throttling.
    SlowDown,
    /// HTTP 500 InternalError.
    InternalError,
    /// The connection is reset (TCP RST) before any answer.
    Reset,
    /// About half of the part's body is read, then the connection is dropped.
    Truncate,
    /// HTTP 403 AccessDenied: permanent.
    Forbidden,
}

#[derive(Default)]
pub struct Stats {
    faults: Mutex<VecDeque<Fault>>,
    /// Part uploads that reached the server (faulty ones included).
    pub part_requests: AtomicUsize,
    /// Part uploads that carried a CRC32 checksum (header or trailer).
    pub parts_with_crc32: AtomicUsize,
    /// Requests with `x-amz-server-side-encryption: AES256`.
    pub sse_requests: AtomicUsize,
    /// Objects put (not parts) without that header.
    pub puts_without_sse: AtomicUsize,
    part_delay_ms: AtomicUsize,
    /// Faults for object reads (GET) whose path contains the pattern, in order.
    get_faults: Mutex<(String, VecDeque<Fault>)>,
    /// Object reads that got a fault.
    pub faulted_gets: AtomicUsize,
}

impl Stats {
    /// The faults not yet served.
    pub fn faults_left(&self) -> usize {
        self.faults.lock().unwrap().len()
    }
}

pub struct S3Server {
    pub endpoint: String,
    pub stats: Arc<Stats>,
}

impl S3Server {
    /// Serves `root` (buckets are its directories; [`BUCKET`] is created).
    pub fn start(root: &Path) -> S3Server {
        S3Server::with_faults(root, &[])
    }

    /// Like [`S3Server::start`]; the first part uploads get `faults`, in order.
    pub fn with_faults(root: &Path, faults: &[Fault]) -> S3Server {
        let stats = Arc::new(Stats::default());
        stats.faults.lock().unwrap().extend(faults.iter().copied());
        let endpoint = serve(root, stats.clone(), None);
        S3Server { endpoint, stats }
    }

    /// The next reads (GET) of objects whose path contains `pattern` get `faults`, in
    /// order (`Reset` and `Truncate` reset the connection before any answer).
    pub fn fail_gets(&self, pattern: &str, faults: &[Fault]) {
        *self.stats.get_faults.lock().unwrap() =
            (pattern.to_string(), faults.iter().copied().collect());
    }

    /// Every part upload waits this long before it is served (to catch a run mid-upload).
    pub fn delay_parts(&self, delay: Duration) {
        self.stats
            .part_delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }
}

/// Starts the server on its own thread and runtime; with `port`, on that port.
pub fn serve(root: &Path, stats: Arc<Stats>, port: Option<u16>) -> String {
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let objects = Arc::new(root.to_path_buf());
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                let service = service.clone();
                let stats = stats.clone();
                let objects = objects.clone();
                let handler = hyper::service::service_fn(move |req| {
                    handle(req, service.clone(), stats.clone(), fd, objects.clone())
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
    });
    format!("http://{addr}")
}

fn error_response(status: u16, code: &str, message: &str) -> hyper::Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(body))
        .unwrap()
}

/// Drops the connection with a TCP RST instead of a FIN.
fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection being served (it outlives this request), and the
    // option value is a valid `linger` of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Reads and discards a request body, up to `limit` bytes.
async fn drain(mut body: hyper::body::Incoming, limit: usize) {
    let mut read = 0;
    while read < limit {
        let frame = std::future::poll_fn(|cx| {
            hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await;
        match frame {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    service: s3s::service::S3Service,
    stats: Arc<Stats>,
    fd: std::os::fd::RawFd,
    objects: Arc<std::path::PathBuf>,
) -> Result<hyper::Response<s3s::Body>, Failure> {
    // Conditional writes and deletes one at a time, as S3 applies them: s3s-fs checks a
    // PUT's If-Match / If-None-Match and then writes, which lets racing writers all pass,
    // and ignores a DELETE's If-Match (checked here, against its MD5 ETag).
    let conditional = (req.method() == hyper::Method::PUT || req.method() == hyper::Method::DELETE)
        && (req.headers().contains_key("if-match") || req.headers().contains_key("if-none-match"));
    let _one_at_a_time = if conditional {
        static CONDITIONAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        Some(CONDITIONAL.lock().await)
    } else {
        None
    };
    if req.method() == hyper::Method::DELETE
        && let Some(wanted) = req.headers().get("if-match").and_then(|v| v.to_str().ok())
    {
        let path = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8_lossy();
        let file = objects.join(path.trim_start_matches('/'));
        let current = std::fs::read(&file).ok().map(|bytes| {
            use md5::Digest;
            let sum = md5::Md5::digest(&bytes);
            format!(
                "\"{}\"",
                sum.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        });
        match current {
            None => {
                return Ok(error_response(
                    404,
                    "NoSuchKey",
                    "The specified key does not exist.",
                ));
            }
            Some(etag) if etag != wanted.trim() => {
                return Ok(error_response(
                    412,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                ));
            }
            Some(_) => {}
        }
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    if header("x-amz-server-side-encryption") == "aes256" {
        stats.sse_requests.fetch_add(1, Ordering::SeqCst);
    }
    let is_part = req.method() == hyper::Method::PUT
        && req.uri().query().is_some_and(|q| q.contains("partNumber="));
    if req.method() == hyper::Method::PUT
        && !is_part
        && header("x-amz-server-side-encryption").is_empty()
    {
        stats.puts_without_sse.fetch_add(1, Ordering::SeqCst);
    }
    if is_part {
        stats.part_requests.fetch_add(1, Ordering::SeqCst);
        if !header("x-amz-checksum-crc32").is_empty()
            || header("x-amz-trailer").contains("x-amz-checksum-crc32")
        {
            stats.parts_with_crc32.fetch_add(1, Ordering::SeqCst);
        }
        let delay = stats.part_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        let fault = stats.faults.lock().unwrap().pop_front();
        if let Some(fault) = fault {
            let length: usize = header("content-length").parse().unwrap_or(usize::MAX);
            let body = req.into_body();
            return match fault {
                // An error answer comes after the whole body was received, as from a real
                // store; answering early would show the client a broken connection instead.
                Fault::SlowDown => {
                    drain(body, usize::MAX).await;
                    Ok(error_response(
                        503,
                        "SlowDown",
                        "Please reduce your request rate.",
                    ))
                }
                Fault::InternalError => {
                    drain(body, usize::MAX).await;
                    Ok(error_response(
                        500,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ))
                }
                Fault::Forbidden => {
                    drain(body, usize::MAX).await;
                    Ok(error_response(403, "AccessDenied", "Access Denied"))
                }
                Fault::Reset => {
                    reset_on_close(fd);
                    Err("connection reset by the fault injector".into())
                }
                Fault::Truncate => {
                    drain(body, length / 2).await;
                    reset_on_close(fd);
                    Err("part cut off midway by the fault injector".into())
                }
            };
        }
    }
    if req.method() == hyper::Method::GET {
        let fault = {
            let mut faults = stats.get_faults.lock().unwrap();
            let (pattern, queue) = &mut *faults;
            if !pattern.is_empty() && req.uri().path().contains(pattern.as_str()) {
                queue.pop_front()
            } else {
                None
            }
        };
        if let Some(fault) = fault {
            stats.faulted_gets.fetch_add(1, Ordering::SeqCst);
            return match fault {
                Fault::SlowDown => Ok(error_response(
                    503,
                    "SlowDown",
                    "Please reduce your request rate.",
                )),
                Fault::InternalError => Ok(error_response(
                    500,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )),
                Fault::Forbidden => Ok(error_response(403, "AccessDenied", "Access Denied")),
                Fault::Reset | Fault::Truncate => {
                    reset_on_close(fd);
                    Err("connection reset by the fault injector".into())
                }
            };
        }
    }
    Ok(hyper::service::Service::call(&service, req).await?)
}

/// The environment an `opsrunner` process needs to reach the server: static credentials,
/// and no profile files or instance metadata look-ups on the test machine.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}
