//! `export`: a table's or a query's rows as CSV or JSON Lines (see [`crate::pg::rows`]),
//! compressed and, like a backup, encrypted — into a repository, where the export is
//! listed, copied, pruned and checked like a backup (`format: rows`), or into a file.

use super::probe::{Findings, Probe};
use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use crate::pg::rows::{self, RowsFormat, Source};
use crate::pg::server::connect;
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::compression::Compression;
use crate::repo::manifest::{
    DumpFormat, DumpOptions, FingerprintMode, MANIFEST_VERSION_ROWS, Manifest, RowsExport,
    TableFingerprint,
};
use crate::repo::{BackupStore, Store};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Instant;

/// `export`: writes the rows of `table` (or of `query`) as CSV (RFC 4180, a header line)
/// or JSON Lines, compressed, into a repository (encrypted as it encrypts backups) or a
/// file (encrypted to `encryption`'s recipients when given). Read-only on the target.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Database (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A table or view: `orders`, `sales.orders`, `'"Odd Name"'`. Every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Or a query (one statement; it runs in a read-only transaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `csv` (default) or `jsonl`.
    #[serde(default)]
    pub format: RowsFormat,
    #[serde(default)]
    pub compression: Compression,
    /// Into this repository (declared under `repositories`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// …or into this file (relative to the plan), written beside and renamed when complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// With `file`: age recipients to encrypt it to, as a repository's `encryption`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::plan::model::EncryptionConfig>,
}

pub struct Export;

impl StepType for Export {
    const NAME: &'static str = "export";
    type Params = ExportParams;
    const OUTPUTS: &'static [&'static str] = &["rows", "bytes", "backup_id", "file", "sha256"];

    fn target(p: &ExportParams) -> Option<&str> {
        Some(&p.target)
    }

    fn repository(p: &ExportParams) -> Option<&str> {
        p.repository.as_deref()
    }

    fn writes_repository(p: &ExportParams) -> bool {
        p.repository.is_some()
    }

    fn check(p: &ExportParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&p.table, &p.query) {
            (Some(_), Some(_)) => problems.push(
                Problem::new(&["query"], "give `table` or `query`, not both").help(
                    "`table` exports every row of a table or view; `query` what a SELECT returns",
                ),
            ),
            (None, None) => problems.push(
                Problem::new(&["table"], "an export needs `table` or `query`").help(
                    "`table: orders` exports every row; `query: \"select …\"` what it returns",
                ),
            ),
            _ => {}
        }
        match (&p.repository, &p.file) {
            (Some(_), Some(_)) => problems.push(Problem::new(
                &["file"],
                "give `repository` or `file`, not both",
            )),
            (None, None) => problems.push(
                Problem::new(&["repository"], "an export needs `repository` or `file`").help(
                    "`repository: NAME` keeps it with the backups; `file: PATH` writes a file",
                ),
            ),
            _ => {}
        }
        if p.encryption.is_some() && p.file.is_none() {
            problems.push(
                Problem::new(
                    &["encryption"],
                    "`encryption` is for a `file`; a repository encrypts as its own `encryption` says",
                )
                .help("remove it, or declare `encryption` on the repository"),
            );
        }
        problems
    }

    fn describe(p: &ExportParams) -> String {
        let what = match (&p.table, &p.query) {
            (Some(t), _) => format!("the rows of table {t}"),
            _ => "the rows of a query".into(),
        };
        let format = match p.format {
            RowsFormat::Csv => "CSV",
            RowsFormat::Jsonl => "JSON Lines",
        };
        let to = match (&p.repository, &p.file) {
            (Some(r), _) => format!("repository `{r}`"),
            (_, Some(f)) => format!("file {f}"),
            _ => "nowhere".into(),
        };
        format!(
            "export {what} on target `{}` as {format} ({}) into {to}",
            p.target, p.compression
        )
    }

    fn reads(_: &ExportParams) -> Option<&'static str> {
        Some("how many rows the table holds")
    }

    async fn probe<'a>(p: &'a ExportParams, scope: Probe<'a>) -> Findings {
        let Some(table) = &p.table else {
            return Findings::default();
        };
        super::import::estimate(&scope, &p.target, p.database.as_deref(), table)
            .await
            .map(|line| Findings::from(vec![line]))
            .unwrap_or_else(Findings::unread)
    }

    fn run(
        p: &ExportParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

async fn run(p: &ExportParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let created_at = Utc::now();
    let clock = Instant::now();
    let recipients = match (&p.repository, &p.encryption) {
        (Some(r), _) => ctx.recipients(r)?,
        (None, Some(config)) => Some(
            crate::repo::crypto::Recipients::of(config, &ctx.base_dir)
                .map_err(|e| StepError::permanent(format!("`encryption`: {e}")))?,
        ),
        (None, None) => None,
    };
    let mut server = connect(
        ctx.target_url(&p.target)?,
        p.database.as_deref(),
        &format!("target `{}`", p.target),
    )
    .await?;
    let source = match (&p.table, &p.query) {
        (Some(t), _) => Source::Table(t.clone()),
        (None, Some(q)) => Source::Query(q.clone()),
        (None, None) => return Err(StepError::permanent("an export needs `table` or `query`")),
    };
    let mut name = format!("rows{}{}", p.format.extension(), p.compression.extension());
    if recipients.is_some() {
        name.push_str(crate::repo::crypto::EXTENSION);
    }
    let backup_id = format!(
        "{}-{}-rows-{:04x}",
        created_at.format("%Y%m%dT%H%M%SZ"),
        super::backup::id_safe(&server.database),
        fastrand::u16(..)
    );
    let (store, sink) = match (&p.repository, &p.file) {
        (Some(r), _) => {
            let store = ctx.repository(r).await?;
            let sink = store
                .create(&backup_id, &name)
                .await
                .map_err(|e| crate::exec::io_error("writing the export", &e))?;
            (Some(store), sink)
        }
        (None, Some(f)) => {
            let path = ctx.resolve(f);
            let (dir, file) = match (path.parent(), path.file_name()) {
                (Some(d), Some(f)) => (d.to_path_buf(), f.to_string_lossy().into_owned()),
                _ => return Err(StepError::permanent(format!("`file: {f}` names no file"))),
            };
            let local = crate::repo::local::LocalStore::new(dir);
            let sink = local
                .create(&file)
                .await
                .map_err(|e| crate::exec::io_error(&format!("writing {}", path.display()), &e))?;
            (None, sink)
        }
        (None, None) => {
            return Err(StepError::permanent(
                "an export needs `repository` or `file`",
            ));
        }
    };
    let database = server.database.clone();
    let (reader, counter, described, columns) =
        rows::copy_out(&mut server.conn, &source, p.format, &database).await?;
    let read = crate::counting::Counter::new();
    let _meter = crate::exec::progress::Meter::start(
        &ctx.events,
        &ctx.step_id,
        "export",
        read.clone(),
        None,
    );
    let stored = tokio::select! {
        r = crate::repo::pipeline::store_into(
            sink,
            &name,
            crate::counting::Tap::new(reader, read),
            p.compression,
            2,
            recipients.as_ref(),
            None,
        ) => r,
        _ = ctx.cancel.cancelled() => Err(std::io::Error::other("cancelled")),
    };
    let entry = match stored {
        Ok(entry) => entry,
        Err(e) => {
            if let Some(store) = &store {
                let _ = store.discard(&backup_id).await;
            }
            if ctx.cancel.is_cancelled() {
                return Err(StepError::cancelled());
            }
            return Err(StepError::transient(format!("exporting {described}: {e}")));
        }
    };
    let _ = sqlx::raw_sql("commit").execute(&mut server.conn).await;
    let rows = counter.lock().expect("not poisoned").rows();
    let mut outputs = Outputs::new();
    outputs.insert("rows".into(), rows.to_string());
    outputs.insert("bytes".into(), entry.size.to_string());
    outputs.insert("sha256".into(), entry.sha256.clone());
    match (store, &p.file) {
        (Some(store), _) => {
            let mut manifest = Manifest {
                manifest_version: MANIFEST_VERSION_ROWS,
                backup_id: backup_id.clone(),
                created_at,
                finished_at: Utc::now(),
                duration_ms: clock.elapsed().as_millis() as u64,
                database: database.clone(),
                server_version: server.version.clone(),
                pg_dump_version: String::new(),
                format: DumpFormat::Rows,
                compression: p.compression,
                options: DumpOptions::default(),
                files: vec![entry],
                fingerprint: FingerprintMode::Counts,
                fingerprints: [(
                    described.clone(),
                    TableFingerprint {
                        rows: rows as i64,
                        hash: None,
                    },
                )]
                .into_iter()
                .collect(),
                opsrunner_version: env!("CARGO_PKG_VERSION").to_string(),
                encryption: None,
                sealed: None,
                base: None,
                rows: Some(RowsExport {
                    format: p.format,
                    source: described,
                    columns,
                    rows,
                }),
            };
            super::backup::seal_and_publish(&store, &mut manifest, recipients.as_ref()).await?;
            outputs.insert("backup_id".into(), backup_id);
        }
        (None, Some(f)) => {
            outputs.insert("file".into(), ctx.resolve(f).display().to_string());
        }
        (None, None) => {}
    }
    Ok(outputs)
}
