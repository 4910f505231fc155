//! `apply --junit FILE`: the run report as JUnit XML, which CI systems (GitHub Actions test
//! reporters, GitLab, Jenkins) show as a test suite: one test case per step; skipped steps
//! with the reason, failed ones with the error and the tail of their output, measured
//! numbers (a drill's RTO and RPO) as properties. Built from the report, which is redacted.

use super::report::{RunReport, StepReport};
use crate::exec::events::StepStatus;
use std::fmt::Write as _;

pub fn render(report: &RunReport) -> String {
    let count = |status: StepStatus| report.steps.iter().filter(|s| s.status == status).count();
    let failures = count(StepStatus::Failed);
    let errors = count(StepStatus::Cancelled);
    let skipped = count(StepStatus::Skipped) + count(StepStatus::Planned);
    let seconds = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
    let name = attr(&report.plan.name);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"opsrunner\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{}\">",
        report.steps.len(),
        seconds(report.duration_ms)
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{}\" timestamp=\"{}\">",
        report.steps.len(),
        seconds(report.duration_ms),
        report.started_at.format("%Y-%m-%dT%H:%M:%S")
    );
    let _ = writeln!(out, "    <properties>");
    for (k, v) in [
        ("run_id", report.run_id.as_str()),
        ("plan_path", report.plan.path.as_str()),
        ("plan_sha256", report.plan.sha256.as_str()),
        ("status", status_name(report)),
    ] {
        let _ = writeln!(out, "      <property name=\"{k}\" value=\"{}\"/>", attr(v));
    }
    if let Some(e) = &report.error {
        let _ = writeln!(
            out,
            "      <property name=\"error\" value=\"{}\"/>",
            attr(e)
        );
    }
    let _ = writeln!(out, "    </properties>");
    for step in &report.steps {
        testcase(&mut out, &name, step);
    }
    let _ = writeln!(out, "  </testsuite>");
    let _ = writeln!(out, "</testsuites>");
    out
}

fn status_name(report: &RunReport) -> &'static str {
    use super::report::RunStatus::*;
    match report.status {
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Refused => "refused",
        Planned => "planned",
    }
}

fn testcase(out: &mut String, suite: &str, s: &StepReport) {
    let time = format!("{:.3}", s.duration_ms.unwrap_or(0) as f64 / 1000.0);
    let _ = writeln!(
        out,
        "    <testcase classname=\"{suite}\" name=\"{} ({})\" time=\"{time}\">",
        attr(&s.id),
        attr(&s.step_type)
    );
    if !s.measurements.is_empty() {
        let _ = writeln!(out, "      <properties>");
        for (k, v) in &s.measurements {
            let _ = writeln!(
                out,
                "        <property name=\"{}\" value=\"{v}\"/>",
                attr(k)
            );
        }
        let _ = writeln!(out, "      </properties>");
    }
    let reason = s.reason.as_deref().unwrap_or("");
    match s.status {
        StepStatus::Succeeded => {}
        StepStatus::Skipped | StepStatus::Planned => {
            let message = if s.status == StepStatus::Planned {
                "dry run: not run"
            } else {
                reason
            };
            let _ = writeln!(out, "      <skipped message=\"{}\"/>", attr(message));
        }
        StepStatus::Failed => {
            let kind = s
                .verdict
                .and_then(|v| serde_json::to_value(v).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "step_failed".into());
            let _ = writeln!(
                out,
                "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                attr(reason),
                attr(&kind),
                text(&details(s))
            );
        }
        StepStatus::Cancelled => {
            let _ = writeln!(
                out,
                "      <error message=\"{}\" type=\"cancelled\">{}</error>",
                attr(reason),
                text(&details(s))
            );
        }
    }
    if !s.log_tail.is_empty() {
        let _ = writeln!(
            out,
            "      <system-out>{}</system-out>",
            text(&s.log_tail.join("\n"))
        );
    }
    let _ = writeln!(out, "    </testcase>");
}

fn details(s: &StepReport) -> String {
    let mut lines: Vec<String> = s
        .attempts
        .iter()
        .filter_map(|a| {
            a.error
                .as_ref()
                .map(|e| format!("attempt {}: {e}", a.number))
        })
        .collect();
    lines.extend(s.log_tail.iter().cloned());
    lines.join("\n")
}

/// XML 1.0 allows no control characters but tab and newlines, even escaped.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

fn text(s: &str) -> String {
    clean(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn attr(s: &str) -> String {
    text(s)
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_text_stays_text() {
        assert_eq!(
            super::attr("a\"<b>&\u{1b}[31m\n"),
            "a&quot;&lt;b&gt;&amp;\u{FFFD}[31m&#10;"
        );
        assert_eq!(super::text("]]> <x/>"), "]]&gt; &lt;x/&gt;");
    }
}
