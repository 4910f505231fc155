//! Loading a custom archive's table data over our own connection: what pg_restore does
//! for a `TABLE DATA` entry — the entry's `COPY … FROM stdin`, then the chunks of its data
//! block as COPY data — without a pg_restore process reading the data from a pipe.
//!
//! A parallel restore of an indexed backup ([`super::restore`]) spent about a second of
//! CPU per gigabyte in that detour (the pipe's writes, pg_restore's 4 KiB reads and its
//! copy of every row) on a machine whose two cores the server needs for the load
//! itself. The session is set up as pg_restore sets up its own (`_doSetFixedOutputState`
//! in pg_backup_archiver.c), and the bytes the server gets are the same.

use super::conn::ConnInfo;
use super::custom_archive::{BLK_DATA, DataLoading, decode_int};
use crate::exec::StepError;
use sqlx::PgConnection;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// COPY data is sent in messages of about this size: fewer, larger writes to the socket.
const SEND: usize = 1 << 20;

/// Whether the data of entries `ids` can be loaded here: the archive's data is UTF-8
/// (the encoding the connection speaks; anything else is left to pg_restore, which sets
/// the archive's) and every entry has a plain `COPY … FROM stdin` statement.
pub fn can_load(loading: &DataLoading, ids: &[i64]) -> bool {
    loading.encoding.as_deref() == Some("UTF8")
        && matches!(loading.std_strings.as_deref(), Some("on" | "off"))
        && ids.iter().all(|id| loading.copy.contains_key(id))
}

/// A session for loading: pg_restore's settings, and commits that do not wait for the
/// disk (see [`super::restore::restore`] for why that risks nothing).
pub async fn session(into: &ConnInfo, loading: &DataLoading) -> Result<PgConnection, StepError> {
    use sqlx::Executor;
    let mut conn = into
        .connect_to("the database to load table data into")
        .await?;
    // `can_load` admitted only `on` or `off`: nothing from the archive is pasted here
    // but one of those two words.
    let std_strings = match loading.std_strings.as_deref() {
        Some("off") => "off",
        _ => "on",
    };
    // The search path is empty, as pg_dump's own SEARCHPATH entry sets it, so that what
    // runs during the load (check constraints, domain checks) resolves names the same
    // way as under pg_restore.
    let settings = format!(
        "SET synchronous_commit = off; SET statement_timeout = 0; SET lock_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'; \
         SET standard_conforming_strings = {std_strings}; \
         SELECT pg_catalog.set_config('search_path', '', false); \
         SET check_function_bodies = false; SET xmloption = content; \
         SET client_min_messages = warning; SET row_security = off;"
    );
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(settings)))
        .await
        .map_err(|e| super::server::classify(&e, "setting up the session to load table data"))?;
    Ok(conn)
}

/// Loads the data blocks `ids` from `reader`, which holds the archive from the start of a
/// block on: each wanted block with its `COPY`, each other one skipped. With `len`
/// (`Some`), exactly that many bytes are read, and they must be whole blocks; with `None`,
/// reading stops once every wanted block is loaded (a copy of the archive still being
/// written, followed up to its last block), or at the end of the reader, which must be
/// between blocks. Each wanted block must be there exactly once; anything else is a
/// damaged archive. `name` is the stored file's, for messages.
pub async fn load<R: AsyncBufRead + Unpin>(
    cancel: &tokio_util::sync::CancellationToken,
    conn: &mut PgConnection,
    loading: &DataLoading,
    ids: &[i64],
    reader: R,
    len: Option<u64>,
    name: &str,
) -> Result<(), StepError> {
    let feed = Feed {
        reader,
        blocks: Blocks::new(loading.int_size),
        left: len,
        data: Vec::with_capacity(SEND + (SEND >> 2)),
        name,
    };
    tokio::select! {
        r = load_blocks(conn, loading, ids, feed) => r,
        // Dropping the connection ends the COPY: the server rolls it back.
        _ = cancel.cancelled() => Err(StepError::cancelled()),
    }
}

async fn load_blocks<R: AsyncBufRead + Unpin>(
    conn: &mut PgConnection,
    loading: &DataLoading,
    ids: &[i64],
    mut feed: Feed<'_, R>,
) -> Result<(), StepError> {
    // Without a length, the reader is a copy still being written: stop at the last block.
    let until_loaded = feed.left.is_none();
    let mut wanted: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    loop {
        match feed.next().await? {
            Next::Done => break,
            Next::Event(Event::Start(id)) if wanted.remove(&id) => {
                let statement = &loading.copy[&id];
                let table = table_of(statement);
                let fail =
                    |e: sqlx::Error| super::server::classify(&e, &format!("COPY of {table}"));
                let mut copy = conn.copy_in_raw(statement).await.map_err(fail)?;
                loop {
                    match feed.next().await? {
                        Next::Full => {
                            copy.send(&feed.data[..]).await.map_err(fail)?;
                            feed.data.clear();
                        }
                        Next::Event(Event::End) => {
                            if !feed.data.is_empty() {
                                copy.send(&feed.data[..]).await.map_err(fail)?;
                                feed.data.clear();
                            }
                            let rows = copy.finish().await.map_err(fail)?;
                            tracing::debug!(table, rows, "table data loaded");
                            if until_loaded && wanted.is_empty() {
                                return Ok(());
                            }
                            break;
                        }
                        Next::Event(Event::Start(_)) | Next::Done => {
                            unreachable!("a block ends before the next starts or the bytes end")
                        }
                    }
                }
            }
            // Data of a block not wanted here (loaded by another run, or not at all), or
            // such a block's start or end: read past.
            Next::Full | Next::Event(_) => feed.data.clear(),
        }
    }
    if let Some(id) = wanted.first() {
        return Err(feed.damaged(format!(
            "the data of entry {id} is not where the backup's index says"
        )));
    }
    Ok(())
}

/// What [`Feed::next`] stopped at.
enum Next {
    Event(Event),
    /// The data read holds at least [`SEND`] bytes.
    Full,
    /// All the bytes are read (or the reader ended), between blocks.
    Done,
}

/// The archive's bytes to load, as they are parsed.
struct Feed<'a, R> {
    reader: R,
    blocks: Blocks,
    /// How many of the archive's bytes are still to come (`None`: up to the reader's end).
    left: Option<u64>,
    /// Table data read and not yet sent.
    data: Vec<u8>,
    name: &'a str,
}

impl<R: AsyncBufRead + Unpin> Feed<'_, R> {
    fn damaged(&self, why: String) -> StepError {
        StepError::permanent(format!("{}: {why} (damaged)", self.name))
    }

    /// Reads until a block starts or ends, [`SEND`] bytes of data are there, or all the
    /// bytes are read.
    async fn next(&mut self) -> Result<Next, StepError> {
        loop {
            if self.data.len() >= SEND {
                return Ok(Next::Full);
            }
            let ends_inside = || "the file ends inside a table's data".to_string();
            if self.left == Some(0) {
                return if self.blocks.between_blocks() {
                    Ok(Next::Done)
                } else {
                    Err(self.damaged(ends_inside()))
                };
            }
            let piece = self.reader.fill_buf().await.map_err(|e| {
                StepError::permanent(format!("{}: reading the backup failed: {e}", self.name))
            })?;
            if piece.is_empty() {
                return match self.left {
                    None if self.blocks.between_blocks() => Ok(Next::Done),
                    _ => Err(self.damaged(ends_inside())),
                };
            }
            let most = self.left.map_or(usize::MAX, |left| {
                usize::try_from(left).unwrap_or(usize::MAX)
            });
            let piece = &piece[..piece.len().min(most)];
            let parsed = self.blocks.parse(piece, &mut self.data);
            let (used, event) = parsed.map_err(|why| self.damaged(why))?;
            self.reader.consume(used);
            if let Some(left) = &mut self.left {
                *left -= used as u64;
            }
            if let Some(event) = event {
                return Ok(Next::Event(event));
            }
        }
    }
}

/// The table a `COPY table (columns) FROM stdin;` loads, for messages.
fn table_of(statement: &str) -> &str {
    let rest = statement.strip_prefix("COPY ").unwrap_or(statement);
    rest.split(" (")
        .next()
        .and_then(|t| t.split(" FROM ").next())
        .unwrap_or(rest)
}

/// What [`Blocks::parse`] stopped at.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// A table data block starts: its dump id.
    Start(i64),
    /// The block ends (its zero-length chunk).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    BlockType,
    BlockId,
    ChunkLen,
    Chunk { left: usize },
}

/// Reads data blocks — a type byte, the entry's dump id, chunks (a length, then that
/// many bytes) ending with a zero length — from pieces that may cut anywhere.
struct Blocks {
    state: State,
    int_size: usize,
    /// An integer cut by the end of a piece.
    partial: Vec<u8>,
}

impl Blocks {
    fn new(int_size: usize) -> Blocks {
        Blocks {
            state: State::BlockType,
            int_size,
            partial: Vec::with_capacity(9),
        }
    }

    fn between_blocks(&self) -> bool {
        self.state == State::BlockType
    }

    /// Reads `input`, appending chunk bytes to `data`, until a block starts or ends or the
    /// input is used up: how many bytes were used, and what was reached.
    fn parse(
        &mut self,
        input: &[u8],
        data: &mut Vec<u8>,
    ) -> Result<(usize, Option<Event>), String> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::BlockType => {
                    let kind = input[at];
                    at += 1;
                    if kind != BLK_DATA {
                        return Err(format!(
                            "a block of type {kind} where table data was expected"
                        ));
                    }
                    self.state = State::BlockId;
                }
                State::BlockId => {
                    if let Some(id) = self.int(input, &mut at) {
                        self.state = State::ChunkLen;
                        return Ok((at, Some(Event::Start(id))));
                    }
                }
                State::ChunkLen => match self.int(input, &mut at) {
                    Some(0) => {
                        self.state = State::BlockType;
                        return Ok((at, Some(Event::End)));
                    }
                    Some(n) => match usize::try_from(n) {
                        Ok(left) => self.state = State::Chunk { left },
                        Err(_) => return Err(format!("a chunk of length {n}")),
                    },
                    None => {}
                },
                State::Chunk { left } => {
                    let n = left.min(input.len() - at);
                    data.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.state = match left - n {
                        0 => State::ChunkLen,
                        left => State::Chunk { left },
                    };
                }
            }
        }
        Ok((at, None))
    }

    /// The integer at `at` (a sign byte, then `int_size` bytes, least significant first),
    /// or `None` when the input ends first (its bytes are kept for the next piece).
    fn int(&mut self, input: &[u8], at: &mut usize) -> Option<i64> {
        let need = 1 + self.int_size;
        if self.partial.is_empty() && input.len() - *at >= need {
            let value = decode_int(&input[*at..*at + need]);
            *at += need;
            return Some(value);
        }
        let take = (need - self.partial.len()).min(input.len() - *at);
        self.partial.extend_from_slice(&input[*at..*at + take]);
        *at += take;
        (self.partial.len() == need).then(|| {
            let value = decode_int(&self.partial);
            self.partial.clear();
            value
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: i64) -> Vec<u8> {
        let mut out = vec![u8::from(value < 0)];
        out.extend_from_slice(&(value.unsigned_abs() as u32).to_le_bytes());
        out
    }

    fn block(id: i64, rows: &[&str]) -> Vec<u8> {
        let mut out = vec![BLK_DATA];
        out.extend(int(id));
        for row in rows {
            out.extend(int(row.len() as i64));
            out.extend_from_slice(row.as_bytes());
        }
        out.extend(int(0));
        out
    }

    /// Each event with the data read before it.
    type Events = Vec<(Event, Vec<u8>)>;

    /// Every event, the input cut into pieces of `size`, and whether it ended between
    /// blocks.
    fn read_all(bytes: &[u8], size: usize) -> Result<(Events, bool), String> {
        let mut blocks = Blocks::new(4);
        let mut data = Vec::new();
        let mut out = Vec::new();
        for mut piece in bytes.chunks(size) {
            while !piece.is_empty() {
                let (used, event) = blocks.parse(piece, &mut data)?;
                piece = &piece[used..];
                if let Some(event) = event {
                    out.push((event, std::mem::take(&mut data)));
                }
            }
        }
        Ok((out, blocks.between_blocks()))
    }

    #[test]
    fn blocks_come_out_the_same_however_the_input_is_cut() {
        let mut archive = block(7, &["1\ta\n", "2\tb\n", "\\.\n\n\n"]);
        archive.extend(block(9, &[]));
        archive.extend(block(12, &["x\n"]));
        let expected = vec![
            (Event::Start(7), vec![]),
            (Event::End, b"1\ta\n2\tb\n\\.\n\n\n".to_vec()),
            (Event::Start(9), vec![]),
            (Event::End, vec![]),
            (Event::Start(12), vec![]),
            (Event::End, b"x\n".to_vec()),
        ];
        for size in 1..=archive.len() {
            assert_eq!(
                read_all(&archive, size),
                Ok((expected.clone(), true)),
                "{size}"
            );
        }
    }

    #[test]
    fn damaged_blocks_are_refused_and_a_cut_block_is_seen() {
        let mut other = block(7, &["1\n"]);
        other[0] = 3;
        assert!(read_all(&other, 64).unwrap_err().contains("type 3"));
        let mut negative = vec![BLK_DATA];
        negative.extend(int(7));
        negative.extend(int(-5));
        assert!(read_all(&negative, 64).unwrap_err().contains("length -5"));
        let whole = block(7, &["1\n", "2\n"]);
        let (_, between) = read_all(&whole[..whole.len() - 3], 64).unwrap();
        assert!(!between, "a block without its end is not whole");
    }

    /// Damaged blocks (random bytes changed in a good stream) never panic the reader, and
    /// what it makes of them — events, data, or the error — does not depend on where the
    /// stream is cut.
    #[test]
    fn damaged_streams_read_the_same_however_they_are_cut() {
        let mut good = block(7, &["1\ta\n", "2\tb\n", "\\.\n\n\n"]);
        good.extend(block(300, &["x\n"; 20]));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..=next() % 3 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let whole = read_all(&bytes, bytes.len());
            for size in [1, 2, 5, 13] {
                assert_eq!(read_all(&bytes, size), whole, "{bytes:?} cut every {size}");
            }
        }
    }

    #[test]
    fn the_table_is_named_from_its_statement() {
        assert_eq!(table_of("COPY public.t (a, b) FROM stdin;\n"), "public.t");
        assert_eq!(
            table_of("COPY public.empty  FROM stdin;\n"),
            "public.empty "
        );
    }
}
