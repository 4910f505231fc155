//! `verify` with `to:` — proves a base backup and the WAL archive by using them: the base
//! backup is recovered to the point (by default the end of the archive) in a throwaway
//! cluster, exactly as a point-in-time restore would, and the recovered cluster is checked
//! with `pg_amcheck` (every table and B-tree index of every database) where the `amcheck`
//! extension is installed. Recovered to a `pitr_mark`'s restore point, the mark's tables
//! must hold what the mark recorded (`fingerprints`). The outcome is recorded beside the base backup like a logical
//! verify's, with the restore's duration (RTO) and the moment reached (the achieved RPO).
//!
//! What is a verdict: missing or damaged WAL, a base backup that does not match its
//! manifest or the server's, a recovery that stops, corruption amcheck finds, tables that
//! differ from the mark's fingerprints (exit 6). What
//! is not: a repository that cannot be read just now, a missing key or program.

use super::pitr::{self, Request};
use crate::exec::events::{Outputs, Stream, Verdict};
use crate::exec::{ErrorKind, StepContext, StepError};
use crate::pg::process::PgProcess;
use crate::repo::listing;
use crate::repo::manifest::Verification;
use chrono::Utc;
use std::time::{Duration, Instant};

pub async fn run(
    p: &Request<'_>,
    max_age: Option<Duration>,
    record: bool,
    ctx: &StepContext,
) -> Result<Outputs, StepError> {
    let prepared = pitr::prepare(p, ctx).await?;
    let backup_id = prepared.manifest.backup_id.clone();
    let mut checks: Vec<(&'static str, Result<String, String>)> = Vec::new();
    let mut note = |name: &'static str, result: Result<String, String>| {
        let line = match &result {
            Ok(detail) if detail.is_empty() => format!("check {name}: pass"),
            Ok(detail) => format!("check {name}: pass ({detail})"),
            Err(e) => format!("check {name}: FAIL: {e}"),
        };
        ctx.events.output(&ctx.step_id, Stream::Stdout, line);
        checks.push((name, result));
    };
    let age_s = (Utc::now() - prepared.manifest.created_at)
        .num_seconds()
        .max(0) as u64;
    ctx.events.measured(&ctx.step_id, "backup_age_s", age_s);
    if let Some(max) = max_age {
        let shown = crate::plan::duration::format(Duration::from_secs(age_s));
        let limit = crate::plan::duration::format(max);
        note(
            "age",
            if Duration::from_secs(age_s) > max {
                Err(format!(
                    "the base backup is {shown} old, older than max_age {limit}: are base backups still being made?"
                ))
            } else {
                Ok(format!("{shown} old, at most {limit}"))
            },
        );
    }
    let mut reached_time = String::new();
    let mut restore_ms = None;
    let mut rpo_s = None;
    match prepared.missing(p.repository) {
        Some(missing) => note("wal", Err(missing)),
        None => {
            note(
                "wal",
                Ok(format!(
                    "{} archived",
                    crate::diag::count(prepared.choice.needed.len(), "segment")
                )),
            );
            let clock = Instant::now();
            match pitr::recover(p, &prepared, ctx).await {
                Ok(recovered) => {
                    let ms = clock.elapsed().as_millis() as u64;
                    restore_ms = Some(ms);
                    ctx.events.measured(&ctx.step_id, "restore_duration_ms", ms);
                    reached_time = recovered.reached_time();
                    if let Some(t) = recovered.reached.time {
                        let rpo = (Utc::now() - t).num_seconds().max(0) as u64;
                        rpo_s = Some(rpo);
                        ctx.events.measured(&ctx.step_id, "rpo_s", rpo);
                    }
                    note(
                        "recovery",
                        Ok(format!(
                            "{ms} ms to WAL {}{}",
                            recovered.reached.lsn,
                            if reached_time.is_empty() {
                                String::new()
                            } else {
                                format!(", last commit {reached_time}")
                            }
                        )),
                    );
                    let amcheck = amcheck(ctx, &prepared.cluster, p.target).await?;
                    note("amcheck", amcheck);
                    if let Some(mark) = &prepared.choice.mark {
                        note("fingerprints", fingerprints(ctx, p.target, mark).await?);
                    }
                }
                Err(e) if matches!(e.kind, ErrorKind::Cancelled | ErrorKind::Transient) => {
                    return Err(e);
                }
                Err(e) => note("recovery", Err(e.message)),
            }
        }
    }
    let failures: Vec<String> = checks
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    let corrupt = checks.iter().any(|(n, r)| *n != "age" && r.is_err());
    let too_old = checks.iter().any(|(n, r)| *n == "age" && r.is_err());
    let summary = checks
        .iter()
        .map(|(n, r)| format!("{n}={}", if r.is_ok() { "pass" } else { "fail" }))
        .collect::<Vec<_>>()
        .join(" ");
    if record {
        let verification = Verification {
            verified_at: Utc::now(),
            passed: !corrupt,
            restored: restore_ms.is_some() && !corrupt,
            checks: summary.clone(),
            run_id: ctx.run_id.clone(),
            manifest_sha256: None,
            seal: None,
        };
        listing::record(&prepared.store, &prepared.choice.backup, verification)
            .await
            .map_err(|e| {
                StepError::transient(format!(
                    "cannot record the verification of {backup_id}: {e}"
                ))
            })?;
    }
    let verdict = if corrupt {
        Some(Verdict::BackupCorrupt)
    } else if too_old {
        Some(Verdict::BackupTooOld)
    } else {
        None
    };
    if let Some(verdict) = verdict {
        return Err(StepError::verdict(
            verdict,
            format!(
                "point-in-time verify of {backup_id} failed: {}",
                failures.join("; ")
            ),
        ));
    }
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), backup_id);
    outputs.insert("checks".into(), summary);
    outputs.insert(
        "restore_duration_ms".into(),
        restore_ms.map(|m| m.to_string()).unwrap_or_default(),
    );
    outputs.insert("backup_age_s".into(), age_s.to_string());
    outputs.insert("reached_time".into(), reached_time);
    outputs.insert(
        "rpo_s".into(),
        rpo_s.map(|r| r.to_string()).unwrap_or_default(),
    );
    Ok(outputs)
}

/// The mark's tables in the recovered cluster, compared with what the mark recorded at its
/// restore point: equal, or the recovery did not bring back what was there.
async fn fingerprints(
    ctx: &StepContext,
    target: &str,
    mark: &crate::repo::mark::Mark,
) -> Result<Result<String, String>, StepError> {
    use sqlx::Connection;
    let info =
        crate::pg::conn::ConnInfo::parse(ctx.target_url(target)?)?.with_database(&mark.database);
    let mut conn = match info.connect().await {
        Ok(c) => c,
        // The database itself missing is a finding, not trouble reaching the server.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
            return Ok(Err(format!(
                "database `{}` of mark `{}` does not exist after recovery",
                mark.database, mark.name
            )));
        }
        Err(e) => {
            return Err(crate::pg::server::classify(
                &e,
                "connecting to the recovered cluster",
            ));
        }
    };
    let tables: Vec<String> = mark.fingerprints.keys().cloned().collect();
    let actual = crate::pg::fingerprint::take(&mut conn, mark.fingerprint, Some(&tables))
        .await
        .map_err(|e| crate::pg::server::classify(&e, "fingerprinting the recovered tables"))?;
    let _ = conn.close().await;
    let problems = crate::pg::fingerprint::compare_with(&mark.fingerprints, &actual, "at the mark");
    Ok(if problems.is_empty() {
        Ok(format!(
            "{} table{} of database `{}` as at mark `{}`",
            tables.len(),
            if tables.len() == 1 { "" } else { "s" },
            mark.database,
            mark.name
        ))
    } else {
        Err(problems.join("; "))
    })
}

/// `pg_amcheck --all` on the recovered cluster: every heap and B-tree index. Skipped (and
/// said so) when the `amcheck` extension or the program is not installed.
async fn amcheck(
    ctx: &StepContext,
    cluster: &crate::exec::EphemeralDir,
    target: &str,
) -> Result<Result<String, String>, StepError> {
    use sqlx::Connection;
    let url = ctx.target_url(target)?;
    let info = crate::pg::conn::ConnInfo::parse(url)?;
    let mut conn = info.connect_to("the recovered cluster").await?;
    let available: Option<String> = sqlx::query_scalar(
        "select default_version from pg_available_extensions where name = 'amcheck'",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| crate::pg::server::classify(&e, "looking for amcheck"))?;
    let _ = conn.close().await;
    let Some(version) = available else {
        return Ok(Ok(
            "skipped: the amcheck extension is not installed with this server".into(),
        ));
    };
    // pg_amcheck checks tables with verify_heapam, which amcheck has since 1.3
    // (PostgreSQL 14); PostgreSQL 13's amcheck 1.2 would make it fail on every table.
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts < vec![1, 3] {
        return Ok(Ok(format!(
            "skipped: amcheck {version} of PostgreSQL {} has no table check (pg_amcheck needs 1.3, PostgreSQL 14)",
            cluster.major
        )));
    }
    let Ok(program) = crate::pg::server::tool(
        ctx,
        "pg_amcheck",
        crate::pg::tools::Want::Client(cluster.major),
    )
    .map(|f| f.path) else {
        return Ok(Ok("skipped: pg_amcheck is not installed".into()));
    };
    let args = vec![
        "--all".to_string(),
        "--install-missing".into(),
        "--no-strict-names".into(),
        format!("--host={}", cluster.dir.display()),
        format!("--port={}", cluster.port),
        "--username=postgres".into(),
    ];
    // What pg_amcheck found goes to its standard output: the first lines of it are the
    // check's message.
    let mut process = PgProcess::spawn(&program, &args, ctx, |_| {}, false, true)?;
    let mut found = Vec::new();
    let mut out = process.stdout();
    let _ = tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(&mut out, 64 << 10),
        &mut found,
    )
    .await;
    // The rest is read and dropped, or pg_amcheck would wait to write it.
    let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
    drop(out);
    let found = String::from_utf8_lossy(&found);
    Ok(match process.finish(ctx).await {
        Ok(()) => Ok("every table and B-tree index of every database".into()),
        Err(e) if e.kind == ErrorKind::Cancelled => return Err(e),
        Err(e) => {
            let first: Vec<&str> = found
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(5)
                .collect();
            Err(if first.is_empty() {
                e.message
            } else {
                format!(
                    "{}: {}",
                    e.message.trim_end_matches([':', ' ']),
                    first.join(" | ")
                )
            })
        }
    })
}
