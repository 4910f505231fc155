//! No overlapping runs: before a step that writes to a target or a repository starts, the
//! run takes an exclusive lock on it — a PostgreSQL advisory lock for a target, a lease in
//! the repository itself for a repository — and keeps it until the run ends. Locks are
//! taken when first needed rather than up front, because a plan may start its database in
//! an earlier step (`wait_ready`). Another run holding one makes this run wait up to
//! `--wait-lock`, then the step is refused (exit code 3) naming the holder.
//!
//! Ephemeral targets are this run's own: never locked.

use crate::exec::events::Events;
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::pg::conn::ConnInfo;
use crate::pg::lock::{self as pg_lock, TargetLock};
use crate::plan::step_params::StepKind;
use crate::repo::lease::{self, Holder, Lease};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How often a waiting run looks again.
const POLL: Duration = Duration::from_secs(1);

pub struct Locks {
    me: Holder,
    wait: Duration,
    lease_ttl: Duration,
    /// Targets that are this run's own (ephemeral clusters).
    own_targets: BTreeSet<String>,
    events: Events,
    /// Fired when a held lease is lost: the run stops rather than write beside another.
    cancel: CancellationToken,
    targets: Mutex<BTreeMap<String, TargetLock>>,
    repositories: Mutex<BTreeMap<String, Lease>>,
}

impl Locks {
    pub fn new(
        me: Holder,
        wait: Duration,
        lease_ttl: Duration,
        own_targets: BTreeSet<String>,
        events: Events,
        cancel: CancellationToken,
    ) -> Locks {
        Locks {
            me,
            wait,
            lease_ttl,
            own_targets,
            events,
            cancel,
            targets: Mutex::new(BTreeMap::new()),
            repositories: Mutex::new(BTreeMap::new()),
        }
    }

    /// Holds what `kind` writes to (rendered into `ctx`), waiting up to `--wait-lock`.
    pub async fn for_step(&self, kind: &StepKind, ctx: &StepContext) -> Result<(), StepError> {
        if kind.writes_target()
            && let Some(name) = kind.target()
            && !self.own_targets.contains(name)
            && let Some(url) = ctx.targets.get(name)
        {
            self.target(name, url, ctx).await?;
        }
        if kind.writes_repository()
            && let Some(name) = kind.repository()
            && let Some(repo) = ctx.repositories.get(name)
        {
            self.repository(name, repo, ctx).await?;
        }
        Ok(())
    }

    async fn target(&self, name: &str, url: &str, ctx: &StepContext) -> Result<(), StepError> {
        // Held across the attempt: two steps of this run on one target take it once.
        let mut held = self.targets.lock().await;
        if held.contains_key(name) {
            return Ok(());
        }
        let info = ConnInfo::parse(url)?;
        let label = format!(
            "opsrunner run {} plan {} on {} pid {}",
            self.me.run_id, self.me.plan, self.me.host, self.me.pid
        );
        let what = format!("target `{name}`");
        let lock = self
            .wait_for(&what, ctx, || async {
                match pg_lock::try_lock(&info, &label).await {
                    Ok(pg_lock::Attempt::Held(lock)) => Ok(Ok(lock)),
                    Ok(pg_lock::Attempt::Busy(holder)) => Ok(Err(holder)),
                    Err(e) => Err(StepError::transient(format!(
                        "cannot take the run's lock on {what}: {e}"
                    ))),
                }
            })
            .await?;
        held.insert(name.to_string(), lock);
        Ok(())
    }

    async fn repository(
        &self,
        name: &str,
        repo: &crate::plan::model::Repository,
        ctx: &StepContext,
    ) -> Result<(), StepError> {
        let mut held = self.repositories.lock().await;
        if held.contains_key(name) {
            return Ok(());
        }
        let store = crate::repo::open(repo, &ctx.base_dir).await?;
        let what = format!("repository `{name}`");
        // Before anything is written there, the lease included: a location that is no
        // repository (a mistyped path) or whose encryption disagrees is refused.
        let checked = crate::repo::record::require_for(&store, repo, &ctx.base_dir)
            .await
            .map_err(|e| {
                let message = format!("{what}: {e}");
                if e.is_transient() {
                    StepError::transient(message)
                } else {
                    StepError::permanent(message)
                }
            })?;
        if let Some(said) = crate::repo::record::said(&checked, &store.location()) {
            self.events.notice(None, said);
        }
        let on_lost: lease::OnLost = {
            let events = self.events.clone();
            let cancel = self.cancel.clone();
            let what = what.clone();
            Arc::new(move |why: String| {
                events.notice(
                    None,
                    format!("lost the lease on {what}: {why}; stopping the run"),
                );
                cancel.cancel();
            })
        };
        let lease = self
            .wait_for(&what, ctx, || async {
                match lease::try_acquire(&store, &self.me, self.lease_ttl, on_lost.clone()).await {
                    Ok(lease::Attempt::Held(l)) => Ok(Ok(l)),
                    Ok(lease::Attempt::Busy(holder)) => Ok(Err(holder.map_or_else(
                        || "another run (its lease cannot be read)".to_string(),
                        |h| h.describe(),
                    ))),
                    Err(e) => Err(crate::exec::error::io_error(
                        &format!("cannot take the run's lease on {what}"),
                        &e,
                    )),
                }
            })
            .await?;
        held.insert(name.to_string(), lease);
        Ok(())
    }

    /// Tries `attempt` until it holds, the wait is over (refused, naming the holder) or the
    /// step is cancelled.
    async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        ctx: &StepContext,
        attempt: F,
    ) -> Result<T, StepError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, String>, StepError>>,
    {
        let deadline = Instant::now() + self.wait;
        let mut told = false;
        loop {
            let holder = match attempt().await? {
                Ok(held) => {
                    if told {
                        self.events
                            .notice(Some(&ctx.step_id), format!("{what} is free; locked it"));
                    }
                    return Ok(held);
                }
                Err(holder) => holder,
            };
            let now = Instant::now();
            if now >= deadline {
                let waited = if self.wait.is_zero() {
                    String::new()
                } else {
                    format!(
                        " after waiting {}",
                        crate::plan::duration::format(self.wait)
                    )
                };
                return Err(StepError {
                    kind: ErrorKind::Refused,
                    message: format!(
                        "{what} is locked by another run{waited}: {holder}. Nothing was written; run again when it has finished, or pass --wait-lock DURATION to wait for it; if that run is not running any more, `opsrunner repo unlock` removes its lock (it refuses while the holder is alive)"
                    ),
                });
            }
            if !told {
                self.events.notice(
                    Some(&ctx.step_id),
                    format!(
                        "{what} is locked by {holder}; waiting up to {}",
                        crate::plan::duration::format(deadline - now)
                    ),
                );
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL.min(deadline - now)) => {}
                _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
            }
        }
    }

    /// Lets go of everything, at the end of the run.
    pub async fn release_all(&self) {
        for (name, lease) in std::mem::take(&mut *self.repositories.lock().await) {
            if let Err(e) = lease.release().await {
                self.events.notice(
                    None,
                    format!("could not release the lease on repository `{name}` ({e}); it lapses on its own"),
                );
            }
        }
        for (_, lock) in std::mem::take(&mut *self.targets.lock().await) {
            lock.release().await;
        }
    }
}
