//! `pg_basebackup`'s tar stream, read on its way to the repository. The stream is never
//! held: [`TarWatch`] passes every byte on and keeps only what the manifest needs — the
//! `backup_label` (where the copy starts: WAL position and timeline) and the end of the
//! server's `backup_manifest` (its `WAL-Ranges`: where the copy becomes consistent). Both
//! are the server's own words, so opsrunner does not guess them from log lines.
//!
//! The format is POSIX ustar as PostgreSQL writes it (`src/port/tar.c`): 512-byte headers,
//! sizes in octal or, past 8 GiB, base-256; data padded to 512 bytes; two zero blocks at
//! the end.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const BLOCK: usize = 512;
/// The most of `backup_label` kept (it is a few hundred bytes).
const MAX_LABEL: usize = 64 << 10;
/// How much of the end of `backup_manifest` is kept: the WAL ranges and the checksum are
/// its last lines; the file list before them grows with the cluster and is not kept.
const MANIFEST_TAIL: usize = 64 << 10;
/// The most of `backup_manifest` kept whole (stored beside the copy, for the next
/// incremental backup): about 150 bytes per file of the cluster.
pub const MAX_MANIFEST: usize = 64 << 20;

/// What the stream showed so far.
#[derive(Debug, Default)]
pub struct Seen {
    pub backup_label: Option<Vec<u8>>,
    pub manifest_tail: Option<Vec<u8>>,
    /// The whole `backup_manifest`, unless it is larger than [`MAX_MANIFEST`].
    pub manifest: Option<Vec<u8>>,
    pub members: u64,
    /// Why the stream is not a tar as expected, when it is not.
    pub broken: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Capture {
    Nothing,
    Label,
    Manifest,
}

#[derive(Debug)]
struct Scanner {
    header: Vec<u8>,
    remaining: u64,
    padding: u64,
    capture: Capture,
    buffer: Vec<u8>,
    /// The manifest whole, while it fits in [`MAX_MANIFEST`].
    whole: Option<Vec<u8>>,
    seen: Seen,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            header: Vec::with_capacity(BLOCK),
            remaining: 0,
            padding: 0,
            capture: Capture::Nothing,
            buffer: Vec::new(),
            whole: None,
            seen: Seen::default(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.seen.broken.is_none() {
            if self.remaining > 0 {
                let n = (self.remaining.min(bytes.len() as u64)) as usize;
                self.keep(&bytes[..n]);
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                if self.remaining == 0 {
                    self.end_member();
                }
            } else if self.padding > 0 {
                let n = (self.padding.min(bytes.len() as u64)) as usize;
                self.padding -= n as u64;
                bytes = &bytes[n..];
            } else {
                let n = (BLOCK - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.header.len() == BLOCK {
                    let header = std::mem::take(&mut self.header);
                    self.start_member(&header);
                }
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        match self.capture {
            Capture::Nothing => {}
            Capture::Label => {
                if self.buffer.len() + bytes.len() > MAX_LABEL {
                    self.seen.broken = Some("backup_label is larger than any label".into());
                } else {
                    self.buffer.extend_from_slice(bytes);
                }
            }
            Capture::Manifest => {
                if let Some(whole) = &mut self.whole {
                    if whole.len() + bytes.len() > MAX_MANIFEST {
                        self.whole = None;
                    } else {
                        whole.extend_from_slice(bytes);
                    }
                }
                self.buffer.extend_from_slice(bytes);
                if self.buffer.len() > 2 * MANIFEST_TAIL {
                    let cut = self.buffer.len() - MANIFEST_TAIL;
                    self.buffer.drain(..cut);
                }
            }
        }
    }

    fn start_member(&mut self, header: &[u8]) {
        if header.iter().all(|&b| b == 0) {
            // End-of-archive blocks.
            return;
        }
        let size = match parse_size(&header[124..136]) {
            Some(size) => size,
            None => {
                self.seen.broken = Some("a tar header with an unreadable size".into());
                return;
            }
        };
        let name = member_name(header);
        let regular = matches!(header[156], b'0' | 0);
        self.seen.members += 1;
        self.capture = match name.trim_start_matches("./") {
            "backup_label" if regular => Capture::Label,
            "backup_manifest" if regular => Capture::Manifest,
            _ => Capture::Nothing,
        };
        self.buffer.clear();
        self.whole = (self.capture == Capture::Manifest).then(Vec::new);
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        if size == 0 {
            self.end_member();
        }
    }

    fn end_member(&mut self) {
        let kept = std::mem::take(&mut self.buffer);
        match std::mem::replace(&mut self.capture, Capture::Nothing) {
            Capture::Nothing => {}
            Capture::Label => self.seen.backup_label = Some(kept),
            Capture::Manifest => {
                self.seen.manifest_tail = Some(kept);
                self.seen.manifest = self.whole.take();
            }
        }
    }
}

/// A member's name: ustar's prefix and name fields.
fn member_name(header: &[u8]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&header[0..100]);
    let prefix = if &header[257..262] == b"ustar" {
        field(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// A tar size field: octal digits, or base-256 when the first byte's high bit is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Passes a tar stream through unchanged, noting what [`Seen`] describes.
pub struct TarWatch<R> {
    inner: R,
    scanner: Arc<Mutex<Scanner>>,
}

/// The other end of a [`TarWatch`]: what it saw, once the stream has been read.
#[derive(Clone)]
pub struct Watched(Arc<Mutex<Scanner>>);

impl Watched {
    pub fn take(&self) -> Seen {
        std::mem::take(&mut self.0.lock().expect("not poisoned").seen)
    }
}

pub fn watch<R>(inner: R) -> (TarWatch<R>, Watched) {
    let scanner = Arc::new(Mutex::new(Scanner::new()));
    (
        TarWatch {
            inner,
            scanner: scanner.clone(),
        },
        Watched(scanner),
    )
}

impl<R: AsyncRead + Unpin> AsyncRead for TarWatch<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.scanner
                .lock()
                .expect("not poisoned")
                .feed(&buf.filled()[before..]);
        }
        result
    }
}

/// Where a base backup starts, from its `backup_label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub start_lsn: String,
    pub timeline: u32,
}

pub fn parse_label(text: &str) -> Result<Label, String> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .ok_or_else(|| format!("backup_label has no `{key}` line"))
    };
    let start = value("START WAL LOCATION:")?;
    let start_lsn = start.split_whitespace().next().unwrap_or_default();
    if crate::repo::manifest::parse_lsn(start_lsn).is_none() {
        return Err(format!("backup_label: `{start}` is not a WAL position"));
    }
    let timeline = value("START TIMELINE:")?
        .parse::<u32>()
        .map_err(|e| format!("backup_label: START TIMELINE: {e}"))?;
    Ok(Label {
        start_lsn: start_lsn.to_string(),
        timeline,
    })
}

/// One entry of the server manifest's `WAL-Ranges`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct WalRange {
    #[serde(rename = "Timeline")]
    pub timeline: u32,
    #[serde(rename = "Start-LSN")]
    pub start_lsn: String,
    #[serde(rename = "End-LSN")]
    pub end_lsn: String,
}

/// The `WAL-Ranges` of a server `backup_manifest`, from its last bytes.
pub fn parse_wal_ranges(tail: &str) -> Result<Vec<WalRange>, String> {
    let key = "\"WAL-Ranges\":";
    let at = tail
        .rfind(key)
        .ok_or("the server's backup_manifest has no WAL-Ranges (was the backup taken with --manifest-checksums and without --no-manifest?)")?;
    let rest = &tail[at + key.len()..];
    let end = rest
        .find(']')
        .ok_or("the server's backup_manifest ends inside WAL-Ranges")?;
    let ranges: Vec<WalRange> = serde_json::from_str(&rest[..=end])
        .map_err(|e| format!("the server's backup_manifest: WAL-Ranges: {e}"))?;
    if ranges.is_empty() {
        return Err("the server's backup_manifest lists no WAL range".into());
    }
    for r in &ranges {
        if crate::repo::manifest::parse_lsn(&r.start_lsn).is_none()
            || crate::repo::manifest::parse_lsn(&r.end_lsn).is_none()
        {
            return Err(format!(
                "the server's backup_manifest: WAL range {}–{} is not two WAL positions",
                r.start_lsn, r.end_lsn
            ));
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = format!("{size:011o}\0");
        h[124..136].copy_from_slice(octal.as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, data.len() as u64);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    #[test]
    fn finds_the_label_and_the_manifest_tail_in_any_chunking() {
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
        let mut manifest =
            String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
        for i in 0..5000 {
            manifest.push_str(&format!(
                "{{ \"Path\": \"base/1/{i}\", \"Size\": 8192 }},\n"
            ));
        }
        manifest.push_str("],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n\"Manifest-Checksum\": \"ab\"}\n");
        let mut tar = member("backup_label", label);
        tar.extend(member("base/1/1259", &vec![7u8; 20000]));
        tar.extend(member("backup_manifest", manifest.as_bytes()));
        tar.extend(vec![0u8; 2 * BLOCK]);
        for chunk in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let mut s = Scanner::new();
            for piece in tar.chunks(chunk) {
                s.feed(piece);
            }
            assert_eq!(s.seen.broken, None);
            assert_eq!(s.seen.members, 3);
            let l = parse_label(&String::from_utf8_lossy(
                s.seen.backup_label.as_ref().unwrap(),
            ))
            .unwrap();
            assert_eq!(l.start_lsn, "0/2000028");
            assert_eq!(l.timeline, 1);
            let tail = s.seen.manifest_tail.unwrap();
            assert!(tail.len() <= 2 * MANIFEST_TAIL);
            let ranges = parse_wal_ranges(&String::from_utf8_lossy(&tail)).unwrap();
            assert_eq!(ranges[0].end_lsn, "0/2000100");
        }
    }

    #[test]
    fn sizes_in_octal_and_base_256() {
        assert_eq!(parse_size(b"00000001750\0"), Some(1000));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[8] = 0x02; // 2 << 24
        assert_eq!(parse_size(&big), Some(2 << 24));
        assert_eq!(parse_size(b"0000000x750\0"), None);
    }

    #[test]
    fn a_label_without_its_lines_is_an_error() {
        assert!(parse_label("LABEL: x\n").is_err());
        assert!(parse_label("START WAL LOCATION: nonsense\nSTART TIMELINE: 1\n").is_err());
        assert!(parse_wal_ranges("{\"Files\": []}").is_err());
        assert!(parse_wal_ranges("\"WAL-Ranges\": [\n],").is_err());
    }
}
