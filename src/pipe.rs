//! Pipes to and from PostgreSQL's tools, tuned for throughput: enlarged to 1 MiB
//! (`F_SETPIPE_SZ`), and used in batches.
//!
//! Why batches: pg_dump writes its output 4–8 KiB at a time and pg_restore reads its input
//! the same way. An event loop reading a pipe is woken as soon as anything is in it, so a
//! 1 GB dump cost some 100,000 wake-ups, each an `epoll_wait`, a `read` and the futex
//! traffic of handing the bytes on — measured with `strace -c` at twice the system calls
//! of the equivalent shell pipeline, and on two cores system time is wall time. After a
//! short read (or a short write) the next one waits a millisecond, so that the pipe fills
//! (or drains) meanwhile: at a few hundred MB/s a millisecond is a few hundred KiB, well
//! within the enlarged pipe, so the tool on the other side never waits for us. A full
//! read (or write) goes on at once: a fast producer is never slowed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The size pipes are enlarged to (the default limit for unprivileged users).
pub const PIPE_SIZE: i32 = 1 << 20;

/// A read or write smaller than this is short: the next one waits for [`PAUSE`].
const SHORT: usize = 256 << 10;

const PAUSE: Duration = Duration::from_millis(1);

/// Enlarges the pipe `fd` belongs to, returning whether it now holds [`PIPE_SIZE`]. A pipe
/// that cannot be enlarged (`/proc/sys/fs/pipe-max-size`, or a user over
/// `pipe-user-pages-soft`) works as it is.
pub fn enlarge(fd: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity, F_GETPIPE_SZ
    // reads it; on a descriptor that is no pipe both fail with EBADF/EINVAL.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) >= PIPE_SIZE
    }
}

/// One end of a pipe, read or written in batches (see the module's documentation).
pub struct Batched<T> {
    inner: T,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Only a pipe large enough to fill during a pause is used in batches: pausing on a
    /// default 64 KiB pipe would cap the throughput at 64 KiB per millisecond.
    batches: bool,
}

impl<T: std::os::fd::AsRawFd> Batched<T> {
    pub fn new(inner: T) -> Batched<T> {
        let batches = enlarge(&inner);
        Batched {
            inner,
            pause: None,
            batches,
        }
    }
}

impl<T> Batched<T> {
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(pause) = &mut self.pause {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        Poll::Ready(())
    }

    fn after(&mut self, done: usize, wanted: usize) {
        if self.batches && done > 0 && done < SHORT.min(wanted) {
            self.pause = Some(Box::pin(tokio::time::sleep(PAUSE)));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.wait(cx));
        let before = buf.filled().len();
        let wanted = buf.remaining();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.after(buf.filled().len() - before, wanted);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.wait(cx));
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.after(n, data.len());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_byte_arrives_in_order_through_batched_ends() {
        let mut child = tokio::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = Batched::new(child.stdin.take().unwrap());
        let mut stdout = Batched::new(child.stdout.take().unwrap());
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            // Small writes, as pg_dump makes them.
            for piece in sent.chunks(5000) {
                stdin.write_all(piece).await.unwrap();
            }
            stdin.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data, "{} bytes of {}", got.len(), data.len());
        child.wait().await.unwrap();
    }
}
