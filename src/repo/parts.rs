//! What the backends that upload in parts share: a sink that cuts a file into parts and
//! hands them to an upload task with bounded memory, the pool their buffers come from, and
//! a reader that fails when a store stops sending in the middle of an answer.

use super::store::FileSink;
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// How many times a small object (a manifest, a lease) is read when its answer breaks off
/// midway: requests are retried by the clients, bodies are not.
pub const SMALL_READ_ATTEMPTS: u32 = 3;

/// How long an answer's body may send nothing before the read fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A body reader that fails when the store sends nothing for [`STALL_TIMEOUT`]: the
/// deadlines above end when an answer's first byte arrives, and a store may stop there.
/// Only time spent waiting for the store counts: a reader that is not asked for bytes (a
/// busy consumer) is not stalled, so the clock starts when a read finds nothing ready.
pub struct StallGuard<R> {
    inner: R,
    limit: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl<R> StallGuard<R> {
    pub fn new(inner: R, limit: Duration) -> StallGuard<R> {
        StallGuard {
            inner,
            limit,
            idle: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallGuard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.limit;
                    this.idle.as_mut().reset(deadline);
                }
                match this.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the store sent nothing for {}s in the middle of an answer",
                            this.limit.as_secs()
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Part buffers kept for the next parts. A fresh 16 MiB buffer per part, freed when its
/// upload finished, made peak RSS grow with the number of parts: after the first free,
/// glibc raises its mmap threshold above the part size, and later buffers land in
/// per-thread heaps whose freed space is kept, not returned (a 5.4 GB backup to S3 peaked
/// at 96 MiB, 125 MiB age-encrypted, against 65 MiB with every buffer mmapped). Reused
/// buffers are allocated once, so the peak is the parts alive at once.
pub struct PartPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most: those one upload has alive at once (the part being filled,
    /// one waiting in the channel, the parts in flight).
    keep: usize,
}

impl PartPool {
    pub fn new(parts_in_flight: usize) -> PartPool {
        PartPool {
            free: std::sync::Mutex::new(Vec::new()),
            keep: parts_in_flight + 2,
        }
    }

    /// An empty buffer with room for `size` bytes.
    pub fn take(&self, size: usize) -> Vec<u8> {
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match kept {
            Some(mut buffer) => {
                buffer.reserve_exact(size);
                buffer
            }
            None => Vec::with_capacity(size),
        }
    }

    fn give(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buffer);
        }
    }

    /// The body of a request: the buffer goes back to the pool when the client drops the
    /// last reference to it (after the request and any retry of it).
    pub fn body(self: &Arc<PartPool>, bytes: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledPart {
            bytes,
            pool: Arc::clone(self),
        })
    }
}

struct PooledPart {
    bytes: Vec<u8>,
    pool: Arc<PartPool>,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.bytes));
    }
}

pub enum Msg {
    /// The next part of a multipart upload.
    Part(Vec<u8>),
    /// The whole file, smaller than one part: one PUT instead of a multipart upload (six
    /// requests), which matters for the many small files of a directory-format backup.
    Whole(Vec<u8>),
    Finish,
}

#[derive(Clone, Copy)]
enum Next {
    Part,
    Whole,
    Finish,
}

/// Buffers writes into parts and hands them to a backend's upload task; `commit` sends
/// [`Msg::Finish`] (or the file [`Msg::Whole`]) and waits for the task, dropping the sink
/// closes the channel without it, and the task then gives the upload up.
pub struct PartSink {
    buffer: Vec<u8>,
    pool: Arc<PartPool>,
    part_size: usize,
    parts_sent: bool,
    tx: Option<PollSender<Msg>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl PartSink {
    /// A sink whose parts of `part_size` bytes go to `task` through `tx` (a channel of
    /// one: memory is the part being filled, one waiting, and those the task holds).
    pub fn new(
        pool: Arc<PartPool>,
        part_size: usize,
        tx: mpsc::Sender<Msg>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    ) -> PartSink {
        PartSink {
            buffer: pool.take(part_size),
            pool,
            part_size,
            parts_sent: false,
            tx: Some(PollSender::new(tx)),
            task: Some(task),
        }
    }
    fn poll_send(&mut self, cx: &mut Context<'_>, next: Next) -> Poll<io::Result<()>> {
        let tx = self.tx.as_mut().expect("open");
        match tx.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            // The upload task stopped taking parts: it failed, and its error says why.
            Poll::Ready(Err(_)) => {
                let Some(task) = self.task.as_mut() else {
                    return Poll::Ready(Err(io::Error::other("the upload failed")));
                };
                match Pin::new(task).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(joined) => {
                        self.task = None;
                        Poll::Ready(Err(match joined {
                            Ok(Err(e)) => e,
                            Ok(Ok(())) => io::Error::other("the upload ended early"),
                            Err(e) => io::Error::other(e),
                        }))
                    }
                }
            }
            Poll::Ready(Ok(())) => {
                let msg = match next {
                    Next::Part => {
                        self.parts_sent = true;
                        let fresh = self.pool.take(self.part_size);
                        Msg::Part(std::mem::replace(&mut self.buffer, fresh))
                    }
                    Next::Whole => Msg::Whole(std::mem::take(&mut self.buffer)),
                    Next::Finish => Msg::Finish,
                };
                let _ = tx.send_item(msg);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for PartSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buffer.len() >= self.part_size {
            match self.poll_send(cx, Next::Part) {
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

impl FileSink for PartSink {
    fn commit(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        Box::pin(async move {
            if self.parts_sent {
                if !self.buffer.is_empty() {
                    std::future::poll_fn(|cx| self.poll_send(cx, Next::Part)).await?;
                }
                std::future::poll_fn(|cx| self.poll_send(cx, Next::Finish)).await?;
            } else {
                std::future::poll_fn(|cx| self.poll_send(cx, Next::Whole)).await?;
            }
            self.tx = None;
            let task = self
                .task
                .take()
                .ok_or_else(|| io::Error::other("the upload failed"))?;
            task.await.map_err(io::Error::other)?
        })
    }
}

impl Drop for PartSink {
    fn drop(&mut self) {
        // Closing the channel without `Finish` makes the upload task abort the upload.
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A reader whose consumer pauses longer than the limit is not stalled; one whose
    /// source sends nothing for the limit is.
    #[tokio::test]
    async fn only_time_spent_waiting_for_the_store_counts_as_a_stall() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut guard = StallGuard::new(rx, Duration::from_millis(200));
        tx.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        guard.read_exact(&mut buf).await.unwrap();
        // The consumer is busy for longer than the limit; then it waits a little for the
        // store, which answers well within the limit.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.write_all(b"def").await.unwrap();
            tx
        });
        guard.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"def");
        let tx = writer.await.unwrap();
        // Nothing comes: after the limit, the read fails.
        let e = guard.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(tx);
    }

    #[test]
    fn part_buffers_come_back_when_the_request_body_is_dropped_and_are_reused() {
        let pool = Arc::new(PartPool::new(1));
        let mut first = pool.take(1 << 20);
        first.extend_from_slice(b"part one");
        let address = first.as_ptr();
        let body = pool.body(first);
        // While the client holds the body (and any retry's clone of it) the buffer is not free.
        assert!(pool.free.lock().unwrap().is_empty());
        drop(body);
        let again = pool.take(1 << 20);
        assert_eq!(
            again.as_ptr(),
            address,
            "the freed buffer is handed out again"
        );
        assert!(again.is_empty() && again.capacity() >= 1 << 20);

        // At most `keep` (in flight + 2) buffers are kept; the rest are freed.
        let buffers: Vec<_> = (0..5).map(|_| pool.take(1024)).collect();
        for b in buffers {
            pool.give(b);
        }
        assert_eq!(pool.free.lock().unwrap().len(), 3);
    }
}
