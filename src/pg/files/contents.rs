//! What a file-level base backup holds: every directory, link and file of the cluster,
//! and where each file's bytes are stored — in this backup's bundles or, for what did not
//! change, in a parent's. Large files are kept as a *block map*: one entry per 8 KiB
//! block, each naming the stored run of blocks it is in, so that an incremental backup of
//! a 1 GiB relation segment of which a few pages changed stores those pages and a new map,
//! not the segment.
//!
//! The list is stored as JSON beside the bundles (compressed and encrypted like them),
//! its SHA-256 in the manifest; each block map is a segment of a bundle, in the binary
//! form below (131,072 blocks of a 1 GiB segment are 2 MiB of map, not 10 of JSON).

use crate::repo::bundle::Segment;
use serde::{Deserialize, Serialize};

/// PostgreSQL's page: the unit of a block map.
pub const BLOCK: u64 = 8192;
/// Files from this size on are kept as block maps, when their size is a whole number of
/// pages (relation segments are; a growing log file is not).
pub const BLOCK_MAP_MIN: u64 = 1 << 20;
/// The version of [`Contents`] this opsrunner writes and reads.
pub const CONTENTS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contents {
    pub version: u32,
    /// Every entry of the cluster, parents before children.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data directory, `/`-separated; a tablespace's files are under its
    /// link, `pg_tblspc/OID/…`.
    pub path: String,
    #[serde(flatten)]
    pub kind: Kind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Directory,
    /// A tablespace: `pg_tblspc/OID` links to `target`, a directory outside the data
    /// directory (relocated on restore with `tablespaces: {OLD: NEW}`).
    Link {
        target: String,
    },
    File(File),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct File {
    pub size: u64,
    /// Modification time, nanoseconds since the epoch: with the size, how the next
    /// incremental tells an untouched file without reading it.
    pub mtime_ns: i64,
    /// SHA-256 of the file's bytes as copied, hex.
    pub sha256: String,
    pub data: Data,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "stored", rename_all = "snake_case")]
pub enum Data {
    /// No bytes.
    Empty,
    /// The whole file, one segment.
    Whole(Stored),
    /// A [`BlockMap`], one segment.
    Blocks(Stored),
}

/// A segment of a bundle of a backup: this one or one it is relative to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Stored {
    pub backup: String,
    pub bundle: String,
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

impl Stored {
    pub fn new(backup: &str, bundle: &str, segment: Segment) -> Stored {
        Stored {
            backup: backup.to_string(),
            bundle: bundle.to_string(),
            offset: segment.offset,
            length: segment.length,
            sha256: segment.sha256,
        }
    }

    pub fn segment(&self) -> Segment {
        Segment {
            offset: self.offset,
            length: self.length,
            sha256: self.sha256.clone(),
        }
    }
}

impl Data {
    /// The segments this entry reads directly (a block map's own runs are in the map).
    pub fn stored(&self) -> Option<&Stored> {
        match self {
            Data::Empty => None,
            Data::Whole(s) | Data::Blocks(s) => Some(s),
        }
    }
}

/// Where each block of a file is: `sources` are stored runs of blocks (each a segment
/// holding some blocks one after the other), `blocks[i]` says which run holds block `i`
/// and at which place in it, with the first 8 bytes of the block's SHA-256 (to tell, next
/// time and in a delta restore, whether the block changed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockMap {
    pub sources: Vec<Stored>,
    pub blocks: Vec<BlockRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub source: u32,
    pub ordinal: u32,
    pub hash: [u8; 8],
}

const MAP_MAGIC: &[u8; 8] = b"OPSRMAP1";

/// The first 8 bytes of the SHA-256 of a block.
pub fn block_hash(block: &[u8]) -> [u8; 8] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(block);
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&digest[..8]);
    hash
}

impl BlockMap {
    pub fn encode(&self) -> Vec<u8> {
        let sources = serde_json::to_vec(&self.sources).expect("serializable");
        let mut out = Vec::with_capacity(24 + sources.len() + self.blocks.len() * 16);
        out.extend_from_slice(MAP_MAGIC);
        out.extend_from_slice(&(sources.len() as u64).to_le_bytes());
        out.extend_from_slice(&sources);
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.source.to_le_bytes());
            out.extend_from_slice(&b.ordinal.to_le_bytes());
            out.extend_from_slice(&b.hash);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BlockMap, String> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err("the block map ends early".into());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(8)? != MAP_MAGIC {
            return Err("not a block map of this opsrunner".into());
        }
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let n = usize::try_from(u64_at(take(8)?)).map_err(|_| "absurd block map")?;
        let sources: Vec<Stored> =
            serde_json::from_slice(take(n)?).map_err(|e| format!("block map sources: {e}"))?;
        let count = u64_at(take(8)?);
        let count = usize::try_from(count)
            .ok()
            .filter(|c| c.checked_mul(16).is_some_and(|len| len <= bytes.len()))
            .ok_or("the block map ends early")?;
        let mut blocks = Vec::with_capacity(count);
        for _ in 0..count {
            let b = take(16)?;
            let block = BlockRef {
                source: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
                ordinal: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
                hash: b[8..16].try_into().expect("8 bytes"),
            };
            if block.source as usize >= sources.len() {
                return Err(format!(
                    "the block map names run {} of {}",
                    block.source,
                    sources.len()
                ));
            }
            blocks.push(block);
        }
        if !rest.is_empty() {
            return Err("the block map has bytes after its end".into());
        }
        Ok(BlockMap { sources, blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_maps_round_trip_and_refuse_damage() {
        let map = BlockMap {
            sources: vec![Stored {
                backup: "b".into(),
                bundle: "bundle-00-000".into(),
                offset: 7,
                length: 9,
                sha256: "ab".into(),
            }],
            blocks: (0..5)
                .map(|i| BlockRef {
                    source: 0,
                    ordinal: i,
                    hash: block_hash(&[i as u8; 8192]),
                })
                .collect(),
        };
        let bytes = map.encode();
        assert_eq!(BlockMap::decode(&bytes).unwrap(), map);
        assert!(BlockMap::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut wrong = bytes.clone();
        let at = bytes.len() - 16;
        wrong[at] = 3;
        assert!(
            BlockMap::decode(&wrong)
                .unwrap_err()
                .contains("names run 3")
        );
    }
}
