//! A repository in memory (`memory://NAME`): the reference every backend is held to by
//! the conformance suite, and a fast store for tests of what sits above the backends.
//! Objects live as long as the process; two stores opened with the same name share them.

use super::store::{
    BoxFuture, Condition, FileSink, Listed, Reader, Small, Stat, Store, check_key, check_prefix,
};
use bytes::Bytes;
use chrono::Utc;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

#[derive(Clone)]
struct Object {
    bytes: Bytes,
    stat: Stat,
}

type Objects = Arc<Mutex<BTreeMap<String, Object>>>;

#[derive(Clone)]
pub struct MemoryStore {
    name: String,
    objects: Objects,
}

/// Every tag ever given out is new: a rewrite with the same bytes is still a new object.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

fn new_stat(size: usize) -> Stat {
    Stat {
        size: size as u64,
        modified: Some(Utc::now()),
        tag: format!("m{}", NEXT_TAG.fetch_add(1, Ordering::Relaxed)),
    }
}

impl MemoryStore {
    /// The store called `name`: the same objects for every caller in this process.
    pub fn named(name: &str) -> MemoryStore {
        static STORES: OnceLock<Mutex<BTreeMap<String, Objects>>> = OnceLock::new();
        let objects = STORES
            .get_or_init(Default::default)
            .lock()
            .expect("not poisoned")
            .entry(name.to_string())
            .or_default()
            .clone();
        MemoryStore {
            name: name.to_string(),
            objects,
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        self.objects.lock().expect("not poisoned")
    }
}

/// Whether an object's current tag lets `condition` go ahead.
fn holds(condition: Condition<'_>, current: Option<&Object>) -> bool {
    match condition {
        Condition::Always => true,
        Condition::Absent => current.is_none(),
        Condition::Matches(tag) => current.is_some_and(|o| o.stat.tag == tag),
    }
}

impl Store for MemoryStore {
    fn location(&self, key: &str) -> String {
        format!("memory://{}/{key}", self.name)
    }

    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn FileSink>>> {
        Box::pin(async move {
            check_key(key)?;
            let sink: Box<dyn FileSink> = Box::new(MemorySink {
                objects: self.objects.clone(),
                key: key.to_string(),
                buffer: Vec::new(),
            });
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
            let mut objects = self.objects();
            if !holds(condition, objects.get(key)) {
                return Ok(None);
            }
            let stat = new_stat(bytes.len());
            let tag = stat.tag.clone();
            objects.insert(
                key.to_string(),
                Object {
                    bytes: Bytes::from(bytes),
                    stat,
                },
            );
            Ok(Some(tag))
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
            let bytes = match self.objects().get(key) {
                Some(o) => o.bytes.clone(),
                None => return Err(super::store::not_found(self.location(key))),
            };
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = match length {
                Some(n) => start.saturating_add(usize::try_from(n).unwrap_or(usize::MAX)),
                None => bytes.len(),
            }
            .min(bytes.len());
            let reader: Reader = Box::pin(std::io::Cursor::new(bytes.slice(start..end)));
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
            Ok(self.objects().get(key).map(|o| Small {
                bytes: (o.stat.size <= limit).then(|| o.bytes.to_vec()),
                stat: o.stat.clone(),
            }))
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Stat>>> {
        Box::pin(async move {
            check_key(key)?;
            Ok(self.objects().get(key).map(|o| o.stat.clone()))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            check_prefix(prefix)?;
            Ok(self
                .objects()
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, o)| Listed {
                    key: k.clone(),
                    stat: o.stat.clone(),
                    problem: None,
                })
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
            let mut objects = self.objects();
            if !holds(condition, objects.get(key)) {
                return Ok(false);
            }
            objects.remove(key);
            Ok(true)
        })
    }
}

/// Collects what is written; the object appears whole at commit.
struct MemorySink {
    objects: Objects,
    key: String,
    buffer: Vec<u8>,
}

impl AsyncWrite for MemorySink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buffer.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl FileSink for MemorySink {
    fn commit(self: Box<Self>) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        Box::pin(async move {
            let MemorySink {
                objects,
                key,
                buffer,
            } = *self;
            let stat = new_stat(buffer.len());
            objects.lock().expect("not poisoned").insert(
                key,
                Object {
                    bytes: Bytes::from(buffer),
                    stat,
                },
            );
            Ok(())
        })
    }
}
