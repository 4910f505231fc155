//! `import`: loads rows written by an `export` step (or any CSV with a header, or JSON
//! Lines) into a table, in one transaction: all rows or none (see [`crate::pg::rows`]).

use super::probe::{Findings, Probe, TargetView, Unread};
use super::step_type::StepType;
use crate::exec::events::Outputs;
use crate::exec::{StepContext, StepError};
use crate::pg::rows::{self, RowsFormat};
use crate::pg::server::connect;
use crate::plan::step_params::{CheckScope, Problem};
use crate::repo::listing;
use crate::repo::manifest::{DumpFormat, Manifest};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// `import`: loads rows into `table` from an export in a repository (`backup`: its id, or
/// `latest`, the newest export there) or from a file (CSV with a header line, or JSON
/// Lines; compressed with zstd or gzip, age-encrypted — found from its bytes). One
/// transaction: all rows or none; with `truncate`, the table's rows are replaced.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Name of a target declared under `targets`.
    pub target: String,
    /// Database (default: the one in the target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The table to load into: `orders`, `sales.orders`, `'"Odd Name"'`.
    pub table: String,
    /// From an export in this repository…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// …its id, or `latest` (default): the newest export there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// …or from this file (relative to the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A file's format; default from its name (`.csv…`, `.jsonl…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RowsFormat>,
    /// Empty the table first, in the same transaction (its rows are replaced).
    #[serde(default)]
    pub truncate: bool,
}

pub struct Import;

impl StepType for Import {
    const NAME: &'static str = "import";
    type Params = ImportParams;
    const OUTPUTS: &'static [&'static str] = &["rows", "backup_id"];

    fn target(p: &ImportParams) -> Option<&str> {
        Some(&p.target)
    }

    fn repository(p: &ImportParams) -> Option<&str> {
        p.repository.as_deref()
    }

    fn writes_target(_: &ImportParams) -> bool {
        true
    }

    /// It changes a table's rows: on a protected target, only with `--confirm`.
    fn destructive(_: &ImportParams, _: &std::path::Path, _: bool) -> bool {
        true
    }

    fn check(p: &ImportParams, _: &CheckScope<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&p.repository, &p.file) {
            (Some(_), Some(_)) => problems.push(Problem::new(
                &["file"],
                "give `repository` or `file`, not both",
            )),
            (None, None) => problems.push(
                Problem::new(&["repository"], "an import needs `repository` or `file`").help(
                    "`repository: NAME` (with `backup: ID`) loads an export; `file: PATH` a file",
                ),
            ),
            _ => {}
        }
        if p.backup.is_some() && p.repository.is_none() {
            problems.push(Problem::new(
                &["backup"],
                "`backup` names an export in a `repository`",
            ));
        }
        if let Some(file) = &p.file
            && p.format.is_none()
            && format_of(file).is_none()
        {
            problems.push(
                Problem::new(
                    &["format"],
                    format!("the format of `{file}` is not known from its name"),
                )
                .help("give `format: csv` or `format: jsonl`"),
            );
        }
        problems
    }

    fn describe(p: &ImportParams) -> String {
        let from = match (&p.repository, &p.file) {
            (Some(r), _) => format!(
                "export {} of repository `{r}`",
                p.backup.as_deref().unwrap_or("latest")
            ),
            (_, Some(f)) => format!("file {f}"),
            _ => "nowhere".into(),
        };
        format!(
            "load the rows of {from} into table {} on target `{}`{}",
            p.table,
            p.target,
            if p.truncate {
                ", replacing its rows (truncate)"
            } else {
                ""
            }
        )
    }

    fn reads(_: &ImportParams) -> Option<&'static str> {
        Some("the table and how many rows it and the export hold")
    }

    async fn probe<'a>(p: &'a ImportParams, scope: Probe<'a>) -> Findings {
        let mut lines = Vec::new();
        match estimate(&scope, &p.target, p.database.as_deref(), &p.table).await {
            Ok(line) => lines.push(line),
            Err(unread) => return Findings::unread(unread),
        }
        if let Some(later) = p
            .backup
            .as_deref()
            .filter(|b| b.starts_with("(known after "))
        {
            lines.push(format!("loads the export {later}"));
        } else if let Some(r) = &p.repository {
            const UNKNOWN: &str = "the export to load is unknown";
            let store = match scope.open(r, UNKNOWN).await {
                Ok(s) => s,
                Err(unread) => return Findings::unread(unread),
            };
            match chosen(&store, p.backup.as_deref()).await {
                Ok(m) => lines.push(match &m.rows {
                    Some(rows) => format!(
                        "loads export {} ({} of {}, {})",
                        m.backup_id,
                        crate::diag::count(rows.rows as usize, "row"),
                        rows.source,
                        crate::diag::bytes(m.total_bytes())
                    ),
                    None => format!(
                        "loads export {} ({}, encrypted: its rows are counted with the key)",
                        m.backup_id,
                        crate::diag::bytes(m.total_bytes())
                    ),
                }),
                Err(e) => return Findings::unread(Unread::repository(r, e, UNKNOWN)),
            }
        } else if let Some(f) = &p.file {
            let path = scope.base_dir.join(f);
            lines.push(match std::fs::metadata(&path) {
                Ok(m) => format!("loads {} ({})", path.display(), crate::diag::bytes(m.len())),
                Err(e) => format!("{}: {e}", path.display()),
            });
        }
        lines.into()
    }

    fn run(
        p: &ImportParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// The table's row estimate (`reltuples`), for previews of `export` and `import`.
pub async fn estimate(
    scope: &Probe<'_>,
    target: &str,
    database: Option<&str>,
    table: &str,
) -> Result<String, Unread> {
    const UNKNOWN: &str = "the table's size is unknown";
    let url = match scope.target {
        TargetView::Url(url) => *url,
        TargetView::Ephemeral => {
            return Ok(format!(
                "table {table} is in a throwaway cluster made by the run"
            ));
        }
        TargetView::None => return Err(Unread::target(target, "it is unknown", UNKNOWN)),
    };
    let mut server = connect(url, database, &format!("target `{target}`"))
        .await
        .map_err(|e| Unread::target(target, e.message, UNKNOWN))?;
    let (quoted, columns) = rows::table(&mut server.conn, table, &server.database.clone())
        .await
        .map_err(|e| Unread::target(target, e.message, UNKNOWN))?;
    let estimate: Option<f32> =
        sqlx::query_scalar("select reltuples from pg_class where oid = to_regclass($1)")
            .bind(&quoted)
            .fetch_optional(&mut server.conn)
            .await
            .ok()
            .flatten();
    Ok(format!(
        "table {quoted} of database `{}` ({}): {}",
        server.database,
        crate::diag::count(columns.len(), "column"),
        match estimate {
            Some(n) if n >= 0.0 => format!("about {} rows now", n.round() as u64),
            _ => "never analyzed: its row count is unknown".into(),
        }
    ))
}

/// A file's rows format from its name: `.csv`, `.jsonl` before any `.zst`, `.gz`, `.age`.
fn format_of(file: &str) -> Option<RowsFormat> {
    let mut name = file;
    for ext in [".age", ".zst", ".gz"] {
        name = name.strip_suffix(ext).unwrap_or(name);
    }
    if name.ends_with(".csv") {
        Some(RowsFormat::Csv)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Some(RowsFormat::Jsonl)
    } else {
        None
    }
}

/// The export `backup` names (or the newest export), checked.
async fn chosen(store: &crate::repo::AnyStore, backup: Option<&str>) -> Result<Manifest, String> {
    match backup {
        Some(id) if id != "latest" => {
            let checked = listing::manifest(store, id)
                .await
                .map_err(|e| e.to_string())?;
            if checked.manifest.format != DumpFormat::Rows {
                return Err(format!(
                    "{id} is a backup, not an export of rows: restore it with a `restore` step"
                ));
            }
            Ok(checked.manifest)
        }
        _ => listing::list(store)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .rev()
            .filter_map(|l| l.backup.ok())
            .map(|c| c.manifest)
            .find(|m| m.format == DumpFormat::Rows)
            .ok_or_else(|| format!("{} holds no export of rows", store.location())),
    }
}

type Input = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// A file's rows: decrypted when it is age-encrypted, decompressed by its magic number.
async fn open_file(ctx: &StepContext, path: &std::path::Path) -> Result<Input, StepError> {
    let io = |e: std::io::Error| crate::exec::io_error(&format!("reading {}", path.display()), &e);
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut input = BufReader::new(Box::pin(file) as Input);
    let head = input.fill_buf().await.map_err(io)?;
    let input: Input = if head.starts_with(b"age-encryption.org/") {
        let identities = ctx.identities.as_ref().ok_or_else(|| {
            StepError::permanent(format!(
                "{} is encrypted (age): give the identity that decrypts it, --identity FILE or {}",
                path.display(),
                crate::repo::crypto::IDENTITY_ENV
            ))
        })?;
        identities
            .decrypt(input, &path.display().to_string(), &[])
            .await
            .map_err(|e| StepError::permanent(format!("{}: {e}", path.display())))?
    } else {
        Box::pin(input)
    };
    let mut input = BufReader::new(input);
    let head = input.fill_buf().await.map_err(io)?;
    let algorithm = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else {
        "none"
    };
    let compression =
        crate::repo::compression::Compression::parse(algorithm).expect("a known algorithm");
    Ok(Box::pin(compression.decoder(input)))
}

async fn run(p: &ImportParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let mut outputs = Outputs::new();
    let mut verdict = None;
    let (input, format): (Input, RowsFormat) = match (&p.repository, &p.file) {
        (Some(r), _) => {
            let store = ctx.repository(r).await?;
            let mut manifest = chosen(&store, p.backup.as_deref())
                .await
                .map_err(StepError::permanent)?;
            ctx.unseal(&mut manifest)?;
            let rows = manifest.rows.clone().ok_or_else(|| {
                StepError::permanent(format!(
                    "export {}: its manifest says nothing of its rows",
                    manifest.backup_id
                ))
            })?;
            let name = manifest.files[0].name.clone();
            let loaded =
                crate::repo::pipeline::load(&store, &manifest, &name, ctx.identities.as_ref())
                    .await
                    .map_err(|e| {
                        crate::exec::io_error(&format!("reading export {}", manifest.backup_id), &e)
                    })?;
            outputs.insert("backup_id".into(), manifest.backup_id.clone());
            verdict = Some(loaded.verdict);
            (loaded.reader, rows.format)
        }
        (None, Some(f)) => {
            let format = p.format.or_else(|| format_of(f)).ok_or_else(|| {
                StepError::permanent(format!("the format of `{f}` is unknown: give `format`"))
            })?;
            (open_file(ctx, &ctx.resolve(f)).await?, format)
        }
        (None, None) => {
            return Err(StepError::permanent(
                "an import needs `repository` or `file`",
            ));
        }
    };
    let mut server = connect(
        ctx.target_url(&p.target)?,
        p.database.as_deref(),
        &format!("target `{}`", p.target),
    )
    .await?;
    let database = server.database.clone();
    let loaded = rows::copy_in(
        &mut server.conn,
        &p.table,
        &database,
        format,
        input,
        p.truncate,
        &ctx.cancel,
    )
    .await;
    // A stored export is checked whole against its SHA-256; the rows were committed only
    // after the reader ended cleanly, which a damaged file does not.
    if let Some(verdict) = verdict {
        verdict
            .wait()
            .await
            .map_err(|e| StepError::permanent(format!("the export is damaged: {e}")))?;
    }
    let loaded = loaded?;
    outputs.insert("rows".into(), loaded.to_string());
    Ok(outputs)
}
