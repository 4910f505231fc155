//! Which backups a prune keeps, with restic's documented `forget` semantics, per database:
//!
//! - `last: n` keeps the n newest backups;
//! - `hourly|daily|weekly|monthly|yearly: n` keep, walking from the newest backup back, the
//!   newest backup of each of the last n hours (days, ISO weeks, months, years) that have
//!   one;
//! - `within: 30d` keeps every backup made within that span before the newest backup.
//!
//! A backup is kept when any rule keeps it. On top of restic: the newest backup of each
//! database is always kept, verified or not; `min_age` never deletes a backup younger than
//! that; the newest backup that passed a restore verification is always kept; and when the
//! newest backup's last verification failed, nothing at all is deleted (the older backups
//! may be the only good ones). A count of 0 is an error, like an empty policy: it reads as
//! "keep none", which is never what a retention policy is for.

use super::manifest::Verification;
use chrono::{DateTime, Datelike, Timelike, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A retention policy. Counts may be templates (`daily: "{{ vars.keep_daily }}"`): they are
/// checked to be whole numbers when the step starts and its templates are rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub last: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub hourly: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub daily: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub weekly: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub monthly: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    #[schemars(schema_with = "count_schema")]
    pub yearly: Option<u32>,
    /// Keep every backup made within this span before the newest one, e.g. `14d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<crate::plan::duration::HumanDuration>,
}

/// A count: a whole number, a string holding one (what a rendered template gives), or an
/// unrendered template (validation time; [`TEMPLATE_COUNT`] stands in until the run
/// renders it and the rendered value is checked).
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde_json::Value;
    // Any value is read first, so that what is wrong can be said in words (an untagged
    // enum's failure says only that no variant matched).
    let not_a_count = |shown: &str| {
        serde::de::Error::custom(format!(
            "{shown} is not a count: give a whole number from 1 to {}",
            u32::MAX - 1
        ))
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .filter(|&u| u != TEMPLATE_COUNT)
            .map(Some)
            .ok_or_else(|| {
                // Beyond u64, the YAML reader kept only a float: say what it was.
                if n.as_f64().is_some_and(|f| f >= 1e19) {
                    not_a_count(&format!(
                        "a number of {} digits",
                        n.as_f64().unwrap_or(0.0).log10().floor() as u32 + 1
                    ))
                } else {
                    not_a_count(&format!("`{n}`"))
                }
            }),
        Some(Value::String(t)) if t.contains("{{") => Ok(Some(TEMPLATE_COUNT)),
        Some(Value::String(t)) => match t.trim().parse::<i128>() {
            Ok(n) => u32::try_from(n)
                .ok()
                .filter(|&u| u != TEMPLATE_COUNT)
                .map(Some)
                .ok_or_else(|| not_a_count(&format!("`{}`", t.trim()))),
            Err(_) => Err(serde::de::Error::custom(format!(
                "`{t}` is not a whole number"
            ))),
        },
        Some(other) => Err(not_a_count(&format!("`{other}`"))),
    }
}

/// What an unrendered count template stands for until the run renders it.
pub const TEMPLATE_COUNT: u32 = u32::MAX;

fn count_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A whole number, or a template that renders to one.",
        "anyOf": [{ "type": "integer", "minimum": 1 }, { "type": "string" }]
    })
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }

    /// The counting rules by name, set or not.
    pub fn counts(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }

    /// The rules whose count is 0, by name.
    pub fn zero_counts(&self) -> Vec<&'static str> {
        self.counts()
            .into_iter()
            .filter(|(_, n)| *n == Some(0))
            .map(|(name, _)| name)
            .collect()
    }

    /// Why this policy must not run, if it must not.
    pub fn problem(&self) -> Option<String> {
        if self.is_empty() {
            return Some("a retention policy needs at least one of last, hourly, daily, weekly, monthly, yearly, within".into());
        }
        if let Some(name) = self.zero_counts().first() {
            return Some(format!(
                "`{name}: 0` would keep none and delete every backup; give a count of at least 1"
            ));
        }
        None
    }
}

/// What the selection needs to know of a backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub database: String,
    pub created_at: DateTime<Utc>,
    pub verification: Option<Verification>,
    /// The backup this one needs to be restored (an incremental base backup's parent).
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Decision {
    pub id: String,
    pub database: String,
    pub keep: bool,
    /// The backup is damaged: never deleted by a policy and not counted as a keeper.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// Decides for every candidate. Errors when the policy keeps nothing by construction.
pub fn select(
    candidates: &[Candidate],
    keep: &Keep,
    min_age: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>, String> {
    if let Some(problem) = keep.problem() {
        return Err(problem);
    }
    let mut by_db: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        by_db.entry(&c.database).or_default().push(c);
    }
    let mut out = Vec::new();
    for (_, mut group) in by_db {
        // Newest first; ties broken by id for a stable order.
        group.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        out.extend(select_group(&group, keep, min_age, now));
    }
    keep_parents(candidates, &mut out);
    Ok(out)
}

/// A kept incremental or differential base backup is of no use without its parents, down
/// to the full one: they are kept with it, whatever the rules said of them.
fn keep_parents(candidates: &[Candidate], decisions: &mut [Decision]) {
    let parent_of: BTreeMap<&str, &str> = candidates
        .iter()
        .filter_map(|c| c.parent.as_deref().map(|p| (c.id.as_str(), p)))
        .collect();
    loop {
        let needed: Vec<(String, String)> = decisions
            .iter()
            .filter(|d| d.keep)
            .filter_map(|d| {
                let parent = parent_of.get(d.id.as_str())?;
                Some((d.id.clone(), parent.to_string()))
            })
            .collect();
        let mut changed = false;
        for (child, parent) in needed {
            let Some(d) = decisions.iter_mut().find(|d| d.id == parent) else {
                continue;
            };
            let reason = format!("parent of {child}, which is kept");
            if !d.keep {
                d.keep = true;
                d.reasons.clear();
                changed = true;
            }
            if !d.reasons.contains(&reason) {
                d.reasons.push(reason);
            }
        }
        if !changed {
            break;
        }
    }
}

type Bucket = fn(&DateTime<Utc>) -> String;

fn select_group(
    group: &[&Candidate],
    keep: &Keep,
    min_age: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); group.len()];
    if let Some(newest) = reasons.first_mut() {
        newest.push("newest backup of its database".into());
    }
    if let Some(n) = keep.last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last".into());
        }
    }
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", keep.hourly, |t| {
            format!(
                "{}-{:02}-{:02} {:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            )
        }),
        ("daily", keep.daily, |t| {
            format!("{}-{:02}-{:02}", t.year(), t.month(), t.day())
        }),
        ("weekly", keep.weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", keep.monthly, |t| {
            format!("{}-{:02}", t.year(), t.month())
        }),
        ("yearly", keep.yearly, |t| t.year().to_string()),
    ];
    for (name, count, bucket) in rules {
        let Some(mut left) = count else { continue };
        let mut last_bucket: Option<String> = None;
        for (i, c) in group.iter().enumerate() {
            if left == 0 {
                break;
            }
            let b = bucket(&c.created_at);
            if last_bucket.as_ref() != Some(&b) {
                reasons[i].push(format!("{name} {b}"));
                last_bucket = Some(b);
                left -= 1;
            }
        }
    }
    if let (Some(within), Some(newest)) = (keep.within, group.first()) {
        let span = chrono::Duration::from_std(within.0).unwrap_or(chrono::Duration::MAX);
        for (i, c) in group.iter().enumerate() {
            if newest.created_at - c.created_at <= span {
                reasons[i].push(format!("within {within}"));
            }
        }
    }
    if let Some(min_age) = min_age {
        let span = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
        for (i, c) in group.iter().enumerate() {
            if now - c.created_at < span {
                reasons[i].push(format!(
                    "younger than min_age {}",
                    crate::plan::duration::format(min_age)
                ));
            }
        }
    }
    if let Some(i) = group.iter().position(|c| {
        c.verification
            .as_ref()
            .is_some_and(|v| v.passed && v.restored)
    }) {
        reasons[i].push("newest backup that passed a restore verification".into());
    }
    let newest_failed = group
        .first()
        .and_then(|c| c.verification.as_ref())
        .is_some_and(|v| !v.passed);
    group
        .iter()
        .zip(reasons)
        .map(|(c, mut why)| {
            if newest_failed && why.is_empty() {
                why.push("the newest backup failed its verification: nothing is deleted".into());
            }
            let keep = !why.is_empty();
            if !keep {
                why.push("no rule keeps it".into());
            }
            Decision {
                id: c.id.clone(),
                database: c.database.clone(),
                keep,
                damaged: false,
                reasons: why,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
    }

    /// A backup a day at 02:00 from 2026-01-01 on, `n` of them.
    fn daily_series(n: i64) -> Vec<Candidate> {
        (0..n)
            .map(|d| Candidate {
                parent: None,
                id: format!("b{d:03}"),
                database: "app".into(),
                created_at: at("2026-01-01 02:00") + chrono::Duration::days(d),
                verification: None,
            })
            .collect()
    }

    /// `daily_series(n)` plus one old backup of another database.
    fn with_billing(n: i64) -> Vec<Candidate> {
        let mut cands = daily_series(n);
        cands.push(Candidate {
            parent: None,
            id: "other".into(),
            database: "billing".into(),
            created_at: at("2025-01-01 00:00"),
            verification: None,
        });
        cands
    }

    fn kept(cands: &[Candidate], keep: Keep) -> Vec<String> {
        let now = cands.iter().map(|c| c.created_at).max().unwrap() + chrono::Duration::hours(1);
        let mut ids: Vec<String> = select(cands, &keep, None, now)
            .unwrap()
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    }

    fn ids(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn verified(mut c: Candidate, passed: bool) -> Candidate {
        c.verification = Some(Verification {
            verified_at: c.created_at,
            passed,
            restored: true,
            checks: String::new(),
            run_id: "r".into(),
            manifest_sha256: None,
            seal: None,
        });
        c
    }

    /// An incremental chain: keeping the newest keeps every backup it is built on, and says
    /// why; a backup of the chain nothing kept still goes.
    #[test]
    fn a_kept_incremental_keeps_its_parents_down_to_the_full() {
        let mut cands = daily_series(5); // b000 full, b001 incr, b002 full, b003 diff, b004 incr
        cands[1].parent = Some("b000".into());
        cands[3].parent = Some("b002".into());
        cands[4].parent = Some("b003".into());
        let keep = Keep {
            last: Some(1),
            ..Default::default()
        };
        let decisions = select(&cands, &keep, None, at("2026-06-01 00:00")).unwrap();
        let kept: Vec<&str> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(kept, ["b004", "b003", "b002"]);
        let b002 = decisions.iter().find(|d| d.id == "b002").unwrap();
        assert_eq!(b002.reasons, ["parent of b003, which is kept"]);
        assert!(!decisions.iter().find(|d| d.id == "b001").unwrap().keep);
    }

    #[test]
    fn table_of_policies() {
        let days = daily_series(70); // 2026-01-01 … 2026-03-11
        let hours: Vec<Candidate> = (0..10)
            .map(|h| Candidate {
                parent: None,
                id: format!("h{h}"),
                database: "app".into(),
                created_at: at("2026-05-01 00:30") + chrono::Duration::minutes(20 * h),
                verification: None,
            })
            .collect();
        let cases: Vec<(&str, &[Candidate], Keep, Vec<String>)> = vec![
            (
                "last 1",
                &days,
                Keep {
                    last: Some(1),
                    ..Default::default()
                },
                ids(&["b069"]),
            ),
            (
                "last 3",
                &days,
                Keep {
                    last: Some(3),
                    ..Default::default()
                },
                ids(&["b067", "b068", "b069"]),
            ),
            (
                "within 0s keeps only the newest",
                &days[..3],
                Keep {
                    within: Some(crate::plan::duration::HumanDuration(Duration::ZERO)),
                    ..Default::default()
                },
                ids(&["b002"]),
            ),
            (
                "last more than there are",
                &days[..2],
                Keep {
                    last: Some(5),
                    ..Default::default()
                },
                ids(&["b000", "b001"]),
            ),
            (
                "daily 2",
                &days,
                Keep {
                    daily: Some(2),
                    ..Default::default()
                },
                ids(&["b068", "b069"]),
            ),
            // 2026-03-11 is a Wednesday: the newest of ISO weeks 11, 10 and 9 are Mar 11, Mar 8, Mar 1.
            (
                "weekly 3",
                &days,
                Keep {
                    weekly: Some(3),
                    ..Default::default()
                },
                ids(&["b069", "b066", "b059"]),
            ),
            (
                "monthly 2",
                &days,
                Keep {
                    monthly: Some(2),
                    ..Default::default()
                },
                ids(&["b069", "b058"]),
            ),
            (
                "monthly 12 with 3 months of data",
                &days,
                Keep {
                    monthly: Some(12),
                    ..Default::default()
                },
                ids(&["b069", "b058", "b030"]),
            ),
            (
                "yearly 5",
                &days,
                Keep {
                    yearly: Some(5),
                    ..Default::default()
                },
                ids(&["b069"]),
            ),
            (
                "within 2d is relative to the newest",
                &days,
                Keep {
                    within: Some(crate::plan::duration::HumanDuration(Duration::from_secs(
                        2 * 86400,
                    ))),
                    ..Default::default()
                },
                ids(&["b067", "b068", "b069"]),
            ),
            (
                "hourly 2 takes the newest of each hour",
                &hours,
                Keep {
                    hourly: Some(2),
                    ..Default::default()
                },
                ids(&["h9", "h7"]),
            ),
            (
                "hourly 10 with 4 hours of data",
                &hours,
                Keep {
                    hourly: Some(10),
                    ..Default::default()
                },
                ids(&["h9", "h7", "h4", "h1"]),
            ),
            (
                "last 1 + daily 3 overlap",
                &days,
                Keep {
                    last: Some(1),
                    daily: Some(3),
                    ..Default::default()
                },
                ids(&["b067", "b068", "b069"]),
            ),
            (
                "daily 1 + weekly 2 + monthly 2",
                &days,
                Keep {
                    daily: Some(1),
                    weekly: Some(2),
                    monthly: Some(2),
                    ..Default::default()
                },
                ids(&["b069", "b066", "b058"]),
            ),
            (
                "last 2 + yearly 1",
                &days,
                Keep {
                    last: Some(2),
                    yearly: Some(1),
                    ..Default::default()
                },
                ids(&["b068", "b069"]),
            ),
        ];
        assert!(cases.len() >= 15);
        for (name, cands, keep, want) in cases {
            assert_eq!(kept(cands, keep), want, "{name}");
        }
    }

    #[test]
    fn databases_are_pruned_separately() {
        let cands = with_billing(3);
        assert_eq!(
            kept(
                &cands,
                Keep {
                    last: Some(1),
                    ..Default::default()
                }
            ),
            ids(&["b002", "other"])
        );
    }

    #[test]
    fn min_age_protects_young_backups() {
        let cands = daily_series(5);
        let now = at("2026-01-05 12:00");
        let d = select(
            &cands,
            &Keep {
                last: Some(1),
                ..Default::default()
            },
            Some(Duration::from_secs(3 * 86400)),
            now,
        )
        .unwrap();
        let kept: Vec<&str> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
        assert_eq!(kept, ["b004", "b003", "b002"]);
    }

    #[test]
    fn the_newest_verified_backup_is_always_kept() {
        let mut cands = daily_series(5);
        cands[1] = verified(cands[1].clone(), true);
        cands[3] = verified(cands[3].clone(), false);
        assert_eq!(
            kept(
                &cands,
                Keep {
                    last: Some(1),
                    ..Default::default()
                }
            ),
            ids(&["b001", "b004"])
        );
    }

    #[test]
    fn nothing_is_deleted_when_the_newest_backup_failed_verification() {
        let mut cands = daily_series(5);
        cands[4] = verified(cands[4].clone(), false);
        assert_eq!(
            kept(
                &cands,
                Keep {
                    last: Some(1),
                    ..Default::default()
                }
            )
            .len(),
            5
        );
    }

    #[test]
    fn an_empty_policy_is_an_error() {
        assert!(select(&daily_series(2), &Keep::default(), None, Utc::now()).is_err());
    }

    #[test]
    fn a_count_of_zero_is_an_error() {
        for keep in [
            Keep {
                last: Some(0),
                ..Default::default()
            },
            Keep {
                daily: Some(0),
                weekly: Some(4),
                ..Default::default()
            },
        ] {
            let e = select(&daily_series(3), &keep, None, Utc::now()).unwrap_err();
            assert!(e.contains(": 0` would keep none"), "{e}");
        }
    }

    #[test]
    fn the_newest_backup_is_kept_whatever_the_rules_say() {
        // Every rule with a count of at least 1 keeps the newest backup already; this rule
        // is the guarantee that does not depend on how the rules are written.
        let cands = with_billing(3);
        let d = select(
            &cands,
            &Keep {
                within: Some(crate::plan::duration::HumanDuration(Duration::ZERO)),
                ..Default::default()
            },
            None,
            at("2027-01-01 00:00"),
        )
        .unwrap();
        let newest: Vec<&str> = d
            .iter()
            .filter(|d| d.keep && d.reasons[0] == "newest backup of its database")
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(newest, ["b002", "other"]);
    }

    #[test]
    fn reasons_name_the_rule() {
        let d = select(
            &daily_series(2),
            &Keep {
                daily: Some(1),
                ..Default::default()
            },
            None,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(
            d[0].reasons,
            ["newest backup of its database", "daily 2026-01-02"]
        );
        assert_eq!(d[1].reasons, ["no rule keeps it"]);
    }
}
