//! `seed`: a seed set is the SQL and CSV files under `DIR/ENVIRONMENT/`, applied in name
//! order in one transaction with a bookkeeping row in `_opsrunner_seeds`, so the same set
//! is not applied twice (unless `force`). CSV files load with COPY into the table their
//! name gives (`users.csv`, `20-billing.invoices.csv`: a leading number only orders), with
//! a header line.

use super::probe::{Findings, Probe};
use super::step_type::StepType;
use crate::exec::events::{Outputs, Stream};
use crate::exec::{StepContext, StepError};
use crate::pg::database::quote_ident;
use crate::pg::server::classify;
use crate::pg::server::connect;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use std::future::Future;
use std::path::{Path, PathBuf};

/// `seed`: the SQL files and CSV files (loaded with COPY) under `DIR/ENVIRONMENT/`, in
/// name order, in one transaction. A seed set that already ran is not applied again
/// unless `force: true`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedParams {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `production`, `development` or `test`: the subdirectory of `dir` to use.
    pub environment: SeedEnvironment,
    /// Directory of seed sets, relative to the plan file.
    #[serde(default = "default_seeds")]
    pub dir: String,
    #[serde(default)]
    pub force: bool,
}

fn default_seeds() -> String {
    "seeds".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeedEnvironment {
    Production,
    Development,
    Test,
}

impl SeedEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedEnvironment::Production => "production",
            SeedEnvironment::Development => "development",
            SeedEnvironment::Test => "test",
        }
    }
}

pub struct Seed;

impl StepType for Seed {
    const NAME: &'static str = "seed";
    type Params = SeedParams;
    const OUTPUTS: &'static [&'static str] = &["applied", "files"];

    fn target(p: &SeedParams) -> Option<&str> {
        Some(&p.target)
    }

    fn writes_target(_: &SeedParams) -> bool {
        true
    }

    /// A seed set writes rows, and its SQL files may delete or drop anything: on a
    /// protected target it needs `--confirm`. The preview lists each file's statements
    /// with the destructive ones marked.
    fn destructive(_: &SeedParams, _: &Path, _: bool) -> bool {
        true
    }

    fn describe(p: &SeedParams) -> String {
        describe(p)
    }

    fn reads(_: &SeedParams) -> Option<&'static str> {
        Some("the seed files")
    }

    async fn probe<'a>(p: &'a SeedParams, scope: Probe<'a>) -> Findings {
        let lines = match files(&scope.base_dir.join(&p.dir), p.environment) {
            Ok(files) => files
                .iter()
                .zip(file_names(&files))
                .flat_map(|(path, n)| {
                    std::iter::once(format!("seed file: {n}")).chain(seed_file_lines(path))
                })
                .collect(),
            Err(e) => vec![e.message],
        };
        lines.into()
    }

    fn run(
        p: &SeedParams,
        ctx: &StepContext,
    ) -> impl Future<Output = Result<Outputs, StepError>> + Send {
        run(p, ctx)
    }
}

/// The table a CSV seed file loads: `20-billing.invoices.csv` loads billing.invoices (a
/// leading number only orders), quoted.
fn csv_table_of(name: &str) -> String {
    let stem = name.trim_end_matches(".csv");
    let stem = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    let stem = if stem.len() < name.len() - 4 {
        stem.trim_start_matches(['_', '-'])
    } else {
        stem
    };
    stem.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn csv_table(path: &Path) -> String {
    csv_table_of(&path.file_name().unwrap_or_default().to_string_lossy())
}

/// What a seed file will do, for the preview: a `.sql` file's statements with the
/// destructive ones marked; a `.csv` file's table. Only a regular file of at most 16 MiB
/// is read (a FIFO would block the preview); otherwise the preview says so.
fn seed_file_lines(path: &Path) -> Vec<String> {
    if path.extension().is_some_and(|e| e == "csv") {
        return vec![format!(
            "  COPY into {} (header names the columns)",
            csv_table(path)
        )];
    }
    let readable = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 16 << 20);
    match readable.then(|| std::fs::read_to_string(path)) {
        Some(Ok(text)) => crate::pg::statements::preview_lines(&text),
        _ => vec!["  (not read: not a regular text file of at most 16 MiB)".into()],
    }
}

pub fn describe(p: &SeedParams) -> String {
    format!(
        "apply the `{}` seed set from {}/{} to target `{}`{}",
        p.environment.as_str(),
        p.dir,
        p.environment.as_str(),
        p.target,
        if p.force {
            " (even if already applied)"
        } else {
            " unless already applied"
        }
    )
}

/// The files of a seed set, in the order they run.
pub fn files(dir: &Path, environment: SeedEnvironment) -> Result<Vec<PathBuf>, StepError> {
    let set = dir.join(environment.as_str());
    let entries = std::fs::read_dir(&set).map_err(|e| {
        StepError::permanent(format!(
            "no `{}` seed set: cannot read {} ({e}); put .sql and .csv files there",
            environment.as_str(),
            set.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "sql" || e == "csv"))
        .collect();
    files.sort();
    Ok(files)
}

const BOOKKEEPING: &str = "create table if not exists _opsrunner_seeds (
    environment text not null,
    checksum text not null,
    files text[] not null,
    applied_at timestamptz not null default now(),
    primary key (environment, checksum))";

/// Applies a seed set inside one transaction. Returns false when it had already run.
pub async fn apply(
    conn: &mut PgConnection,
    files: &[PathBuf],
    environment: SeedEnvironment,
    force: bool,
    say: impl Fn(String),
) -> Result<bool, StepError> {
    let mut hasher = Sha256::new();
    let mut contents = Vec::new();
    for f in files {
        let bytes = std::fs::read(f)
            .map_err(|e| StepError::permanent(format!("cannot read {}: {e}", f.display())))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(&bytes);
        contents.push((name, f.extension().is_some_and(|e| e == "csv"), bytes));
    }
    let checksum = crate::digest::hex(&hasher.finalize());
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| classify(&e, "BEGIN failed"))?;
    sqlx::raw_sql(BOOKKEEPING)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(&e, "cannot create _opsrunner_seeds"))?;
    // Two runs seeding the same database at once would both see "not applied yet".
    sqlx::raw_sql("select pg_advisory_xact_lock(hashtext('opsrunner seeds'))")
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(&e, "cannot take the seeding lock"))?;
    let done: bool = sqlx::query_scalar(
        "select exists (select 1 from _opsrunner_seeds where environment = $1 and checksum = $2)",
    )
    .bind(environment.as_str())
    .bind(&checksum)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| classify(&e, "cannot read _opsrunner_seeds"))?;
    if done && !force {
        say(format!(
            "seed set `{}` ({}) was already applied; skipping",
            environment.as_str(),
            crate::diag::count(files.len(), "file")
        ));
        tx.commit()
            .await
            .map_err(|e| classify(&e, "COMMIT failed"))?;
        return Ok(false);
    }
    for (name, csv, bytes) in &contents {
        if *csv {
            let table = csv_table_of(name);
            // The header names the columns, so a file need not list every column (identity
            // and defaulted ones are filled in) nor follow the table's column order.
            let header = String::from_utf8_lossy(bytes)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let columns = header
                .split(',')
                .map(|c| quote_ident(c.trim().trim_matches('"')))
                .collect::<Vec<_>>()
                .join(", ");
            let mut copy = tx
                .copy_in_raw(&format!(
                    "copy {table} ({columns}) from stdin with (format csv, header true)"
                ))
                .await
                .map_err(|e| classify(&e, &format!("{name}: COPY failed (rolled back)")))?;
            copy.send(bytes.as_slice())
                .await
                .map_err(|e| classify(&e, &format!("{name}: COPY failed (rolled back)")))?;
            copy.finish()
                .await
                .map_err(|e| classify(&e, &format!("{name}: COPY failed (rolled back)")))?;
        } else {
            let sql = String::from_utf8(bytes.clone())
                .map_err(|_| StepError::permanent(format!("{name} is not UTF-8 text")))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(&e, &format!("{name} failed (rolled back)")))?;
        }
        say(format!("applied {name}"));
    }
    let names: Vec<String> = contents.iter().map(|(n, _, _)| n.clone()).collect();
    sqlx::query("insert into _opsrunner_seeds (environment, checksum, files) values ($1, $2, $3) on conflict (environment, checksum) do update set applied_at = now()")
        .bind(environment.as_str())
        .bind(&checksum)
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(&e, "cannot record the seed set"))?;
    tx.commit()
        .await
        .map_err(|e| classify(&e, "COMMIT failed"))?;
    Ok(true)
}

pub async fn run(p: &SeedParams, ctx: &StepContext) -> Result<Outputs, StepError> {
    let files = files(&ctx.resolve(&p.dir), p.environment)?;
    let mut server = connect(
        ctx.target_url(&p.target)?,
        p.database.as_deref(),
        &format!("target `{}`", p.target),
    )
    .await?;
    let say = |line: String| ctx.events.output(&ctx.step_id, Stream::Stdout, line);
    let applied = apply(&mut server.conn, &files, p.environment, p.force, say).await?;
    let _ = server.conn.close().await;
    let mut outputs = Outputs::new();
    outputs.insert("applied".into(), applied.to_string());
    outputs.insert("files".into(), file_names(&files).join(" "));
    Ok(outputs)
}

pub fn file_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}
