//! `migrate`: sqlx's migrator on a directory, so the bookkeeping is sqlx-cli's own
//! `_sqlx_migrations` table: each migration and its row in one transaction, under an
//! advisory lock (sqlx's). `status` and the preview only read.

use super::probe::{Findings, Probe, TargetView, Unread};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::pg::conn::ConnInfo;
use crate::pg::server::classify;
use crate::pg::server::connect;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::migrate::{Migrate as _, MigrateError, Migration, Migrator};
use sqlx::{Connection, PgConnection};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrateAction {
    /// Apply pending migrations.
    #[default]
    Up,
    /// Report applied and pending migrations; change nothing.
    Status,
    /// Undo the last `steps` applied migrations (needs `.down.sql` files).
    Revert,
}

/// `migrate`: sqlx migrations from a directory (compatible with sqlx-cli's
/// `_sqlx_migrations` table); each migration and its bookkeeping row in one transaction,
/// under an advisory lock.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateParams {
    pub target: String,
    /// Database on the target's server (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub action: MigrateAction,
    /// Directory of migrations, relative to the plan file.
    #[serde(default = "default_migrations")]
    pub dir: String,
    /// `revert` only: how many migrations to undo (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}

fn default_migrations() -> String {
    "migrations".into()
}

pub struct Migrate;

impl StepType for Migrate {
    const NAME: &'static str = "migrate";
    type Params = MigrateParams;
    const OUTPUTS: &'static [&'static str] = &["applied", "pending", "reverted"];

    fn target(p: &MigrateParams) -> Option<&str> {
        Some(&p.target)
    }

    fn writes_target(p: &MigrateParams) -> bool {
        p.action != MigrateAction::Status
    }

    /// Applying or reverting migrations changes the schema, and a migration may drop or
    /// rewrite data whatever it is called: on a protected target it needs `--confirm`. The
    /// preview lists each pending file's statements with the destructive ones marked.
    fn destructive(p: &MigrateParams, _: &Path, _: bool) -> bool {
        p.action != MigrateAction::Status
    }

    fn describe(p: &MigrateParams) -> String {
        describe(p)
    }

    fn reads(_: &MigrateParams) -> Option<&'static str> {
        Some("the migration files and which the target has applied")
    }

    /// The migrations the step would apply or revert, read over a read-only session.
    fn probe<'a>(p: &'a MigrateParams, scope: Probe<'a>) -> impl Future<Output = Findings> + Send {
        preview(p, scope)
    }

    fn run(
        p: &MigrateParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

async fn preview(p: &MigrateParams, scope: Probe<'_>) -> Findings {
    let migrator = match load(&scope.base_dir.join(&p.dir)).await {
        Ok(m) => m,
        Err(e) => return vec![format!("migrations: {e}")].into(),
    };
    let all = names(&migrator);
    let mut created = None;
    let applied = match scope.target {
        TargetView::Ephemeral => Ok(Vec::new()),
        TargetView::Url(url) => match read_applied(url, p.database.as_deref()).await {
            // The plan creates the database before this step: nothing is applied there yet.
            Err(e) if e.contains("SQLSTATE 3D000") && scope.created_by.is_some() => {
                created = scope.created_by;
                Ok(Vec::new())
            }
            other => other,
        },
        TargetView::None => Err("the target is unknown".to_string()),
    };
    let mut findings = preview_of(p, applied, all, &migrator);
    if let Some(step) = created {
        findings.lines.insert(
            0,
            format!(
                "database `{}` does not exist yet: step `{step}` creates it, so every migration will be pending",
                p.database.as_deref().unwrap_or_default()
            ),
        );
    }
    findings
}

/// What the preview says given the migrations applied (or why they could not be read).
fn preview_of(
    p: &MigrateParams,
    applied: Result<Vec<i64>, String>,
    all: Vec<(i64, String)>,
    migrator: &Migrator,
) -> Findings {
    match (applied, p.action) {
        (Err(e), _) => {
            let unread = Unread::target(&p.target, e, "which migrations are pending is unknown");
            let mut findings = Findings::unread(unread);
            findings.lines.extend(
                all.into_iter()
                    .map(|(_, n)| format!("migration in {}: {n}", p.dir)),
            );
            findings
        }
        (Ok(mut applied), MigrateAction::Revert) => {
            applied.reverse();
            let n = p.steps.unwrap_or(1) as usize;
            let names: Vec<String> = applied
                .iter()
                .take(n)
                .filter_map(|v| all.iter().find(|(a, _)| a == v).map(|(_, n)| n.clone()))
                .collect();
            if names.is_empty() {
                vec!["nothing to revert".into()].into()
            } else {
                names
                    .into_iter()
                    .map(|n| format!("will revert: {n}"))
                    .collect::<Vec<_>>()
                    .into()
            }
        }
        (Ok(applied), action) => {
            let pending: Vec<&Migration> = migrator
                .iter()
                .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
                .collect();
            if pending.is_empty() {
                return vec!["no pending migrations".into()].into();
            }
            let mut lines = Vec::new();
            for m in pending {
                lines.push(format!("pending: {}", name(m)));
                // `status` only reports: what would run is shown where it will run.
                if action == MigrateAction::Up {
                    lines.extend(crate::pg::statements::preview_lines(m.sql.as_str()));
                }
            }
            lines.into()
        }
    }
}

pub fn describe(p: &MigrateParams) -> String {
    let db = p
        .database
        .as_deref()
        .map(|d| format!(" database `{d}` on"))
        .unwrap_or_default();
    match p.action {
        MigrateAction::Up => format!(
            "apply pending migrations from {} to{db} target `{}`",
            p.dir, p.target
        ),
        MigrateAction::Status => format!(
            "report migration status of{db} target `{}` against {} (read only)",
            p.target, p.dir
        ),
        MigrateAction::Revert => format!(
            "revert the last {} applied migration(s) on{db} target `{}` using {}",
            p.steps.unwrap_or(1),
            p.target,
            p.dir
        ),
    }
}

pub async fn load(dir: &Path) -> Result<Migrator, StepError> {
    if !dir.is_dir() {
        return Err(StepError::permanent(format!(
            "migrations directory {} does not exist",
            dir.display()
        )));
    }
    Migrator::new(dir.to_path_buf()).await.map_err(|e| {
        StepError::permanent(format!("cannot read migrations in {}: {e}", dir.display()))
    })
}

/// `20240101120000_create_users` for each up migration, in order.
pub fn names(migrator: &Migrator) -> Vec<(i64, String)> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, name(m)))
        .collect()
}

/// A migration as its file is named: `VERSION_description`.
fn name(m: &Migration) -> String {
    format!("{}_{}", m.version, m.description.replace(' ', "_"))
}

/// Versions recorded as applied, without creating anything.
pub async fn applied(conn: &mut PgConnection) -> Result<Vec<i64>, StepError> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(&e, "cannot inspect the migrations table"))?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
        .fetch_all(conn)
        .await
        .map_err(|e| classify(&e, "cannot read the migrations table"))
}

pub fn migrate_error(e: MigrateError) -> StepError {
    match e {
        MigrateError::Execute(e) => classify(&e, "migration failed"),
        MigrateError::ExecuteMigration(e, version) => {
            classify(&e, &format!("migration {version} failed (rolled back)"))
        }
        other => StepError::permanent(format!("migration failed: {other}")),
    }
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn up(conn: &mut PgConnection, migrator: &Migrator) -> Result<Vec<String>, StepError> {
    let before = applied(conn).await?;
    // `run_direct` is sqlx's entry point for a plain connection: `run` needs an `Acquire`
    // bound that cannot be proven for all lifetimes inside a boxed `Send` future.
    migrator
        .run_direct(None, conn, false)
        .await
        .map_err(migrate_error)?;
    Ok(names(migrator)
        .into_iter()
        .filter(|(v, _)| !before.contains(v))
        .map(|(_, n)| n)
        .collect())
}

/// Reverts applied migrations newer than `target`, newest first, under the migration lock;
/// what `Migrator::undo` does, on a plain connection (see `up`).
async fn undo(
    conn: &mut PgConnection,
    migrator: &Migrator,
    target: i64,
) -> Result<(), MigrateError> {
    const TABLE: &str = "_sqlx_migrations";
    conn.lock().await?;
    let result = async {
        conn.ensure_migrations_table(TABLE).await?;
        if let Some(v) = conn.dirty_version(TABLE).await? {
            return Err(MigrateError::Dirty(v));
        }
        let applied: Vec<i64> = conn
            .list_applied_migrations(TABLE)
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect();
        for m in migrator.iter().rev().filter(|m| {
            m.migration_type.is_down_migration()
                && applied.contains(&m.version)
                && m.version > target
        }) {
            conn.revert(TABLE, m).await?;
        }
        Ok(())
    }
    .await;
    conn.unlock().await?;
    result
}

pub async fn run(p: &MigrateParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let migrator = load(&ctx.resolve(&p.dir)).await?;
    let mut server = connect(
        ctx.target_url(&p.target)?,
        p.database.as_deref(),
        &format!("target `{}`", p.target),
    )
    .await?;
    let all = names(&migrator);
    let mut outputs = Outputs::new();
    let say = |line: String| ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    match p.action {
        MigrateAction::Up => {
            let done = up(&mut server.conn, &migrator).await?;
            done.iter().for_each(|n| say(format!("applied {n}")));
            if done.is_empty() {
                say("nothing to apply".into());
            }
            outputs.insert("applied".into(), done.join(" "));
            outputs.insert("pending".into(), String::new());
        }
        MigrateAction::Status => {
            let applied = applied(&mut server.conn).await?;
            let (done, pending): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|(v, _)| applied.contains(v));
            done.iter().for_each(|(_, n)| say(format!("applied  {n}")));
            pending
                .iter()
                .for_each(|(_, n)| say(format!("pending  {n}")));
            outputs.insert(
                "applied".into(),
                done.into_iter()
                    .map(|(_, n)| n)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            outputs.insert(
                "pending".into(),
                pending
                    .into_iter()
                    .map(|(_, n)| n)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        MigrateAction::Revert => {
            let mut applied = applied(&mut server.conn).await?;
            applied.reverse();
            let steps = p.steps.unwrap_or(1) as usize;
            let target = applied.get(steps).copied().unwrap_or(0);
            for version in applied.iter().take(steps) {
                let reversible = migrator
                    .iter()
                    .any(|m| m.version == *version && m.migration_type.is_down_migration());
                if !reversible {
                    return Err(StepError::permanent(format!(
                        "migration {version} has no down migration ({version}_….down.sql), so it cannot be reverted; nothing was reverted"
                    )));
                }
            }
            let reverted: Vec<String> = all
                .iter()
                .filter(|(v, _)| applied.iter().take(steps).any(|a| a == v))
                .map(|(_, n)| n.clone())
                .collect();
            undo(&mut server.conn, &migrator, target)
                .await
                .map_err(migrate_error)?;
            reverted.iter().for_each(|n| say(format!("reverted {n}")));
            outputs.insert("reverted".into(), reverted.join(" "));
        }
    }
    let _ = server.conn.close().await;
    Ok(outputs)
}

/// Applied migration versions, over a session that cannot write.
async fn read_applied(url: &str, database: Option<&str>) -> Result<Vec<i64>, String> {
    let info = ConnInfo::parse(url).map_err(|e| e.to_string())?;
    let info = match database {
        Some(db) => info.with_database(db),
        None => info,
    };
    let work = async {
        let mut conn = info
            .connect_to("the database")
            .await
            .map_err(|e| e.message)?;
        sqlx::raw_sql("set default_transaction_read_only = on")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let applied = applied(&mut conn).await.map_err(|e| e.message)?;
        let _ = conn.close().await;
        Ok(applied)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "the server did not answer within 10s".to_string())?
}
