//! A store that misbehaves on purpose, in front of any other: requests that fail, reads
//! cut short, answers that are slow. The conformance suite wraps every backend in it to
//! show that what sits above the stores never takes a failed or short answer for a good
//! one.

use super::store::{BoxFuture, Condition, FileSink, Listed, Reader, Small, Stat, Store};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What to do wrong, shared by every clone of a [`Faulty`] store.
#[derive(Default)]
pub struct Faults {
    /// The next this many requests fail (with an error of kind `Other`: a store that
    /// could not answer, not a verdict on what it holds).
    pub fail_next: AtomicUsize,
    /// When non-zero, every read ends cleanly after this many bytes, as a connection
    /// closed early by a proxy would look to a reader that trusts it.
    pub cut_reads_at: AtomicU64,
    /// Each request waits this many milliseconds before it is passed on.
    pub delay_ms: AtomicU64,
    /// Requests that failed on purpose.
    pub failed: AtomicUsize,
}

pub struct Faulty<S> {
    inner: S,
    pub faults: Arc<Faults>,
}

impl<S: Store> Faulty<S> {
    pub fn new(inner: S) -> Faulty<S> {
        Faulty {
            inner,
            faults: Arc::default(),
        }
    }

    /// The delay, then a failure if one is due.
    async fn before(&self, what: &str, key: &str) -> io::Result<()> {
        let delay = self.faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let due = self
            .faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if due {
            self.faults.failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other(format!(
                "{what} {}: injected failure",
                self.inner.location(key)
            )));
        }
        Ok(())
    }
}

impl<S: Store> Store for Faulty<S> {
    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        Box::pin(async move {
            self.before("writing", key).await?;
            self.inner.create(key).await
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async move {
            self.before("writing", key).await?;
            self.inner.put(key, bytes, condition).await
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: Option<u64>,
    ) -> BoxFuture<'a, io::Result<Reader>> {
        Box::pin(async move {
            self.before("reading", key).await?;
            let reader = self.inner.read(key, offset, length).await?;
            let cut = self.faults.cut_reads_at.load(Ordering::SeqCst);
            // Ends cleanly after `cut` bytes: a short read, as its consumer sees one.
            Ok(if cut > 0 {
                Box::pin(tokio::io::AsyncReadExt::take(reader, cut)) as Reader
            } else {
                reader
            })
        })
    }

    fn read_small<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, io::Result<Option<Small>>> {
        Box::pin(async move {
            self.before("reading", key).await?;
            self.inner.read_small(key, limit).await
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        Box::pin(async move {
            self.before("looking up", key).await?;
            self.inner.stat(key).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            self.before("listing", prefix).await?;
            self.inner.list(prefix).await
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition<'a>,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            self.before("deleting", key).await?;
            self.inner.delete(key, condition).await
        })
    }

    fn delete_under<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.before("deleting", prefix).await?;
            self.inner.delete_under(prefix).await
        })
    }

    fn unfinished<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        self.inner.unfinished(prefix)
    }

    fn lock_file(&self, name: &str) -> Option<std::path::PathBuf> {
        self.inner.lock_file(name)
    }
}
