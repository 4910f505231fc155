//! What a repository's WAL archive holds, for `opsrunner wal status` and the `wal_status`
//! step: the newest segment and how long ago it was archived (the RPO of point-in-time
//! recovery), the timelines, and every run of segments missing where recovery would need
//! it — between the first and the last segment of a timeline, and between the start of the
//! oldest kept base backup and the first segment archived after it. Read without any key:
//! names and the plaintext headers are enough.

use super::manifest::BaseBackup;
use super::{AnyStore, listing, wal};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// A stretch of segments recovery would need and the archive does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    /// Which base backups cannot be recovered past it, when it is before the first segment
    /// archived after them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveState {
    pub repository: String,
    pub segments: usize,
    pub files: usize,
    pub timelines: BTreeSet<u32>,
    pub newest: Option<String>,
    pub newest_archived_at: Option<DateTime<Utc>>,
    pub newest_age_s: Option<u64>,
    pub base_backups: usize,
    /// The oldest base backup and the segment its recovery starts at.
    pub oldest_base_backup: Option<String>,
    pub gaps: Vec<Gap>,
}

/// What is wrong with an archive, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A gap recovery cannot pass (exit 6, like a damaged backup).
    Gap(String),
    /// Nothing archived lately (exit 5, like a stale backup).
    TooOld(String),
}

/// Reads the archive's listing, the newest segment's header and the base backups.
pub async fn inspect(store: &AnyStore) -> std::io::Result<ArchiveState> {
    let names = wal::list(store).await?;
    let segments: Vec<&String> = names.iter().filter(|n| n.len() == 24).collect();
    let newest = match segments.last() {
        None => None,
        Some(name) => {
            let object = wal::read(store, name)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (header, _) =
                wal::parse(name, &object).map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(header)
        }
    };
    let bases: Vec<BaseBackup> = listing::base_backups(store)
        .await?
        .into_iter()
        .filter_map(|c| c.manifest.base)
        .collect();
    let size = newest
        .as_ref()
        .map(|h| h.size)
        .or_else(|| bases.first().map(|b| b.wal_segment_size))
        .unwrap_or(16 << 20);
    let mut gaps: Vec<Gap> = wal::gaps(&names, size)
        .into_iter()
        .map(|(first_missing, last_missing)| Gap {
            first_missing,
            last_missing,
            needed_by: None,
        })
        .collect();
    let oldest = bases.first();
    if let Some(gap) = oldest.and_then(|base| before_first(&names, base, &segments)) {
        gaps.insert(0, gap);
    }
    let timelines = segments
        .iter()
        .filter_map(|n| wal::segment_position(n, size).map(|(t, _)| t))
        .collect();
    let age = newest.as_ref().map(|h| {
        (Utc::now() - h.archived_at)
            .to_std()
            .unwrap_or_default()
            .as_secs()
    });
    Ok(ArchiveState {
        repository: store.location(),
        segments: segments.len(),
        files: names.len(),
        timelines,
        newest: newest.as_ref().map(|h| h.name.clone()),
        newest_archived_at: newest.as_ref().map(|h| h.archived_at),
        newest_age_s: age,
        base_backups: bases.len(),
        oldest_base_backup: oldest.map(|b| {
            wal::segment_name(
                b.timeline,
                b.start().unwrap_or(0) / b.wal_segment_size,
                b.wal_segment_size,
            )
        }),
        gaps,
    })
}

/// The segments missing from the start of `base` to the first segment archived after it on
/// its timeline (all of them, when none was).
fn before_first(names: &[String], base: &BaseBackup, segments: &[&String]) -> Option<Gap> {
    let size = base.wal_segment_size;
    let start = base.start()? / size;
    let first_name = wal::segment_name(base.timeline, start, size);
    if names.binary_search(&first_name).is_ok() {
        return None;
    }
    let next = segments
        .iter()
        .filter_map(|n| wal::segment_position(n, size))
        .filter(|&(t, p)| t == base.timeline && p > start)
        .map(|(_, p)| p)
        .min();
    let last = next.map_or(start, |p| p - 1);
    Some(Gap {
        first_missing: first_name,
        last_missing: wal::segment_name(base.timeline, last, size),
        needed_by: Some("the oldest base backup".into()),
    })
}

impl ArchiveState {
    pub fn text(&self) -> String {
        let mut out = format!("WAL archive in {}: ", self.repository);
        match (&self.newest, self.newest_archived_at, self.newest_age_s) {
            (Some(name), Some(at), Some(age)) => out.push_str(&format!(
                "{} segment{} on timeline{} {}; newest {name} archived {} ({} ago)\n",
                self.segments,
                if self.segments == 1 { "" } else { "s" },
                if self.timelines.len() == 1 { "" } else { "s" },
                self.timelines
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                at.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::plan::duration::format(Duration::from_secs(age))
            )),
            _ => out.push_str("no segment archived\n"),
        }
        if let Some(start) = &self.oldest_base_backup {
            out.push_str(&format!(
                "  {} base backup{}; the oldest needs WAL from {start} on\n",
                self.base_backups,
                if self.base_backups == 1 { "" } else { "s" }
            ));
        }
        for gap in &self.gaps {
            out.push_str(&format!(
                "  GAP: {} … {} missing{}\n",
                gap.first_missing,
                gap.last_missing,
                gap.needed_by
                    .as_ref()
                    .map(|b| format!(" (needed by {b})"))
                    .unwrap_or_default()
            ));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("states serialize") + "\n"
    }

    /// The first thing wrong: a gap, else nothing archived within `max_age`.
    pub fn problem(&self, max_age: Option<Duration>) -> Option<Problem> {
        if let Some(gap) = self.gaps.first() {
            return Some(Problem::Gap(format!(
                "the WAL archive has {} gap{}, the first {} … {}: point-in-time recovery cannot pass it",
                self.gaps.len(),
                if self.gaps.len() == 1 { "" } else { "s" },
                gap.first_missing,
                gap.last_missing
            )));
        }
        let max = max_age?;
        match self.newest_age_s {
            Some(age) if Duration::from_secs(age) <= max => None,
            Some(age) => Some(Problem::TooOld(format!(
                "the newest archived segment is {} old, older than max_age {}: is archiving failing? (see pg_stat_archiver)",
                crate::plan::duration::format(Duration::from_secs(age)),
                crate::plan::duration::format(max)
            ))),
            None => Some(Problem::TooOld("no WAL segment is archived".into())),
        }
    }
}
