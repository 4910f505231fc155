//! The one-shot commands, for the moment no plan was written for: `backup`, `restore`,
//! `verify`, `prune`, `sql`, `migrate`, `seed`, `reset` — each a plan of one step built by
//! `opsrunner::oneshot` and run by `apply`'s engine — and `psql`, an interactive shell.

use super::args::parse_duration;
use opsrunner::commands::{self, ApplyArgs, PlanArgs};
use opsrunner::exit::Failure;
use opsrunner::oneshot::{Builder, set};
use opsrunner::run::log::LogFormat;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What every one-shot command takes beyond its step: where names are declared, and how
/// the run goes (as `apply`).
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// A plan whose targets and repositories --target and --repository may name, with
    /// all their settings (S3 endpoint, encryption, `protected`, programs directory).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Override a variable of --plan: `--var key=value` (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = super::args::parse_var)]
    vars: Vec<(String, String)>,
    /// Only preview what would be done (as `opsrunner plan`); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allow this destructive command on a protected target of --plan.
    #[arg(long, value_name = "TARGET")]
    confirm: Vec<String>,
    /// Write the JSON run report here (also when the step fails).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// A bound on the step, e.g. 2h (default: none; backups and restores may take long).
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    timeout: Option<String>,
    /// When another run holds the target or repository, wait this long for it before
    /// giving up with exit code 3 (default: do not wait).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    wait_lock: Duration,
    /// age identity file, for restoring and verifying encrypted backups.
    #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
    identity: Option<PathBuf>,
}

/// `--target`, as every command that connects takes it.
const TARGET_HELP: &str = "A libpq URL; env:NAME for the URL in environment variable NAME (keeps a password off the command line); or the name of a target of --plan.";

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    /// A repository URL (file:///var/backups, s3://bucket/prefix) or the name of one in
    /// --plan. It must exist (`opsrunner repo init`).
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// The database to back up (default: the URL's).
    #[arg(long)]
    database: Option<String>,
    /// The dump's format.
    #[arg(long, value_parser = ["custom", "directory", "plain"])]
    format: Option<String>,
    /// none, gzip[:1-9] or zstd[:1-19] (default zstd).
    #[arg(long, value_name = "ALGORITHM[:LEVEL]")]
    compression: Option<String>,
    /// Parallel workers (directory format; file-level base backups).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// A base backup of the whole cluster (for point-in-time recovery) instead of a dump.
    #[arg(long)]
    base: bool,
    /// With --base: full, differential or incremental.
    #[arg(long, requires = "base", value_parser = ["full", "differential", "incremental"])]
    kind: Option<String>,
}

/// Where a point-in-time recovery stops; at most one.
#[derive(clap::Args)]
#[group(multiple = false)]
pub(crate) struct PointInTimeArgs {
    /// Recover to this moment (RFC 3339 with its zone: 2026-12-07T14:02:00Z).
    #[arg(long, value_name = "TIME")]
    to_time: Option<String>,
    /// Recover to this WAL position (0/3000060).
    #[arg(long, value_name = "LSN")]
    to_lsn: Option<String>,
    /// Recover to the commit of this transaction.
    #[arg(long, value_name = "XID")]
    to_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    to_name: Option<String>,
    /// Recover to the end of the archive.
    #[arg(long)]
    latest: bool,
}

impl PointInTimeArgs {
    /// Whether a point in time was asked for.
    fn given(&self) -> bool {
        self.to_time.is_some()
            || self.to_lsn.is_some()
            || self.to_xid.is_some()
            || self.to_name.is_some()
            || self.latest
    }

    /// The step's `to:`, when one was asked for.
    fn to(&self, b: &mut Builder, timeline: Option<&str>, exclusive: bool) -> Option<Value> {
        let mut to = json!({});
        set(&mut to, "time", self.to_time.as_deref().map(|t| b.text(t)));
        set(&mut to, "lsn", self.to_lsn.as_deref().map(|t| b.text(t)));
        set(&mut to, "xid", self.to_xid.map(|x| json!(x)));
        set(&mut to, "name", self.to_name.as_deref().map(|t| b.text(t)));
        set(&mut to, "latest", self.latest.then_some(json!(true)));
        if to.as_object().is_some_and(|m| m.is_empty()) {
            return None;
        }
        set(&mut to, "timeline", timeline.map(|t| b.text(t)));
        set(&mut to, "inclusive", exclusive.then_some(json!(false)));
        Some(to)
    }
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A repository URL or the name of one in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// A backup id (see `opsrunner backups list`), or latest.
    #[arg(long, value_name = "ID", default_value = "latest")]
    backup: String,
    /// With --backup latest: the latest backup of this database.
    #[arg(long, value_name = "DATABASE")]
    from_database: Option<String>,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: Option<String>,
    /// With --target: the database to restore into — a new name restores beside the live
    /// one. A database that exists and is not empty needs --overwrite; the old one is
    /// swapped out only after the new one restored and checked.
    #[arg(long)]
    database: Option<String>,
    /// Replace the database when it exists and holds data.
    #[arg(long)]
    overwrite: bool,
    /// Parallel restore workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Do not restore owners and privileges (when the roles do not exist there).
    #[arg(long)]
    no_owner: bool,
    #[command(flatten)]
    to: PointInTimeArgs,
    /// With a --to-… flag: the timeline to follow (latest, current or a number).
    #[arg(long)]
    timeline: Option<String>,
    /// With --to-time, --to-lsn or --to-xid: stop just before the target, not after it.
    #[arg(long)]
    exclusive: bool,
    /// Restore a base backup into this new data directory (absolute, absent or empty),
    /// prepared for its first start by you.
    #[arg(long, value_name = "PATH")]
    data_directory: Option<PathBuf>,
    /// With --data-directory, as root: the user that owns the files (default postgres).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// With --data-directory and a file-level backup: rewrite a stopped cluster's
    /// directory in place, only what differs.
    #[arg(long)]
    delta: bool,
    /// Only this table (repeatable; `orders`, `sales.orders`) with its sequences, indexes,
    /// constraints, triggers and grants, into the existing --database beside the live one,
    /// in the new schema --as. With --overwrite, its rows replace the live table's.
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// Every table of this schema, as --table (repeatable).
    #[arg(long = "schema", value_name = "SCHEMA")]
    schemas: Vec<String>,
    /// With --table or --schema: the new schema the tables land in (default
    /// restored_ and the backup's date).
    #[arg(long = "as", value_name = "SCHEMA")]
    as_schema: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A repository URL or the name of one in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// A backup id, or latest.
    #[arg(long, value_name = "ID", default_value = "latest")]
    backup: String,
    /// Test-restore into a new scratch database on this target (default: a throwaway
    /// cluster opsrunner starts and removes).
    #[arg(long, value_name = "URL|env:NAME|NAME")]
    target: Option<String>,
    /// Check the manifest, the files' SHA-256 and the archive only; restore nothing.
    #[arg(long, conflicts_with = "target")]
    no_restore: bool,
    #[command(flatten)]
    to: PointInTimeArgs,
    /// An older backup fails the check with exit code 5, e.g. 26h.
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    max_age: Option<String>,
    /// Record nothing in the repository (read-only access suffices).
    #[arg(long)]
    no_record: bool,
}

#[derive(clap::Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A repository URL or the name of one in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    #[command(flatten)]
    keep: super::args::KeepArgs,
    /// Never delete backups younger than this.
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    min_age: Option<String>,
    /// Only backups of this database.
    #[arg(long)]
    database: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct CopyArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The repository to copy from: a URL or the name of one in --plan.
    #[arg(long, value_name = "URL|NAME")]
    from: String,
    /// The repository to copy to: a URL or the name of one in --plan (with its
    /// `encryption`: backups are encrypted again to its recipients). It must exist
    /// (`opsrunner repo init`).
    #[arg(long, value_name = "URL|NAME")]
    to: String,
    /// Backup ids, `latest` (the newest of each database; the default) or `all`.
    #[arg(value_name = "ID")]
    backups: Vec<String>,
    /// Instead of ids: the backups this retention policy keeps in --from.
    #[command(flatten)]
    keep: super::args::KeepArgs,
    /// Only backups of this database.
    #[arg(long)]
    database: Option<String>,
}

#[derive(clap::Args)]
#[group(id = "statements", required = true, multiple = false, args = ["command", "file"])]
pub(crate) struct SqlArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    /// Another database on the target's server.
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// The statements to run.
    #[arg(long, short = 'c', value_name = "SQL")]
    command: Option<String>,
    /// A file of statements to run.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// The statements write: on a protected target they then need --confirm (and without
    /// it they run in a read-only transaction).
    #[arg(long)]
    writes: bool,
    /// All statements in one transaction, or none.
    #[arg(long)]
    transaction: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum MigrateAction {
    Up,
    Status,
    Revert,
}

#[derive(clap::Args)]
pub(crate) struct MigrateArgs {
    /// up (apply the pending migrations), status, or revert (the last --steps).
    #[arg(value_enum)]
    action: MigrateAction,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// The migrations directory (sqlx-cli's layout).
    #[arg(long, value_name = "DIR", default_value = "migrations")]
    dir: PathBuf,
    /// With revert: how many migrations to revert.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
}

#[derive(clap::Args)]
pub(crate) struct SeedArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// production, development or test: the subdirectory of --dir applied.
    #[arg(long, value_parser = ["production", "development", "test"])]
    environment: String,
    /// The seeds directory.
    #[arg(long, value_name = "DIR", default_value = "seeds")]
    dir: PathBuf,
    /// Apply the set again even when it was applied before.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub(crate) struct ResetArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    /// The database to drop and create again.
    #[arg(long, short = 'd')]
    database: String,
    /// Apply these migrations after creating it.
    #[arg(long, value_name = "DIR")]
    migrations: Option<PathBuf>,
    /// Then load these seeds (with --environment).
    #[arg(long, value_name = "DIR", requires = "environment")]
    seeds: Option<PathBuf>,
    #[arg(long, value_parser = ["production", "development", "test"])]
    environment: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct PsqlArgs {
    #[arg(long, value_name = "URL|env:NAME|NAME", help = TARGET_HELP)]
    target: String,
    /// The plan that declares --target.
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Another database on the target's server.
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// On a protected target of --plan, allow writes (without it the session is
    /// read-only).
    #[arg(long, value_name = "TARGET")]
    confirm: Vec<String>,
    /// Arguments for psql itself, after `--` (e.g. `-- -c 'select 1'`).
    #[arg(last = true, value_name = "PSQL_ARGS")]
    psql_args: Vec<String>,
}

pub(crate) const BACKUP_HELP: &str = "Examples:
  opsrunner backup --target env:DATABASE_URL --repository file:///var/backups/app
  opsrunner backup --plan plans/nightly.yaml --target app --repository local --dry-run
  opsrunner backup --target env:DATABASE_URL --repository pitr --plan plans/pitr.yaml --base

The backup id is printed on stdout (backup_id: …) when it is done.";

pub(crate) const RESTORE_HELP: &str = "Examples:
  opsrunner restore --repository file:///var/backups/app --backup 20261207T020000Z-app-1a2b \\
      --target env:DATABASE_URL --database app_restored
  opsrunner restore --plan plans/nightly.yaml --repository local --target app --overwrite --confirm app
  opsrunner restore --repository pitr --plan plans/pitr.yaml --to-time 2026-12-07T14:01:00Z \\
      --data-directory /var/lib/postgresql/15/restored
  opsrunner restore --plan plans/nightly.yaml --repository local --target app --database app \\
      --table orders --as orders_back          # one table, beside the live one
  opsrunner restore --plan plans/nightly.yaml --repository local --target app --database app \\
      --table orders --overwrite --confirm app # its rows replace the live table's

A restore never destroys what it replaces: it restores beside, checks, then swaps in.";

pub(crate) const VERIFY_HELP: &str = "Examples:
  opsrunner verify --repository file:///var/backups/app          # test restore into a throwaway cluster
  opsrunner verify --repository local --plan plans/nightly.yaml --max-age 26h
  opsrunner verify --repository pitr --plan plans/pitr.yaml --latest   # PITR drill to the end of the archive

Exit 5: older than --max-age; exit 6: damaged, not restoring, or restoring different content.";

pub(crate) const PRUNE_HELP: &str = "Examples:
  opsrunner prune --repository file:///var/backups/app --keep-daily 7 --keep-weekly 4 --dry-run
  opsrunner prune --repository local --plan plans/nightly.yaml --keep-last 10

The newest backup, the newest verified one and anything a kept backup needs always stay.";

pub(crate) const SQL_HELP: &str = "Examples:
  opsrunner sql --target env:DATABASE_URL -c 'select count(*) from orders'
  opsrunner sql --plan plans/nightly.yaml --target app -f fix.sql --writes --transaction --confirm app

The first column of the first row is printed as `value: …`; for a full result use `opsrunner psql`.";

pub(crate) const MIGRATE_HELP: &str = "Examples:
  opsrunner migrate status --target env:DATABASE_URL --dir migrations
  opsrunner migrate up --target env:DATABASE_URL --dry-run       # lists each pending migration's statements
  opsrunner migrate revert --plan plans/reset-seed.yaml --target dev --steps 1";

pub(crate) const SEED_HELP: &str = "Example:
  opsrunner seed --target env:DEV_DATABASE_URL --dir examples/seeds --environment development";

pub(crate) const RESET_HELP: &str = "Example:
  opsrunner reset --target env:DEV_DATABASE_URL -d app_dev --migrations migrations \\
      --seeds examples/seeds --environment development";

pub(crate) const PSQL_HELP: &str = "Examples:
  opsrunner psql --plan plans/nightly.yaml --target app
  opsrunner psql --target env:DATABASE_URL -d app -- -c 'select now()'

The password reaches psql through its environment, never its command line. On a protected
target of --plan the session is read-only unless --confirm names it.";

fn duration_text(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.to_string())
}

/// A path from the command line, made absolute: it means what it means where the command
/// was typed, whichever plan --plan names.
fn absolute(path: &Path) -> Value {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Value::String(path.display().to_string())
}

pub(crate) async fn backup(a: BackupArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("backup", a.run.plan.as_deref())?;
    let target = b.target(&a.target)?;
    let repository = b.repository(&a.repository)?;
    let mut step = json!({
        "type": if a.base { "base_backup" } else { "backup" },
        "target": target,
        "repository": repository,
    });
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    set(&mut step, "format", a.format.map(Value::String));
    set(
        &mut step,
        "compression",
        a.compression.as_deref().map(|c| b.text(c)),
    );
    set(&mut step, "jobs", a.jobs.map(|j| json!(j)));
    set(&mut step, "kind", a.kind.map(Value::String));
    run(b, "backup", step, a.run, log, color).await
}

pub(crate) async fn restore(
    a: RestoreArgs,
    log: LogFormat,
    color: bool,
) -> Result<String, Failure> {
    let mut b = Builder::new("restore", a.run.plan.as_deref())?;
    let repository = b.repository(&a.repository)?;
    let backup = b.text(&a.backup);
    let mut step = json!({ "type": "restore", "repository": repository, "backup": backup });
    set(
        &mut step,
        "source_database",
        a.from_database.as_deref().map(|d| b.text(d)),
    );
    let to = a.to.to(&mut b, a.timeline.as_deref(), a.exclusive);
    if to.is_none() && (a.timeline.is_some() || a.exclusive) {
        return Err(Failure::Usage(
            "--timeline and --exclusive go with a point in time: --to-time, --to-lsn, --to-xid, --to-name or --latest".into(),
        ));
    }
    set(&mut step, "to", to);
    let into = match (&a.data_directory, &a.target) {
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(
                "--target and --data-directory: give one, the database server to restore into or the new data directory".into(),
            ));
        }
        (Some(dir), None) => {
            let mut into = json!({ "data_directory": absolute(dir) });
            set(&mut into, "run_as", a.run_as.as_deref().map(|u| b.text(u)));
            set(&mut into, "delta", a.delta.then_some(json!(true)));
            into
        }
        (None, Some(target)) => {
            if a.database.is_none() && !a.to.given() {
                return Err(Failure::Usage(
                    "--target needs --database: the database to restore into (a new name restores beside the live one; an existing one needs --overwrite)".into(),
                ));
            }
            let target = b.target(target)?;
            let mut into = json!({ "target": target });
            set(
                &mut into,
                "database",
                a.database.as_deref().map(|d| b.text(d)),
            );
            into
        }
        (None, None) => {
            return Err(Failure::Usage(
                "where to? --target URL|env:NAME|NAME (with --database) for a logical backup, --data-directory PATH for a base backup".into(),
            ));
        }
    };
    set(&mut step, "into", Some(into));
    if a.tables.is_empty() && a.schemas.is_empty() {
        if a.as_schema.is_some() {
            return Err(Failure::Usage(
                "--as names the schema restored tables land in: give --table or --schema".into(),
            ));
        }
        set(&mut step, "overwrite", a.overwrite.then_some(json!(true)));
    } else {
        let tables: Vec<Value> = a
            .tables
            .iter()
            .map(|t| {
                let name = b.text(t);
                if a.overwrite {
                    json!({ "name": name, "overwrite": true })
                } else {
                    name
                }
            })
            .collect();
        set(
            &mut step,
            "tables",
            (!tables.is_empty()).then_some(Value::Array(tables)),
        );
        let schemas: Vec<Value> = a.schemas.iter().map(|s| b.text(s)).collect();
        set(
            &mut step,
            "schemas",
            (!schemas.is_empty()).then_some(Value::Array(schemas)),
        );
        set(&mut step, "as", a.as_schema.as_deref().map(|s| b.text(s)));
    }
    set(&mut step, "jobs", a.jobs.map(|j| json!(j)));
    set(&mut step, "no_owner", a.no_owner.then_some(json!(true)));
    run(b, "restore", step, a.run, log, color).await
}

pub(crate) async fn verify(a: VerifyArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("verify", a.run.plan.as_deref())?;
    let repository = b.repository(&a.repository)?;
    let backup = b.text(&a.backup);
    let mut step = json!({ "type": "verify", "repository": repository, "backup": backup });
    let to = a.to.to(&mut b, None, false);
    let restore_into = match (&to, &a.target, a.no_restore) {
        (_, _, true) if to.is_some() => {
            return Err(Failure::Usage(
                "--no-restore and a point in time: a point-in-time verify recovers a cluster"
                    .into(),
            ));
        }
        (_, _, true) => None,
        (Some(_), Some(_), _) => {
            return Err(Failure::Usage(
                "--target and a point in time: a point-in-time verify recovers into a throwaway cluster of its own; leave out --target".into(),
            ));
        }
        (Some(_), None, _) => Some(json!({ "target": b.ephemeral_target("drill") })),
        (None, Some(target), _) => {
            Some(json!({ "target": b.target(target)?, "database": "verify_{{ run.id }}" }))
        }
        (None, None, _) => Some(
            json!({ "target": b.ephemeral_target("scratch"), "database": "verify_{{ run.id }}" }),
        ),
    };
    set(&mut step, "to", to);
    set(&mut step, "restore_into", restore_into);
    set(&mut step, "max_age", a.max_age.map(Value::String));
    set(&mut step, "record", a.no_record.then_some(json!(false)));
    run(b, "verify", step, a.run, log, color).await
}

pub(crate) async fn prune(a: PruneArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("prune", a.run.plan.as_deref())?;
    let repository = b.repository(&a.repository)?;
    let keep = serde_json::to_value(a.keep.keep()).expect("a retention policy serializes");
    if keep.as_object().is_some_and(|k| k.is_empty()) {
        return Err(Failure::Usage(
            "prune needs a retention policy: --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-hourly or --keep-within (an empty policy would delete everything)".into(),
        ));
    }
    let mut step = json!({ "type": "prune", "repository": repository, "keep": keep });
    set(&mut step, "min_age", a.min_age.map(Value::String));
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    run(b, "prune", step, a.run, log, color).await
}

pub(crate) async fn copy(a: CopyArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("backups copy", a.run.plan.as_deref())?;
    let from = b.repository_as("--from", &a.from, "from")?;
    let to = b.repository_as("--to", &a.to, "to")?;
    let mut step = json!({ "type": "copy", "from": from, "to": to });
    let keep = serde_json::to_value(a.keep.keep()).expect("a retention policy serializes");
    if keep.as_object().is_some_and(|k| !k.is_empty()) {
        if !a.backups.is_empty() {
            return Err(Failure::Usage(
                "give backup ids or a retention policy (--keep-…), not both".into(),
            ));
        }
        set(&mut step, "keep", Some(keep));
    }
    let ids: Vec<Value> = a.backups.iter().map(|id| b.text(id)).collect();
    set(
        &mut step,
        "backups",
        match ids.len() {
            0 => None,
            1 => ids.into_iter().next(),
            _ => Some(Value::Array(ids)),
        },
    );
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    run(b, "copy", step, a.run, log, color).await
}

pub(crate) async fn sql(a: SqlArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("sql", a.run.plan.as_deref())?;
    let target = b.target(&a.target)?;
    let mut step = json!({ "type": "sql", "target": target });
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    set(&mut step, "query", a.command.as_deref().map(|q| b.text(q)));
    set(&mut step, "file", a.file.as_deref().map(absolute));
    set(&mut step, "writes", a.writes.then_some(json!(true)));
    set(
        &mut step,
        "transaction",
        a.transaction.then_some(json!(true)),
    );
    run(b, "sql", step, a.run, log, color).await
}

pub(crate) async fn migrate(
    a: MigrateArgs,
    log: LogFormat,
    color: bool,
) -> Result<String, Failure> {
    let mut b = Builder::new("migrate", a.run.plan.as_deref())?;
    let target = b.target(&a.target)?;
    let action = match a.action {
        MigrateAction::Up => "up",
        MigrateAction::Status => "status",
        MigrateAction::Revert => "revert",
    };
    let mut step =
        json!({ "type": "migrate", "target": target, "action": action, "dir": absolute(&a.dir) });
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    set(&mut step, "steps", a.steps.map(|n| json!(n)));
    run(b, "migrate", step, a.run, log, color).await
}

pub(crate) async fn seed(a: SeedArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("seed", a.run.plan.as_deref())?;
    let target = b.target(&a.target)?;
    let mut step = json!({ "type": "seed", "target": target, "environment": a.environment, "dir": absolute(&a.dir) });
    set(
        &mut step,
        "database",
        a.database.as_deref().map(|d| b.text(d)),
    );
    set(&mut step, "force", a.force.then_some(json!(true)));
    run(b, "seed", step, a.run, log, color).await
}

pub(crate) async fn reset(a: ResetArgs, log: LogFormat, color: bool) -> Result<String, Failure> {
    let mut b = Builder::new("reset", a.run.plan.as_deref())?;
    let target = b.target(&a.target)?;
    let database = b.text(&a.database);
    let mut step = json!({ "type": "reset", "target": target, "database": database });
    set(
        &mut step,
        "migrations",
        a.migrations.as_deref().map(absolute),
    );
    set(&mut step, "seeds", a.seeds.as_deref().map(absolute));
    set(&mut step, "environment", a.environment.map(Value::String));
    run(b, "reset", step, a.run, log, color).await
}

/// Runs the one-step plan as `apply` runs a plan; the step's outputs go to stdout.
async fn run(
    b: Builder,
    id: &str,
    mut step: Value,
    args: RunArgs,
    log_format: LogFormat,
    color: bool,
) -> Result<String, Failure> {
    set(&mut step, "timeout", args.timeout.map(Value::String));
    for warning in &b.warnings {
        eprintln!("warning: {warning}");
    }
    let generated = b.finish(id, step);
    let apply = ApplyArgs {
        plan: PlanArgs {
            file: generated.source.path.clone(),
            vars: args.vars,
            confirm: args.confirm,
            color,
            generated: Some(generated),
            ..PlanArgs::default()
        },
        report: args.report,
        junit: None,
        dry_run: args.dry_run,
        concurrency: 1,
        log_format,
        kill_grace: Duration::from_secs(5),
        wait_lock: args.wait_lock,
        resume: None,
        metrics: None,
        progress_every: Duration::from_secs(30),
        identity: args.identity,
        print_outputs: true,
    };
    commands::apply(apply).await.map(|()| String::new())
}

/// `opsrunner psql`: psql on a target, its password in psql's environment.
pub(crate) async fn psql(a: PsqlArgs, color: bool) -> Result<String, Failure> {
    let session = opsrunner::oneshot::shell_session(
        &a.target,
        a.plan.as_deref(),
        a.database.as_deref(),
        &a.confirm,
        color,
    )?;
    if session.read_only {
        eprintln!(
            "target `{}` is protected: this session is read-only (--confirm {} to write)",
            session.target, session.target
        );
    }
    let status = session
        .command(&a.psql_args)
        .status()
        .map_err(|e| Failure::Io(format!("cannot start {}: {e}", session.program.display())))?;
    match status.code() {
        Some(0) => Ok(String::new()),
        Some(code) => Err(Failure::Passed(code)),
        None => Err(Failure::Interrupted),
    }
}
