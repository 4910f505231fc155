//! The preview as a pull-request comment (`plan --format markdown`): the risk summary a
//! reviewer needs first (destructive steps, what is touched, which backups would be
//! deleted, what could not be read), the steps folded below it, and never longer than a
//! comment may be: whatever does not fit is left out with a note saying so, the summary
//! never.

use super::preview::{PlanPreview, StepPreview, destructive_note};
use std::fmt::Write as _;

/// GitHub refuses comments longer than this many characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_535;

/// How many backup ids the summary names per step before it says "and N more".
const NAMED_VICTIMS: usize = 20;
/// How many destructive steps the summary names before it says "and N more".
const NAMED_STEPS: usize = 50;
/// The longest one step's folded details may be.
const STEP_DETAIL_CHARS: usize = 6_000;
/// Room kept for the note that says what was left out.
const NOTE_RESERVE: usize = 600;

/// Renders the preview in at most `max_chars` characters.
pub fn render(p: &PlanPreview, max_chars: usize) -> String {
    let mut out = Budgeted::default();
    out.push(&summary(p));
    let budget = max_chars.saturating_sub(NOTE_RESERVE);
    let mut left_out = Vec::new();

    let (table_head, rows) = table(p);
    let table_len = chars(&table_head) + rows.iter().map(|r| chars(r)).sum::<usize>() + 20;
    if out.len + table_len <= budget {
        out.push(&table_head);
        rows.iter().for_each(|r| out.push(r));
        out.push("\n</details>\n");
    } else {
        out.push(&table_head);
        let mut shown = 0;
        for r in &rows {
            if out.len + chars(r) + 20 > budget {
                break;
            }
            out.push(r);
            shown += 1;
        }
        out.push("\n</details>\n");
        left_out.push(format!(
            "{} of {} rows of the step table",
            rows.len() - shown,
            rows.len()
        ));
    }

    let mut details_shown = 0;
    for s in &p.steps {
        let block = step_details(s);
        if out.len + chars(&block) > budget {
            break;
        }
        out.push(&block);
        details_shown += 1;
    }
    if details_shown < p.steps.len() {
        let first = &p.steps[details_shown];
        left_out.push(format!(
            "the details of steps {}–{} (from `{}` on)",
            first.position,
            p.steps.len(),
            first.id
        ));
    }
    if !left_out.is_empty() {
        out.push(&format!(
            "\n> **Shortened to fit {max_chars} characters** (`--max-chars`): left out {}. \
             The summary above is complete; `opsrunner plan --format text` shows everything.\n",
            left_out.join(" and ")
        ));
    }
    out.finish(max_chars)
}

/// Text with its length in characters (what the comment limit counts).
#[derive(Default)]
struct Budgeted {
    text: String,
    len: usize,
}

impl Budgeted {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.len += chars(s);
    }

    /// The last resort when the summary alone is too long: cut at a character boundary
    /// and say so.
    fn finish(self, max_chars: usize) -> String {
        if self.len <= max_chars {
            return self.text;
        }
        let note = "\n\n> **Cut off here to fit `--max-chars`.**\n";
        let keep = max_chars.saturating_sub(chars(note));
        let mut cut: String = self.text.chars().take(keep).collect();
        cut.push_str(note);
        cut.chars().take(max_chars).collect()
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The risk summary: always shown in full.
fn summary(p: &PlanPreview) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### opsrunner plan {}\n", code(&p.plan));
    let _ = writeln!(
        out,
        "{} · {} · sha256 {} · dry run: nothing has been changed\n",
        code(&p.path),
        plural(p.steps.len(), "step", "steps"),
        code(&p.plan_sha256.chars().take(12).collect::<String>())
    );
    if !p.unread.is_empty() {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> **Incomplete preview: {} could not be read.** What this plan would do there is unknown.\n>",
            plural(
                p.unread.len(),
                "target or repository",
                "targets or repositories"
            )
        );
        for u in &p.unread {
            let _ = writeln!(
                out,
                "> - could not read {} {}: {}; **{}**",
                u.kind,
                code(&u.name),
                one_line(&u.error),
                u.unknown
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "#### Risk summary\n");
    let destructive: Vec<&StepPreview> = p.steps.iter().filter(|s| s.destructive).collect();
    if destructive.is_empty() {
        let _ = writeln!(out, "- **Destructive steps:** none");
    } else {
        let _ = writeln!(out, "- ⚠️ **Destructive steps ({}):**", destructive.len());
        for s in destructive.iter().take(NAMED_STEPS) {
            let mut line = format!("  - {} ({})", code(&s.id), s.step_type);
            if let Some(t) = &s.target {
                let _ = write!(line, " on target {}", code(t));
                if s.protected_target {
                    line.push_str(" — **protected**");
                }
            }
            if let Some(r) = &s.repository {
                let _ = write!(line, " in repository {}", code(r));
            }
            if s.step_type == "prune" {
                match (&s.incomplete, s.deletes.len()) {
                    (Some(_), _) => {
                        line.push_str(
                            ": **deletes unknown backups** (its repository was not read)",
                        );
                    }
                    (None, 0) => line.push_str(": deletes no backup"),
                    (None, n) => {
                        let _ = write!(line, ": **deletes {}**", plural(n, "backup", "backups"));
                    }
                }
            }
            let _ = writeln!(out, "{line}");
        }
        if destructive.len() > NAMED_STEPS {
            let _ = writeln!(out, "  - and {} more", destructive.len() - NAMED_STEPS);
        }
    }
    let prunes: Vec<&StepPreview> = p.steps.iter().filter(|s| s.step_type == "prune").collect();
    if !prunes.is_empty() {
        let known: usize = prunes.iter().map(|s| s.deletes.len()).sum();
        let unknown = prunes.iter().filter(|s| s.incomplete.is_some()).count();
        let mut line = format!("- **Backups that would be deleted:** {known}");
        if unknown > 0 {
            let _ = write!(
                line,
                ", and an **unknown number** from {}",
                plural(
                    unknown,
                    "prune whose repository was not read",
                    "prunes whose repositories were not read"
                )
            );
        }
        let _ = writeln!(out, "{line}");
        for s in prunes.iter().filter(|s| !s.deletes.is_empty()) {
            let named: Vec<String> = s
                .deletes
                .iter()
                .take(NAMED_VICTIMS)
                .map(|d| code(d))
                .collect();
            let more = s.deletes.len().saturating_sub(NAMED_VICTIMS);
            let _ = writeln!(
                out,
                "  - {} in {}: {}{}",
                code(&s.id),
                code(s.repository.as_deref().unwrap_or("?")),
                named.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "- **Targets:** {}",
        touched(
            p,
            |s| s.target.as_deref(),
            |s| s.writes_target || (s.destructive && s.repository.is_none()),
            |s| s.protected_target
        )
    );
    let _ = writeln!(
        out,
        "- **Repositories:** {}",
        touched(
            p,
            |s| s.repository.as_deref(),
            |s| s.writes_repository,
            |_| false
        )
    );
    if !p.confirmations_needed.is_empty() {
        let flags: Vec<String> = p
            .confirmations_needed
            .iter()
            .map(|t| code(&format!("--confirm {t}")))
            .collect();
        let _ = writeln!(out, "- **apply will refuse** without {}", flags.join(" "));
    }
    for w in &p.warnings {
        let _ = writeln!(out, "- warning: {}", one_line(w));
    }
    out.push('\n');
    out
}

/// Names touched by the steps, each once, with whether any step writes it.
fn touched(
    p: &PlanPreview,
    name: impl Fn(&StepPreview) -> Option<&str>,
    writes: impl Fn(&StepPreview) -> bool,
    protected: impl Fn(&StepPreview) -> bool,
) -> String {
    let mut seen: Vec<(String, bool, bool)> = Vec::new();
    for s in &p.steps {
        let Some(n) = name(s) else { continue };
        match seen.iter_mut().find(|(m, _, _)| m == n) {
            Some(entry) => {
                entry.1 |= writes(s);
                entry.2 |= protected(s);
            }
            None => seen.push((n.to_string(), writes(s), protected(s))),
        }
    }
    if seen.is_empty() {
        return "none".into();
    }
    seen.iter()
        .map(|(n, w, p)| {
            let mut s = format!("{} ({}", code(n), if *w { "written" } else { "read" });
            if *p {
                s.push_str(", protected");
            }
            s.push(')');
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(p: &PlanPreview) -> (String, Vec<String>) {
    let head = format!(
        "<details><summary>Steps ({})</summary>\n\n| # | Step | Type | Needs | If | Destructive | Does |\n|---|---|---|---|---|---|---|\n",
        p.steps.len()
    );
    let rows = p
        .steps
        .iter()
        .map(|s| {
            let needs = if s.needs.is_empty() {
                "–".to_string()
            } else {
                s.needs
                    .iter()
                    .map(|n| cell_code(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let destructive = match (s.destructive, s.protected_target) {
                (true, true) => "⚠️ yes (protected)",
                (true, false) => "⚠️ yes",
                _ => "",
            };
            format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                s.position,
                cell_code(&s.id),
                s.step_type,
                needs,
                cell_code(&s.condition),
                destructive,
                cell_code(&shorten(&s.action, 120)),
            )
        })
        .collect();
    (head, rows)
}

fn step_details(s: &StepPreview) -> String {
    let mut out = String::new();
    let flag = if s.destructive {
        " ⚠️ destructive"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "\n<details><summary>{}. <code>{}</code> ({}){flag}</summary>\n",
        s.position,
        html(&s.id),
        s.step_type
    );
    if let Some(note) = destructive_note(s) {
        let _ = writeln!(out, "> **{}**\n", one_line(&note));
    }
    if let Some(why) = &s.incomplete {
        let _ = writeln!(out, "> [!WARNING]\n> {}\n", one_line(why));
    }
    let _ = writeln!(out, "Will:\n\n{}", fenced("text", &s.action));
    if let (Some(t), Some(url)) = (&s.target, &s.target_url) {
        let _ = writeln!(out, "- target {}: {}", code(t), code(url));
    }
    let _ = writeln!(out, "- if: {}", code(&s.condition));
    if let Some(r) = &s.retry {
        let _ = writeln!(out, "- retry: {r}");
    }
    if let Some(t) = &s.timeout {
        let _ = writeln!(out, "- timeout: {t}");
    }
    if s.continue_on_error {
        let _ = writeln!(out, "- continue on error");
    }
    if !s.details.is_empty() {
        let _ = writeln!(out, "\n{}", fenced("text", &s.details.join("\n")));
    }
    let params = serde_json::to_string_pretty(&s.params).unwrap_or_default();
    let _ = writeln!(out, "\nParameters:\n\n{}", fenced("json", &params));
    out.push_str("</details>\n");
    if chars(&out) > STEP_DETAIL_CHARS {
        // One enormous step (a long inline script) must not crowd out every other.
        let mut short = format!(
            "\n<details><summary>{}. <code>{}</code> ({}){flag}</summary>\n\n",
            s.position,
            html(&s.id),
            s.step_type
        );
        let _ = writeln!(
            short,
            "Will:\n\n{}\n_Details shortened: {} characters in all; `opsrunner plan --format text` shows them._\n\n</details>",
            fenced("text", &shorten(&s.action, STEP_DETAIL_CHARS / 2)),
            chars(&out)
        );
        return short;
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    let one = one_line(s);
    if chars(&one) <= max {
        return one;
    }
    let mut cut: String = one.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Inline code outside tables: a backtick fence longer than any run of backticks inside,
/// so that nothing in the text can end it early. Nothing is escaped inside code spans.
pub fn code(s: &str) -> String {
    let s = one_line(s);
    let longest = longest_run(&s, '`');
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Code inside a table cell. GFM splits cells on `|` before it looks at code spans, and
/// renderers differ on `\|` inside them (CommonMark shows the backslash), so table code is
/// HTML: `<code>` with the pipe as an entity, which every renderer shows as `|`.
pub fn cell_code(s: &str) -> String {
    format!("<code>{}</code>", html(&one_line(s)).replace('|', "&#124;"))
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A fenced block that its content cannot close.
fn fenced(lang: &str, s: &str) -> String {
    let fence = "`".repeat(longest_run(s, '`').max(2) + 1);
    format!("{fence}{lang}\n{s}\n{fence}\n")
}

fn longest_run(s: &str, c: char) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for ch in s.chars() {
        if ch == c {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_survive_backticks_and_pipes() {
        assert_eq!(code("a | b"), "`a | b`");
        assert_eq!(code("x `y` z"), "``x `y` z``");
        assert_eq!(code("`edge`"), "`` `edge` ``");
        assert_eq!(
            cell_code("printf x | curl"),
            "<code>printf x &#124; curl</code>"
        );
        assert_eq!(cell_code("<b>&"), "<code>&lt;b&gt;&amp;</code>");
    }

    #[test]
    fn fences_are_longer_than_the_content_s() {
        assert_eq!(fenced("text", "a ``` b"), "````text\na ``` b\n````\n");
    }

    #[test]
    fn the_last_resort_cut_respects_the_limit() {
        let mut b = Budgeted::default();
        b.push(&"é".repeat(1000));
        let out = b.finish(100);
        assert_eq!(out.chars().count(), 100);
        assert!(out.contains("Cut off"));
    }
}
