//! PostgreSQL's page checksums (`src/include/storage/checksum_impl.h`), checked as a
//! file-level copy reads a cluster that has them (`data_checksums = on`): a page whose
//! checksum does not match is read again (a write may have been under way), and one that
//! still does not match, and was not written since the backup started (its LSN is
//! before the start: the WAL replayed over the copy would not rewrite it), is damaged on
//! the server's disk — reported the way `pg_basebackup` reports it.

use super::contents::BLOCK;
use super::walk::is_number;

/// Blocks per 1 GiB relation segment: a block's number counts from the relation's first.
const RELSEG_SIZE: u32 = 131_072;
const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// The starting value of each of the 32 partial sums.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// `pg_checksum_page`: the checksum of an 8 KiB page as block `blkno` of its relation,
/// with its own checksum field taken as zero.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len() as u64, BLOCK);
    let mut sums = BASE_OFFSETS;
    for (i, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in row.chunks_exact(4).enumerate() {
            let mut value = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
            if i == 0 && j == 2 {
                // Bytes 8..10 are pd_checksum (and 10..12 pd_flags, kept): a word in the
                // machine's byte order, of which the checksum is the first half.
                let mut bytes = value.to_ne_bytes();
                bytes[0] = 0;
                bytes[1] = 0;
                value = u32::from_ne_bytes(bytes);
            }
            sums[j] = mix(sums[j], value);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// Whether `page`, block `blkno` of its relation, fails its checksum: pages never
/// initialized and pages written since `start_lsn` are not judged.
pub fn fails(page: &[u8], blkno: u32, start_lsn: u64) -> bool {
    if page.len() as u64 != BLOCK {
        return false;
    }
    let u16_at = |at: usize| u16::from_ne_bytes([page[at], page[at + 1]]);
    let u32_at = |at: usize| u32::from_ne_bytes(page[at..at + 4].try_into().expect("4 bytes"));
    if u16_at(14) == 0 {
        // A new page (pd_upper 0) has no checksum yet.
        return false;
    }
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    if lsn >= start_lsn {
        return false;
    }
    u16_at(8) != page_checksum(page, blkno)
}

/// The number of the first block of the relation file at `path` (inside the backup),
/// `None` when the file holds no checksummed pages.
pub fn first_block(path: &str) -> Option<u32> {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match parts.as_slice() {
        ["global", name] => name,
        ["base", db, name] if is_number(db) => name,
        ["pg_tblspc", oid, _, db, name] if is_number(oid) && is_number(db) => name,
        _ => return None,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, segment.parse::<u32>().ok()?),
        None => (*name, 0),
    };
    let relation = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    is_number(relation).then(|| segment.saturating_mul(RELSEG_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_and_their_first_blocks() {
        assert_eq!(first_block("base/5/16384"), Some(0));
        assert_eq!(first_block("base/5/16384.2"), Some(2 * RELSEG_SIZE));
        assert_eq!(first_block("base/5/16384_fsm"), Some(0));
        assert_eq!(first_block("global/1262_vm"), Some(0));
        assert_eq!(
            first_block("pg_tblspc/16390/PG_15_202209061/5/16391.1"),
            Some(RELSEG_SIZE)
        );
        assert_eq!(first_block("base/5/pg_filenode.map"), None);
        assert_eq!(first_block("global/pg_control"), None);
        assert_eq!(first_block("pg_xact/0000"), None);
        assert_eq!(first_block("base/5/PG_VERSION"), None);
    }

    #[test]
    fn a_changed_byte_fails_and_a_new_page_is_not_judged() {
        let mut page = vec![0u8; BLOCK as usize];
        assert!(!fails(&page, 0, u64::MAX));
        page[14] = 0x20; // pd_upper
        page[4] = 1; // an LSN before the start
        page[5000] = 7;
        let sum = page_checksum(&page, 3).to_ne_bytes();
        page[8] = sum[0];
        page[9] = sum[1];
        assert!(!fails(&page, 3, 1 << 40));
        assert!(fails(&page, 4, 1 << 40), "a page moved to another block");
        page[6000] = 1;
        assert!(fails(&page, 3, 1 << 40));
        // Written since the backup started: the WAL rewrites it, it is not judged.
        assert!(!fails(&page, 3, 1));
    }
}
