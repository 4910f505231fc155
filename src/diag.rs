//! User-facing diagnostics: a message tied to a place in the plan file, rendered like a
//! compiler error with the offending line and a caret under the problem.

use std::fmt::Write as _;

/// A position in the plan file; both numbers are 1-based, `len` is the caret width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub col: usize,
    pub len: usize,
}

impl Span {
    pub fn new(line: usize, col: usize) -> Self {
        Span { line, col, len: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// The key path inside the plan, e.g. `steps[2].retry.delay`.
    pub path: Option<String>,
    pub span: Option<Span>,
    pub help: Option<String>,
    /// The offending line holds a secret (a private key pasted into the plan): point at it
    /// without printing it.
    pub conceal_source: bool,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            path: None,
            span: None,
            help: None,
            conceal_source: false,
        }
    }

    pub fn concealing_source(mut self) -> Self {
        self.conceal_source = true;
        self
    }

    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn at_opt(mut self, span: Option<Span>) -> Self {
        self.span = span.or(self.span);
        self
    }

    pub fn with_len(mut self, len: usize) -> Self {
        // Zero keeps the width the span already has (a scalar's own length).
        if let (Some(span), true) = (&mut self.span, len > 0) {
            span.len = len;
        }
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = (!path.is_empty()).then_some(path);
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Renders the diagnostic against the plan source:
    ///
    /// ```text
    /// error: unknown key `retyr`
    ///   --> plans/nightly.yaml:7:5 (steps[0].retyr)
    ///    |
    ///  7 |     retyr: 3
    ///    |     ^^^^^
    ///    = help: did you mean `retry`?
    /// ```
    pub fn render(&self, file: &str, source: &str, color: bool) -> String {
        let (red, blue, bold, reset) = if color {
            ("\x1b[31;1m", "\x1b[34;1m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let mut out = String::new();
        let _ = writeln!(out, "{red}error{reset}{bold}: {}{reset}", self.message);
        let location = match self.span {
            Some(s) => format!("{file}:{}:{}", s.line, s.col),
            None => file.to_string(),
        };
        let path = self
            .path
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let line_text = self
            .span
            .filter(|_| !self.conceal_source)
            .and_then(|s| source.lines().nth(s.line.saturating_sub(1)).map(|l| (s, l)));
        let gutter = line_text.map_or(1, |(s, _)| s.line.to_string().len());
        let pad = " ".repeat(gutter);
        let _ = writeln!(out, "{pad}{blue}-->{reset} {location}{path}");
        if let Some((span, text)) = line_text {
            // Control characters (an escape sequence in a hostile plan) are shown, not sent
            // to the terminal; one replacement character each keeps the caret aligned.
            let text: String = text
                .chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        '\u{fffd}'
                    } else {
                        c
                    }
                })
                .collect();
            let _ = writeln!(out, "{pad} {blue}|{reset}");
            let _ = writeln!(out, "{blue}{}{reset} {blue}|{reset} {text}", span.line);
            let indent: String = text
                .chars()
                .take(span.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(
                out,
                "{pad} {blue}|{reset} {indent}{red}{}{reset}",
                "^".repeat(span.len.max(1))
            );
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} {blue}={reset} {bold}help{reset}: {help}");
        }
        out
    }
}

/// Renders a list of diagnostics followed by a one-line summary.
pub fn render_all(diags: &[Diagnostic], file: &str, source: &str, color: bool) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(file, source, color));
        out.push('\n');
    }
    let n = diags.len();
    let _ = writeln!(
        out,
        "{file}: {n} problem{} found; nothing was run",
        if n == 1 { "" } else { "s" }
    );
    out
}

/// "did you mean `retry`?" for the closest candidate, when one is close enough to be a typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&name.to_lowercase(), &candidate.to_lowercase());
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// An error and its sources in their own words, one line: "dispatch failure: io error: …
/// Connection refused (os error 111)". A source already contained in the one before is
/// left out; lines of a multi-line message are joined with "; ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// `1 table`, `2 tables`: a count with its noun, plural when it is not one.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["retry", "timeout", "needs"];
        assert_eq!(
            did_you_mean("retyr", keys).as_deref(),
            Some("did you mean `retry`?")
        );
        assert_eq!(did_you_mean("zzz", keys), None);
    }

    #[test]
    fn renders_line_and_caret() {
        let d = Diagnostic::new("unknown key `retyr`")
            .at(Span::new(2, 3))
            .with_len(5)
            .with_path("steps[0].retyr")
            .with_help("did you mean `retry`?");
        let text = d.render("p.yaml", "a:\n  retyr: 1\n", false);
        assert!(text.contains("--> p.yaml:2:3 (steps[0].retyr)"), "{text}");
        assert!(text.contains("2 |   retyr: 1\n  |   ^^^^^\n"), "{text}");
    }
}
