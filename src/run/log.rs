//! The live log on stderr: one short line per thing that happened, colour only on a
//! terminal and never with `NO_COLOR`; or one JSON object per event for machines.

use crate::exec::events::{Event, StepStatus, Stream};
use crate::plan::duration;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct LiveLog<W: Write> {
    out: W,
    format: LogFormat,
    color: bool,
}

/// Colour when stderr is a terminal, `NO_COLOR` is unset and the terminal is not dumb.
pub fn stderr_wants_color() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

impl<W: Write> LiveLog<W> {
    pub fn new(out: W, format: LogFormat, color: bool) -> Self {
        LiveLog { out, format, color }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn on_event(&mut self, event: &Event) {
        if self.format == LogFormat::Json {
            let mut value = serde_json::to_value(event).unwrap_or_default();
            if let Some(obj) = value.as_object_mut() {
                obj.insert("ts".into(), chrono::Utc::now().to_rfc3339().into());
            }
            let _ = writeln!(self.out, "{value}");
            return;
        }
        let ms = |m: u64| duration::format(Duration::from_millis(m));
        let line = match event {
            Event::RunStarted {
                run_id,
                plan,
                steps,
                ..
            } => {
                format!(
                    "{} plan `{plan}`, {steps} step{}, run {run_id}",
                    self.paint("1", "opsrunner:"),
                    if *steps == 1 { "" } else { "s" }
                )
            }
            Event::StepStarted { step, .. } => format!("{} {step} started", self.paint("36", "▶")),
            Event::Output { step, stream, line } => {
                let sep = if *stream == Stream::Stderr { "!" } else { "|" };
                format!("  {} {line}", self.paint("2", &format!("{step} {sep}")))
            }
            Event::AttemptFailed {
                step,
                attempt,
                retry_in_ms,
            } => format!(
                "{} {step} attempt {} failed: {}; retrying in {}",
                self.paint("33", "↻"),
                attempt.number,
                attempt.error.as_deref().unwrap_or("error"),
                ms(retry_in_ms.unwrap_or(0))
            ),
            Event::StepFinished {
                step,
                status,
                duration_ms,
                error,
                attempts,
                ..
            } => match status {
                StepStatus::Succeeded => format!(
                    "{} {step} succeeded in {}",
                    self.paint("32", "✓"),
                    ms(*duration_ms)
                ),
                StepStatus::Cancelled => format!(
                    "{} {step} cancelled after {}",
                    self.paint("33", "■"),
                    ms(*duration_ms)
                ),
                _ => format!(
                    "{} {step} failed in {}{}: {}",
                    self.paint("31", "✗"),
                    ms(*duration_ms),
                    if attempts.len() > 1 {
                        format!(" ({} attempts)", attempts.len())
                    } else {
                        String::new()
                    },
                    error.as_deref().unwrap_or("error")
                ),
            },
            Event::StepSkipped { step, reason, .. } => {
                format!("{} {step} skipped: {reason}", self.paint("2", "–"))
            }
            Event::StepReused { step, from_run, .. } => format!(
                "{} {step} reused from run {from_run}",
                self.paint("32", "↺")
            ),
            Event::Notice { step, message, .. } => match step {
                Some(step) => format!("{} {step}: {message}", self.paint("35", "•")),
                None => format!("{} {message}", self.paint("35", "•")),
            },
            Event::RunFinished {
                status,
                duration_ms,
                ..
            } => {
                // The outcome is in the last line, for whoever reads only that.
                let (colour, words) = match status.as_str() {
                    "cancelled" => ("33", "run cancelled after"),
                    "failed" => ("31", "run failed in"),
                    _ => ("1", "run succeeded in"),
                };
                format!(
                    "{} {words} {}",
                    self.paint(colour, "opsrunner:"),
                    ms(*duration_ms)
                )
            }
        };
        let _ = writeln!(self.out, "{line}");
    }
}
