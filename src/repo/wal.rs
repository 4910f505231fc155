//! The WAL archive of a repository: segments and timeline history files, as PostgreSQL's
//! `archive_command` hands them over (`opsrunner wal push`) and its `restore_command` asks
//! for them back (`opsrunner wal fetch`).
//!
//! Each file is one object under `.wal/` beside the backups (whose ids never start with a
//! dot, so no listing, prune or orphan sweep of backups ever sees it): a header line, a JSON
//! line with the original's size and SHA-256 and how it is stored, then the stored bytes
//! (compressed, optionally age-encrypted). One object, written in one step — a rename-free
//! hard link locally, one conditional PUT on S3 — so that a file is either archived whole or
//! not at all, and never replaced: a second push of the same name compares the recorded
//! SHA-256 of the original (which needs no key, even when the archive is encrypted).

use super::compression::Compression;
use super::crypto::{Identities, Recipients};
use super::{AnyStore, Condition, Small};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use tokio::io::AsyncReadExt;

/// The first line of every archived file.
const MAGIC: &[u8] = b"opsrunner-wal 1\n";
/// The directory (local) or key prefix (S3) of the archive, under the repository's root.
pub const DIR: &str = ".wal";
/// The most a header may hold.
const MAX_HEADER: usize = 4096;
/// The most an archived file may hold: WAL segments are at most 1 GiB (`--wal-segsize`),
/// 16 MiB by default; history files are small.
pub const MAX_FILE: u64 = 1 << 30;

/// What the header of an archived file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    /// The original's size and SHA-256.
    pub size: u64,
    pub sha256: String,
    /// `none`, `gzip` or `zstd`, as the backups' `compression`.
    pub compression: String,
    /// Whether the stored bytes are age-encrypted (to the repository's recipients).
    pub encrypted: bool,
    /// The stored bytes' size and SHA-256: damage is found before anything is decrypted.
    pub stored_size: u64,
    pub stored_sha256: String,
    pub archived_at: chrono::DateTime<chrono::Utc>,
}

/// The kinds of file PostgreSQL archives, by name (`%f`); nothing else is accepted, so that
/// a name can never point outside the archive.
pub fn check_name(name: &str) -> Result<(), String> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    let ok = hex(name, 24)
        || name.strip_suffix(".partial").is_some_and(|s| hex(s, 24))
        || name.strip_suffix(".history").is_some_and(|s| hex(s, 8))
        || name
            .strip_suffix(".backup")
            .or_else(|| name.strip_suffix(".mark"))
            .and_then(|s| s.split_once('.'))
            .is_some_and(|(seg, offset)| hex(seg, 24) && hex(offset, 8));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not the name of a WAL segment, a timeline history file, a .partial, a .backup or a .mark file",
            name.escape_debug()
        ))
    }
}

/// The kinds of file PostgreSQL itself archives and asks for: [`check_name`] without the
/// marks opsrunner adds (`wal push` must not let a file pose as one).
pub fn check_server_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.ends_with(".mark") {
        return Err(format!(
            "`{}` is a mark's name (written by the pitr_mark step), not a file PostgreSQL archives",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Archived {
        stored_size: u64,
    },
    /// The archive already held this very content (PostgreSQL pushes again after a crash).
    AlreadyThere,
}

/// Why a push was refused or a fetch found nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Proven absent: the store said so (not a timeout, not a permission).
    #[error("{0} is not in the archive")]
    NotFound(String),
    #[error(
        "{name} is already archived with different content (SHA-256 {archived}, this one {offered}): refusing to replace it; two clusters archiving into one repository, or a restored cluster archiving on the old timeline?"
    )]
    Conflict {
        name: String,
        archived: String,
        offered: String,
    },
    /// Damaged, or unreadable with the keys given.
    #[error("{0}")]
    Damaged(String),
    /// The store could not be read or written just now; nothing is known.
    #[error("{0}")]
    Unavailable(#[from] io::Error),
}

/// Prepares `original` for the archive: compressed, encrypted to `recipients` when given,
/// with its header in front.
pub async fn encode(
    name: &str,
    original: &[u8],
    compression: Compression,
    recipients: Option<&Recipients>,
) -> io::Result<Vec<u8>> {
    // Sized up front: a segment is 16 MiB, and growing a buffer by doubling copies it over
    // and over (page faults are most of a push's time).
    let mut compressed = Vec::with_capacity(original.len() + 4096);
    compression
        .encoder(original, 1)
        .read_to_end(&mut compressed)
        .await?;
    let stored = match recipients {
        None => compressed,
        Some(r) => {
            let mut out = Vec::with_capacity(compressed.len() + 512);
            let mut writer = super::crypto::EncryptingWriter::new(r, &mut out).await?;
            writer.write_all(&compressed).await?;
            writer.finish().await?;
            out
        }
    };
    let header = Header {
        name: name.to_string(),
        size: original.len() as u64,
        sha256: hex(&Sha256::digest(original)),
        compression: compression.to_string(),
        encrypted: recipients.is_some(),
        stored_size: stored.len() as u64,
        stored_sha256: hex(&Sha256::digest(&stored)),
        archived_at: chrono::Utc::now(),
    };
    let header = serde_json::to_vec(&header).expect("headers serialize");
    let mut out = Vec::with_capacity(MAGIC.len() + header.len() + 1 + stored.len());
    out.extend_from_slice(MAGIC);
    out.extend(header);
    out.push(b'\n');
    out.extend(stored);
    Ok(out)
}

/// Splits an archived object into its header and stored bytes.
pub fn parse<'a>(name: &str, object: &'a [u8]) -> Result<(Header, &'a [u8]), WalError> {
    let damaged = |why: &str| WalError::Damaged(format!("{name} in the archive is damaged: {why}"));
    let rest = object
        .strip_prefix(MAGIC)
        .ok_or_else(|| damaged("not written by opsrunner wal push"))?;
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| damaged("no header"))?;
    let header: Header =
        serde_json::from_slice(&rest[..end]).map_err(|e| damaged(&format!("header: {e}")))?;
    if header.name != name {
        return Err(damaged(&format!("it holds {}", header.name.escape_debug())));
    }
    Ok((header, &rest[end + 1..]))
}

/// Splits an archived object into its header and stored bytes and checks the stored bytes
/// against the header's size and SHA-256: what can be checked without a key.
pub fn check_stored<'a>(name: &str, object: &'a [u8]) -> Result<(Header, &'a [u8]), WalError> {
    let (header, stored) = parse(name, object)?;
    if stored.len() as u64 != header.stored_size
        || hex(&Sha256::digest(stored)) != header.stored_sha256
    {
        return Err(WalError::Damaged(format!(
            "{name} in the archive is damaged: {} stored bytes do not match the {} its header records (truncated or changed)",
            stored.len(),
            header.stored_size
        )));
    }
    Ok((header, stored))
}

/// The most an original of this kind may be: a segment (or its `.partial`) at most 1 GiB
/// (`--wal-segsize`); a history, `.backup` or `.mark` file is a few lines.
fn max_original(name: &str) -> u64 {
    if name.len() == 24 || name.ends_with(".partial") {
        MAX_FILE
    } else {
        MAX_SMALL_ORIGINAL
    }
}

/// The most a history, `.backup` or `.mark` file may hold.
const MAX_SMALL_ORIGINAL: u64 = 16 << 20;

/// The original bytes of an archived object, every size and hash checked; for the small
/// files (history, marks). A segment is written out with [`decode_to`].
pub async fn decode(
    name: &str,
    object: &[u8],
    identities: Option<&Identities>,
) -> Result<Vec<u8>, WalError> {
    let mut original = Vec::new();
    decode_to(name, object, identities, &mut original).await?;
    Ok(original)
}

/// Writes the original bytes of an archived object to `out` as they are decompressed, at
/// most the size its header records (and never more than its kind may be: a hostile
/// object that decompresses without end — a zstd bomb — is cut off there, and memory
/// stays that of the stored bytes), then checks size and SHA-256. Whoever reads `out`
/// must wait for `Ok`: on an error it holds a prefix that is not to be trusted.
pub async fn decode_to<W: tokio::io::AsyncWrite + Unpin>(
    name: &str,
    object: &[u8],
    identities: Option<&Identities>,
    mut out: W,
) -> Result<(), WalError> {
    use tokio::io::AsyncWriteExt;
    let (header, stored) = check_stored(name, object)?;
    let damaged =
        |why: String| WalError::Damaged(format!("{name} in the archive is damaged: {why}"));
    if header.size > max_original(name) {
        return Err(damaged(format!(
            "its header records {} bytes, more than a file of its kind holds ({})",
            header.size,
            max_original(name)
        )));
    }
    let compression = Compression::parse(&header.compression).map_err(damaged)?;
    let compressed = if header.encrypted {
        let Some(ids) = identities else {
            return Err(WalError::Damaged(format!(
                "{name} is encrypted: give the age identity with --identity or OPSRUNNER_AGE_IDENTITY_FILE"
            )));
        };
        let reader = ids
            .decrypt(std::io::Cursor::new(stored.to_vec()), name, &[])
            .await
            .map_err(|e| WalError::Damaged(format!("{name}: {e}")))?;
        // Bounded: age adds a few bytes per 64 KiB chunk, so the plaintext is smaller than
        // the stored bytes.
        let mut out = Vec::new();
        reader
            .take(stored.len() as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| WalError::Damaged(format!("{name}: {e}")))?;
        out
    } else {
        stored.to_vec()
    };
    let mut decoder = compression.decoder(&compressed[..]).take(header.size + 1);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = decoder
            .read(&mut buf)
            .await
            .map_err(|e| damaged(format!("cannot decompress: {e}")))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > header.size {
            return Err(damaged(format!(
                "it decompresses to more than the {} bytes its header records",
                header.size
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
    }
    out.flush().await?;
    if written != header.size || hex(&hasher.finalize()) != header.sha256 {
        return Err(damaged(format!(
            "the restored {written} bytes do not match the {} bytes and SHA-256 its header records",
            header.size
        )));
    }
    Ok(())
}

/// The key of archived file `name`: `.wal/NAME` at the repository's root.
fn key(name: &str) -> String {
    format!("{DIR}/{name}")
}

/// Stores an encoded object under `name`, unless one is there: then the two originals'
/// SHA-256 decide between [`Pushed::AlreadyThere`] and [`WalError::Conflict`].
pub async fn store(store: &AnyStore, name: &str, object: Vec<u8>) -> Result<Pushed, WalError> {
    let (offered, _) = parse(name, &object)?;
    let stored_size = offered.stored_size;
    let created = store
        .objects()
        .put(&key(name), object, Condition::Absent)
        .await?
        .is_some();
    if created {
        return Ok(Pushed::Archived { stored_size });
    }
    let existing = read(store, name).await?;
    let (archived, _) = parse(name, &existing)?;
    if archived.sha256 == offered.sha256 && archived.size == offered.size {
        Ok(Pushed::AlreadyThere)
    } else {
        Err(WalError::Conflict {
            name: name.to_string(),
            archived: archived.sha256,
            offered: offered.sha256,
        })
    }
}

/// The archived object `name`; [`WalError::NotFound`] only when the store says it is
/// absent *and* the archive is proven present (see [`holds_anything`]).
pub async fn read(store: &AnyStore, name: &str) -> Result<Vec<u8>, WalError> {
    check_name(name).map_err(io::Error::other)?;
    let key = key(name);
    let found = match store.objects().read_small(&key, MAX_FILE * 2).await? {
        Some(Small {
            bytes: Some(bytes), ..
        }) => Some(bytes),
        Some(Small { bytes: None, .. }) => {
            return Err(WalError::Damaged(format!(
                "{} is larger than any archived file can be",
                store.objects().location(&key)
            )));
        }
        None => None,
    };
    match found {
        Some(bytes) => Ok(bytes),
        None if holds_anything(store).await? => Err(WalError::NotFound(name.to_string())),
        None => Err(WalError::Unavailable(io::Error::other(format!(
            "{name} is not there, and neither is any other archived file: the WAL archive in {} was not found (an unmounted volume, a wrong path, bucket or prefix?), so its absence proves nothing",
            store.location()
        )))),
    }
}

/// Whether the archive holds at least one file. "Absent" is PostgreSQL's signal to end
/// recovery and open the database, so it may be answered only about an archive that is
/// there: an empty mount point, a mistyped prefix or a bucket of another repository holds
/// no archived file at all, while a real archive holds every file its cluster pushed
/// (retention never empties it: it keeps what the newest base backup needs).
async fn holds_anything(store: &AnyStore) -> io::Result<bool> {
    Ok(!list(store).await?.is_empty())
}

/// The names of every file in the archive, sorted (which sorts segments by timeline, then
/// position). Anything else found there (temporary files, foreign names) is left out.
pub async fn list(store: &AnyStore) -> io::Result<Vec<String>> {
    let prefix = format!("{DIR}/");
    let mut names: Vec<String> = store
        .objects()
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|o| o.problem.is_none())
        .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes archived file `name` (retention: WAL no kept base backup needs).
pub async fn delete(store: &AnyStore, name: &str) -> io::Result<()> {
    check_name(name).map_err(io::Error::other)?;
    store
        .objects()
        .delete(&key(name), Condition::Always)
        .await?;
    Ok(())
}

/// The position of the segment a file belongs to: a segment itself, its `.partial`, or a
/// `.backup` file named after the segment its backup started in, a `.mark` after the segment
/// of its restore point ([`super::mark`]). `None` for history files.
pub fn file_position(name: &str, segment_size: u64) -> Option<u64> {
    let segment = name.get(..24)?;
    match &name[24..] {
        "" | ".partial" => {}
        rest if rest.ends_with(".backup") || rest.ends_with(".mark") => {}
        _ => return None,
    }
    segment_position(segment, segment_size).map(|(_, p)| p)
}

/// A WAL segment's timeline and position (segment number from the start of the WAL), for a
/// segment size; `None` for other files.
pub fn segment_position(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || check_name(name).is_err() || segment_size == 0 {
        return None;
    }
    let part = |i: usize| u64::from_str_radix(&name[i..i + 8], 16).ok();
    let per_log = 0x1_0000_0000 / segment_size;
    Some((part(0)? as u32, part(8)? * per_log + part(16)?))
}

/// The segment name at a timeline and position (the inverse of [`segment_position`]).
pub fn segment_name(timeline: u32, position: u64, segment_size: u64) -> String {
    let per_log = 0x1_0000_0000 / segment_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        position / per_log,
        position % per_log
    )
}

/// Runs of segments missing between the first and the last archived segment of each
/// timeline: (first missing, last missing).
pub fn gaps(names: &[String], segment_size: u64) -> Vec<(String, String)> {
    let mut by_timeline: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for name in names {
        if let Some((timeline, position)) = segment_position(name, segment_size) {
            by_timeline.entry(timeline).or_default().push(position);
        }
    }
    let mut out = Vec::new();
    for (timeline, mut positions) in by_timeline {
        positions.sort_unstable();
        for pair in positions.windows(2) {
            if pair[1] > pair[0] + 1 {
                out.push((
                    segment_name(timeline, pair[0] + 1, segment_size),
                    segment_name(timeline, pair[1] - 1, segment_size),
                ));
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    crate::digest::hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what is written and keeps nothing: the most a decode hands on.
    #[derive(Default)]
    struct Counting(u64);

    impl tokio::io::AsyncWrite for Counting {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0 += buf.len() as u64;
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// An object whose header says `size` while its stored bytes decompress to 64 MiB.
    async fn bomb(name: &str, size: u64) -> Vec<u8> {
        let zeros = vec![0u8; 64 << 20];
        let honest = encode(name, &zeros, Compression::parse("zstd").unwrap(), None)
            .await
            .unwrap();
        let (mut header, stored) = parse(name, &honest).unwrap();
        header.size = size;
        let mut out = MAGIC.to_vec();
        out.extend(serde_json::to_vec(&header).unwrap());
        out.push(b'\n');
        out.extend(stored);
        out
    }

    #[tokio::test]
    async fn a_decompression_bomb_is_cut_off_at_the_size_its_header_records() {
        let name = "000000010000000000000001";
        let object = bomb(name, 4096).await;
        assert!(object.len() < 1 << 20, "{} stored bytes", object.len());
        let mut out = Counting::default();
        let e = decode_to(name, &object, None, &mut out).await.unwrap_err();
        assert!(e.to_string().contains("decompresses to more than"), "{e}");
        assert!(out.0 <= 4096, "{} bytes handed on", out.0);
        // A header that claims more than a file of its kind holds is refused outright.
        let history = "00000002.history";
        let e = decode(history, &bomb(history, 64 << 20).await, None)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("more than a file of its kind"),
            "{e}"
        );
        let e = decode(name, &bomb(name, 2 << 30).await, None)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("more than a file of its kind"),
            "{e}"
        );
        // The honest object still comes back whole.
        let honest = bomb(name, 64 << 20).await;
        let mut out = Counting::default();
        decode_to(name, &honest, None, &mut out).await.unwrap();
        assert_eq!(out.0, 64 << 20);
    }

    #[test]
    fn names_are_those_postgresql_archives() {
        for ok in [
            "000000010000000000000001",
            "00000002.history",
            "000000010000000000000001.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
            assert!(check_server_name(ok).is_ok(), "{ok}");
        }
        // A mark lives in the archive, but PostgreSQL neither pushes nor fetches one.
        let mark = "000000010000000000000003.00000060.mark";
        assert!(check_name(mark).is_ok());
        assert!(check_server_name(mark).is_err());
        for bad in [
            "../000000010000000000000001",
            "00000001000000000000000g",
            "000000010000000000000001/x",
            "0000000a0000000000000001".to_lowercase().as_str(),
            "",
            ".wal",
            "00000002.history.tmp",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gaps_are_found_per_timeline_across_log_boundaries() {
        let size = 16 << 20;
        let names: Vec<String> = [
            "0000000100000000000000FE",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "000000010000000100000003",
            "00000002.history",
            "000000020000000100000003",
            "000000020000000100000004",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            gaps(&names, size),
            vec![(
                "000000010000000100000001".to_string(),
                "000000010000000100000002".to_string()
            )]
        );
        assert_eq!(
            segment_position("000000010000000100000000", size),
            Some((1, 256))
        );
        assert_eq!(segment_name(1, 256, size), "000000010000000100000000");
    }

    #[tokio::test]
    async fn a_segment_round_trips_and_damage_is_found() {
        let original: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let name = "000000010000000000000001";
        let object = encode(name, &original, Compression::default(), None)
            .await
            .unwrap();
        assert!(object.len() < original.len() / 10);
        assert_eq!(decode(name, &object, None).await.unwrap(), original);
        let mut damaged = object.clone();
        let last = damaged.len() - 10;
        damaged[last] ^= 1;
        assert!(matches!(
            decode(name, &damaged, None).await,
            Err(WalError::Damaged(_))
        ));
        // Another file's object under this name is refused.
        assert!(matches!(
            decode("000000010000000000000002", &object, None).await,
            Err(WalError::Damaged(_))
        ));
    }
}
