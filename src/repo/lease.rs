//! A run's exclusive hold on a repository it writes to, kept in the repository itself so
//! that it holds between machines and schedulers (two timers, a CronJob on two nodes).
//!
//! - Local directory: `.opsrunner.lock` at the root, locked with `flock` and holding the
//!   holder's description, removed when the holder lets go. The kernel releases the lock
//!   when the holder's process ends, however it ends, so a killed run's lock is free at
//!   once (its file stays, unlocked, and the next run takes it).
//! - Any other store (S3, memory): the object `.opsrunner.lease`, created only when
//!   absent (S3's `If-None-Match: *`), renewed every third of its time to live when it is
//!   still the one written (`If-Match` on its tag), and deleted at the end (again only if
//!   it is still ours). A lease whose holder died lapses after its time to live and is
//!   then taken over, again only if unchanged, so two waiters cannot both take it; on the
//!   holder's own machine (same boot, same pid namespace) a dead holder's lease is taken
//!   over at once.
//!
//! The names start with a dot, which no backup id does: listings never see them.

use super::{AnyStore, Condition};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const LOCAL_LOCK_NAME: &str = ".opsrunner.lock";
pub const LEASE_NAME: &str = ".opsrunner.lease";

/// How long an S3 lease lasts without renewal.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Who holds (or wants) a lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub run_id: String,
    pub plan: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// S3 leases: when the lease lapses unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when the holder let go.
    #[serde(default)]
    pub released: bool,
    /// The holder's boot and process namespace: another process with the same one can
    /// tell whether the holder's pid is still alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_space: Option<String>,
    /// S3 leases: the time to live the holder renews within, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl Holder {
    /// This process, for run `run_id` of plan `plan`.
    pub fn this_process(run_id: &str, plan: &str, started_at: DateTime<Utc>) -> Holder {
        Holder {
            run_id: run_id.to_string(),
            plan: plan.to_string(),
            host: hostname(),
            pid: std::process::id(),
            started_at,
            expires_at: None,
            released: false,
            process_space: process_space(),
            ttl_secs: None,
        }
    }

    /// "run 20261125-… of plan `nightly` on db1 (pid 4242), started 2026-11-25 02:00:01 UTC".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "run {} of plan `{}` on {} (pid {}), started {}",
            self.run_id,
            self.plan,
            self.host,
            self.pid,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        if let Some(t) = self.expires_at {
            s.push_str(&format!(
                ", lease valid until {}",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        s
    }

    /// Whether the lease may be taken over: let go, not renewed in time, or held by a
    /// process of this machine and namespace that no longer exists (a killed run on this
    /// machine does not block the next one for a whole time to live).
    fn lapsed(&self, now: DateTime<Utc>) -> bool {
        self.released || self.expires_at.is_some_and(|t| t < now) || self.holder_is_gone()
    }

    /// The longest this lease may live after the store last wrote it, whatever its
    /// `expires_at` says (a clock gone wrong, or a forged 2036): the holder's time to live,
    /// at most [`MAX_TTL`]; `ttl` (the reader's) when the holder did not record one.
    fn life(&self, ttl: Duration) -> Duration {
        self.ttl_secs
            .map_or(ttl, |s| Duration::from_secs(s).clamp(MIN_TTL, MAX_TTL))
    }

    fn holder_is_gone(&self) -> bool {
        let Some(space) = &self.process_space else {
            return false;
        };
        if process_space().as_ref() != Some(space) || self.pid == 0 || self.pid > i32::MAX as u32 {
            return false;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        let rc = unsafe { libc::kill(self.pid as i32, 0) };
        rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

/// The shortest and the longest time to live a lease may have.
pub const MIN_TTL: Duration = Duration::from_secs(3);
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The most a lease object may hold: a holder's record is a few hundred bytes.
const MAX_LEASE_BYTES: u64 = 64 * 1024;

/// A lease object as found in the store: its holder (`None`: unreadable — garbage, empty,
/// too large, a newer opsrunner's format), its ETag and when the store last wrote it.
struct Found {
    holder: Option<Holder>,
    etag: String,
    written: Option<DateTime<Utc>>,
}

impl Found {
    /// When the lease lapses at the latest: the store's time of its last write plus its
    /// life (see [`Holder::life`]). An unreadable lease lapses the same way, after the
    /// reader's `ttl`: a holder that is alive rewrites it every third of that.
    fn lapses_at(&self, ttl: Duration) -> Option<DateTime<Utc>> {
        let life = self.holder.as_ref().map_or(ttl, |h| h.life(ttl));
        let written = self.written?;
        let by_write = written + chrono::Duration::from_std(life).ok()?;
        Some(match self.holder.as_ref().and_then(|h| h.expires_at) {
            Some(expires) => expires.min(by_write),
            None => by_write,
        })
    }

    fn lapsed(&self, now: DateTime<Utc>, ttl: Duration) -> bool {
        self.holder.as_ref().is_some_and(|h| h.lapsed(now))
            || self.lapses_at(ttl).is_some_and(|t| t < now)
    }
}

async fn read_lease(store: &AnyStore, key: &str) -> io::Result<Option<Found>> {
    Ok(store
        .objects()
        .read_small(key, MAX_LEASE_BYTES)
        .await?
        .map(|object| Found {
            holder: object
                .bytes
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok()),
            etag: object.stat.tag,
            written: object.stat.modified,
        }))
}

/// This boot of this machine and this process's pid namespace, when Linux says: two
/// processes with the same value see the same pids.
fn process_space() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.display()))
}

/// The machine's host name, for naming a lease's holder.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The outcome of one attempt to take a lease.
pub enum Attempt {
    Held(Lease),
    /// Someone else holds it; who, when the lease says so legibly.
    Busy(Option<Holder>),
}

/// Called (once) when a held S3 lease is lost: taken over after the renewals failed for
/// its whole time to live, or overwritten by someone else.
pub type OnLost = Arc<dyn Fn(String) + Send + Sync>;

/// A lease held by this process. [`Lease::release`] lets go; dropping it without that
/// releases a local lock at once and lets an S3 lease lapse after its time to live.
pub struct Lease {
    inner: Inner,
}

enum Inner {
    Local {
        file: std::fs::File,
        path: std::path::PathBuf,
    },
    Kept(Box<KeptLease>),
}

/// A lease kept by conditional writes, renewed in the background.
struct KeptLease {
    store: AnyStore,
    key: String,
    etag: Arc<tokio::sync::Mutex<String>>,
    /// Set by the renewer when the lease was lost: then it is not ours to delete.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Stops the renewals when the lease is released or dropped.
    _stop: tokio_util::sync::DropGuard,
    stop: CancellationToken,
}

/// One attempt to take the lease of `store` for `me`; never waits.
pub async fn try_acquire(
    store: &AnyStore,
    me: &Holder,
    ttl: Duration,
    on_lost: OnLost,
) -> io::Result<Attempt> {
    match store.objects().lock_file(LOCAL_LOCK_NAME) {
        Some(path) => local_try(&path, me).await,
        None => kept_try(store, me, ttl, on_lost).await,
    }
}

async fn local_try(path: &Path, me: &Holder) -> io::Result<Attempt> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    std::fs::create_dir_all(path.parent().expect("inside the repository"))?;
    let path = path.to_path_buf();
    // The holder removes the file when it lets go; a lock taken on a file that was removed
    // meanwhile holds nothing, so the file is opened again until the locked one is the
    // one at the path.
    for _ in 0..10 {
        // Not through a symbolic link: the lock file is ours, in the repository.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                let locked = file.metadata()?;
                let current = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if (locked.dev(), locked.ino()) != (current.dev(), current.ino()) {
                    continue;
                }
                let text = serde_json::to_vec_pretty(me).map_err(io::Error::other)?;
                file.set_len(0)?;
                (&file).write_all(&text)?;
                file.sync_data()?;
                return Ok(Attempt::Held(Lease {
                    inner: Inner::Local {
                        file,
                        path: path.clone(),
                    },
                }));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes its name just after it locks: give it that moment.
                for _ in 0..25 {
                    let holder = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    if holder.is_some() {
                        return Ok(Attempt::Busy(holder));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Ok(Attempt::Busy(None));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(Attempt::Busy(None))
}

async fn kept_try(
    store: &AnyStore,
    me: &Holder,
    ttl: Duration,
    on_lost: OnLost,
) -> io::Result<Attempt> {
    let key = LEASE_NAME.to_string();
    // A few rounds: another waiter may take over or release between our reads and writes.
    for _ in 0..4 {
        let now = Utc::now();
        let record = Holder {
            expires_at: Some(now + ttl),
            released: false,
            ttl_secs: Some(ttl.as_secs()),
            ..me.clone()
        };
        let body = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        if let Some(etag) = store
            .objects()
            .put(&key, body.clone(), Condition::Absent)
            .await?
        {
            return Ok(Attempt::Held(kept_lease(
                store, key, record, etag, ttl, on_lost,
            )));
        }
        let Some(found) = read_lease(store, &key).await? else {
            continue;
        };
        // An unreadable lease (it may be a newer opsrunner's) lapses like any other: after
        // its life since the store last wrote it, which a living holder keeps renewing.
        if !found.lapsed(now, ttl) {
            return Ok(Attempt::Busy(found.holder));
        }
        if let Some(etag) = store
            .objects()
            .put(&key, body, Condition::Matches(&found.etag))
            .await?
        {
            return Ok(Attempt::Held(kept_lease(
                store, key, record, etag, ttl, on_lost,
            )));
        }
    }
    Ok(Attempt::Busy(None))
}

fn kept_lease(
    store: &AnyStore,
    key: String,
    record: Holder,
    etag: String,
    ttl: Duration,
    on_lost: OnLost,
) -> Lease {
    let etag = Arc::new(tokio::sync::Mutex::new(etag));
    let stop = CancellationToken::new();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_lost: OnLost = {
        let lost = lost.clone();
        Arc::new(move |why| {
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
            on_lost(why)
        })
    };
    tokio::spawn(renew(
        store.clone(),
        key.clone(),
        record.clone(),
        etag.clone(),
        ttl,
        on_lost,
        stop.clone(),
    ));
    Lease {
        inner: Inner::Kept(Box::new(KeptLease {
            store: store.clone(),
            key,
            etag,
            lost,
            _stop: stop.clone().drop_guard(),
            stop,
        })),
    }
}

/// Renews the lease every third of its time to live until aborted. A failed renewal is
/// tried again at the next turn; the lease is lost when someone else's write replaced it,
/// or when it lapsed before a renewal got through.
async fn renew(
    store: AnyStore,
    key: String,
    mut record: Holder,
    etag: Arc<tokio::sync::Mutex<String>>,
    ttl: Duration,
    on_lost: OnLost,
    stop: CancellationToken,
) {
    let mut valid_until = record.expires_at.unwrap_or_else(Utc::now);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = stop.cancelled() => return,
        }
        let mut current = etag.lock().await;
        // Released while this turn waited for the ETag: the release's write is the last.
        if stop.is_cancelled() {
            return;
        }
        record.expires_at = Some(Utc::now() + ttl);
        let body = match serde_json::to_vec_pretty(&record) {
            Ok(b) => b,
            Err(_) => continue,
        };
        match store
            .objects()
            .put(&key, body, Condition::Matches(&current))
            .await
        {
            Ok(Some(new)) => {
                *current = new;
                valid_until = record.expires_at.unwrap_or(valid_until);
            }
            Ok(None) => {
                on_lost(format!(
                    "the lease {key} was replaced by another run's; this run no longer holds the repository"
                ));
                return;
            }
            Err(e) if Utc::now() > valid_until => {
                on_lost(format!(
                    "the lease {key} lapsed: it could not be renewed ({e})"
                ));
                return;
            }
            Err(_) => {}
        }
    }
}

impl Lease {
    /// Lets go: the lock file or the lease object is removed (a lost lease, which is no
    /// longer ours, is left alone).
    pub async fn release(self) -> io::Result<()> {
        match self.inner {
            // Removed while still locked, then unlocked: a waiter that opened this file
            // sees it is gone once it gets the lock, and opens the path again.
            Inner::Local { file, path } => {
                let removed = std::fs::remove_file(&path);
                file.unlock()?;
                removed
            }
            Inner::Kept(lease) => {
                let KeptLease {
                    store,
                    key,
                    etag,
                    lost,
                    stop,
                    _stop,
                } = *lease;
                stop.cancel();
                // Taken after the renewer's last turn: no renewal follows the delete.
                let etag = etag.lock().await.clone();
                if lost.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                store
                    .objects()
                    .delete(&key, Condition::Matches(&etag))
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// What `opsrunner repo unlock` did.
pub enum Unlocked {
    /// There was no lock to remove.
    Free,
    /// The lock of this holder (`None`: unreadable) was removed.
    Removed(Option<Holder>),
}

/// Why `opsrunner repo unlock` removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error(
        "the repository is locked by {0}, which is alive; nothing was removed. Stop that run, or wait for it"
    )]
    Alive(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Breaks a repository's lock by hand, refusing while its holder is alive: for a local
/// repository while the holder's process holds the file lock (the kernel knows); for S3
/// while the lease is renewed within its time to live, or its holder's process is known
/// to be alive on this machine.
pub async fn unlock(store: &AnyStore, ttl: Duration) -> Result<Unlocked, UnlockError> {
    match store.objects().lock_file(LOCAL_LOCK_NAME) {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Unlocked::Free),
                Err(e) => return Err(e.into()),
            };
            let holder: Option<Holder> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match file.try_lock() {
                Ok(()) => {
                    std::fs::remove_file(&path)?;
                    file.unlock()?;
                    Ok(Unlocked::Removed(holder))
                }
                Err(std::fs::TryLockError::WouldBlock) => Err(UnlockError::Alive(
                    holder.map_or_else(|| "a running process".to_string(), |h| h.describe()),
                )),
                Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
            }
        }
        None => {
            let key = LEASE_NAME;
            let Some(found) = read_lease(store, key).await? else {
                return Ok(Unlocked::Free);
            };
            let now = Utc::now();
            if !found.lapsed(now, ttl) {
                let who = found.holder.as_ref().map_or_else(
                    || "a lease that cannot be read".to_string(),
                    |h| h.describe(),
                );
                let until = found
                    .lapses_at(ttl)
                    .map(|t| {
                        format!(
                            " (renewed; it lapses by {} unless renewed again)",
                            t.format("%Y-%m-%d %H:%M:%S UTC")
                        )
                    })
                    .unwrap_or_default();
                return Err(UnlockError::Alive(format!("{who}{until}")));
            }
            if store
                .objects()
                .delete(key, Condition::Matches(&found.etag))
                .await?
            {
                Ok(Unlocked::Removed(found.holder))
            } else {
                // Replaced or removed since it was read: someone else acted first.
                Err(UnlockError::Alive(
                    "a run that renewed or took the lease just now".to_string(),
                ))
            }
        }
    }
}
