//! `reset`: end the database's other sessions, drop and recreate it, apply migrations,
//! apply seeds — a known state for development and CI databases.

use super::probe::{Findings, Probe};
use super::seed::SeedEnvironment;
use super::step_type::StepType;
use super::{migrate, seed};
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::pg::database::quote_ident;
use crate::pg::server::classify;
use crate::pg::server::connect;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use std::future::Future;
use std::path::Path;

/// `reset`: end other sessions, drop and recreate a database, run migrations, run seeds.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetParams {
    pub target: String,
    /// The database to drop and recreate.
    pub database: String,
    /// Migrations directory to apply afterwards, relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<String>,
    /// Seeds directory to apply afterwards, relative to the plan file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<String>,
    /// Which seed set to apply (default `development`).
    #[serde(default = "default_environment")]
    pub environment: SeedEnvironment,
}

fn default_environment() -> SeedEnvironment {
    SeedEnvironment::Development
}

pub struct Reset;

impl StepType for Reset {
    const NAME: &'static str = "reset";
    type Params = ResetParams;
    const OUTPUTS: &'static [&'static str] = &["database", "migrations", "seeds"];

    fn target(p: &ResetParams) -> Option<&str> {
        Some(&p.target)
    }

    fn writes_target(_: &ResetParams) -> bool {
        true
    }

    fn destructive(_: &ResetParams, _: &Path, _: bool) -> bool {
        true
    }

    fn describe(p: &ResetParams) -> String {
        describe(p)
    }

    fn reads(_: &ResetParams) -> Option<&'static str> {
        Some("the migration and seed files")
    }

    async fn probe<'a>(p: &'a ResetParams, scope: Probe<'a>) -> Findings {
        details(p, scope.base_dir).await.into()
    }

    fn run(
        p: &ResetParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// The statements a reset runs, exactly, for the preview and for the run.
pub fn statements(database: &str) -> Vec<String> {
    let literal = database.replace('\'', "''");
    let ident = quote_ident(database);
    vec![
        format!(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{literal}' and pid <> pg_backend_pid()"
        ),
        format!("drop database if exists {ident} with (force)"),
        format!("create database {ident}"),
    ]
}

pub fn describe(p: &ResetParams) -> String {
    let mut s = format!(
        "drop and recreate database `{}` on target `{}`",
        p.database, p.target
    );
    if let Some(m) = &p.migrations {
        s.push_str(&format!(", apply the migrations in {m}"));
    }
    if let Some(d) = &p.seeds {
        s.push_str(&format!(
            ", apply the `{}` seeds from {d}",
            p.environment.as_str()
        ));
    }
    s
}

/// What a reset will do, line by line: its SQL, then the migrations and seed files by name.
pub async fn details(p: &ResetParams, base_dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = statements(&p.database)
        .into_iter()
        .map(|s| format!("sql: {s};"))
        .collect();
    if let Some(dir) = &p.migrations {
        match migrate::load(&base_dir.join(dir)).await {
            Ok(m) => lines.extend(
                migrate::names(&m)
                    .into_iter()
                    .map(|(_, n)| format!("migration: {n}")),
            ),
            Err(e) => lines.push(format!("migrations: {e}")),
        }
    }
    if let Some(dir) = &p.seeds {
        match seed::files(&base_dir.join(dir), p.environment) {
            Ok(files) => lines.extend(
                seed::file_names(&files)
                    .into_iter()
                    .map(|n| format!("seed: {n}")),
            ),
            Err(e) => lines.push(format!("seeds: {e}")),
        }
    }
    lines
}

pub async fn run(p: &ResetParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    // Read everything local first: a typo in a path must fail before the drop, not after.
    let migrator = match &p.migrations {
        Some(dir) => Some(migrate::load(&ctx.resolve(dir)).await?),
        None => None,
    };
    let seed_files = match &p.seeds {
        Some(dir) => Some(seed::files(&ctx.resolve(dir), p.environment)?),
        None => None,
    };
    let url = ctx.target_url(&p.target)?;
    // Connect to another database than the one being dropped.
    let mut server = connect(url, None, &format!("target `{}`", p.target)).await?;
    if server.database == p.database {
        let _ = server.conn.close().await;
        server = connect(url, Some("postgres"), &format!("target `{}`", p.target)).await?;
    }
    let say = |line: String| ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    for statement in statements(&p.database) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut server.conn)
            .await
            .map_err(|e| classify(&e, &format!("reset of `{}` failed", p.database)))?;
        say(format!("{statement};"));
    }
    let _ = server.conn.close().await;
    let mut outputs = Outputs::new();
    outputs.insert("database".into(), p.database.clone());
    let mut db = server
        .info
        .with_database(&p.database)
        .connect_to("the new database")
        .await?;
    if let Some(migrator) = &migrator {
        let applied = migrate::up(&mut db, migrator).await?;
        applied.iter().for_each(|n| say(format!("applied {n}")));
        outputs.insert("migrations".into(), applied.join(" "));
    }
    if let Some(files) = &seed_files {
        seed::apply(&mut db, files, p.environment, true, say).await?;
        outputs.insert("seeds".into(), seed::file_names(files).join(" "));
    }
    let _ = db.close().await;
    Ok(outputs)
}
