//! Reading a child process's output line by line, for the log: the one routine every step
//! that runs a program uses.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest line passed on; the rest of a longer one is dropped (a program printing
/// megabytes without a newline must not grow memory without bound).
pub const MAX_LINE: usize = 64 * 1024;

/// Reads `reader` to its end and hands each line to `each`, without its line end. Bytes
/// that are not UTF-8 are shown as U+FFFD rather than ending the reading: a program that
/// prints binary must neither lose the rest of its output nor block on a full pipe.
pub async fn forward_lines(reader: impl AsyncRead + Unpin, mut each: impl FnMut(String)) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, end_of_line) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (&chunk[..at], Some(at + 1)),
            None => (chunk, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        cut |= part.len() > room;
        let used = end_of_line.unwrap_or(chunk.len());
        reader.consume(used);
        if end_of_line.is_some() {
            each(finish(&mut line, &mut cut));
        }
    }
    if !line.is_empty() {
        each(finish(&mut line, &mut cut));
    }
}

fn finish(line: &mut Vec<u8>, cut: &mut bool) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(line).into_owned();
    if *cut {
        text.push_str(" … (line cut)");
    }
    line.clear();
    *cut = false;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(forward_lines(input, |l| out.push(l)));
        out
    }

    #[test]
    fn lines_binary_and_endless_lines() {
        assert_eq!(lines_of(b"a\r\nb\nc"), ["a", "b", "c"]);
        assert_eq!(
            lines_of(b"\xff\xfe ok\nnext\n"),
            ["\u{fffd}\u{fffd} ok", "next"]
        );
        let long = vec![b'x'; MAX_LINE * 3];
        let got = lines_of(&[&long[..], b"\nafter\n"].concat());
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with("(line cut)") && got[0].len() < MAX_LINE + 20);
        assert_eq!(got[1], "after");
    }
}
