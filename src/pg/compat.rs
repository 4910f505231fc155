//! Loading what a newer pg_dump or pg_restore wrote into an older server.
//!
//! Both start every script (and pg_restore every session) with settings that disable
//! timeouts (`_doSetFixedOutputState` in PostgreSQL's sources). Settings are added over
//! the versions: pg_restore 17 and newer send `SET transaction_timeout = 0`, which a
//! PostgreSQL 16 or older server rejects ("unrecognized configuration parameter"), so a
//! good backup would fail to restore there, and a verify would call it damaged. The usual
//! installation (PGDG) has only the newest client tools next to older servers: there, the
//! script goes through a filter that drops the settings the destination does not know,
//! and only from the header, where they are; nothing else of the script is touched.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Settings pg_dump/pg_restore write in a script's header, with the major version that
/// first wrote each (which is also the first server version that knows it).
const HEADER_SETTINGS: &[(&str, u32)] = &[("transaction_timeout", 17)];

/// The header settings a writer of major `writer` emits that a server of major `server`
/// does not know.
pub fn unknown_settings(writer: u32, server: u32) -> Vec<&'static str> {
    HEADER_SETTINGS
        .iter()
        .filter(|(_, since)| *since <= writer && *since > server)
        .map(|(name, _)| *name)
        .collect()
}

/// How much of a script's start is read as its header at most: the header is a few
/// hundred bytes; a script that is not shaped as expected is passed on unchanged.
const MAX_HEADER: u64 = 64 << 10;

/// Reads the header of a SQL script from `reader` — comments, blank lines, psql's
/// `\restrict`, `SET …` and `SELECT pg_catalog.set_config(…)` lines — up to and including
/// the first line that is none of these, and returns it without the `SET` lines of the
/// `unknown` settings. The rest of the script stays in `reader`.
pub async fn fixed_header<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    unknown: &[&str],
) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut read = 0u64;
    loop {
        let mut line = Vec::new();
        let n = (&mut *reader)
            .take(MAX_HEADER.saturating_sub(read))
            .read_until(b'\n', &mut line)
            .await?;
        read += n as u64;
        if n == 0 {
            return Ok(kept);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let header = text.is_empty()
            || text.starts_with("--")
            || text.starts_with("\\restrict ")
            || text.starts_with("SET ")
            || text.starts_with("SELECT pg_catalog.set_config(");
        if !unknown.iter().any(|name| is_setting(text, name)) {
            kept.extend_from_slice(&line);
        }
        if !header || !line.ends_with(b"\n") || read >= MAX_HEADER {
            return Ok(kept);
        }
    }
}

/// Whether `line` is `SET name = …;`.
fn is_setting(line: &str, name: &str) -> bool {
    line.strip_prefix("SET ")
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.trim_start().starts_with('=') && rest.ends_with(';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_the_server_lacks_and_the_writer_writes_are_unknown() {
        assert_eq!(unknown_settings(18, 13), vec!["transaction_timeout"]);
        assert_eq!(unknown_settings(17, 16), vec!["transaction_timeout"]);
        assert!(unknown_settings(18, 17).is_empty());
        assert!(unknown_settings(16, 13).is_empty());
    }

    #[tokio::test]
    async fn the_header_loses_the_unknown_setting_and_nothing_else() {
        let script = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\nSET transaction_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\n\nCREATE TABLE t (a int);\nCOPY t (a) FROM stdin;\nSET transaction_timeout = 0;\n\\.\n";
        let mut reader = tokio::io::BufReader::new(script.as_bytes());
        let head = fixed_header(&mut reader, &["transaction_timeout"])
            .await
            .unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        let all = String::from_utf8(head).unwrap() + &rest;
        assert_eq!(
            all,
            script.replacen("SET transaction_timeout = 0;\n", "", 1),
            "only the header's line goes; the same text in table data stays"
        );
        // Nothing unknown: the script passes unchanged.
        let mut reader = tokio::io::BufReader::new(script.as_bytes());
        let head = fixed_header(&mut reader, &[]).await.unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(String::from_utf8(head).unwrap() + &rest, script);
    }
}
