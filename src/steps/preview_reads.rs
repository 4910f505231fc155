//! What a preview may read to say what *will* happen rather than what might: the
//! migrations a `migrate` would apply (over a read-only session), the backup `latest`
//! stands for, the exact SQL and files of a `reset`. Nothing here writes anything.

use super::{migrate, prune, reset, restore, seed};
use crate::pg::conn::ConnInfo;
use crate::plan::model::{MigrateAction, StepKind};
use sqlx::Connection;
use std::path::Path;
use std::time::Duration;

/// Where a step's target is, as far as a preview knows.
pub enum TargetView<'a> {
    /// A server to read from.
    Url(&'a str),
    /// An ephemeral cluster: it does not exist before `apply`, and starts empty.
    Ephemeral,
    /// Not applicable or unknown.
    None,
}

pub async fn details(
    kind: &StepKind,
    base_dir: &Path,
    target: TargetView<'_>,
    repo: Option<&crate::plan::model::Repository>,
) -> Vec<String> {
    match kind {
        StepKind::Reset(p) => reset::details(p, base_dir).await,
        StepKind::Migrate(p) => {
            let migrator = match migrate::load(&base_dir.join(&p.dir)).await {
                Ok(m) => m,
                Err(e) => return vec![format!("migrations: {e}")],
            };
            let all = migrate::names(&migrator);
            let applied = match target {
                TargetView::Ephemeral => Ok(Vec::new()),
                TargetView::Url(url) => read_applied(url, p.database.as_deref()).await,
                TargetView::None => Err("the target is unknown".to_string()),
            };
            match (applied, p.action) {
                (Err(e), _) => {
                    let mut lines =
                        vec![format!("could not read which migrations are applied: {e}")];
                    lines.extend(
                        all.into_iter()
                            .map(|(_, n)| format!("migration in {}: {n}", p.dir)),
                    );
                    lines
                }
                (Ok(applied), MigrateAction::Revert) => {
                    let mut applied = applied;
                    applied.reverse();
                    let n = p.steps.unwrap_or(1) as usize;
                    let names: Vec<String> = applied
                        .iter()
                        .take(n)
                        .filter_map(|v| all.iter().find(|(a, _)| a == v).map(|(_, n)| n.clone()))
                        .collect();
                    if names.is_empty() {
                        vec!["nothing to revert".into()]
                    } else {
                        names
                            .into_iter()
                            .map(|n| format!("will revert: {n}"))
                            .collect()
                    }
                }
                (Ok(applied), _) => {
                    let pending: Vec<String> = all
                        .into_iter()
                        .filter(|(v, _)| !applied.contains(v))
                        .map(|(_, n)| n)
                        .collect();
                    if pending.is_empty() {
                        vec!["no pending migrations".into()]
                    } else {
                        pending
                            .into_iter()
                            .map(|n| format!("pending: {n}"))
                            .collect()
                    }
                }
            }
        }
        StepKind::Seed(p) => match seed::files(&base_dir.join(&p.dir), p.environment) {
            Ok(files) => seed::file_names(&files)
                .into_iter()
                .map(|n| format!("seed file: {n}"))
                .collect(),
            Err(e) => vec![e.message],
        },
        StepKind::Restore(p) if p.backup == "latest" => {
            latest(repo, base_dir, &p.repository, p.source_database.as_deref()).await
        }
        StepKind::Verify(p) if p.backup == "latest" => {
            latest(repo, base_dir, &p.repository, None).await
        }
        StepKind::Backup(_) => repo.map_or_else(Vec::new, |r| destination(r, base_dir)),
        StepKind::Prune(p) => {
            let Some(store) = open(repo, base_dir).await else {
                return vec!["the repository cannot be read before apply".into()];
            };
            match crate::repo::prune::decide(&store, &prune::policy(p)).await {
                Ok(decisions) if decisions.is_empty() => {
                    vec!["the repository holds no backup to consider".into()]
                }
                Ok(decisions) => decisions.iter().map(crate::repo::prune::describe).collect(),
                Err(e) => vec![e],
            }
        }
        _ => Vec::new(),
    }
}

/// What [`details`] would read for a step, for `plan --untrusted` (which reads nothing) and
/// for probes that timed out; `None` when it reads nothing.
pub fn skipped(kind: &StepKind) -> Option<&'static str> {
    match kind {
        StepKind::Reset(_) => Some("the migration and seed files"),
        StepKind::Migrate(_) => Some("the migration files and which the target has applied"),
        StepKind::Seed(_) => Some("the seed files"),
        StepKind::Restore(p) if p.backup == "latest" => Some("which backup `latest` is"),
        StepKind::Verify(p) if p.backup == "latest" => Some("which backup `latest` is"),
        StepKind::Backup(_) => Some("the repository's settings and recipients"),
        StepKind::Prune(_) => Some("which backups the policy would delete"),
        _ => None,
    }
}

/// Where a backup goes and how it is protected, with the recipients read now: a reviewer
/// sees which keys will be able to read the backups, and a broken recipients file shows
/// up before the night it is needed.
fn destination(repo: &crate::plan::model::Repository, base_dir: &Path) -> Vec<String> {
    let mut lines = vec![format!("destination: {}", repo.url)];
    if repo.url.starts_with("s3://") {
        let options = repo.s3_options();
        let mut s = format!(
            "S3 multipart upload, {} MiB parts",
            options
                .part_size
                .unwrap_or(crate::repo::s3::DEFAULT_PART_SIZE)
                .max(5 << 20)
                >> 20
        );
        if let Some(sse) = &options.sse {
            s.push_str(&format!(
                ", server-side encryption {}",
                sse.algorithm.as_str()
            ));
        }
        lines.push(s);
    }
    match &repo.encryption {
        None => lines.push("client-side encryption: none".into()),
        Some(config) => match config.recipients(base_dir) {
            Ok(r) => lines.push(format!(
                "client-side encryption: age, to {}",
                r.texts().join(", ")
            )),
            Err(e) => lines.push(format!("client-side encryption: cannot be set up: {e}")),
        },
    }
    lines
}

async fn open(
    repo: Option<&crate::plan::model::Repository>,
    base_dir: &Path,
) -> Option<crate::repo::AnyStore> {
    let repo = repo?;
    crate::repo::open(&repo.url, base_dir, &repo.s3_options())
        .await
        .ok()
}

/// Which backup `latest` stands for right now.
async fn latest(
    repo: Option<&crate::plan::model::Repository>,
    base_dir: &Path,
    repository: &str,
    database: Option<&str>,
) -> Vec<String> {
    let Some(store) = open(repo, base_dir).await else {
        return Vec::new();
    };
    match restore::resolve(&store, "latest", database, repository).await {
        Ok(checked) => {
            let m = &checked.manifest;
            let mut lines = vec![format!(
                "latest is {} (database {}, created {}, {} bytes)",
                m.backup_id,
                m.database,
                m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                m.total_bytes()
            )];
            if let Some(e) = &m.encryption {
                lines.push(format!(
                    "encrypted with age to {}: apply needs --identity FILE or {}",
                    e.recipients.join(", "),
                    crate::repo::crypto::IDENTITY_ENV
                ));
            }
            lines
        }
        Err(e) => vec![format!("latest: {}", e.message)],
    }
}

/// Applied migration versions, over a session that cannot write.
async fn read_applied(url: &str, database: Option<&str>) -> Result<Vec<i64>, String> {
    let info = ConnInfo::parse(url)?;
    let info = match database {
        Some(db) => info.with_database(db),
        None => info,
    };
    let work = async {
        let mut conn = info
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        sqlx::raw_sql("set default_transaction_read_only = on")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let applied = migrate::applied(&mut conn).await.map_err(|e| e.message)?;
        let _ = conn.close().await;
        Ok(applied)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "the server did not answer within 10s".to_string())?
}
