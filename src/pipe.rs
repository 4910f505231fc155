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

/// Moves `len` bytes of `file` from offset `at` into the blocking pipe `pipe`, returning
/// how many went (0 at the file's end). `splice(2)` hands the page cache's pages to the
/// pipe instead of copying them twice through a buffer, which on a restore is a gigabyte
/// of system time less per gigabyte of data; where the file system cannot splice, the
/// bytes are read and written instead.
pub fn splice_to_pipe(
    file: &std::fs::File,
    at: u64,
    len: usize,
    pipe: &mut std::fs::File,
) -> io::Result<usize> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut offset = libc::loff_t::try_from(at).map_err(io::Error::other)?;
    loop {
        // SAFETY: both descriptors are open for the call's duration (borrowed), `offset`
        // is a valid loff_t the kernel advances, and the output offset is null, as it
        // must be for a pipe.
        let n = unsafe {
            libc::splice(
                file.as_raw_fd(),
                &mut offset,
                pipe.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINVAL | libc::ENOSYS) => break,
            _ => return Err(e),
        }
    }
    let mut piece = vec![0; len.min(1 << 20)];
    let n = file.read_at(&mut piece, at)?;
    pipe.write_all(&piece[..n])?;
    Ok(n)
}

/// A child's stdin as a blocking pipe, enlarged, for writing from a blocking thread.
pub fn blocking_stdin(stdin: tokio::process::ChildStdin) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let fd = stdin.into_owned_fd()?;
    // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    enlarge(&fd);
    Ok(std::fs::File::from(fd))
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
