//! Table rows out and in, as CSV or JSON Lines: what the `export` and `import` steps move.
//!
//! Out: PostgreSQL writes the bytes (`COPY (…) TO STDOUT`), in a read-only transaction. A
//! query is first prepared on its own — one statement, balanced — so that wrapping it in
//! `COPY (…)` cannot turn it into something else (a `COPY … TO 'file'`); a table is
//! named through `to_regclass` and written back quoted by the server. JSON Lines are
//! `row_to_json`, one object per line.
//!
//! In: `COPY … FROM STDIN` into the table, in one transaction (all rows or none). CSV goes
//! to the table as it is, the header naming the columns; JSON Lines go to a temporary
//! table of `json` first, then into the table through `json_populate_record`, which reads
//! each value as its column's type.

use super::server::classify;
use crate::exec::StepError;
pub use crate::repo::manifest::RowsFormat;
use futures_util::StreamExt;
use sqlx::{Executor, PgConnection, Row};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// What rows come from: a table (or view), or a query.
#[derive(Debug, Clone)]
pub enum Source {
    Table(String),
    Query(String),
}

/// Counts the records of a CSV or JSON Lines stream as it passes, chunk by chunk: a CSV
/// field in quotes may hold line breaks.
#[derive(Debug, Default, Clone)]
pub struct RecordCounter {
    csv: bool,
    in_quotes: bool,
    records: u64,
    /// The last byte seen, to count a last record without a line break.
    last: Option<u8>,
}

impl RecordCounter {
    pub fn new(format: RowsFormat) -> RecordCounter {
        RecordCounter {
            csv: format == RowsFormat::Csv,
            ..RecordCounter::default()
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.csv {
            // Only quotes and line breaks matter: found by memchr, not byte by byte.
            for at in memchr::memchr2_iter(b'"', b'\n', bytes) {
                match bytes[at] {
                    b'"' => self.in_quotes = !self.in_quotes,
                    _ if !self.in_quotes => self.records += 1,
                    _ => {}
                }
            }
        } else {
            self.records += memchr::memchr_iter(b'\n', bytes).count() as u64;
        }
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
    }

    /// Records seen (a CSV's header among them).
    pub fn records(&self) -> u64 {
        self.records + u64::from(self.last.is_some_and(|b| b != b'\n'))
    }

    /// Rows: records without a CSV's header.
    pub fn rows(&self) -> u64 {
        if self.csv {
            self.records().saturating_sub(1)
        } else {
            self.records()
        }
    }
}

/// Undoes `COPY … TO STDOUT`'s text escaping of `row_to_json` output, across chunks. JSON
/// text holds no raw control characters except whitespace between values (a `json`
/// column's own), which COPY escapes as `\n`, `\r`, `\t` and which become spaces here: the
/// line stays one line and the JSON means the same.
#[derive(Default)]
struct Unescape {
    pending: bool,
}

impl Unescape {
    fn apply(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.pending {
                self.pending = false;
                match b {
                    b'\\' => out.push(b'\\'),
                    b'n' | b'r' | b't' => out.push(b' '),
                    other => out.extend([b'\\', other]),
                }
            } else if b == b'\\' {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        out
    }
}

/// A table named as the plan names it (`orders`, `sales.orders`, `"Odd Name"`), resolved
/// by the server on the search path: its quoted name and its columns, in order.
pub async fn table(
    conn: &mut PgConnection,
    name: &str,
    database: &str,
) -> Result<(String, Vec<String>), StepError> {
    let row = sqlx::query(
        "select format('%I.%I', n.nspname, c.relname), c.oid::int8 from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass($1)",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| classify(&e, &format!("looking up table {name}")))?;
    let Some(row) = row else {
        return Err(StepError::permanent(format!(
            "table `{name}` does not exist in database `{database}` (names are looked up on the search path; give `schema.table`, and quote a name with capitals or spaces: '\"Orders\"')"
        )));
    };
    let quoted: String = row.get(0);
    let oid: i64 = row.get(1);
    let columns: Vec<String> = sqlx::query_scalar(
        "select attname::text from pg_attribute where attrelid = $1::oid and attnum > 0 and not attisdropped order by attnum",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(&e, &format!("reading the columns of {quoted}")))?;
    Ok((quoted, columns))
}

/// The rows of `source` as `format`, read by `COPY` in the read-only transaction this
/// opens (the caller commits once the reader is drained): the reader, the record counter
/// it feeds, what the source is called, and its columns.
pub async fn copy_out<'c>(
    conn: &'c mut PgConnection,
    source: &Source,
    format: RowsFormat,
    database: &str,
) -> Result<
    (
        std::pin::Pin<Box<dyn AsyncRead + Send + 'c>>,
        Arc<Mutex<RecordCounter>>,
        String,
        Vec<String>,
    ),
    StepError,
> {
    sqlx::raw_sql("begin transaction isolation level repeatable read read only")
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot begin a read-only transaction"))?;
    let (select, described, columns) = match source {
        Source::Table(name) => {
            let (quoted, columns) = table(conn, name, database).await?;
            (
                format!("select * from {quoted}"),
                format!("table {quoted}"),
                columns,
            )
        }
        Source::Query(query) => {
            let query = query.trim().trim_end_matches(';').trim_end().to_string();
            // Prepared alone first: one statement, or an error here.
            use sqlx::SqlSafeStr;
            let prepared = (&mut *conn)
                .prepare(sqlx::AssertSqlSafe(query.clone()).into_sql_str())
                .await
                .map_err(|e| {
                    StepError::permanent(format!(
                        "the query cannot be exported: {}",
                        super::conn::error_text(&e)
                    ))
                })?;
            let columns = sqlx::Statement::columns(&prepared)
                .iter()
                .map(|c| sqlx::Column::name(c).to_string())
                .collect();
            (query, "query".to_string(), columns)
        }
    };
    let statement = match format {
        RowsFormat::Csv => format!("copy (\n{select}\n) to stdout with (format csv, header true)"),
        RowsFormat::Jsonl => {
            format!("copy (select row_to_json(q) from (\n{select}\n) q) to stdout")
        }
    };
    let counter = Arc::new(Mutex::new(RecordCounter::new(format)));
    let seen = counter.clone();
    let mut unescape = (format == RowsFormat::Jsonl).then(Unescape::default);
    // The server sends a message per row: rows that have arrived are taken together, so
    // that what follows (counting, compression) works on large pieces, not 100 bytes.
    let stream = conn
        .copy_out_raw(&statement)
        .await
        .map_err(|e| classify(&e, &format!("exporting {described}")))?
        .ready_chunks(4096)
        .map(move |chunks| {
            let mut piece = Vec::with_capacity(
                chunks
                    .iter()
                    .map(|c| c.as_ref().map_or(0, |c| c.len()))
                    .sum(),
            );
            for chunk in chunks {
                let chunk =
                    chunk.map_err(|e| std::io::Error::other(super::conn::error_text(&e)))?;
                match &mut unescape {
                    Some(u) => piece.extend(u.apply(&chunk)),
                    None => piece.extend_from_slice(&chunk),
                }
            }
            seen.lock().expect("not poisoned").feed(&piece);
            Ok::<_, std::io::Error>(bytes::Bytes::from(piece))
        });
    Ok((
        Box::pin(tokio_util::io::StreamReader::new(stream)),
        counter,
        described,
        columns,
    ))
}

/// Loads rows of `format` from `reader` into table `name` in one transaction, after
/// emptying it when `truncate`: the rows loaded. Any error rolls everything back.
pub async fn copy_in(
    conn: &mut PgConnection,
    name: &str,
    database: &str,
    format: RowsFormat,
    reader: impl AsyncRead + Send + Unpin,
    truncate: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<u64, StepError> {
    sqlx::raw_sql("begin")
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot begin a transaction"))?;
    let loaded = tokio::select! {
        r = load(conn, name, database, format, reader, truncate) => r,
        // Dropping the connection ends the transaction: the server rolls it back.
        _ = cancel.cancelled() => Err(StepError::cancelled()),
    }?;
    sqlx::raw_sql("commit")
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot commit the loaded rows"))?;
    Ok(loaded)
}

const SEND: usize = 1 << 20;

async fn load(
    conn: &mut PgConnection,
    name: &str,
    database: &str,
    format: RowsFormat,
    reader: impl AsyncRead + Send + Unpin,
    truncate: bool,
) -> Result<u64, StepError> {
    let (quoted, columns) = table(conn, name, database).await?;
    if truncate {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("truncate {quoted}")))
            .execute(&mut *conn)
            .await
            .map_err(|e| classify(&e, &format!("emptying {quoted}")))?;
    }
    let mut reader = BufReader::with_capacity(SEND, reader);
    let fail = |e: sqlx::Error| classify(&e, &format!("loading rows into {quoted}"));
    match format {
        RowsFormat::Csv => {
            let header = csv_header(&mut reader).await?;
            let names = parse_csv_record(&header)
                .map_err(|e| StepError::permanent(format!("the CSV header: {e}")))?;
            check_columns(&names, &columns, &quoted)?;
            let list = names
                .iter()
                .map(|n| quote_ident(n))
                .collect::<Vec<_>>()
                .join(", ");
            let mut copy = conn
                .copy_in_raw(&format!(
                    "copy {quoted} ({list}) from stdin with (format csv, header true)"
                ))
                .await
                .map_err(fail)?;
            copy.send(header).await.map_err(fail)?;
            let mut buf = vec![0u8; SEND];
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| StepError::transient(format!("reading the rows: {e}")))?;
                if n == 0 {
                    break;
                }
                copy.send(&buf[..n]).await.map_err(fail)?;
            }
            copy.finish().await.map_err(fail)
        }
        RowsFormat::Jsonl => {
            sqlx::raw_sql("create temporary table opsrunner_import (line json) on commit drop")
                .execute(&mut *conn)
                .await
                .map_err(fail)?;
            let mut copy = conn
                .copy_in_raw("copy pg_temp.opsrunner_import from stdin")
                .await
                .map_err(fail)?;
            let mut keys: Option<Vec<String>> = None;
            let mut batch = Vec::with_capacity(SEND + 4096);
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| StepError::transient(format!("reading the rows: {e}")))?;
                if n == 0 {
                    break;
                }
                number += 1;
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if keys.is_none() {
                    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
                        StepError::permanent(format!("line {number} is not JSON: {e}"))
                    })?;
                    let Some(object) = value.as_object() else {
                        return Err(StepError::permanent(format!(
                            "line {number} is not a JSON object (one row per line, as `export` writes)"
                        )));
                    };
                    let names: Vec<String> = object.keys().cloned().collect();
                    check_columns(&names, &columns, &quoted)?;
                    keys = Some(names);
                }
                for &b in text {
                    match b {
                        b'\\' => batch.extend_from_slice(b"\\\\"),
                        b'\t' => batch.extend_from_slice(b"\\t"),
                        b'\r' => batch.extend_from_slice(b"\\r"),
                        _ => batch.push(b),
                    }
                }
                batch.push(b'\n');
                if batch.len() >= SEND {
                    copy.send(&batch[..]).await.map_err(fail)?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                copy.send(&batch[..]).await.map_err(fail)?;
            }
            copy.finish().await.map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("22P02") => {
                    StepError::permanent(format!(
                        "a line is not valid JSON: {}",
                        super::conn::error_text(&e)
                    ))
                }
                _ => fail(e),
            })?;
            // Only the columns the rows name: the others get their defaults.
            let Some(keys) = keys else {
                return Ok(0);
            };
            // The table's own order, for a stable statement.
            let list = columns
                .iter()
                .filter(|c| keys.contains(c))
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let selected = columns
                .iter()
                .filter(|c| keys.contains(c))
                .map(|c| format!("r.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            // Names quoted here or by the server (`table`), never pasted as given.
            let done = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "insert into {quoted} ({list}) select {selected} from pg_temp.opsrunner_import i, json_populate_record(null::{quoted}, i.line) r"
            )))
            .execute(&mut *conn)
            .await
            .map_err(fail)?;
            Ok(done.rows_affected())
        }
    }
}

/// The first CSV record (the header), line breaks inside quotes included.
async fn csv_header(reader: &mut (impl AsyncBufReadExt + Unpin)) -> Result<Vec<u8>, StepError> {
    let mut header = Vec::new();
    let mut counter = RecordCounter::new(RowsFormat::Csv);
    loop {
        let n = reader
            .read_until(b'\n', &mut header)
            .await
            .map_err(|e| StepError::transient(format!("reading the rows: {e}")))?;
        counter.feed(&header[header.len() - n..]);
        if n == 0 || counter.records >= 1 {
            break;
        }
        if header.len() > 1 << 20 {
            return Err(StepError::permanent(
                "the CSV header is longer than 1 MiB (an unclosed quote?)",
            ));
        }
    }
    if header.is_empty() {
        return Err(StepError::permanent(
            "the CSV is empty: it has no header line naming the columns",
        ));
    }
    Ok(header)
}

/// The fields of one CSV record (RFC 4180).
fn parse_csv_record(record: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(record).map_err(|_| "not UTF-8".to_string())?;
    let text = text.trim_end_matches(['\n', '\r']);
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Every name is a column of the table, each once.
fn check_columns(names: &[String], columns: &[String], table: &str) -> Result<(), StepError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(StepError::permanent(format!(
                "column `{name}` is named twice in the rows"
            )));
        }
        if !columns.contains(name) {
            let hint = crate::diag::did_you_mean(name, columns.iter().map(String::as_str))
                .map(|h| format!("; {h}"))
                .unwrap_or_else(|| format!("; its columns: {}", columns.join(", ")));
            return Err(StepError::permanent(format!(
                "the rows name column `{name}`, which table {table} does not have{hint}"
            )));
        }
    }
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `verify` check of an exported rows file: decoded whole (checked against its
/// SHA-256 on the way) and its records counted against the manifest's count.
pub async fn count_stored(
    ctx: &crate::exec::StepContext,
    store: &crate::repo::AnyStore,
    manifest: &crate::repo::manifest::Manifest,
) -> Result<String, String> {
    let Some(rows) = &manifest.rows else {
        return Err("the manifest of an export says nothing of its rows".into());
    };
    let file = manifest.files.first().ok_or("the manifest lists no file")?;
    let mut loaded =
        crate::repo::pipeline::load(store, manifest, &file.name, ctx.identities.as_ref())
            .await
            .map_err(|e| e.to_string())?;
    let mut counter = RecordCounter::new(rows.format);
    let mut buf = vec![0u8; SEND];
    loop {
        let n = loaded
            .reader
            .read(&mut buf)
            .await
            .map_err(|e| format!("{}: {e}", file.name))?;
        if n == 0 {
            break;
        }
        counter.feed(&buf[..n]);
    }
    drop(loaded.reader);
    loaded.verdict.wait().await.map_err(|e| e.to_string())?;
    if counter.rows() != rows.rows {
        return Err(format!(
            "{} rows, the manifest says {}",
            counter.rows(),
            rows.rows
        ));
    }
    Ok(format!(
        "{} ({}, {})",
        crate::diag::count(rows.rows as usize, "row"),
        match rows.format {
            RowsFormat::Csv => "CSV",
            RowsFormat::Jsonl => "JSON Lines",
        },
        rows.source
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_are_counted_across_chunks_and_quoted_line_breaks() {
        let text = b"id,note\n1,\"two\nlines\"\n2,\"a \"\"quote\"\"\"\n3,\n";
        for split in 0..text.len() {
            let mut c = RecordCounter::new(RowsFormat::Csv);
            c.feed(&text[..split]);
            c.feed(&text[split..]);
            assert_eq!(c.rows(), 3, "split at {split}");
        }
        let mut c = RecordCounter::new(RowsFormat::Jsonl);
        c.feed(b"{\"a\":1}\n{\"a\":2}");
        assert_eq!(c.rows(), 2, "a last line without a line break counts");
    }

    #[test]
    fn copy_text_escapes_are_undone_across_chunks() {
        let escaped = br#"{"a":"x\\"y","b":"c:\\\\d"}"#;
        for split in 0..escaped.len() {
            let mut u = Unescape::default();
            let mut out = u.apply(&escaped[..split]);
            out.extend(u.apply(&escaped[split..]));
            assert_eq!(out, br#"{"a":"x\"y","b":"c:\\d"}"#, "split at {split}");
        }
    }

    #[test]
    fn csv_headers_parse_with_quotes() {
        assert_eq!(
            parse_csv_record(b"id,\"odd, name\",\"say \"\"hi\"\"\"\r\n").unwrap(),
            vec!["id", "odd, name", "say \"hi\""]
        );
        assert!(parse_csv_record(b"\"open").is_err());
    }
}
