//! A plan's `schedule:`: systemd `OnCalendar` syntax, or a cron expression, parsed into one
//! form that both systemd timers and Kubernetes CronJobs (which speak only cron) can be
//! written from. Only what both can express is accepted; anything else is refused with a
//! reason when the plan is loaded, rather than scheduled differently from what was written.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// When a plan runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    /// The text as written in the plan.
    pub written: String,
    minute: Field,
    hour: Field,
    day: Field,
    month: Field,
    /// 0 = Sunday … 6 = Saturday.
    weekday: Field,
    /// `UTC` or an IANA zone name; `None`: the machine's (or the cluster's) local time.
    pub timezone: Option<String>,
}

/// The values one field matches: `None` is every value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field(Option<Vec<Range>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    lo: u32,
    hi: u32,
    step: u32,
}

struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
};
const DAY: Bounds = Bounds {
    name: "day of the month",
    min: 1,
    max: 31,
};
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
};
const WEEKDAY: Bounds = Bounds {
    name: "weekday",
    min: 0,
    max: 6,
};

const WEEKDAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

impl Calendar {
    /// Parses systemd `OnCalendar` syntax (`daily`, `*-*-* 02:00`, `Mon..Fri 06:30`,
    /// `*-*-* 00/6:00:00 UTC`) or a five-field cron expression (`0 2 * * *`, `@daily`).
    pub fn parse(text: &str) -> Result<Calendar, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("an empty schedule".into());
        }
        let mut calendar = if looks_like_cron(trimmed) {
            parse_cron(trimmed)?
        } else {
            parse_on_calendar(trimmed)?
        };
        if calendar.day.0.is_some() && calendar.weekday.0.is_some() {
            // cron runs when either matches, systemd only when both do.
            return Err(
                "a schedule may restrict the day of the month or the weekday, not both: cron and systemd disagree on what both mean"
                    .into(),
            );
        }
        calendar.written = text.to_string();
        Ok(calendar)
    }

    /// The systemd `OnCalendar=` value.
    pub fn on_calendar(&self) -> String {
        let mut out = String::new();
        if let Some(ranges) = &self.weekday.0 {
            let days: Vec<&str> = expand(ranges)
                .into_iter()
                .map(|d| WEEKDAY_NAMES[d as usize])
                .collect();
            out.push_str(&days.join(","));
            out.push(' ');
        }
        out.push_str(&format!(
            "*-{}-{} {}:{}:00",
            self.month.systemd(&MONTH),
            self.day.systemd(&DAY),
            self.hour.systemd(&HOUR),
            self.minute.systemd(&MINUTE)
        ));
        if let Some(tz) = &self.timezone {
            out.push(' ');
            out.push_str(tz);
        }
        out
    }

    /// The five-field cron expression (a Kubernetes CronJob's `schedule`).
    pub fn cron(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.minute.cron(&MINUTE),
            self.hour.cron(&HOUR),
            self.day.cron(&DAY),
            self.month.cron(&MONTH),
            self.weekday.cron(&WEEKDAY)
        )
    }
}

impl Field {
    fn systemd(&self, b: &Bounds) -> String {
        let Some(ranges) = &self.0 else {
            return "*".into();
        };
        ranges
            .iter()
            .map(|r| {
                let mut s = format!("{:02}", r.lo);
                // `00/15` repeats to the field's end; a range says where it stops.
                if r.hi != r.lo && !(r.step != 1 && r.hi == b.max) {
                    s.push_str(&format!("..{:02}", r.hi));
                }
                if r.step != 1 {
                    s.push_str(&format!("/{}", r.step));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cron(&self, b: &Bounds) -> String {
        let Some(ranges) = &self.0 else {
            return "*".into();
        };
        ranges
            .iter()
            .map(|r| {
                if r.step != 1 && r.lo == b.min && r.hi == b.max {
                    return format!("*/{}", r.step);
                }
                let mut s = r.lo.to_string();
                if r.hi != r.lo || r.step != 1 {
                    s.push_str(&format!("-{}", r.hi));
                }
                if r.step != 1 {
                    s.push_str(&format!("/{}", r.step));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn expand(ranges: &[Range]) -> Vec<u32> {
    let mut out: Vec<u32> = ranges
        .iter()
        .flat_map(|r| (r.lo..=r.hi).step_by(r.step as usize))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn looks_like_cron(s: &str) -> bool {
    s.starts_with('@') || s.split_whitespace().count() == 5
}

fn every() -> Field {
    Field(None)
}

fn at(v: u32) -> Field {
    Field(Some(vec![Range {
        lo: v,
        hi: v,
        step: 1,
    }]))
}

fn calendar(minute: Field, hour: Field, day: Field, month: Field, weekday: Field) -> Calendar {
    Calendar {
        written: String::new(),
        minute,
        hour,
        day,
        month,
        weekday,
        timezone: None,
    }
}

// ---- cron ----

fn parse_cron(s: &str) -> Result<Calendar, String> {
    if let Some(name) = s.strip_prefix('@') {
        return match name {
            "hourly" => Ok(calendar(at(0), every(), every(), every(), every())),
            "daily" | "midnight" => Ok(calendar(at(0), at(0), every(), every(), every())),
            "weekly" => Ok(calendar(at(0), at(0), every(), every(), at(0))),
            "monthly" => Ok(calendar(at(0), at(0), at(1), every(), every())),
            "yearly" | "annually" => Ok(calendar(at(0), at(0), at(1), at(1), every())),
            _ => Err(format!(
                "`@{name}` is not a schedule opsrunner can convert; use @hourly, @daily, @weekly, @monthly or @yearly, five cron fields, or systemd OnCalendar syntax"
            )),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let [minute, hour, day, month, weekday] = fields[..] else {
        return Err(
            "a cron expression has five fields: minute hour day-of-month month weekday".into(),
        );
    };
    Ok(calendar(
        cron_field(minute, &MINUTE, &[])?,
        cron_field(hour, &HOUR, &[])?,
        cron_field(day, &DAY, &[])?,
        cron_field(month, &MONTH, &MONTH_NAMES)?,
        cron_weekday(weekday)?,
    ))
}

fn cron_weekday(s: &str) -> Result<Field, String> {
    // cron allows 7 for Sunday too; fold it onto 0.
    let lower: Vec<String> = WEEKDAY_NAMES.iter().map(|n| n.to_lowercase()).collect();
    let names: Vec<&str> = lower.iter().map(String::as_str).collect();
    let wide = Bounds {
        name: "weekday",
        min: 0,
        max: 7,
    };
    let field = cron_field(s, &wide, &names)?;
    Ok(Field(field.0.map(|ranges| {
        let mut days = Vec::new();
        for r in ranges {
            for d in (r.lo..=r.hi).step_by(r.step as usize) {
                days.push(d % 7);
            }
        }
        days.sort_unstable();
        days.dedup();
        if days.len() == 7 {
            return Vec::new();
        }
        days.into_iter()
            .map(|d| Range {
                lo: d,
                hi: d,
                step: 1,
            })
            .collect()
    }))
    .normalized())
}

impl Field {
    /// Every value listed is the same as no restriction.
    fn normalized(self) -> Field {
        match self.0 {
            Some(r) if r.is_empty() => Field(None),
            other => Field(other),
        }
    }
}

fn cron_field(s: &str, b: &Bounds, names: &[&str]) -> Result<Field, String> {
    field(s, b, names, "-", "step")
}

/// One field of either syntax: `*`, values, ranges (`lo-hi` in cron, `lo..hi` in
/// systemd) and steps (`/n`), separated by commas. `5/15` means 5, 20, 35, 50 in both.
fn field(
    s: &str,
    b: &Bounds,
    names: &[&str],
    range: &str,
    step_word: &str,
) -> Result<Field, String> {
    if s == "*" {
        return Ok(Field(None));
    }
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => (base, Some(number(step, b, step_word)?)),
            None => (part, None),
        };
        if step == Some(0) {
            return Err(format!("a {step_word} of 0 in the {} field `{s}`", b.name));
        }
        let (lo, hi) = if base == "*" {
            (b.min, b.max)
        } else if let Some((lo, hi)) = base.split_once(range) {
            (value(lo, b, names)?, value(hi, b, names)?)
        } else {
            let v = value(base, b, names)?;
            (v, if step.is_some() { b.max } else { v })
        };
        if lo > hi {
            return Err(format!(
                "the {} range `{base}` runs backwards; write it from low to high",
                b.name
            ));
        }
        ranges.push(Range {
            lo,
            hi,
            step: step.unwrap_or(1),
        });
    }
    Ok(Field(Some(ranges)))
}

fn number(s: &str, b: &Bounds, what: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("`{s}` is not a number ({} {what})", b.name))
}

fn value(s: &str, b: &Bounds, names: &[&str]) -> Result<u32, String> {
    let lower = s.to_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.min);
    }
    let v = number(s, b, "value")?;
    if v < b.min || v > b.max {
        return Err(format!(
            "{} {v} is out of range ({}–{})",
            b.name, b.min, b.max
        ));
    }
    Ok(v)
}

// ---- systemd OnCalendar ----

fn parse_on_calendar(s: &str) -> Result<Calendar, String> {
    let shorthand = match s.to_lowercase().as_str() {
        "minutely" => Some(calendar(every(), every(), every(), every(), every())),
        "hourly" => Some(calendar(at(0), every(), every(), every(), every())),
        "daily" => Some(calendar(at(0), at(0), every(), every(), every())),
        "weekly" => Some(calendar(at(0), at(0), every(), every(), at(1))),
        "monthly" => Some(calendar(at(0), at(0), at(1), every(), every())),
        "yearly" | "annually" => Some(calendar(at(0), at(0), at(1), at(1), every())),
        "quarterly" => Some(calendar(
            at(0),
            at(0),
            at(1),
            Field(Some(vec![Range {
                lo: 1,
                hi: 12,
                step: 3,
            }])),
            every(),
        )),
        _ => None,
    };
    if let Some(c) = shorthand {
        return Ok(c);
    }
    let mut tokens: Vec<&str> = s.split_whitespace().collect();
    let mut timezone = None;
    if let Some(last) = tokens.last()
        && (*last == "UTC" || (last.contains('/') && !last.contains(':') && !last.contains('-')))
    {
        timezone = Some(last.to_string());
        tokens.pop();
    }
    let mut weekday = every();
    if let Some(first) = tokens.first()
        && first
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
    {
        weekday = systemd_weekdays(first)?;
        tokens.remove(0);
    }
    let (mut month, mut day) = (every(), every());
    let (mut hour, mut minute) = (at(0), at(0));
    let mut seen_time = false;
    for token in tokens {
        if token.contains(':') {
            if seen_time {
                return Err(format!("`{token}`: a second time of day"));
            }
            seen_time = true;
            let parts: Vec<&str> = token.split(':').collect();
            match parts[..] {
                [h, m] | [h, m, "00" | "0"] => {
                    hour = systemd_field(h, &HOUR)?;
                    minute = systemd_field(m, &MINUTE)?;
                }
                [_, _, sec] => {
                    return Err(format!(
                        "seconds `{sec}` in `{token}`: cron has no seconds, so a schedule runs at second 00"
                    ));
                }
                _ => return Err(format!("`{token}` is not a time of day (HH:MM)")),
            }
        } else if token.contains('-') {
            let parts: Vec<&str> = token.split('-').collect();
            let (m, d) = match parts[..] {
                ["*", m, d] => (m, d),
                [y, _, _] => {
                    return Err(format!(
                        "year `{y}` in `{token}`: a schedule repeats every year; write `*-MM-DD`"
                    ));
                }
                [m, d] => (m, d),
                _ => return Err(format!("`{token}` is not a date (*-MM-DD)")),
            };
            month = systemd_field(m, &MONTH)?;
            day = systemd_field(d, &DAY)?;
        } else {
            return Err(format!(
                "`{token}` is neither a date (*-MM-DD) nor a time (HH:MM); systemd OnCalendar syntax, e.g. `Mon..Fri *-*-* 02:00`, or five cron fields"
            ));
        }
    }
    let mut c = calendar(minute, hour, day, month, weekday);
    c.timezone = timezone;
    Ok(c)
}

fn systemd_weekdays(s: &str) -> Result<Field, String> {
    let parse_day = |d: &str| -> Result<u32, String> {
        let lower = d.to_lowercase();
        WEEKDAY_NAMES
            .iter()
            .position(|n| lower.starts_with(&n.to_lowercase()) && lower.len() >= 3)
            .map(|i| i as u32)
            .ok_or_else(|| format!("`{d}` is not a weekday (Mon, Tue, …)"))
    };
    let mut days = Vec::new();
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once("..") {
            // systemd's week starts on Monday: Mon..Sun is the whole week.
            let (a, b) = (parse_day(a)?, parse_day(b)?);
            let (a, b) = ((a + 6) % 7, (b + 6) % 7);
            if a > b {
                return Err(format!(
                    "the weekday range `{part}` runs backwards (the week starts on Monday)"
                ));
            }
            days.extend((a..=b).map(|d| (d + 1) % 7));
        } else {
            days.push(parse_day(part)?);
        }
    }
    days.sort_unstable();
    days.dedup();
    if days.len() == 7 {
        return Ok(Field(None));
    }
    Ok(Field(Some(
        days.into_iter()
            .map(|d| Range {
                lo: d,
                hi: d,
                step: 1,
            })
            .collect(),
    )))
}

fn systemd_field(s: &str, b: &Bounds) -> Result<Field, String> {
    field(s, b, &[], "..", "repetition")
}

// ---- in the plan ----

/// `schedule:` as a plan holds it: the text, checked when the plan loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Calendar);

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let text = String::deserialize(d)?;
        Calendar::parse(&text)
            .map(Schedule)
            .map_err(|e| serde::de::Error::custom(format!("schedule `{text}`: {e}")))
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.written)
    }
}

impl JsonSchema for Schedule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Schedule".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "When the plan runs, for `opsrunner schedule systemd|k8s`: systemd OnCalendar syntax (`daily`, `*-*-* 02:00`, `Mon..Fri 06:30`, optionally ending in `UTC` or a time zone) or a five-field cron expression (`0 2 * * *`, `@daily`).",
            "examples": ["*-*-* 02:00", "0 2 * * *", "Mon..Fri *-*-* 06:30 UTC"]
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(s: &str) -> (String, String) {
        let c = Calendar::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (c.on_calendar(), c.cron())
    }

    #[test]
    fn cron_and_systemd_meet() {
        assert_eq!(
            both("0 2 * * *"),
            ("*-*-* 02:00:00".into(), "0 2 * * *".into())
        );
        assert_eq!(
            both("*-*-* 02:00"),
            ("*-*-* 02:00:00".into(), "0 2 * * *".into())
        );
        assert_eq!(both("daily"), ("*-*-* 00:00:00".into(), "0 0 * * *".into()));
        assert_eq!(
            both("@weekly"),
            ("Sun *-*-* 00:00:00".into(), "0 0 * * 0".into())
        );
        assert_eq!(
            both("Mon..Fri *-*-* 06:30"),
            (
                "Mon,Tue,Wed,Thu,Fri *-*-* 06:30:00".into(),
                "30 6 * * 1,2,3,4,5".into()
            )
        );
        assert_eq!(
            both("*/15 * * * *"),
            ("*-*-* *:00/15:00".into(), "*/15 * * * *".into())
        );
        assert_eq!(
            both("30 1 1 jan-mar *"),
            ("*-01..03-01 01:30:00".into(), "30 1 1 1-3 *".into())
        );
        assert_eq!(
            both("0 3 * * 7"),
            ("Sun *-*-* 03:00:00".into(), "0 3 * * 0".into())
        );
        assert_eq!(
            both("*-*-* 00/6:00 UTC"),
            ("*-*-* 00/6:00:00 UTC".into(), "0 */6 * * *".into())
        );
        assert_eq!(
            both("Sat,Sun 04:00"),
            ("Sun,Sat *-*-* 04:00:00".into(), "0 4 * * 0,6".into())
        );
    }

    #[test]
    fn what_cannot_be_said_in_both_is_refused() {
        for (bad, why) in [
            ("0 2 1 * 1", "not both"),
            ("*-*-* 02:00:30", "no seconds"),
            ("2026-*-* 02:00", "repeats every year"),
            ("@reboot", "not a schedule"),
            ("61 * * * *", "out of range"),
            ("0 2 * * fri-mon", "backwards"),
            ("every night", "not a weekday"),
            ("*-*-* 02:00 nightly", "neither a date"),
            ("*/0 * * * *", "step of 0"),
            ("", "empty"),
        ] {
            let e = Calendar::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
