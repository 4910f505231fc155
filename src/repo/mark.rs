//! Marks: moments of a live cluster whose table fingerprints are known, for proving a
//! point-in-time recovery by its content.
//!
//! A `pitr_mark` step creates a restore point (`pg_create_restore_point`) at a moment when
//! the fingerprinted tables cannot change, and records the tables' fingerprints as of that
//! restore point. A point-in-time verify that recovers to the restore point must find
//! exactly those fingerprints.
//!
//! A mark is stored in the WAL archive (`.wal/`) beside the segment that holds its restore
//! point, named `SEGMENT.OFFSET.mark` like PostgreSQL's `.backup` files: it is written,
//! compressed, encrypted and hashed like a segment, and pruned with that segment when no
//! kept base backup needs it any more — a mark never outlives the WAL that reaches it. Its
//! name alone says where its restore point is, so choosing one reads only the listing.

use super::crypto::{Identities, Recipients};
use super::manifest::{FingerprintMode, TableFingerprint};
use super::{AnyStore, compression::Compression, wal};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a mark records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// The restore point's name (`recovery_target_name`).
    pub name: String,
    /// Where the restore point record ends (`pg_create_restore_point`'s result), `X/Y`.
    pub lsn: String,
    pub timeline: u32,
    /// The server's clock when the restore point was made.
    pub time: DateTime<Utc>,
    /// `pg_control_system()`'s system identifier: marks of another cluster do not count.
    pub system_identifier: String,
    pub wal_segment_size: u64,
    /// The database the fingerprints are of.
    pub database: String,
    pub fingerprint: FingerprintMode,
    /// Per table (`schema.table` quoted as needed), as of the restore point.
    pub fingerprints: BTreeMap<String, TableFingerprint>,
    pub opsrunner_version: String,
}

/// Where a mark's restore point is, read from its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub timeline: u32,
    pub lsn: u64,
}

impl Mark {
    /// The name the mark is archived under: its restore point's segment and offset.
    pub fn file_name(&self) -> Option<String> {
        let lsn = super::manifest::parse_lsn(&self.lsn)?;
        file_name(self.timeline, lsn, self.wal_segment_size)
    }
}

/// `SEGMENT.OFFSET.mark` for a restore point ending at `lsn`: the segment is the one that
/// holds the record's last byte (the record may end exactly at a segment boundary).
pub fn file_name(timeline: u32, lsn: u64, segment_size: u64) -> Option<String> {
    if lsn == 0 || segment_size == 0 {
        return None;
    }
    let position = (lsn - 1) / segment_size;
    let offset = lsn - position * segment_size;
    Some(format!(
        "{}.{offset:08X}.mark",
        wal::segment_name(timeline, position, segment_size)
    ))
}

/// The marks in an archive listing, oldest restore point first.
pub fn places(names: &[String], segment_size: u64) -> Vec<Place> {
    let mut out: Vec<Place> = names
        .iter()
        .filter_map(|n| {
            let (segment, offset) = n.strip_suffix(".mark")?.split_once('.')?;
            let (timeline, position) = wal::segment_position(segment, segment_size)?;
            let offset = u64::from_str_radix(offset, 16).ok()?;
            Some(Place {
                file: n.clone(),
                timeline,
                lsn: position * segment_size + offset,
            })
        })
        .collect();
    out.sort_by_key(|p| (p.lsn, p.timeline));
    out
}

/// Archives a mark (once: a mark of the same name with other content is a conflict).
pub async fn store(
    store: &AnyStore,
    mark: &Mark,
    recipients: Option<&Recipients>,
) -> Result<String, wal::WalError> {
    let name = mark.file_name().ok_or_else(|| {
        wal::WalError::Damaged(format!("mark at {} has no place in the WAL", mark.lsn))
    })?;
    let json = serde_json::to_vec_pretty(mark).expect("marks serialize");
    let object = wal::encode(&name, &json, Compression::default(), recipients).await?;
    wal::store(store, &name, object).await?;
    Ok(name)
}

/// Reads and checks an archived mark: its content must say what its name says.
pub async fn read(
    store: &AnyStore,
    place: &Place,
    identities: Option<&Identities>,
) -> Result<Mark, wal::WalError> {
    read_unless_sealed(store, place, identities, false)
        .await
        .map(|m| m.expect("read without `sealed_ok`"))
}

/// [`read`], except that an encrypted mark with no key to read it is `None` when
/// `sealed_ok` (a preview, which holds no key, still knows where the mark is).
pub async fn read_unless_sealed(
    store: &AnyStore,
    place: &Place,
    identities: Option<&Identities>,
    sealed_ok: bool,
) -> Result<Option<Mark>, wal::WalError> {
    let object = wal::read(store, &place.file).await?;
    if sealed_ok && identities.is_none() && wal::parse(&place.file, &object)?.0.encrypted {
        return Ok(None);
    }
    let json = wal::decode(&place.file, &object, identities).await?;
    let damaged = |why: String| wal::WalError::Damaged(format!("mark {}: {why}", place.file));
    let mark: Mark = serde_json::from_slice(&json).map_err(|e| damaged(e.to_string()))?;
    if mark.file_name().as_deref() != Some(place.file.as_str()) {
        return Err(damaged(format!(
            "it records restore point `{}` at {} on timeline {}, not where its name places it",
            mark.name, mark.lsn, mark.timeline
        )));
    }
    Ok(Some(mark))
}

/// One line for previews and messages.
pub fn describe(mark: &Mark) -> String {
    format!(
        "mark `{}` (restore point at {} on timeline {}, {}): fingerprints of {} table{} of database `{}`",
        mark.name,
        mark.lsn,
        mark.timeline,
        mark.time.format("%Y-%m-%d %H:%M:%S UTC"),
        mark.fingerprints.len(),
        if mark.fingerprints.len() == 1 {
            ""
        } else {
            "s"
        },
        mark.database
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_named_after_the_segment_that_holds_its_record() {
        let size = 16 << 20;
        assert_eq!(
            file_name(1, 0x3000060, size).unwrap(),
            "000000010000000000000003.00000060.mark"
        );
        // Ending exactly at a boundary: the record is in the segment before.
        assert_eq!(
            file_name(2, 0x4000000, size).unwrap(),
            "000000020000000000000003.01000000.mark"
        );
        let names = vec![
            "000000010000000000000003.00000060.mark".to_string(),
            "000000010000000000000003".to_string(),
            "000000020000000000000003.01000000.mark".to_string(),
            "000000010000000000000002.00000028.backup".to_string(),
        ];
        let places = places(&names, size);
        assert_eq!(
            places.iter().map(|p| p.lsn).collect::<Vec<_>>(),
            [0x3000060, 0x4000000]
        );
        assert_eq!(places[1].timeline, 2);
        assert!(names.iter().all(|n| wal::check_name(n).is_ok()));
        assert_eq!(
            wal::file_position("000000010000000000000003.00000060.mark", size),
            Some(3)
        );
    }
}
