//! Progress of a step's long transfers (a dump being stored, a backup being read back for a
//! restore): a byte counter the data path bumps, and a ticker that reports it as
//! [`Event::Progress`] once a second while the transfer lasts. How often it reaches the log
//! is the log's business (a bar on a terminal, a line every so often otherwise).

use super::events::{Event, Events};
pub use crate::counting::{Counter, Counting, Tap};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often a transfer's count is reported.
pub const TICK: Duration = Duration::from_secs(1);

/// Reports a counter while it lives; a last report when dropped.
pub struct Meter {
    _stop: DropGuard,
}

impl Meter {
    /// Starts reporting `counter` for step `step` as `what` ("dump", "restore"), out of
    /// `total` bytes when known.
    pub fn start(
        events: &Events,
        step: &str,
        what: &str,
        counter: Counter,
        total: Option<u64>,
    ) -> Meter {
        let stop = CancellationToken::new();
        let events = events.clone();
        let step = step.to_string();
        let what = what.to_string();
        let token = stop.clone();
        tokio::spawn(async move {
            let report = |done: bool| {
                events.emit(Event::Progress {
                    step: step.clone(),
                    what: what.clone(),
                    bytes: counter.get(),
                    total,
                    done,
                    at: chrono::Utc::now(),
                })
            };
            // A first report as the transfer starts, so that rates count from here.
            report(false);
            let mut tick = tokio::time::interval(TICK);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => report(false),
                    _ = token.cancelled() => {
                        report(true);
                        return;
                    }
                }
            }
        });
        Meter {
            _stop: stop.drop_guard(),
        }
    }
}
