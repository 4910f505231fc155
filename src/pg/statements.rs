//! SQL text cut into statements the way PostgreSQL's lexer sees them: a `;` ends a
//! statement unless it is inside a quoted string (`'…'`, `E'…'` with backslash escapes),
//! a quoted name (`"…"`), a dollar-quoted body (`$tag$…$tag$`), a comment (`-- …`,
//! nested `/* … */`) or parentheses.
//!
//! Two users: the preview, which lists a migration's statements and marks the destructive
//! ones, and read-only SQL on a protected target, which sends one statement at a time.
//! There the server proves each piece is a single statement before it runs (see
//! `steps::sql`), so a piece this cutter gets wrong fails the step instead of running.

/// The statements of `text`, each trimmed, without its closing `;`; pieces holding only
/// whitespace and comments are left out.
pub fn split(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut depth = 0usize;
    let mut meaningful = false;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        match c {
            b'-' if next == Some(b'-') => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                continue;
            }
            b'/' if next == Some(b'*') => {
                i = block_comment_end(bytes, i);
                continue;
            }
            b'\'' => {
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i = quoted_end(bytes, i, b'\'', escapes);
                meaningful = true;
                continue;
            }
            b'"' => {
                i = quoted_end(bytes, i, b'"', false);
                meaningful = true;
                continue;
            }
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                if let Some(end) = dollar_quoted_end(text, i) {
                    i = end;
                    meaningful = true;
                    continue;
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                if meaningful {
                    out.push(text[start..i].trim());
                }
                start = i + 1;
                meaningful = false;
                i += 1;
                continue;
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            meaningful = true;
        }
        i += 1;
    }
    if meaningful {
        out.push(text[start..].trim());
    }
    out
}

/// How long a statement may be on its preview line; the file has the rest.
const SHOWN_CHARS: usize = 160;

/// A file's statements for a preview, one line each, numbered, the destructive ones marked:
/// `  2. DESTRUCTIVE: drop table legacy`.
pub fn preview_lines(text: &str) -> Vec<String> {
    split(text)
        .into_iter()
        .enumerate()
        .map(|(i, statement)| {
            let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            let shown = match one_line.char_indices().nth(SHOWN_CHARS) {
                Some((cut, _)) => format!("{}…", &one_line[..cut]),
                None => one_line,
            };
            let mark = if is_destructive(statement) {
                "DESTRUCTIVE: "
            } else {
                ""
            };
            format!("  {}. {mark}{shown}", i + 1)
        })
        .collect()
}

/// Whether a statement removes or rewrites data or schema: DROP, TRUNCATE, DELETE and
/// UPDATE anywhere outside strings and comments (a CTE or a function body may hide them),
/// and ALTER that drops, renames or changes a column's type. It errs on the side of
/// marking: a reviewer reads a marked statement twice.
pub fn is_destructive(statement: &str) -> bool {
    let words = words(statement);
    let has = |w: &str| words.iter().any(|x| x == w);
    has("DROP")
        || has("TRUNCATE")
        || has("DELETE")
        || has("UPDATE")
        || (has("ALTER") && (has("RENAME") || has("TYPE")))
}

/// The upper-cased words of a statement outside quoted strings, names and comments, with
/// the words of dollar-quoted bodies included (a `DO` block's `drop table` is destructive).
fn words(statement: &str) -> Vec<String> {
    let bytes = statement.as_bytes();
    let mut plain = String::with_capacity(statement.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        let skip_to = match c {
            b'-' if next == Some(b'-') => {
                Some(statement[i..].find('\n').map_or(bytes.len(), |n| i + n + 1))
            }
            b'/' if next == Some(b'*') => Some(block_comment_end(bytes, i)),
            b'\'' => Some(quoted_end(bytes, i, b'\'', false)),
            b'"' => Some(quoted_end(bytes, i, b'"', false)),
            _ => None,
        };
        match skip_to {
            Some(end) => {
                plain.push(' ');
                i = end;
            }
            None => {
                plain.push(if c.is_ascii() { c as char } else { ' ' });
                i += 1;
            }
        }
    }
    plain
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The index after the quote closing the one at `open` (a doubled quote stays inside;
/// with `escapes`, a backslash escapes the next byte). The end of the text when unclosed.
fn quoted_end(bytes: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            q if q == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after the `*/` closing the comment at `open`; comments nest.
fn block_comment_end(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// With a dollar quote (`$$` or `$tag$`) opening at `open`: the index after its closing
/// twin, or the end of the text when unclosed. `None` when `$` opens no quote (`$1`).
fn dollar_quoted_end(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut j = open + 1;
    while j < bytes.len() && bytes[j] != b'$' {
        let b = bytes[j];
        let ok = if j == open + 1 {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            is_ident_byte(b)
        };
        if !ok {
            return None;
        }
        j += 1;
    }
    if j >= bytes.len() {
        return None;
    }
    let tag = &text[open..=j];
    let body = j + 1;
    Some(
        text[body..]
            .find(tag)
            .map_or(bytes.len(), |k| body + k + tag.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_cut_where_the_server_would_cut_them() {
        let text = "select 1; -- a comment; with a semicolon\n\
            select ';' , \"a;b\" , E'it\\'s; here' , $$ x; y $$ , $f$ $$; $f$;\n\
            /* one /* nested; */ still; */ select (1;2);\n\
            ;;  \n -- only a comment\n";
        assert_eq!(
            split(text),
            [
                "select 1",
                "-- a comment; with a semicolon\nselect ';' , \"a;b\" , E'it\\'s; here' , $$ x; y $$ , $f$ $$; $f$",
                "/* one /* nested; */ still; */ select (1;2)",
            ]
        );
        // A parameter or a name with `$` opens no quote.
        assert_eq!(
            split("select $1; select a$b; x"),
            ["select $1", "select a$b", "x"]
        );
        // Standard strings: a backslash escapes nothing, so the quote after it closes.
        assert_eq!(split("select 'a\\'; drop"), ["select 'a\\'", "drop"]);
        // Unclosed quotes run to the end: one piece, which the server refuses.
        assert_eq!(
            split("select 'x; drop table t"),
            ["select 'x; drop table t"]
        );
    }

    #[test]
    fn destructive_statements_are_marked_and_quoted_words_are_not() {
        for s in [
            "drop table t",
            "DELETE FROM t",
            "alter table t drop column c",
            "alter table t alter column c type bigint",
            "with x as (delete from t returning *) select * from x",
            "do $$ begin execute 'x'; drop table t; end $$",
            "truncate t",
        ] {
            assert!(is_destructive(s), "{s}");
        }
        for s in [
            "create table t (id int)",
            "alter table t add column c int",
            "insert into log values ('drop table t')",
            "select 1 -- drop it",
            "create index on \"delete\" (id)",
        ] {
            assert!(!is_destructive(s), "{s}");
        }
    }
}
