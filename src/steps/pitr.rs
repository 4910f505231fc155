//! `restore` with `to:` — point-in-time recovery into a throwaway cluster.
//!
//! Everything that can be known before anything is touched is checked first: which base
//! backup ends before the target (the newest such), which timeline recovery follows (made
//! explicit: `latest` is resolved to a number from the archive's history files), and that
//! every WAL segment from the backup's start to the target is in the archive — the first
//! missing one is named and nothing is changed. Only then is the ephemeral target's
//! cluster replaced by the backup, told to recover to the target with `opsrunner wal
//! fetch` as its `restore_command`, and watched until it has promoted; the step reports
//! where recovery actually ended.

use crate::exec::events::{Outputs, Stream};
use crate::exec::{EphemeralDir, StepContext, StepError};
use crate::pg::recovery::{self, Recovery};
use crate::repo::listing::{self, Checked};
use crate::repo::manifest::{BaseBackup, format_lsn, parse_lsn};
use crate::repo::timeline::{self, Path};
use crate::repo::{AnyStore, wal};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Where a point-in-time restore stops: exactly one of `time`, `lsn`, `xid`, `name` or
/// `latest: true`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointInTime {
    /// A moment with its zone, RFC 3339 (`2026-11-20T10:30:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// A WAL position (`0/3000060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// A transaction id: recovery stops at its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u64>,
    /// A restore point made with `pg_create_restore_point(name)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// To the end of the archive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub latest: bool,
    /// A moment recorded by a `pitr_mark` step: `latest` (the newest whose WAL is
    /// archived), `random` (any one after the oldest base backup's end) or a mark's
    /// restore point name. Recovery stops at its restore point, on its timeline, and a
    /// verify compares the tables with the fingerprints the mark recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
    /// The timeline to follow: `latest` (default: the newest timeline in the archive that
    /// descends from the backup's), `current` (the backup's own) or a number. Always
    /// resolved to a number before recovery starts, and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
    /// Include the target transaction (default) or stop just before it (time, lsn, xid).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub inclusive: bool,
}

fn yes() -> bool {
    true
}

/// The target, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Time(DateTime<Utc>),
    Lsn(u64),
    Xid(u64),
    Name(String),
    Latest,
    /// A `pitr_mark`'s restore point, until [`choose`] has found it (it then becomes the
    /// [`Target::Name`] of its restore point).
    Mark(MarkChoice),
}

#[derive(Debug, Clone, PartialEq)]
pub enum MarkChoice {
    Latest,
    Random,
    Named(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TimelineChoice {
    Latest,
    Current,
    Number(u32),
}

impl PointInTime {
    pub fn target(&self) -> Result<Target, String> {
        let mut set = Vec::new();
        if let Some(t) = &self.time {
            let parsed = DateTime::parse_from_rfc3339(t.trim()).map_err(|e| {
                format!("`time: {t}` is not an RFC 3339 moment with its zone, such as 2026-11-20T10:30:00Z ({e})")
            })?;
            set.push(Target::Time(parsed.with_timezone(&Utc)));
        }
        if let Some(l) = &self.lsn {
            set.push(Target::Lsn(parse_lsn(l).ok_or_else(|| {
                format!("`lsn: {l}` is not a WAL position such as 0/3000060")
            })?));
        }
        if let Some(x) = self.xid {
            set.push(Target::Xid(x));
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 63 {
                return Err("`name` must be a restore point's name (1 to 63 bytes)".into());
            }
            set.push(Target::Name(n.clone()));
        }
        if self.latest {
            set.push(Target::Latest);
        }
        if let Some(m) = &self.mark {
            set.push(Target::Mark(match m.trim() {
                "latest" => MarkChoice::Latest,
                "random" => MarkChoice::Random,
                "" => return Err("`mark` is `latest`, `random` or a mark's name".into()),
                n => MarkChoice::Named(n.to_string()),
            }));
        }
        match set.len() {
            1 => Ok(set.remove(0)),
            0 => Err(
                "`to` needs one of `time`, `lsn`, `xid`, `name`, `mark` or `latest: true`".into(),
            ),
            _ => Err(
                "`to` takes exactly one of `time`, `lsn`, `xid`, `name`, `mark` and `latest`"
                    .into(),
            ),
        }
    }

    pub fn timeline(&self) -> Result<TimelineChoice, String> {
        match self.timeline.as_deref().map(str::trim) {
            None | Some("latest") => Ok(TimelineChoice::Latest),
            Some("current") => Ok(TimelineChoice::Current),
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(TimelineChoice::Number)
                .ok_or_else(|| {
                    format!("`timeline: {n}` is not `latest`, `current` or a timeline number")
                }),
        }
    }

    /// What is wrong with these settings, placed under `at` (the key that holds them).
    pub fn problems(&self, at: &str) -> Vec<crate::plan::step_params::Problem> {
        use crate::plan::step_params::Problem;
        let mut problems = Vec::new();
        if let Err(e) = self.target() {
            problems.push(Problem::new(&[at], e));
        }
        if let Err(e) = self.timeline() {
            problems.push(Problem::new(&[at, "timeline"], e));
        }
        problems
    }

    pub fn describe(&self) -> String {
        let what = match self.target() {
            Ok(Target::Time(t)) => format!("time {}", t.to_rfc3339()),
            Ok(Target::Lsn(l)) => format!("WAL position {}", format_lsn(l)),
            Ok(Target::Xid(x)) => format!("transaction {x}"),
            Ok(Target::Name(n)) => format!("restore point `{n}`"),
            Ok(Target::Latest) => "the end of the archive".into(),
            Ok(Target::Mark(MarkChoice::Latest)) => "the newest mark".into(),
            Ok(Target::Mark(MarkChoice::Random)) => "a mark chosen at random".into(),
            Ok(Target::Mark(MarkChoice::Named(n))) => format!("mark `{n}`"),
            Err(e) => e,
        };
        let timeline = match self.timeline() {
            Ok(TimelineChoice::Latest) if self.mark.is_some() && self.timeline.is_none() => {
                "the mark's timeline".to_string()
            }
            Ok(TimelineChoice::Latest) => "the newest timeline".to_string(),
            Ok(TimelineChoice::Current) => "the backup's timeline".to_string(),
            Ok(TimelineChoice::Number(n)) => format!("timeline {n}"),
            Err(e) => e,
        };
        let exclusive = if self.inclusive {
            ""
        } else {
            " (stopping just before it)"
        };
        format!("{what}{exclusive}, following {timeline}")
    }
}

/// What a point-in-time restore will use, decided before anything is touched.
pub struct Choice {
    pub backup: Checked,
    pub target: Target,
    pub path: Path,
    /// The segments from the backup's start to the target (or the end of the archive).
    pub needed: Vec<String>,
    pub missing: Vec<String>,
    /// The mark recovery stops at, for a `mark` target.
    pub mark: Option<crate::repo::mark::Mark>,
    /// What a preview says about a mark it could not fully choose (a random one, an
    /// encrypted one).
    pub mark_note: Option<String>,
}

impl Choice {
    fn base(&self) -> &BaseBackup {
        self.backup
            .manifest
            .base
            .as_ref()
            .expect("base backups only")
    }

    /// For previews and messages.
    pub fn lines(&self) -> Vec<String> {
        let m = &self.backup.manifest;
        let base = self.base();
        let mut lines = vec![
            format!(
                "base backup {} (ends at {} on timeline {}, {})",
                m.backup_id,
                base.stop_lsn,
                base.timeline,
                base.stop_time.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            format!(
                "timeline {} ({})",
                self.path.target(),
                self.path
                    .steps
                    .iter()
                    .map(|s| s.timeline.to_string())
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        ];
        let range = format!(
            "WAL {} … {} ({} segment{})",
            self.needed.first().map_or("", String::as_str),
            self.needed.last().map_or("", String::as_str),
            self.needed.len(),
            if self.needed.len() == 1 { "" } else { "s" }
        );
        lines.push(match self.missing.first() {
            None => format!("{range}: all archived"),
            Some(first) => format!("{range}: {} MISSING, the first {first}", self.missing.len()),
        });
        if let Some(mark) = &self.mark {
            lines.push(crate::repo::mark::describe(mark));
        }
        if let Some(note) = &self.mark_note {
            lines.push(note.clone());
        }
        lines
    }
}

async fn history(
    store: &AnyStore,
    timeline: u32,
    identities: Option<&crate::repo::crypto::Identities>,
) -> Result<Vec<(u32, u64)>, StepError> {
    let name = timeline::history_name(timeline);
    let object = wal::read(store, &name).await.map_err(|e| match e {
        wal::WalError::NotFound(_) => StepError::permanent(format!(
            "timeline {timeline} has no history file ({name}) in the archive"
        )),
        other => StepError::transient(format!("reading {name}: {other}")),
    })?;
    let text = wal::decode(&name, &object, identities)
        .await
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))?;
    timeline::parse_history(&String::from_utf8_lossy(&text))
        .map_err(|e| StepError::permanent(format!("{name}: {e}")))
}

/// The path of timelines to follow from a backup on `from`.
async fn path_for(
    store: &AnyStore,
    names: &[String],
    from: u32,
    choice: &TimelineChoice,
    identities: Option<&crate::repo::crypto::Identities>,
) -> Result<Path, StepError> {
    let wanted = match choice {
        TimelineChoice::Current => from,
        TimelineChoice::Number(n) => *n,
        TimelineChoice::Latest => {
            // As PostgreSQL's own `latest`: history files of consecutive timelines.
            let present = timeline::history_timelines(names);
            let mut newest = from;
            while present.contains(&(newest + 1)) {
                newest += 1;
            }
            newest
        }
    };
    if wanted == 1 || wanted == from && !timeline::history_timelines(names).contains(&wanted) {
        return Ok(Path::single(wanted));
    }
    Ok(Path::from_history(
        wanted,
        &history(store, wanted, identities).await?,
    ))
}

/// Chooses the backup and proves the WAL is there, reading only.
pub async fn choose(
    store: &AnyStore,
    repository: &str,
    backup: &str,
    to: &PointInTime,
    identities: Option<&crate::repo::crypto::Identities>,
    preview: bool,
) -> Result<Choice, StepError> {
    let mut target = to.target().map_err(StepError::permanent)?;
    let mut timeline_choice = to.timeline().map_err(StepError::permanent)?;
    let listing_error = |e: std::io::Error| {
        crate::exec::io_error(&format!("cannot list repository `{repository}`"), &e)
    };
    let mut backups = listing::base_backups(store).await.map_err(listing_error)?;
    let names = wal::list(store).await.map_err(listing_error)?;
    if backup != "latest" {
        let one = listing::manifest(store, backup)
            .await
            .map_err(|e| StepError::permanent(e.to_string()))?;
        if one.manifest.base.is_none() {
            return Err(StepError::permanent(format!(
                "{backup} is a logical backup of database `{}`; a point-in-time restore needs a base backup (a `base_backup` step)",
                one.manifest.database
            )));
        }
        backups = vec![one];
    }
    let newest = backups.last().ok_or_else(|| {
        StepError::permanent(format!(
            "repository `{repository}` holds no base backup; a point-in-time restore starts from one (a `base_backup` step)"
        ))
    })?;
    let newest_base = newest.manifest.base.clone().expect("base backups only");
    // A mark becomes the restore point it names, on its own timeline, and bounds the
    // backups to those that end before it, as a position would.
    let mut mark = None;
    let mut bound = match &target {
        Target::Lsn(l) => Some(*l),
        _ => None,
    };
    let mut mark_note = None;
    if let Target::Mark(which) = &target {
        let found = find_mark(
            store, repository, &names, &backups, which, identities, preview,
        )
        .await?;
        if let Some(m) = &found.mark {
            if m.system_identifier != newest_base.system_identifier {
                return Err(StepError::permanent(format!(
                    "mark `{}` is of cluster {}, the base backups of repository `{repository}` of cluster {}",
                    m.name, m.system_identifier, newest_base.system_identifier
                )));
            }
            target = Target::Name(m.name.clone());
        }
        bound = Some(found.place.lsn);
        if to.timeline.is_none() {
            timeline_choice = TimelineChoice::Number(found.place.timeline);
        }
        mark = found.mark;
        mark_note = found.note;
    }
    // The timeline to follow is decided from the newest backup's timeline; older backups
    // qualify when they lie on the same path.
    let path = path_for(
        store,
        &names,
        newest_base.timeline,
        &timeline_choice,
        identities,
    )
    .await?;
    let on_path: Vec<&Checked> = backups
        .iter()
        .filter(|c| {
            let b = c.manifest.base.as_ref().expect("base backups only");
            b.start().is_some_and(|s| path.contains(b.timeline, s))
        })
        .collect();
    let ends_before = |c: &&&Checked| {
        let b = c.manifest.base.as_ref().expect("base backups only");
        match (&target, bound) {
            (Target::Time(t), _) => b.stop_time <= *t,
            (_, Some(l)) => b.stop().is_some_and(|s| s <= l),
            _ => true,
        }
    };
    let chosen = match on_path.iter().rev().find(ends_before) {
        Some(c) => (*c).clone(),
        None => {
            let Some(oldest) = on_path.first() else {
                return Err(StepError::permanent(format!(
                    "no base backup in repository `{repository}` lies on timeline {} ({} checked); nothing was touched",
                    path.target(),
                    backups.len()
                )));
            };
            let b = oldest.manifest.base.as_ref().expect("base backups only");
            return Err(StepError::permanent(format!(
                "the target ({}) lies before the end of {} base backup on timeline {}: the oldest, {}, ends at {} ({}). A restore cannot stop before its backup is consistent; nothing was touched",
                to.describe(),
                if backup == "latest" {
                    "every"
                } else {
                    "the chosen"
                },
                path.target(),
                oldest.manifest.backup_id,
                b.stop_lsn,
                b.stop_time.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
    };
    let base = chosen.manifest.base.clone().expect("base backups only");
    let segment = base.wal_segment_size;
    let start = base.start().expect("checked manifest");
    let stop = base.stop().expect("checked manifest");
    let end = match (&target, bound) {
        (Target::Lsn(l), _) => *l,
        // A mark's position is where its record ends: the last byte is one before.
        (_, Some(l)) => l.saturating_sub(1).max(stop.saturating_sub(1)),
        // To the newest segment recovery could read along the path; at least the
        // backup's own end.
        _ => newest_on_path(&names, &path, segment)
            .map_or(stop, |pos| ((pos + 1) * segment).saturating_sub(1))
            .max(stop.saturating_sub(1)),
    };
    let needed = path.segments(start, end, segment);
    let missing: Vec<String> = needed
        .iter()
        .filter(|n| names.binary_search(n).is_err())
        .cloned()
        .collect();
    Ok(Choice {
        backup: chosen,
        target,
        path,
        needed,
        missing,
        mark,
        mark_note,
    })
}

/// The mark a `mark` target resolved to: where it is, what it records (`None` only in a
/// preview of an encrypted archive), and what a preview should add about the choice.
struct FoundMark {
    place: crate::repo::mark::Place,
    mark: Option<crate::repo::mark::Mark>,
    note: Option<String>,
}

/// The mark a `mark` target means. `latest` and `random` consider only marks a base backup
/// can reach — after the end of the oldest one, their segment archived — so that an old or
/// not yet archived mark is passed over rather than failing the verify; a mark named
/// outright is used as it is (and refused later if it cannot be reached).
///
/// A preview does not draw the random mark (the run draws its own): it shows the newest,
/// and says so; without a key it reads no encrypted mark and shows where it is.
async fn find_mark(
    store: &AnyStore,
    repository: &str,
    names: &[String],
    backups: &[Checked],
    which: &MarkChoice,
    identities: Option<&crate::repo::crypto::Identities>,
    preview: bool,
) -> Result<FoundMark, StepError> {
    use crate::repo::mark;
    let size = backups
        .last()
        .and_then(|c| c.manifest.base.as_ref())
        .map_or(16 << 20, |b| b.wal_segment_size);
    let places = mark::places(names, size);
    let earliest = backups
        .iter()
        .filter_map(|c| c.manifest.base.as_ref().and_then(|b| b.stop()))
        .min()
        .unwrap_or(u64::MAX);
    let reachable: Vec<&mark::Place> = places
        .iter()
        .filter(|p| p.lsn >= earliest && names.binary_search(&p.file[..24].to_string()).is_ok())
        .collect();
    let read = |place: &mark::Place| {
        let place = place.clone();
        async move {
            mark::read_unless_sealed(store, &place, identities, preview)
                .await
                .map_err(|e| match e {
                    wal::WalError::Unavailable(e) => {
                        crate::exec::io_error(&format!("cannot read mark {}", place.file), &e)
                    }
                    other => StepError::permanent(other.to_string()),
                })
        }
    };
    let found = |place: &mark::Place, mark: Option<mark::Mark>, note: Option<String>| {
        let note = note.or_else(|| {
            mark.is_none().then(|| {
                format!(
                    "mark at {} on timeline {} (encrypted: its name and fingerprints are read when the step runs, with the key)",
                    format_lsn(place.lsn),
                    place.timeline
                )
            })
        });
        FoundMark {
            place: place.clone(),
            mark,
            note,
        }
    };
    let none = || {
        StepError::permanent(format!(
            "repository `{repository}` holds no mark a base backup can reach ({} mark{} in the archive; a mark counts once its WAL segment is archived and a base backup ends before it). A `pitr_mark` step makes them",
            places.len(),
            if places.len() == 1 { "" } else { "s" }
        ))
    };
    match which {
        MarkChoice::Latest => {
            let place = reachable.last().ok_or_else(none)?;
            Ok(found(place, read(place).await?, None))
        }
        MarkChoice::Random if preview => {
            let place = reachable.last().ok_or_else(none)?;
            let note = format!(
                "mark: one of {} drawn at random when the step runs (the oldest at {}); shown for the newest",
                reachable.len(),
                format_lsn(reachable[0].lsn)
            );
            Ok(found(place, read(place).await?, Some(note)))
        }
        MarkChoice::Random => {
            if reachable.is_empty() {
                return Err(none());
            }
            let place = reachable[fastrand::usize(..reachable.len())];
            Ok(found(place, read(place).await?, None))
        }
        MarkChoice::Named(name) => {
            let mut sealed = None;
            for place in places.iter().rev() {
                match read(place).await? {
                    Some(m) if &m.name == name => return Ok(found(place, Some(m), None)),
                    Some(_) => {}
                    None => {
                        sealed.get_or_insert(place);
                    }
                }
            }
            if let Some(place) = sealed {
                let note = format!(
                    "mark `{name}`: the marks are encrypted and the preview holds no key; shown for the newest, the one named is found when the step runs"
                );
                return Ok(found(place, None, Some(note)));
            }
            Err(StepError::permanent(format!(
                "repository `{repository}` holds no mark named `{name}` ({} mark{} in the archive; marks are pruned with the WAL they need)",
                places.len(),
                if places.len() == 1 { "" } else { "s" }
            )))
        }
    }
}

/// The position of the newest archived segment recovery along `path` would read.
fn newest_on_path(names: &[String], path: &Path, segment: u64) -> Option<u64> {
    names
        .iter()
        .filter_map(|n| wal::segment_position(n, segment))
        .filter(|(tli, pos)| {
            path.segments(pos * segment, pos * segment, segment)
                .first()
                .and_then(|n| wal::segment_position(n, segment))
                .is_some_and(|(t, _)| t == *tli)
        })
        .map(|(_, pos)| pos)
        .max()
}

/// The settings that make recovery stop at the target.
pub fn target_settings(target: &Target, inclusive: bool) -> Vec<(&'static str, String)> {
    let mut out = match target {
        Target::Time(t) => vec![(
            "recovery_target_time",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        )],
        Target::Lsn(l) => vec![("recovery_target_lsn", format_lsn(*l))],
        Target::Xid(x) => vec![("recovery_target_xid", x.to_string())],
        Target::Name(n) => vec![("recovery_target_name", n.clone())],
        Target::Latest => return Vec::new(),
        Target::Mark(_) => unreachable!("choose() turns a mark into its restore point's name"),
    };
    if !matches!(target, Target::Name(_)) {
        out.push(("recovery_target_inclusive", inclusive.to_string()));
    }
    out
}

/// The small plan `wal fetch` reads the repository from (endpoint, region, path style), in
/// the cluster's private directory.
pub fn fetch_plan(repo: &crate::plan::model::Repository) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut text = format!(
        "version: 1\nname: opsrunner-recovery\nrepositories:\n  archive:\n    url: {}\n",
        q(&repo.url)
    );
    if let Some(endpoint) = &repo.endpoint {
        text.push_str(&format!("    endpoint: {}\n", q(endpoint)));
    }
    if let Some(region) = &repo.region {
        text.push_str(&format!("    region: {}\n", q(region)));
    }
    if repo.force_path_style {
        text.push_str("    force_path_style: true\n");
    }
    text.push_str("steps:\n  - { id: none, type: shell, command: \"true\" }\n");
    text
}

/// `restore_command`: this program's `wal fetch`, reading the repository from `config`
/// (see [`fetch_plan`]) and the key from `identity` for an encrypted archive.
pub fn wal_fetch_command(
    config: &std::path::Path,
    identity: Option<&std::path::Path>,
) -> Result<String, StepError> {
    let exe = std::env::current_exe()
        .map_err(|e| StepError::permanent(format!("cannot find the opsrunner program: {e}")))?;
    let mut command = format!(
        "{} wal fetch %f %p --repository archive --plan {}",
        shell_quote(&exe.display().to_string()),
        shell_quote(&config.display().to_string())
    );
    if let Some(identity) = identity {
        command.push_str(&format!(
            " --identity {}",
            shell_quote(&identity.display().to_string())
        ));
    }
    Ok(command)
}

/// A copy of the age keys, one per line, for a server that cannot read the operator's file.
pub fn key_copy(secrets: &[String]) -> String {
    secrets.join("\n") + "\n"
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a point-in-time restore names: the `restore` step's parameters that apply to it.
pub struct Request<'a> {
    pub repository: &'a str,
    /// A base backup's id, or `latest`.
    pub backup: &'a str,
    /// The ephemeral target whose cluster becomes the recovered copy.
    pub target: &'a str,
    pub to: &'a PointInTime,
}

/// Where and from what a point-in-time restore will recover, decided before anything is
/// touched.
pub struct Prepared {
    pub cluster: EphemeralDir,
    pub store: AnyStore,
    pub choice: Choice,
    /// The chosen backup's manifest, unsealed.
    pub manifest: crate::repo::manifest::Manifest,
}

/// The throwaway cluster `target` stands for, or why there is none.
pub fn throwaway(ctx: &StepContext, target: &str) -> Result<EphemeralDir, StepError> {
    ctx.ephemeral.get(target).cloned().ok_or_else(|| {
        StepError::permanent(format!(
            "a point-in-time restore goes into a throwaway cluster: target `{target}` must be declared `ephemeral: true`"
        ))
    })
}

/// The base backup and WAL a point-in-time restore will use, chosen and unsealed, with
/// the major version of PostgreSQL that can start a copy of it.
pub struct Selected {
    pub store: AnyStore,
    pub choice: Choice,
    /// The chosen backup's manifest, unsealed.
    pub manifest: crate::repo::manifest::Manifest,
    pub major: u32,
}

/// Chooses the backup, reading only; the missing WAL is the caller's to judge (a refusal
/// for a restore, a verdict for a verify).
pub async fn select(
    ctx: &StepContext,
    repository: &str,
    backup: &str,
    to: &PointInTime,
) -> Result<Selected, StepError> {
    let store = ctx.repository(repository).await?;
    let choice = choose(
        &store,
        repository,
        backup,
        to,
        ctx.identities.as_ref(),
        false,
    )
    .await?;
    for line in choice.lines() {
        ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    }
    let mut manifest = choice.backup.manifest.clone();
    ctx.unseal(&mut manifest)?;
    let major = manifest.server_major();
    Ok(Selected {
        store,
        choice,
        manifest,
        major,
    })
}

/// Chooses the backup and checks what can be checked without touching anything but the
/// missing WAL (which the caller judges: a refusal for a restore, a verdict for a verify).
pub async fn prepare(p: &Request<'_>, ctx: &StepContext) -> Result<Prepared, StepError> {
    let mut cluster = throwaway(ctx, p.target)?;
    let Selected {
        store,
        choice,
        manifest,
        major,
    } = select(ctx, p.repository, p.backup, p.to).await?;
    if cluster.major != major {
        // A copy of a cluster's files starts only under its own major: the throwaway
        // cluster is replaced anyway, and the copy runs on that major's programs.
        let search = crate::pg::tools::Search::new(ctx.pg_bin_dirs.clone());
        let postgres = search
            .find("postgres", crate::pg::tools::Want::Exact(major))
            .map_err(|e| {
                StepError::permanent(format!(
                    "base backup {} is of PostgreSQL {}; the throwaway cluster of `{}` runs {}, and a copy of a cluster's files starts only under its own major: {e}",
                    manifest.backup_id, manifest.server_version, p.target, cluster.major
                ))
            })?;
        let real = postgres
            .path
            .canonicalize()
            .unwrap_or(postgres.path.clone());
        cluster.bin = real.parent().expect("a file has a parent").to_path_buf();
        cluster.major = major;
        ctx.events.output(
            &ctx.step_id,
            Stream::Stdout,
            format!(
                "base backup {} is of PostgreSQL {major}: the recovered copy runs {}",
                manifest.backup_id,
                postgres.describe()
            ),
        );
    }
    Ok(Prepared {
        cluster,
        store,
        choice,
        manifest,
    })
}

impl Prepared {
    /// Why recovery cannot reach the target, when WAL is missing.
    pub fn missing(&self, repository: &str) -> Option<String> {
        self.choice.missing_text(repository)
    }
}

impl Choice {
    /// Why recovery cannot reach the target, when WAL is missing.
    pub fn missing_text(&self, repository: &str) -> Option<String> {
        let first = self.missing.first()?;
        Some(format!(
            "the WAL archive of repository `{repository}` lacks {} of the {} segments from base backup {} to the target, the first {first}: recovery could not get past it",
            self.missing.len(),
            self.needed.len(),
            self.backup.manifest.backup_id
        ))
    }
}

pub async fn run(p: &Request<'_>, ctx: &StepContext) -> Result<Outputs, StepError> {
    let clock = Instant::now();
    let prepared = prepare(p, ctx).await?;
    if let Some(missing) = prepared.missing(p.repository) {
        return Err(StepError::permanent(format!(
            "{missing}. Nothing was touched"
        )));
    }
    let reached = recover(p, &prepared, ctx).await?;
    let mut outputs = reached.outputs(&prepared);
    outputs.insert(
        "duration_ms".into(),
        clock.elapsed().as_millis().to_string(),
    );
    Ok(outputs)
}

/// Where a recovery ended, as the step reports it.
pub struct Recovered {
    pub reached: recovery::Reached,
    pub files: u64,
}

impl Recovered {
    pub fn reached_time(&self) -> String {
        self.reached
            .time
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default()
    }

    pub fn outputs(&self, prepared: &Prepared) -> Outputs {
        let mut outputs = Outputs::new();
        outputs.insert("backup_id".into(), prepared.manifest.backup_id.clone());
        outputs.insert("reached_lsn".into(), self.reached.lsn.clone());
        outputs.insert("reached_time".into(), self.reached_time());
        outputs.insert("timeline".into(), prepared.choice.path.target().to_string());
        outputs.insert("new_timeline".into(), self.reached.timeline.to_string());
        outputs.insert(
            "wal_segments".into(),
            prepared.choice.needed.len().to_string(),
        );
        outputs
    }
}

/// Replaces the throwaway cluster with the prepared backup and recovers it to the target.
pub async fn recover(
    p: &Request<'_>,
    prepared: &Prepared,
    ctx: &StepContext,
) -> Result<Recovered, StepError> {
    let cluster = &prepared.cluster;
    let manifest = &prepared.manifest;
    let store = &prepared.store;
    let choice = &prepared.choice;
    let chain = crate::repo::listing::base_chain(store, manifest)
        .await
        .map_err(StepError::permanent)?;
    // From here on the throwaway cluster is replaced.
    let data = recovery::empty(cluster).await?;
    let files =
        crate::pg::unpack::restore_base(ctx, store, &chain, &data, cluster.owner, &[]).await?;
    let repo = ctx
        .repositories
        .get(p.repository)
        .ok_or_else(|| StepError::permanent("the repository is not available"))?;
    let config = cluster.dir.join("wal-archive.yaml");
    let identity = cluster.dir.join("wal-identity.txt");
    let io = |e: std::io::Error| StepError::transient(format!("preparing recovery: {e}"));
    crate::pg::recovery::write_owned(&config, &fetch_plan(repo), cluster.owner).map_err(io)?;
    let with_key = match &ctx.identities {
        // The server runs as another user and cannot read the operator's key file: a copy,
        // readable by it alone, in the cluster's private directory while recovery runs.
        Some(identities) => {
            crate::pg::recovery::write_owned(
                &identity,
                &key_copy(identities.secret_texts()),
                cluster.owner,
            )
            .map_err(io)?;
            Some(identity.as_path())
        }
        None => None,
    };
    let restore_command = wal_fetch_command(&config, with_key)?;
    let settings = Recovery {
        restore_command,
        target: target_settings(&choice.target, p.to.inclusive),
        timeline: choice.path.target(),
    };
    recovery::configure(&data, cluster.owner, &settings).map_err(io)?;
    let url = ctx.target_url(p.target)?.to_string();
    let reached = recovery::start_and_wait(ctx, cluster, &url).await;
    let _ = std::fs::remove_file(&identity);
    let reached = reached?;
    let base = choice.base();
    if reached.system_identifier != base.system_identifier {
        return Err(StepError::permanent(format!(
            "the recovered cluster is system {}, the backup's manifest says {}",
            reached.system_identifier, base.system_identifier
        )));
    }
    let recovered = Recovered { reached, files };
    let reached_time = recovered.reached_time();
    ctx.events.output(
        &ctx.step_id,
        Stream::Stdout,
        format!(
            "recovered {} files of {} to WAL {}{}; promoted on timeline {}",
            files,
            manifest.backup_id,
            recovered.reached.lsn,
            if reached_time.is_empty() {
                String::new()
            } else {
                format!(", last transaction committed {reached_time}")
            },
            recovered.reached.timeline
        ),
    );
    Ok(recovered)
}

/// What a point-in-time restore or verify will use, read now for the preview: the chosen
/// base backup, the timeline, and the WAL range it needs with whether all of it is
/// archived.
pub async fn preview(
    scope: super::probe::Probe<'_>,
    repository: &str,
    backup: &str,
    to: &PointInTime,
) -> super::probe::Findings {
    const UNKNOWN: &str = "which base backup and WAL the restore uses is unknown";
    let store = match scope.open(repository, UNKNOWN).await {
        Ok(store) => store,
        Err(unread) => return super::probe::Findings::unread(unread),
    };
    // The preview holds no key: an encrypted archive's history files are not read here.
    match choose(&store, repository, backup, to, None, true).await {
        Ok(choice) => choice.lines().into(),
        Err(e) => vec![format!("apply would stop here: {}", e.message)].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_target() {
        let to = PointInTime {
            time: Some("2026-11-20T10:30:00Z".into()),
            inclusive: true,
            ..Default::default()
        };
        assert!(matches!(to.target(), Ok(Target::Time(_))));
        let both = PointInTime {
            lsn: Some("0/3000000".into()),
            latest: true,
            ..to.clone()
        };
        assert!(both.target().is_err());
        let none = PointInTime::default();
        assert!(none.target().is_err());
        let zoneless = PointInTime {
            time: Some("2026-11-20 10:30:00".into()),
            ..Default::default()
        };
        assert!(zoneless.target().unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn timelines_are_latest_current_or_a_number() {
        let mut to = PointInTime::default();
        assert_eq!(to.timeline(), Ok(TimelineChoice::Latest));
        to.timeline = Some("current".into());
        assert_eq!(to.timeline(), Ok(TimelineChoice::Current));
        to.timeline = Some("2".into());
        assert_eq!(to.timeline(), Ok(TimelineChoice::Number(2)));
        to.timeline = Some("0".into());
        assert!(to.timeline().is_err());
    }

    #[test]
    fn the_time_target_is_written_in_utc_with_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T11:30:00.25+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            target_settings(&Target::Time(t), false),
            vec![
                (
                    "recovery_target_time",
                    "2026-11-20 10:30:00.250000+00".to_string()
                ),
                ("recovery_target_inclusive", "false".to_string())
            ]
        );
        assert!(target_settings(&Target::Latest, true).is_empty());
    }
}
