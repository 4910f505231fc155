//! Timelines and the WAL a recovery reads. A promotion starts a new timeline; its history
//! file (`00000002.history`) lists every ancestor and the position where each one was
//! left. Recovery along a timeline reads, for each segment position, the segment of the
//! newest timeline of that path which had begun by then — the rule PostgreSQL's
//! `XLogFileReadAnyTLI` follows — so that is the list of names that must be in the archive
//! before a restore starts.

use super::wal::segment_name;

/// One timeline of a path and where it begins (the switch point of its parent; 0 for the
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub timeline: u32,
    pub begins: u64,
}

/// The timelines from the first to `timeline`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub steps: Vec<Step>,
}

/// Parses a timeline history file: `parent<TAB>switchpoint<TAB>reason` lines, comments
/// (`#`) and blank lines ignored. Returns (parent timeline, switch point) pairs.
pub fn parse_history(text: &str) -> Result<Vec<(u32, u64)>, String> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let timeline = fields
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| format!("line {}: no timeline number", number + 1))?;
        let switch = fields
            .next()
            .and_then(super::manifest::parse_lsn)
            .ok_or_else(|| format!("line {}: no switch point", number + 1))?;
        if out
            .last()
            .is_some_and(|&(t, s)| t >= timeline || s > switch)
        {
            return Err(format!(
                "line {}: timelines and switch points must increase",
                number + 1
            ));
        }
        out.push((timeline, switch));
    }
    Ok(out)
}

impl Path {
    /// The path of a timeline with no history file (timeline 1, or one whose history is
    /// not needed).
    pub fn single(timeline: u32) -> Path {
        Path {
            steps: vec![Step {
                timeline,
                begins: 0,
            }],
        }
    }

    /// The path to `timeline` from its history file's entries.
    pub fn from_history(timeline: u32, history: &[(u32, u64)]) -> Path {
        let mut steps = Vec::new();
        let mut begins = 0;
        for &(parent, switch) in history {
            steps.push(Step {
                timeline: parent,
                begins,
            });
            begins = switch;
        }
        steps.push(Step { timeline, begins });
        Path { steps }
    }

    pub fn target(&self) -> u32 {
        self.steps.last().map_or(1, |s| s.timeline)
    }

    /// Whether a backup taken on `timeline` starting at `lsn` lies on this path: its
    /// timeline is on it and was not left before the backup began.
    pub fn contains(&self, timeline: u32, lsn: u64) -> bool {
        self.steps.iter().enumerate().any(|(i, s)| {
            let ends = self.steps.get(i + 1).map_or(u64::MAX, |n| n.begins);
            s.timeline == timeline && lsn < ends
        })
    }

    /// The timeline recovery reads segment `position` from.
    fn timeline_of(&self, position: u64, segment_size: u64) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|s| s.begins / segment_size <= position)
            .map_or(1, |s| s.timeline)
    }

    /// The segments recovery reads from the one holding `from` to the one holding `to`.
    pub fn segments(&self, from: u64, to: u64, segment_size: u64) -> Vec<String> {
        (from / segment_size..=to.max(from) / segment_size)
            .map(|p| segment_name(self.timeline_of(p, segment_size), p, segment_size))
            .collect()
    }
}

/// Timeline numbers with a history file in `names` (the archive's listing).
pub fn history_timelines(names: &[String]) -> Vec<u32> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".history"))
        .filter_map(|t| u32::from_str_radix(t, 16).ok())
        .collect()
}

pub fn history_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn a_promotion_moves_reading_to_the_new_timeline_at_the_switch_segment() {
        let history = parse_history("1\t0/3000100\tno recovery target specified\n").unwrap();
        assert_eq!(history, vec![(1, 0x3000100)]);
        let path = Path::from_history(2, &history);
        assert_eq!(path.target(), 2);
        assert_eq!(
            path.segments(0x2000028, 0x5000000, SEG),
            vec![
                "000000010000000000000002",
                // The switch segment is read from the new timeline (it holds the old
                // timeline's records up to the switch point, then the new ones).
                "000000020000000000000003",
                "000000020000000000000004",
                "000000020000000000000005",
            ]
        );
        assert!(path.contains(1, 0x2000028));
        assert!(!path.contains(1, 0x3000100));
        assert!(path.contains(2, 0x3000100));
        assert!(!path.contains(3, 0));
    }

    #[test]
    fn a_single_timeline_reads_its_own_segments() {
        let path = Path::single(1);
        assert_eq!(
            path.segments(0x1_0000_0000 - 1, 0x1_0000_0028, SEG),
            vec!["0000000100000000000000FF", "000000010000000100000000"]
        );
    }

    #[test]
    fn damaged_history_is_an_error() {
        assert!(parse_history("x\t0/1\n").is_err());
        assert!(parse_history("2\t0/5\n1\t0/6\n").is_err());
        assert_eq!(parse_history("# comment\n\n").unwrap(), vec![]);
    }
}
