//! The live log on stderr: one short line per thing that happened, colour only on a
//! terminal and never with `NO_COLOR`; or one JSON object per event for machines.
//!
//! Progress of long transfers: on a terminal, a bar per step (bytes, rate, and the ETA when
//! the size is known); otherwise a plain line per step every `progress_every` (30 s by
//! default), in JSON as a `progress` event at the same pace. Text lines carry a UTC
//! timestamp when they do not go to a terminal (a journal or a file).

use crate::exec::events::{Event, StepStatus, Stream};
use crate::plan::duration;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct LiveLog<W: Write> {
    out: W,
    format: LogFormat,
    color: bool,
    /// Set when the log goes to a terminal: progress bars are drawn there.
    bars: Option<indicatif::MultiProgress>,
    active: HashMap<String, indicatif::ProgressBar>,
    timestamps: bool,
    progress_every: Duration,
    /// Per step: when its progress was last written, and where its transfer started.
    progress: HashMap<String, (Option<Instant>, chrono::DateTime<chrono::Utc>, u64)>,
}

/// The default pace of progress lines in a log that is not a terminal.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

pub use crate::diag::bytes;

/// A progress bar's rate and ETA: measured from `started` (when and where the bar began),
/// nothing until a second has passed.
fn rate_text(started: (Instant, u64), pos: u64, len: Option<u64>) -> String {
    let seconds = started.0.elapsed().as_secs_f64();
    match rate_and_eta(pos.saturating_sub(started.1), seconds, pos, len) {
        Some((rate, Some(eta))) => format!("{rate} ETA {eta}"),
        Some((rate, None)) => rate,
        None => String::new(),
    }
}

/// `12.0 MiB/s` for `moved` bytes in `seconds`, and the time left to `total` at that rate
/// from `done`: nothing before a second has passed, when a rate means little.
fn rate_and_eta(
    moved: u64,
    seconds: f64,
    done: u64,
    total: Option<u64>,
) -> Option<(String, Option<String>)> {
    if seconds < 1.0 {
        return None;
    }
    let rate = moved as f64 / seconds;
    let eta = total
        .filter(|t| rate >= 1.0 && *t > done)
        .map(|t| duration::format(Duration::from_secs(((t - done) as f64 / rate) as u64)));
    Some((format!("{}/s", bytes(rate as u64)), eta))
}

/// Stderr is a terminal that can draw progress bars.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
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
        LiveLog {
            out,
            format,
            color,
            bars: None,
            active: HashMap::new(),
            timestamps: false,
            progress_every: PROGRESS_EVERY,
            progress: HashMap::new(),
        }
    }

    /// The log goes to a terminal: draw progress bars on stderr.
    pub fn on_terminal(mut self) -> Self {
        self.bars = Some(indicatif::MultiProgress::with_draw_target(
            indicatif::ProgressDrawTarget::stderr(),
        ));
        self
    }

    /// Prefix text lines with the time (for logs read later).
    pub fn with_timestamps(mut self) -> Self {
        self.timestamps = true;
        self
    }

    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    fn write_line(&mut self, line: &str) {
        if let Some(bars) = &self.bars {
            // Above the bars, which are cleared, and drawn again below it: the line itself
            // is written as any other, ending in a newline, so that a log copied from the
            // terminal keeps its lines.
            let out = &mut self.out;
            bars.suspend(|| {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            });
            return;
        }
        if self.timestamps {
            let _ = writeln!(
                self.out,
                "{} {line}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
            );
        } else {
            let _ = writeln!(self.out, "{line}");
        }
    }

    /// A progress report: a bar on a terminal, else a line (or JSON event) now and then.
    /// Returns the line to write, if one is due.
    fn on_progress(&mut self, event: &Event) -> Option<String> {
        let Event::Progress {
            step,
            what,
            bytes: done_bytes,
            total,
            done,
            at,
        } = event
        else {
            return None;
        };
        if let Some(bars) = &self.bars {
            if *done {
                if let Some(bar) = self.active.remove(step) {
                    bar.finish_and_clear();
                }
                return None;
            }
            let bar = self.active.entry(step.clone()).or_insert_with(|| {
                // The rate and the ETA are measured from this first report on, over at
                // least a second: a bar that starts at a transfer's current position would
                // otherwise show everything done so far as done in no time (34 GiB/s).
                let started = (Instant::now(), *done_bytes);
                let rate = move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate_text(started, state.pos(), state.len()));
                };
                let bar = match total {
                    Some(t) => indicatif::ProgressBar::new(*t).with_style(
                        indicatif::ProgressStyle::with_template(
                            "  {prefix} {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {rate}",
                        )
                        .expect("the template is valid")
                        .with_key("rate", rate)
                        .progress_chars("=> "),
                    ),
                    None => indicatif::ProgressBar::new_spinner().with_style(
                        indicatif::ProgressStyle::with_template(
                            "  {prefix} {msg} {spinner} {binary_bytes} {rate}",
                        )
                        .expect("the template is valid")
                        .with_key("rate", rate),
                    ),
                };
                bar.set_position(*done_bytes);
                bar.set_prefix(step.clone());
                bar.set_message(what.clone());
                bars.add(bar)
            });
            bar.set_position(*done_bytes);
            return None;
        }
        let key = format!("{step}\0{what}");
        let Some(entry) = self.progress.get_mut(&key) else {
            // The transfer starts: the first line is due after `progress_every`.
            if !*done {
                self.progress
                    .insert(key, (Some(Instant::now()), *at, *done_bytes));
            }
            return None;
        };
        let due = entry
            .0
            .is_none_or(|last| last.elapsed() >= self.progress_every);
        if *done || !due {
            if *done {
                self.progress.remove(&key);
            }
            return None;
        }
        entry.0 = Some(Instant::now());
        if self.format == LogFormat::Json {
            return Some(String::new());
        }
        let seconds = (*at - entry.1).num_milliseconds().max(1) as f64 / 1000.0;
        let moved = done_bytes.saturating_sub(entry.2);
        let mut line = format!("  {step} … {what} {}", bytes(*done_bytes));
        if let Some(t) = total.filter(|t| *t > 0) {
            line.push_str(&format!(
                " of {} ({}%)",
                bytes(t),
                (done_bytes.saturating_mul(100) / t).min(100)
            ));
        }
        if let Some((rate, eta)) = rate_and_eta(moved, seconds, *done_bytes, *total) {
            line.push_str(&format!(", {rate}"));
            if let Some(eta) = eta {
                line.push_str(&format!(", ETA {eta}"));
            }
        }
        Some(line)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn on_event(&mut self, event: &Event) {
        if let Event::Progress { .. } = event {
            match self.on_progress(event) {
                Some(_) if self.format == LogFormat::Json => {}
                Some(line) => {
                    self.write_line(&line);
                    return;
                }
                None => return,
            }
        }
        if let Event::StepFinished { step, .. } = event
            && let Some(bar) = self.active.remove(step)
        {
            bar.finish_and_clear();
        }
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
            Event::Progress { .. } | Event::Measured { .. } => return,
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
        self.write_line(&line);
    }
}

/// Messages of the libraries opsrunner uses (sqlx, the AWS SDK, hyper), written in the live
/// log's own shape — a text line like every other, with the time when not on a terminal,
/// or a JSON object with `event: "library"` — and redacted like every event, never in a
/// library's own format. Which are shown is `OPSRUNNER_LOG`'s filter (default: warnings).
pub struct LibraryLog {
    format: LogFormat,
    timestamps: bool,
}

/// The run's redactor, for library messages (set once the plan's secrets are known).
static REDACTOR: std::sync::OnceLock<crate::redact::Redactor> = std::sync::OnceLock::new();

/// Library messages from now on are redacted with `redactor`.
pub fn redact_library_messages(redactor: &crate::redact::Redactor) {
    let _ = REDACTOR.set(redactor.clone());
}

impl LibraryLog {
    pub fn new(format: LogFormat) -> LibraryLog {
        LibraryLog {
            format,
            timestamps: !stderr_is_terminal(),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.push((field.name().to_string(), text));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LibraryLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        for (k, v) in &fields.rest {
            message.push_str(&format!(" {k}={v}"));
        }
        // Control characters (a colour code a library wrote) never reach the log.
        let mut message: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if let Some(r) = REDACTOR.get() {
            message = r.redact(&message);
        }
        let level = match *meta.level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        let line = match self.format {
            LogFormat::Json => serde_json::json!({
                "event": "library",
                "level": level,
                "target": meta.target(),
                "message": message,
                "ts": chrono::Utc::now().to_rfc3339(),
            })
            .to_string(),
            LogFormat::Text if self.timestamps => format!(
                "{} {level}: {}: {message}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
                meta.target()
            ),
            LogFormat::Text => format!("{level}: {}: {message}", meta.target()),
        };
        eprintln!("{line}");
    }
}
