//! Byte counters for progress reports: bumped by the data paths (`repo/`, `steps/`), read
//! by `exec::progress`. A leaf: it imports nothing of the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts bytes as they pass; cheap to clone and to bump.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn new() -> Counter {
        Counter::default()
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something shown every piece read through a [`Tap`].
pub trait Sees {
    fn see(&mut self, bytes: &[u8]);
}

impl Sees for Counter {
    fn see(&mut self, bytes: &[u8]) {
        self.add(bytes.len() as u64);
    }
}

/// A reader that shows what is read through it to `S` on the way.
pub struct Tap<R, S> {
    inner: R,
    sees: S,
}

impl<R, S> Tap<R, S> {
    pub fn new(inner: R, sees: S) -> Tap<R, S> {
        Tap { inner, sees }
    }
}

/// A reader that counts what is read through it.
pub type Counting<R> = Tap<R, Counter>;

impl<R: tokio::io::AsyncRead + Unpin, S: Sees + Unpin> tokio::io::AsyncRead for Tap<R, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        this.sees.see(&buf.filled()[before..]);
        result
    }
}
