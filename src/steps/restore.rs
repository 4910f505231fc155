//! `restore`: a backup into a database (the namespace) on a target.

use super::{StepContext, StepError};
use crate::pg::restore;
use crate::pg::server::connect;
use crate::plan::model::RestoreParams;
use crate::repo::AnyStore;
use crate::repo::manifest::Manifest;
use crate::repo::{self, BackupStore};
use crate::run::events::Outputs;
use sqlx::Connection;
use std::time::Instant;

pub fn describe(p: &RestoreParams) -> String {
    let which = if p.backup == "latest" {
        match &p.source_database {
            Some(db) => format!("the latest backup of `{db}`"),
            None => "the latest backup".to_string(),
        }
    } else {
        format!("backup {}", p.backup)
    };
    let mut s = format!(
        "restore {which} from repository `{}` into database `{}` on target `{}`",
        p.repository, p.into.database, p.into.target
    );
    if p.overwrite {
        s.push_str(", replacing the database if it exists");
    }
    if let Some(j) = p.jobs {
        s.push_str(&format!(", {j} jobs"));
    }
    s
}

/// Finds the manifest of `backup` (an id or `latest`).
pub async fn resolve(
    store: &AnyStore,
    backup: &str,
    database: Option<&str>,
    repository: &str,
) -> Result<Manifest, StepError> {
    if backup == "latest" {
        return repo::latest(store, database)
            .await
            .map_err(|e| super::io_error(&format!("cannot list repository `{repository}`"), &e))?
            .ok_or_else(|| {
                StepError::permanent(format!(
                    "repository `{repository}` holds no published backup{}",
                    database
                        .map(|d| format!(" of database `{d}`"))
                        .unwrap_or_default()
                ))
            });
    }
    store
        .manifest(backup)
        .await
        .map_err(|e| StepError::permanent(e.to_string()))
}

pub async fn run(p: &RestoreParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let store = ctx.repository(&p.repository).await?;
    let mut manifest = resolve(
        &store,
        &p.backup,
        p.source_database.as_deref(),
        &p.repository,
    )
    .await?;
    // Before the target is touched: without the right key there is nothing to restore.
    ctx.unseal(&mut manifest)?;
    let mut server = connect(
        ctx.target_url(&p.into.target)?,
        None,
        &format!("target `{}`", p.into.target),
    )
    .await?;
    restore::prepare_database(
        &mut server.conn,
        &server.info,
        &p.into.database,
        p.overwrite,
        &p.into.target,
    )
    .await?;
    let _ = server.conn.close().await;
    let clock = Instant::now();
    let into = server.info.with_database(&p.into.database);
    restore::restore(
        ctx,
        &store,
        &manifest,
        &into,
        server.major,
        p.jobs,
        p.no_owner,
    )
    .await?;
    let mut outputs = Outputs::new();
    outputs.insert("backup_id".into(), manifest.backup_id.clone());
    outputs.insert("database".into(), p.into.database.clone());
    outputs.insert(
        "duration_ms".into(),
        clock.elapsed().as_millis().to_string(),
    );
    Ok(outputs)
}
