//! Reading pg_dump's custom archive format as it streams past, to count the rows of each
//! table's data without asking the server to scan the table a second time.
//!
//! The format (pg_backup_archiver.c, pg_backup_custom.c): a header (`PGDMP`, version, the
//! sizes of integers and offsets, the compression), the table of contents (one entry per
//! object: dump id, description such as `TABLE DATA`, schema, name, …), then the data
//! blocks in dump order — a type byte, the entry's dump id, and chunks (a length, then that
//! many bytes) ending with a zero length. Integers are a sign byte and `intSize` bytes, least
//! significant first; strings an integer length (−1 for none) and the bytes.
//!
//! A table's data is `COPY … TO stdout` text: one line per row, newlines inside values
//! escaped as `\n`, then the end-of-data line `\.` and blank lines (`\.\n\n\n` as
//! pg_dump writes it), so its rows are the newlines in its chunks less those of the end. The counter takes only
//! archives written with `--compress=0` (what a backup asks pg_dump for); anything it does
//! not understand stops the counting with the reason, and the caller counts with SQL
//! instead — the archive itself is never changed.

use std::collections::BTreeMap;

/// Header and table of contents larger than this are not kept in memory to be parsed:
/// counting gives up and SQL counts instead.
pub const MAX_HEAD: usize = 64 << 20;

pub(super) const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// Rows per table, keyed by (schema, table) as the catalogue spells them.
pub type RowCounts = BTreeMap<(String, String), i64>;

/// Counts rows per `TABLE DATA` entry of a custom archive fed to it in pieces.
pub struct RowCounter {
    state: State,
    /// Bytes not yet parsed: the header and TOC while they arrive, or a partial integer.
    pending: Vec<u8>,
    /// Parse the head again once this many bytes are pending.
    retry_at: usize,
    int_size: usize,
    /// dump id → (schema, table) of `TABLE DATA` entries.
    tables: BTreeMap<i64, (String, String)>,
    counts: RowCounts,
    /// The newlines in the table data being read so far.
    block_rows: i64,
    /// Whether rows are counted, or only where the blocks are ([`RowCounter::layout_only`]).
    counting: bool,
    /// The last bytes of the table data being read, to recognize its end-of-data line.
    tail: Tail,
    /// The archive position of the next byte of the data part.
    position: u64,
    off_size: usize,
    /// Per TOC entry: its dump id, where its data-offset field is, and the field's flag.
    offset_fields: Vec<(i64, u64, u8)>,
    /// Where each data block starts, by dump id.
    data_starts: BTreeMap<i64, u64>,
    /// The block being read, and the blocks read to their end since
    /// [`RowCounter::take_completed`] was last asked.
    current: Option<i64>,
    completed: Vec<i64>,
    toc: Toc,
    /// The header and table of contents as they arrived (offsets as pg_dump left them).
    head: std::sync::Arc<[u8]>,
    /// Where each data block read to its end ends (the position after it), by dump id.
    data_ends: BTreeMap<i64, u64>,
    /// The blocks whose start was read since [`RowCounter::take_started`] was last asked.
    started: Vec<i64>,
}

/// `K_OFFSET_POS_NOT_SET` and `K_OFFSET_POS_SET` of the data-offset field of a TOC entry.
const OFFSET_NOT_SET: u8 = 1;
const OFFSET_SET: u8 = 2;

/// Bytes to write at a position of the archive: a TOC entry's offset field, filled in.
pub type Patch = (u64, Vec<u8>);

/// Where the data of an archive written to a pipe is: the TOC's offset fields to fill in
/// to make it the archive pg_dump writes to a file, which `pg_restore -j` reads by seeking.
#[derive(Debug, Default, PartialEq)]
pub struct Layout {
    /// (position of the field, the field's new bytes).
    pub patches: Vec<(u64, Vec<u8>)>,
}

/// `SECTION_PRE_DATA` of pg_backup.h: the schema — types, functions, tables, …
const SECTION_PRE_DATA: i64 = 2;

/// `SECTION_POST_DATA` of pg_backup.h: indexes, constraints, triggers, rules.
const SECTION_POST_DATA: i64 = 4;

/// What a table may depend on and still be loaded before the rest of the schema exists
/// ([`Toc::schema_first`]): objects that run no code of the database's own.
const PLAIN_ANCESTORS: [&str; 5] = ["SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "COLLATION"];

/// One entry of the table of contents, as much of it as scheduling a restore needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TocEntry {
    pub id: i64,
    /// What it is: `TABLE`, `TABLE DATA`, `INDEX`, `CONSTRAINT`, `FK CONSTRAINT`, …
    pub desc: String,
    /// The schema and name of what it is (of the table, for `TABLE DATA`).
    pub namespace: String,
    pub tag: String,
    pub section: i64,
    /// The dump ids of the entries it depends on.
    pub deps: Vec<i64>,
}

/// An archive's table of contents, in archive order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Toc(pub Vec<TocEntry>);

impl Toc {
    /// The `BLOB METADATA` entries of pg_dump 17 and newer: large objects created (with
    /// their owners and grants) in the data section, before their contents load.
    pub fn large_object_metadata(&self) -> std::collections::BTreeSet<i64> {
        self.0
            .iter()
            .filter(|e| e.desc == "BLOB METADATA")
            .map(|e| e.id)
            .collect()
    }

    /// The indexes and constraints of the post-data section that can be built now that
    /// the `TABLE DATA` entries `loaded` are in, in archive order: those that depend on
    /// nothing but tables whose data is loaded. What `pg_restore -j` starts as each table
    /// finishes; anything else — foreign keys (two tables), triggers, indexes of
    /// partitioned tables (no data of their own), whatever depends on another index — is
    /// left to the post-data run at the end, which orders it by its dependencies.
    pub fn ready_after_data(&self, loaded: &std::collections::BTreeSet<i64>) -> Vec<i64> {
        // A table's data depends on the table: table id → its data's id.
        let data_of: BTreeMap<i64, i64> = self
            .0
            .iter()
            .filter(|e| e.desc == "TABLE DATA")
            .filter_map(|e| match e.deps.as_slice() {
                [table] => Some((*table, e.id)),
                _ => None,
            })
            .collect();
        self.0
            .iter()
            .filter(|e| e.section == SECTION_POST_DATA)
            .filter(|e| e.desc == "INDEX" || e.desc == "CONSTRAINT")
            .filter(|e| {
                !e.deps.is_empty()
                    && e.deps
                        .iter()
                        .all(|d| data_of.get(d).is_some_and(|data| loaded.contains(data)))
            })
            .map(|e| e.id)
            .collect()
    }
}

impl Toc {
    /// The schema entries to create first so that the data of `data` (`TABLE DATA`
    /// entries) can load while the rest of the schema is created beside it: each table
    /// and what it depends on, and every pre-data entry that depends on the table — a
    /// column default, a sequence owned by it, an identity, a view on it — with what
    /// those depend on (created after the load started, an `ALTER TABLE` would wait for
    /// the load's lock, and the rest of the schema behind it).
    ///
    /// `None` when an entry is not a table's data, or its table depends on anything but
    /// schemas, types, domains, collations and extensions (a parent table, a function): a
    /// check constraint, a domain or a generated column that calls a function runs it on
    /// every row loaded, and a function's body may read objects it records no dependency
    /// on, which might not exist yet. Such a table waits for the whole schema, as in
    /// pg_restore's own order.
    pub fn schema_first(&self, data: &[i64]) -> Option<std::collections::BTreeSet<i64>> {
        let by_id: BTreeMap<i64, &TocEntry> = self.0.iter().map(|e| (e.id, e)).collect();
        let mut first = std::collections::BTreeSet::new();
        for id in data {
            let entry = by_id.get(id)?;
            let [table] = entry.deps.as_slice() else {
                return None;
            };
            if entry.desc != "TABLE DATA" || by_id.get(table)?.desc != "TABLE" {
                return None;
            }
            let before = ancestors(&by_id, *table);
            let plain = before.iter().filter(|a| *a != table).all(|a| {
                by_id
                    .get(a)
                    .is_some_and(|e| PLAIN_ANCESTORS.contains(&e.desc.as_str()))
            });
            if !plain {
                return None;
            }
            first.extend(before);
            for dependent in self
                .0
                .iter()
                .filter(|e| e.section == SECTION_PRE_DATA && e.deps.contains(table))
            {
                first.extend(ancestors(&by_id, dependent.id));
            }
        }
        Some(first)
    }
}

/// `id` and every entry it depends on, directly or not (those in the archive).
fn ancestors(by_id: &BTreeMap<i64, &TocEntry>, id: i64) -> std::collections::BTreeSet<i64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut next = vec![id];
    while let Some(id) = next.pop() {
        if let Some(entry) = by_id.get(&id)
            && seen.insert(id)
        {
            next.extend(entry.deps.iter().copied());
        }
    }
    seen
}

/// How many of the newlines at the end of a table's data belong to the end-of-data line
/// `\.` and the blank lines after it, not to rows.
fn terminator_newlines(tail: &[u8]) -> i64 {
    let newlines = tail.iter().rev().take_while(|&&b| b == b'\n').count();
    let rest = &tail[..tail.len() - newlines];
    let line_start = rest.len() == 2 || rest.len() > 2 && rest[rest.len() - 3] == b'\n';
    if newlines > 0 && rest.ends_with(b"\\.") && line_start {
        newlines as i64
    } else {
        0
    }
}

const TAIL: usize = 16;

/// The newlines in a piece of COPY data. A row has one, so a search (memchr's SIMD) beats
/// a count of every byte: the whole counter over the benchmark's 774 MB standard archive
/// took 0.36 s with a byte count, 0.14 s with memchr.
fn newlines(bytes: &[u8]) -> i64 {
    memchr::memchr_iter(b'\n', bytes).count() as i64
}

/// The last [`TAIL`] bytes of a table's data, kept as its rows go by.
#[derive(Default)]
struct Tail {
    bytes: [u8; TAIL],
    len: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL {
            self.bytes.copy_from_slice(&data[data.len() - TAIL..]);
            self.len = TAIL;
        } else {
            let keep = self.len.min(TAIL - data.len());
            self.bytes.copy_within(self.len - keep..self.len, 0);
            self.bytes[keep..keep + data.len()].copy_from_slice(data);
            self.len = keep + data.len();
        }
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug, Clone)]
enum State {
    Head,
    BlockType,
    BlockId {
        blobs: bool,
        start: u64,
    },
    /// A chunk length next; `table` is the entry being counted (None: not a table's data).
    ChunkLen {
        table: Option<i64>,
        blobs: bool,
    },
    Chunk {
        table: Option<i64>,
        left: usize,
        blobs: bool,
    },
    /// Large objects: an OID next (0 ends the block).
    BlobOid,
    Failed(String),
}

/// Why rows could not be counted from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct NotCounted(pub String);

impl Default for RowCounter {
    fn default() -> Self {
        RowCounter {
            state: State::Head,
            pending: Vec::new(),
            retry_at: 4096,
            int_size: 4,
            tables: BTreeMap::new(),
            counts: BTreeMap::new(),
            block_rows: 0,
            counting: true,
            tail: Tail::default(),
            position: 0,
            off_size: 8,
            offset_fields: Vec::new(),
            data_starts: BTreeMap::new(),
            current: None,
            completed: Vec::new(),
            toc: Toc::default(),
            head: std::sync::Arc::from(Vec::new()),
            data_ends: BTreeMap::new(),
            started: Vec::new(),
        }
    }
}

/// An archive integer: its sign byte, then its digits, least significant first.
pub(super) fn decode_int(bytes: &[u8]) -> i64 {
    let mut value: i64 = 0;
    for (i, b) in bytes[1..].iter().enumerate().take(8) {
        value |= (*b as i64) << (8 * i);
    }
    // Wrapping: a damaged archive may hold the one magnitude that has no negative (found
    // by the fuzz target); what such a value then means is checked where used.
    if bytes[0] != 0 {
        value.wrapping_neg()
    } else {
        value
    }
}

/// A cursor over bytes that may end too early (`None`: need more).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    int_size: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn int(&mut self) -> Option<i64> {
        self.take(1 + self.int_size).map(decode_int)
    }

    /// `Some(None)` for a NULL string.
    fn string(&mut self) -> Option<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Some(None);
        }
        let bytes = self.take(usize::try_from(len).ok()?)?;
        Some(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// What the head parser concluded.
enum Head {
    NeedMore,
    Parsed {
        consumed: usize,
        int_size: usize,
        off_size: usize,
        tables: BTreeMap<i64, (String, String)>,
        offset_fields: Vec<(i64, u64, u8)>,
        toc: Toc,
        loading: DataLoading,
    },
    Unsupported(String),
}

/// The head of an archive: a custom archive's (format 1), or with `toc_only` also a
/// directory archive's `toc.dat` (format 3, whose entries name their data files instead
/// of giving offsets) and archives whose data pg_dump compressed — what only the table
/// of contents is read of.
fn parse_head(bytes: &[u8], toc_only: bool) -> Head {
    macro_rules! need {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Head::NeedMore,
            }
        };
    }
    let mut c = Cursor {
        bytes,
        at: 0,
        int_size: 4,
    };
    if need!(c.take(5)) != b"PGDMP" {
        return Head::Unsupported("not a pg_dump custom archive".into());
    }
    let (major, minor) = (need!(c.byte()), need!(c.byte()));
    let _rev = need!(c.byte());
    let version = (major as u32) << 8 | minor as u32;
    // 1.12 (PostgreSQL 9.5) to 1.16 (17): the versions whose layout is known here.
    if !(0x010c..=0x0110).contains(&version) {
        return Head::Unsupported(format!("archive version {major}.{minor}"));
    }
    let int_size = need!(c.byte()) as usize;
    let off_size = need!(c.byte()) as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Head::Unsupported(format!("integer size {int_size}, offset size {off_size}"));
    }
    c.int_size = int_size;
    let format = need!(c.byte());
    if format != 1 && !(toc_only && format == 3) {
        return Head::Unsupported("not the custom format".into());
    }
    let compressed = if version >= 0x010f {
        need!(c.byte()) != 0
    } else {
        need!(c.int()) != 0
    };
    if compressed && !toc_only {
        return Head::Unsupported("the archive's data is compressed by pg_dump".into());
    }
    for _ in 0..7 {
        need!(c.int()); // creation time
    }
    for _ in 0..3 {
        need!(c.string()); // database, server version, pg_dump version
    }
    let entries = need!(c.int());
    if entries < 0 {
        return Head::Unsupported("a negative number of entries".into());
    }
    let mut tables = BTreeMap::new();
    let mut offset_fields = Vec::new();
    let mut toc = Toc::default();
    let mut loading = DataLoading {
        int_size,
        ..DataLoading::default()
    };
    for _ in 0..entries {
        let id = need!(c.int());
        let _had_dumper = need!(c.int());
        let _table_oid = need!(c.string());
        let _oid = need!(c.string());
        let tag = need!(c.string()).unwrap_or_default();
        let desc = need!(c.string()).unwrap_or_default();
        let section = need!(c.int());
        let defn = need!(c.string());
        let _drop = need!(c.string());
        let copy = need!(c.string());
        let namespace = need!(c.string()).unwrap_or_default();
        let _tablespace = need!(c.string());
        if version >= 0x010e {
            let _tableam = need!(c.string());
        }
        if version >= 0x0110 {
            let _relkind = need!(c.int());
        }
        let _owner = need!(c.string());
        let _with_oids = need!(c.string());
        // Dependencies, dump ids as text, ended by NULL; one that is not a number is kept
        // as an id no entry has, so that what depends on it never counts as ready.
        let mut deps = Vec::new();
        while let Some(dep) = need!(c.string()) {
            deps.push(dep.trim().parse().unwrap_or(i64::MIN));
        }
        toc.0.push(TocEntry {
            id,
            desc: desc.clone(),
            namespace: namespace.clone(),
            tag: tag.clone(),
            section,
            deps,
        });
        if format == 3 {
            let _file = need!(c.string());
        } else {
            let at = c.at as u64;
            let offset = need!(c.take(1 + off_size));
            offset_fields.push((id, at, offset[0]));
        }
        match desc.as_str() {
            "TABLE DATA" => {
                if let Some(copy) = copy.filter(|c| DataLoading::is_copy_from_stdin(c)) {
                    loading.copy.insert(id, copy);
                }
                tables.insert(id, (namespace, tag));
            }
            "ENCODING" => loading.encoding = defn.as_deref().and_then(quoted),
            "STDSTRINGS" => loading.std_strings = defn.as_deref().and_then(quoted),
            _ => {}
        }
    }
    Head::Parsed {
        consumed: c.at,
        int_size,
        off_size,
        tables,
        offset_fields,
        toc,
        loading,
    }
}

/// The table of contents of an archive's head (its bytes up to the first data block),
/// and what loading its tables' data over a connection needs.
pub fn toc_of_head(head: &[u8]) -> Result<(Toc, DataLoading), String> {
    toc_of(head, false)
}

/// [`toc_of_head`] of a custom archive or of a directory archive's `toc.dat`.
pub fn toc_of_any(head: &[u8]) -> Result<Toc, String> {
    toc_of(head, true).map(|(toc, _)| toc)
}

fn toc_of(head: &[u8], toc_only: bool) -> Result<(Toc, DataLoading), String> {
    match parse_head(head, toc_only) {
        Head::Parsed { toc, loading, .. } => Ok((toc, loading)),
        Head::NeedMore => Err("the archive ends inside its table of contents".into()),
        Head::Unsupported(why) => Err(why),
    }
}

/// What pg_restore takes from an archive's head to load a table's data, for loading it
/// over our own connection instead ([`super::copy_in`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataLoading {
    /// The size of the archive's integers (chunk lengths, dump ids).
    pub int_size: usize,
    /// The encoding the data is in (the `ENCODING` entry), e.g. `UTF8`.
    pub encoding: Option<String>,
    /// `on` or `off` (the `STDSTRINGS` entry).
    pub std_strings: Option<String>,
    /// dump id → the `COPY … FROM stdin;` that loads a `TABLE DATA` entry, for those
    /// entries whose statement has that shape.
    pub copy: BTreeMap<i64, String>,
}

impl DataLoading {
    /// Whether `statement` has the one shape pg_dump writes (`COPY table (columns) FROM
    /// stdin;`) and nothing else: no second statement, no comment, no literal. Anything
    /// else (a hostile archive's, or a table whose name holds such characters) is left to
    /// pg_restore, which runs whatever the archive says, as it always did.
    fn is_copy_from_stdin(statement: &str) -> bool {
        let body = statement.strip_suffix('\n').unwrap_or(statement);
        body.starts_with("COPY ")
            && body.ends_with(" FROM stdin;")
            && body.matches(';').count() == 1
            && !body.contains(['\'', '\n', '\r', '\\', '\0'])
            && !body.contains("--")
            && !body.contains("/*")
    }
}

/// The text between the first pair of single quotes (`SET client_encoding = 'UTF8';`).
fn quoted(defn: &str) -> Option<String> {
    let (_, rest) = defn.split_once('\'')?;
    let (value, _) = rest.split_once('\'')?;
    Some(value.to_string())
}

impl RowCounter {
    /// A reader that finds where the blocks are but counts no rows: a restore, which
    /// counts in the database, needs only the layout. [`RowCounter::finish`] then gives
    /// an empty set of counts.
    pub fn layout_only() -> RowCounter {
        RowCounter {
            counting: false,
            ..RowCounter::default()
        }
    }

    /// Takes the next piece of the archive.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if let State::ChunkLen {
                table,
                blobs: false,
            } = self.state
                && self.pending.is_empty()
            {
                self.whole_chunks(table.is_some(), &mut bytes);
                if bytes.is_empty() {
                    return;
                }
            }
            match self.state.clone() {
                State::Failed(_) => return,
                State::Head => {
                    self.pending.extend_from_slice(bytes);
                    if self.pending.len() < self.retry_at {
                        return;
                    }
                    self.retry_at = self.pending.len().saturating_mul(2);
                    self.parse_pending_head();
                    if matches!(self.state, State::BlockType) {
                        // What followed the head is data: feed it on.
                        let rest = std::mem::take(&mut self.pending);
                        self.feed(&rest);
                    }
                    return;
                }
                State::Chunk { table, left, blobs } => {
                    let n = left.min(bytes.len());
                    if table.is_some() {
                        self.block_rows += newlines(&bytes[..n]);
                        self.tail.push(&bytes[..n]);
                    }
                    bytes = &bytes[n..];
                    self.position += n as u64;
                    self.state = if n == left {
                        State::ChunkLen { table, blobs }
                    } else {
                        State::Chunk {
                            table,
                            left: left - n,
                            blobs,
                        }
                    };
                }
                State::BlockType => {
                    let kind = bytes[0];
                    bytes = &bytes[1..];
                    let start = self.position;
                    self.position += 1;
                    self.state = match kind {
                        BLK_DATA => State::BlockId {
                            blobs: false,
                            start,
                        },
                        BLK_BLOBS => State::BlockId { blobs: true, start },
                        other => State::Failed(format!("a data block of unknown type {other}")),
                    };
                }
                state @ (State::BlockId { .. } | State::ChunkLen { .. } | State::BlobOid) => {
                    let want = 1 + self.int_size;
                    // Whole in this piece (nearly always: one per row): read in place.
                    let whole = self.pending.is_empty() && bytes.len() >= want;
                    let value = if whole {
                        let value = Cursor {
                            bytes: &bytes[..want],
                            at: 0,
                            int_size: self.int_size,
                        }
                        .int()
                        .expect("a whole integer is there");
                        bytes = &bytes[want..];
                        self.position += want as u64;
                        value
                    } else {
                        let take = (want - self.pending.len()).min(bytes.len());
                        self.pending.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                        self.position += take as u64;
                        if self.pending.len() < want {
                            return;
                        }
                        let value = Cursor {
                            bytes: &self.pending,
                            at: 0,
                            int_size: self.int_size,
                        }
                        .int()
                        .expect("a whole integer is pending");
                        self.pending.clear();
                        value
                    };
                    if let State::BlockId { .. } = state {
                        self.current = Some(value);
                        self.started.push(value);
                    }
                    self.state = self.after_int(state, value);
                    if matches!(self.state, State::BlockType)
                        && let Some(id) = self.current.take()
                    {
                        self.data_ends.insert(id, self.position);
                        self.completed.push(id);
                    }
                }
            }
        }
    }

    /// Reads the table data's chunks that are whole in `bytes`, in a tight loop, and
    /// leaves the rest (an end of block, a chunk that goes on in the next piece, anything
    /// odd) to [`RowCounter::feed`]'s state machine. pg_dump writes each row as a chunk of
    /// its own, so this runs millions of times per table: the table's count is only looked
    /// up when its block ends.
    fn whole_chunks(&mut self, counted: bool, bytes: &mut &[u8]) {
        let b = *bytes;
        let want = 1 + self.int_size;
        let digits = self.int_size.min(8);
        let mut at = 0;
        let mut rows = 0;
        while b.len() - at >= want && b[at] == 0 {
            let mut len = 0u64;
            for (i, &d) in b[at + 1..at + 1 + digits].iter().enumerate() {
                len |= u64::from(d) << (8 * i);
            }
            let room = (b.len() - at - want) as u64;
            if len == 0 || len > room {
                break;
            }
            let chunk = &b[at + want..at + want + len as usize];
            if counted {
                rows += newlines(chunk);
                self.tail.push(chunk);
            }
            at += want + chunk.len();
        }
        self.block_rows += rows;
        self.position += at as u64;
        *bytes = &b[at..];
    }

    fn parse_pending_head(&mut self) {
        match parse_head(&self.pending, false) {
            Head::NeedMore if self.pending.len() > MAX_HEAD => {
                self.state = State::Failed("its table of contents is over 64 MiB".into());
            }
            Head::NeedMore => {}
            Head::Unsupported(why) => self.state = State::Failed(why),
            Head::Parsed {
                consumed,
                int_size,
                off_size,
                tables,
                offset_fields,
                toc,
                ..
            } => {
                self.toc = toc;
                self.head = self.pending[..consumed].into();
                self.int_size = int_size;
                self.off_size = off_size;
                self.offset_fields = offset_fields;
                self.position = consumed as u64;
                if self.counting {
                    self.counts = tables.values().map(|k| (k.clone(), 0)).collect();
                }
                self.tables = tables;
                self.pending.drain(..consumed);
                self.state = State::BlockType;
            }
        }
    }

    fn after_int(&mut self, state: State, value: i64) -> State {
        match state {
            State::ChunkLen {
                table: Some(id),
                blobs: false,
            } if value == 0 => {
                let rows =
                    std::mem::take(&mut self.block_rows) - terminator_newlines(self.tail.get());
                if let Some(count) = self.tables.get(&id).and_then(|k| self.counts.get_mut(k)) {
                    *count += rows;
                }
                self.tail.clear();
                State::BlockType
            }
            // pg_dump writes one block per entry: a second is a damaged archive, and
            // where a block starts and ends must mean one block.
            State::BlockId { .. } if self.data_starts.contains_key(&value) => {
                State::Failed(format!("the data of entry {value} appears twice"))
            }
            State::BlockId {
                blobs: false,
                start,
            } => {
                self.data_starts.insert(value, start);
                State::ChunkLen {
                    table: (self.counting && self.tables.contains_key(&value)).then_some(value),
                    blobs: false,
                }
            }
            State::BlockId { blobs: true, start } => {
                self.data_starts.insert(value, start);
                State::BlobOid
            }
            State::BlobOid if value == 0 => State::BlockType,
            State::BlobOid => State::ChunkLen {
                table: None,
                blobs: true,
            },
            State::ChunkLen { blobs, .. } if value == 0 => {
                if blobs {
                    State::BlobOid
                } else {
                    State::BlockType
                }
            }
            State::ChunkLen { table, blobs } => match usize::try_from(value) {
                Ok(left) => State::Chunk { table, left, blobs },
                Err(_) => State::Failed(format!("a chunk of negative length {value}")),
            },
            other => other,
        }
    }

    /// An archive smaller than the first retry of the head's parse: parse what there is.
    fn complete_head(&mut self) {
        if matches!(self.state, State::Head) {
            self.parse_pending_head();
            if !self.pending.is_empty() && matches!(self.state, State::BlockType) {
                let rest = std::mem::take(&mut self.pending);
                self.feed(&rest);
            }
        }
    }

    /// Whether the header and table of contents have been read (and understood): from
    /// then on, what was fed so far is a custom archive pg_restore can read the table of
    /// contents of.
    pub fn head_parsed(&self) -> bool {
        !matches!(self.state, State::Head | State::Failed(_))
    }

    /// The table of contents, once [`RowCounter::head_parsed`].
    pub fn toc(&self) -> &Toc {
        &self.toc
    }

    /// The header and table of contents as they arrived, once [`RowCounter::head_parsed`]:
    /// what pg_restore reads from a pipe before the data blocks.
    pub fn head(&self) -> std::sync::Arc<[u8]> {
        self.head.clone()
    }

    /// The data blocks whose start (type and dump id) was read since the last call, in
    /// archive order.
    pub fn take_started(&mut self) -> Vec<i64> {
        if matches!(self.state, State::Failed(_)) {
            return Vec::new();
        }
        std::mem::take(&mut self.started)
    }

    /// Where a data block starts, and where it ends once it was read to its end.
    pub fn block(&self, id: i64) -> Option<(u64, Option<u64>)> {
        let start = *self.data_starts.get(&id)?;
        Some((start, self.data_ends.get(&id).copied()))
    }

    /// `(dump id, start, end)` of every data block, in archive order, once the whole
    /// archive was fed and understood; `None` otherwise.
    pub fn blocks(&self) -> Option<Vec<(i64, u64, u64)>> {
        if !matches!(self.state, State::BlockType) {
            return None;
        }
        let mut blocks = self
            .data_starts
            .iter()
            .map(|(id, start)| Some((*id, *start, *self.data_ends.get(id)?)))
            .collect::<Option<Vec<_>>>()?;
        blocks.sort_by_key(|b| b.1);
        Some(blocks)
    }

    /// The data blocks read to their end since the last call, each with the bytes to fill
    /// into its TOC entry's offset field (at that position of the archive) when pg_dump
    /// left it unset — so that pg_restore finds the block while the rest still arrives.
    pub fn take_completed(&mut self) -> Vec<(i64, Option<Patch>)> {
        if matches!(self.state, State::Failed(_)) {
            return Vec::new();
        }
        let done = std::mem::take(&mut self.completed);
        done.into_iter()
            .map(|id| {
                let patch = self
                    .offset_fields
                    .iter()
                    .find(|(i, _, flag)| *i == id && *flag == OFFSET_NOT_SET)
                    .zip(self.data_starts.get(&id))
                    .map(|((_, at, _), start)| {
                        let mut bytes = vec![OFFSET_SET];
                        bytes.extend_from_slice(&start.to_le_bytes()[..self.off_size]);
                        (*at, bytes)
                    });
                (id, patch)
            })
            .collect()
    }

    /// Where the data blocks are, once all of the archive was fed: the offset fields to
    /// fill in (those pg_dump left unset, of entries whose block was seen).
    pub fn finish_layout(mut self) -> Result<Layout, NotCounted> {
        self.complete_head();
        let off_size = self.off_size;
        let fields = self.offset_fields.clone();
        let starts = self.data_starts.clone();
        self.finish()?;
        let mut layout = Layout::default();
        for (id, at, flag) in fields {
            let Some(start) = starts.get(&id) else {
                continue;
            };
            if flag != OFFSET_NOT_SET {
                continue;
            }
            let mut bytes = vec![OFFSET_SET];
            bytes.extend_from_slice(&start.to_le_bytes()[..off_size]);
            layout.patches.push((at, bytes));
        }
        Ok(layout)
    }

    /// The rows of every table whose data the archive holds, once all of it was fed.
    pub fn finish(mut self) -> Result<RowCounts, NotCounted> {
        self.complete_head();
        match self.state {
            State::BlockType => Ok(self.counts),
            State::Failed(why) => Err(NotCounted(why)),
            State::Head => Err(NotCounted(
                "the archive ends inside its table of contents".into(),
            )),
            _ => Err(NotCounted("the archive ends inside a data block".into())),
        }
    }
}

/// The data blocks' starts are where a backup's compressed file starts new frames, and
/// the blocks are what its index records.
impl crate::repo::pipeline::Seams for std::sync::Arc<std::sync::Mutex<RowCounter>> {
    fn take(&mut self) -> Vec<u64> {
        let mut counter = self.lock().expect("the counter is not poisoned");
        let started = counter.take_started();
        started
            .iter()
            .filter_map(|id| counter.data_starts.get(id).copied())
            .collect()
    }

    fn blocks(&mut self) -> Option<Vec<(i64, u64, u64)>> {
        self.lock().expect("the counter is not poisoned").blocks()
    }
}

/// A counter shared with the reader that feeds it ([`crate::counting::Tap`]).
impl crate::counting::Sees for std::sync::Arc<std::sync::Mutex<RowCounter>> {
    fn see(&mut self, bytes: &[u8]) {
        self.lock()
            .expect("the counter is not poisoned")
            .feed(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_copy_from_stdin_is_loaded_over_our_connection() {
        for good in [
            "COPY public.t (a, b) FROM stdin;\n",
            "COPY \"Sales Dept\".\"Order Items\" (id, \"Qty\") FROM stdin;\n",
            "COPY public.empty  FROM stdin;\n",
        ] {
            assert!(DataLoading::is_copy_from_stdin(good), "{good}");
        }
        for bad in [
            "COPY public.t FROM stdin; DROP TABLE x; COPY u FROM stdin;\n",
            "COPY public.t FROM PROGRAM 'rm -rf /' -- FROM stdin;\n",
            "COPY public.t /* x */ FROM stdin;\n",
            "copy public.t FROM stdin;\n",
            "COPY public.t FROM '/etc/passwd';\n",
            "COPY public.t FROM stdin;\nSELECT 1 FROM stdin;\n",
            "COPY \"a\\b\" FROM stdin;\n",
        ] {
            assert!(!DataLoading::is_copy_from_stdin(bad), "{bad}");
        }
        assert_eq!(
            quoted("SET client_encoding = 'UTF8';\n").as_deref(),
            Some("UTF8")
        );
        assert_eq!(
            quoted("SET standard_conforming_strings = 'on';\n").as_deref(),
            Some("on")
        );
        assert_eq!(quoted("SET nothing;"), None);
    }

    /// A table-of-contents entry in schema `public`, named after its id.
    fn entry(id: i64, desc: &str, section: i64, deps: &[i64]) -> TocEntry {
        TocEntry {
            id,
            desc: desc.into(),
            namespace: "public".into(),
            tag: format!("t{id}"),
            section,
            deps: deps.to_vec(),
        }
    }

    #[test]
    fn an_index_is_ready_once_the_data_of_every_table_it_is_on_is_loaded() {
        // Tables 1 and 2 with data 11 and 12; 3 is partitioned (no data of its own).
        let toc = Toc(vec![
            entry(1, "TABLE", 2, &[]),
            entry(2, "TABLE", 2, &[]),
            entry(3, "TABLE", 2, &[]),
            entry(11, "TABLE DATA", 3, &[1]),
            entry(12, "TABLE DATA", 3, &[2]),
            entry(21, "CONSTRAINT", 4, &[1]),
            entry(22, "INDEX", 4, &[2]),
            entry(23, "FK CONSTRAINT", 4, &[1, 2]),
            entry(24, "INDEX", 4, &[3]),
            entry(25, "INDEX ATTACH", 4, &[24, 22]),
            entry(26, "TRIGGER", 4, &[1]),
            entry(27, "INDEX", 4, &[1, 99]),
            entry(28, "INDEX", 4, &[]),
            entry(29, "COMMENT", 1, &[21]),
        ]);
        let loaded = |ids: &[i64]| ids.iter().copied().collect();
        assert_eq!(toc.ready_after_data(&loaded(&[])), Vec::<i64>::new());
        assert_eq!(toc.ready_after_data(&loaded(&[11])), vec![21]);
        assert_eq!(toc.ready_after_data(&loaded(&[11, 12])), vec![21, 22]);
    }

    #[test]
    fn a_table_loads_before_the_rest_of_the_schema_only_when_it_runs_no_code_of_its_own() {
        let toc = Toc(vec![
            entry(1, "SCHEMA", 2, &[]),
            entry(2, "TYPE", 2, &[1]),
            entry(3, "FUNCTION", 2, &[1]),
            entry(4, "SEQUENCE", 2, &[1]),
            // Table 10 uses a type; 11 has a check calling function 3; 12 inherits 10.
            entry(10, "TABLE", 2, &[1, 2]),
            entry(11, "TABLE", 2, &[1, 3]),
            entry(12, "TABLE", 2, &[10]),
            entry(13, "TABLE", 2, &[1]),
            // Table 10's default, its sequence's owner, a view joining 10 and 13, an
            // index and a comment on 10, and something unrelated.
            entry(20, "DEFAULT", 2, &[10, 4]),
            entry(21, "SEQUENCE OWNED BY", 2, &[4, 10]),
            entry(22, "VIEW", 2, &[10, 13]),
            entry(23, "INDEX", 4, &[10]),
            entry(24, "COMMENT", 1, &[10]),
            entry(25, "VIEW", 2, &[13]),
            entry(30, "TABLE DATA", 3, &[10]),
            entry(31, "TABLE DATA", 3, &[11]),
            entry(32, "TABLE DATA", 3, &[12]),
            entry(33, "TABLE DATA", 3, &[13]),
            entry(34, "BLOBS", 3, &[]),
            entry(35, "SEQUENCE SET", 3, &[4]),
        ]);
        let set = |ids: &[i64]| Some(ids.iter().copied().collect());
        // The table, its type and schema; the default and the owner with the sequence;
        // the child table; the view with the other table it reads. Not the index
        // (post-data), the comment (takes no lock that waits for a load) nor the
        // unrelated view.
        assert_eq!(
            toc.schema_first(&[30]),
            set(&[1, 2, 4, 10, 12, 13, 20, 21, 22])
        );
        assert_eq!(toc.schema_first(&[33]), set(&[1, 13, 22, 25, 10, 2]));
        assert_eq!(
            toc.schema_first(&[31]),
            None,
            "a function may run as rows load"
        );
        assert_eq!(
            toc.schema_first(&[32]),
            None,
            "a child needs its parent's schema"
        );
        assert_eq!(toc.schema_first(&[30, 31]), None);
        assert_eq!(toc.schema_first(&[34]), None, "large objects need theirs");
        assert_eq!(toc.schema_first(&[35]), None);
        assert_eq!(toc.schema_first(&[99]), None);
        assert_eq!(toc.schema_first(&[]), set(&[]));
    }

    /// A small archive as pg_dump 15 writes it to a pipe (version 1.14, no compression).
    fn archive(tables: &[(&str, &str, &[&str])]) -> Vec<u8> {
        let int = |out: &mut Vec<u8>, v: i64| {
            out.push(u8::from(v < 0));
            out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        };
        let string = |out: &mut Vec<u8>, s: Option<&str>| match s {
            None => int(out, -1),
            Some(s) => {
                int(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
        };
        let mut a = b"PGDMP".to_vec();
        a.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        int(&mut a, 0);
        for v in [1, 2, 3, 4, 5, 126, 0] {
            int(&mut a, v);
        }
        for s in ["app", "15.0", "15.0"] {
            string(&mut a, Some(s));
        }
        int(&mut a, 1 + 2 * tables.len() as i64);
        let entry = |a: &mut Vec<u8>, id: i64, desc: &str, ns: &str, tag: &str| {
            int(a, id);
            int(a, i64::from(desc == "TABLE DATA"));
            string(a, Some("0"));
            string(a, Some("0"));
            string(a, Some(tag));
            string(a, Some(desc));
            int(a, 2);
            string(a, Some(""));
            string(a, Some(""));
            string(a, None);
            string(a, Some(ns));
            string(a, Some(""));
            string(a, Some("heap"));
            string(a, Some("postgres"));
            string(a, Some("false"));
            string(a, Some("1"));
            string(a, None);
            // As pg_dump writes to a pipe: data offsets not set, no data for the rest.
            let flag = if desc == "TABLE DATA" { 1 } else { 3 };
            a.extend_from_slice(&[flag, 0, 0, 0, 0, 0, 0, 0, 0]);
        };
        entry(&mut a, 1, "ENCODING", "", "ENCODING");
        for (i, (ns, tag, _)) in tables.iter().enumerate() {
            entry(&mut a, 10 + i as i64, "TABLE", ns, tag);
            entry(&mut a, 100 + i as i64, "TABLE DATA", ns, tag);
        }
        for (i, (_, _, rows)) in tables.iter().enumerate() {
            a.push(BLK_DATA);
            int(&mut a, 100 + i as i64);
            for row in *rows {
                let line = format!("{row}\n");
                int(&mut a, line.len() as i64);
                a.extend_from_slice(line.as_bytes());
            }
            // The end-of-data line, as pg_dump 15 writes it (its own chunk).
            int(&mut a, 5);
            a.extend_from_slice(b"\\.\n\n\n");
            int(&mut a, 0);
        }
        // Large objects: two of them, then the end.
        a.push(BLK_BLOBS);
        int(&mut a, 999);
        for oid in [16400, 16401] {
            int(&mut a, oid);
            int(&mut a, 3);
            a.extend_from_slice(b"x\ny");
            int(&mut a, 0);
        }
        int(&mut a, 0);
        a
    }

    #[test]
    fn rows_are_counted_per_table_however_the_stream_is_cut() {
        let bytes = archive(&[
            ("public", "a", &["1\tone", "2\ttwo\\nstill two", "3\tthree"]),
            ("other", "b", &[]),
            ("public", "c", &["x"]),
        ]);
        for piece in [1, 3, 7, 64, 4096, bytes.len()] {
            let mut counter = RowCounter::default();
            for chunk in bytes.chunks(piece) {
                counter.feed(chunk);
            }
            let counts = counter.finish().unwrap();
            let key = |s: &str, t: &str| (s.to_string(), t.to_string());
            assert_eq!(counts[&key("public", "a")], 3, "pieces of {piece}");
            assert_eq!(counts[&key("other", "b")], 0);
            assert_eq!(counts[&key("public", "c")], 1);
            assert_eq!(counts.len(), 3);
        }
    }

    #[test]
    fn the_tail_is_the_last_bytes_of_everything_pushed() {
        let data: Vec<u8> = (0..200u8).collect();
        for sizes in [
            &[1usize][..],
            &[3, 1, 20],
            &[15, 2],
            &[16],
            &[17, 1, 1],
            &[40, 5, 11],
        ] {
            let mut tail = Tail::default();
            let (mut at, mut i) = (0, 0);
            while at < data.len() {
                let end = (at + sizes[i % sizes.len()]).min(data.len());
                tail.push(&data[at..end]);
                at = end;
                i += 1;
                assert_eq!(tail.get(), &data[at.saturating_sub(TAIL)..at], "{sizes:?}");
            }
        }
    }

    #[test]
    fn the_layout_points_every_data_entry_at_its_block() {
        let bytes = archive(&[("public", "a", &["1", "2"]), ("public", "b", &["3"])]);
        let mut counter = RowCounter::default();
        for chunk in bytes.chunks(5) {
            counter.feed(chunk);
        }
        let layout = counter.finish_layout().unwrap();
        // The two TABLE DATA entries (the large objects' block has no entry here).
        assert_eq!(layout.patches.len(), 2);
        for (at, field) in &layout.patches {
            let at = *at as usize;
            assert_eq!(bytes[at], OFFSET_NOT_SET, "the field's flag at {at}");
            assert_eq!(field[0], OFFSET_SET);
            let start = u64::from_le_bytes(field[1..9].try_into().unwrap()) as usize;
            assert_eq!(bytes[start], BLK_DATA, "a block starts at {start}");
        }
    }

    #[test]
    fn each_block_is_told_once_it_has_all_arrived_with_its_offset() {
        // Longer than the first attempt to read the head (4 KiB), as real archives are.
        let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let bytes = archive(&[("public", "a", &many), ("public", "b", &["3"])]);
        let mut whole = RowCounter::default();
        whole.feed(&bytes);
        let layout = whole.finish_layout().unwrap();
        let mut counter = RowCounter::default();
        let mut told = Vec::new();
        let mut fed = 0;
        for chunk in bytes.chunks(7) {
            counter.feed(chunk);
            fed += chunk.len();
            for (id, patch) in counter.take_completed() {
                // The large objects' block has no TOC entry in this archive.
                let Some((at, field)) = patch else { continue };
                // Told only once the block is all there, never before the head.
                let start = u64::from_le_bytes(field[1..9].try_into().unwrap()) as usize;
                assert!(start < fed && (at as usize) < start);
                assert!(counter.head_parsed());
                told.push((id, (at, field)));
            }
        }
        assert_eq!(
            told.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            layout.patches
        );
        assert!(counter.take_completed().is_empty());
    }

    #[test]
    fn a_damaged_integer_is_no_panic() {
        // Found by `cargo fuzz run custom_archive`: a negative length of magnitude 2^63.
        let bytes = b"PGDMP\x01\x0e\x04\x08\x08\x01\xcb\x00\x00\x00\x00\x00\x00\x00\x80\x00\x27\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\xf2\x00\x00\xff\x92\xff\x00\x0e\x00";
        let mut counter = RowCounter::default();
        counter.feed(bytes);
        assert!(counter.finish_layout().is_err());
    }

    #[test]
    fn the_end_of_data_line_is_no_row() {
        assert_eq!(terminator_newlines(b"1\n2\n\\.\n\n\n"), 3);
        assert_eq!(terminator_newlines(b"\\.\n\n\n"), 3);
        assert_eq!(terminator_newlines(b"\\.\n"), 1);
        // A value ending in a backslash and a dot is not the end line.
        assert_eq!(terminator_newlines(b"a\\.\n"), 0);
        assert_eq!(terminator_newlines(b"1\n2\n"), 0);
    }

    #[test]
    fn a_layout_only_reader_finds_the_same_blocks_and_counts_nothing() {
        // Longer than the head's first parse (4 KiB): blocks are seen as they pass.
        let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = archive(&[("public", "t", &many), ("s", "u", &["3"])]);
        let mut counting = RowCounter::default();
        let mut layout = RowCounter::layout_only();
        for piece in a.chunks(7) {
            counting.feed(piece);
            layout.feed(piece);
        }
        for id in [100, 101, 999] {
            assert_eq!(counting.block(id), layout.block(id), "block {id}");
            assert!(layout.block(id).is_some_and(|(_, end)| end.is_some()));
        }
        assert_eq!(counting.finish().unwrap().len(), 2);
        assert_eq!(layout.finish(), Ok(RowCounts::new()));
    }

    #[test]
    fn a_block_that_appears_twice_is_damage_not_a_second_table() {
        let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = archive(&[("public", "t", &many)]);
        let mut counter = RowCounter::default();
        counter.feed(&a);
        let (start, end) = counter.block(100).expect("the block was read");
        let end = end.expect("to its end");
        assert_eq!(counter.take_started(), vec![100, 999]);
        let mut twice = a.clone();
        twice.extend_from_slice(&a[start as usize..end as usize]);
        let mut counter = RowCounter::default();
        counter.feed(&twice);
        assert_eq!(
            counter.finish(),
            Err(NotCounted("the data of entry 100 appears twice".into()))
        );
    }

    #[test]
    fn what_is_not_understood_is_said_and_a_cut_archive_is_not_counted() {
        let mut counter = RowCounter::default();
        counter.feed(b"-- PostgreSQL database dump\n");
        assert!(counter.finish().unwrap_err().0.contains("not a pg_dump"));

        let bytes = archive(&[("public", "a", &["1", "2"])]);
        let mut counter = RowCounter::default();
        counter.feed(&bytes[..bytes.len() - 30]);
        assert!(counter.finish().unwrap_err().0.contains("ends inside"));

        let mut compressed = bytes.clone();
        compressed[12] = 5; // the compression level of a 1.14 header
        let mut counter = RowCounter::default();
        counter.feed(&compressed);
        assert!(counter.finish().unwrap_err().0.contains("compressed"));
    }
}
