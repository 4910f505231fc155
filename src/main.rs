//! The `opsrunner` command line: parse arguments, call the library, map errors to exit codes.

use clap::{Args, Parser, Subcommand};
use opsrunner::backups;
use opsrunner::commands::{self, ApplyArgs, GraphFormat, PlanArgs, PreviewFormat, SchemaKind};
use opsrunner::exit::{self, Failure};
use opsrunner::plan::yaml::Limits;
use opsrunner::run::log::{LogFormat, stderr_wants_color};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The exit codes, as shown by `--help`; the constants live in `opsrunner::exit`.
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0    success (every step succeeded or was skipped by its condition)
  1    a step failed (or a report could not be written)
  2    invalid plan or command line
  3    refused by a guard: destructive step on a protected target
       without --confirm; nothing was touched. Or a target or repository
       the run writes to is locked by another run (see --wait-lock)
  4    plan --strict: the preview is incomplete, a target or repository
       it needed could not be read
  5    a verify found the backup older than its max_age (none corrupt)
  6    a verify found a backup damaged, not restoring, or restoring
       different content
  130  interrupted (Ctrl-C / SIGTERM): running steps were cancelled,
       the report was still written"
    };
}

const APPLY_HELP: &str = concat!(
    "Examples:
  opsrunner apply plans/maintenance.yaml --report maintenance.json
  opsrunner apply plans/maintenance.yaml --confirm app --var top_tables=10
  opsrunner apply plans/maintenance.yaml --dry-run
  opsrunner apply plan.json    # a saved plan (opsrunner plan … --out plan.json); exit 3 if stale

",
    exit_codes_help!()
);

const PLAN_HELP: &str = "Examples:
  opsrunner plan plans/maintenance.yaml
  opsrunner plan plans/maintenance.yaml --format markdown --out plan.md   # for a PR comment
  opsrunner plan plans/maintenance.yaml --format json | jq '.steps[].action'
  opsrunner plan plans/nightly.yaml --out plan.json && opsrunner apply plan.json   # saved plan";

#[derive(Parser)]
#[command(name = "opsrunner", version, about = "Run PostgreSQL operations declared in a YAML plan: check, preview, apply.", after_help = exit_codes_help!())]
struct Cli {
    /// Format of the live log on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct PlanFileArgs {
    /// The plan file (YAML).
    file: PathBuf,
    /// Override a plan variable: `--var keep_daily=7` (repeatable; the variable must be declared in `vars`).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Refuse plan files larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_bytes)]
    max_plan_bytes: u64,
    /// Refuse plans of more than this many YAML nodes (after alias expansion).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_nodes)]
    max_plan_nodes: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Check a plan: syntax, keys, references, cycles, templates. Exit 2 with every problem listed.
    Validate(PlanFileArgs),
    /// Preview what `apply` would do, step by step. Changes nothing.
    #[command(after_help = PLAN_HELP)]
    Plan {
        #[command(flatten)]
        plan: PlanFileArgs,
        /// Output format: text for terminals, markdown for pull-request comments, json for
        /// machines and saved plans. Default: as --out's extension says (.json, .md), else text.
        #[arg(long, value_enum)]
        format: Option<PreviewFormat>,
        /// Write the preview to this file instead of stdout. `plan.json` is a saved plan:
        /// `opsrunner apply plan.json` runs it only while the plan file, its resolved steps,
        /// each target's identity and each repository's newest backup are as they were.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Preview as if `--confirm TARGET` were given to apply (repeatable).
        #[arg(long, value_name = "TARGET")]
        confirm: Vec<String>,
        /// Review mode for plans from pull requests: no network connection, no process, no
        /// file read beyond the plan; `env.*` shown as placeholders, never their values.
        #[arg(long)]
        untrusted: bool,
        /// The reviewed version of this plan (e.g. from the main branch): probes run only for
        /// steps whose targets and repositories are defined exactly as there; everything else
        /// is previewed as with --untrusted.
        #[arg(long, value_name = "OLD_PLAN", conflicts_with = "untrusted")]
        base: Option<PathBuf>,
        /// Markdown: the longest the preview may be, in characters (GitHub's comment limit by
        /// default); what does not fit is left out with a note, the risk summary never.
        #[arg(long, value_name = "N", default_value_t = opsrunner::run::markdown::GITHUB_COMMENT_LIMIT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2000..))]
        max_chars: usize,
        /// Exit with code 4 when the preview is incomplete: a target or repository it needed
        /// (what a prune would delete, which backup `latest` is) could not be read.
        #[arg(long)]
        strict: bool,
    },
    /// Run the plan: steps in dependency order, concurrently where possible, with retries and timeouts.
    #[command(after_help = APPLY_HELP)]
    Apply {
        #[command(flatten)]
        plan: PlanFileArgs,
        /// Write the JSON run report here (also when steps fail or the run is interrupted).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Write the run as JUnit XML here, for CI: a test case per step, skipped and failed
        /// ones with the reason, measured numbers (RTO, RPO) as properties.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Only preview, like `opsrunner plan`.
        #[arg(long)]
        dry_run: bool,
        /// Run at most N steps at once (default: number of CPUs).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: Option<u16>,
        /// Allow destructive steps on this protected target (repeatable).
        #[arg(long, value_name = "TARGET")]
        confirm: Vec<String>,
        /// Time child processes get between SIGTERM and SIGKILL on timeout or interruption.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        kill_grace: Duration,
        /// When another run holds a target or repository this run writes to, wait this long
        /// for it before giving up with exit code 3 (default: do not wait).
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
        wait_lock: Duration,
        /// Run again only the steps of this earlier run (see `opsrunner runs list`) that did not
        /// succeed, reusing the outputs of those that did; refused when the plan changed in a
        /// way that makes them stale.
        #[arg(long, value_name = "RUN_ID")]
        resume: Option<String>,
        /// Write Prometheus metrics here (atomically, for node_exporter's textfile collector):
        /// the run's status, start and duration, each backup's size and duration, the verify's
        /// restore time, and per repository and database the newest backup and verified restore.
        #[arg(long, value_name = "FILE")]
        metrics: Option<PathBuf>,
        /// When the log is not a terminal: how often long transfers (dump, restore) report
        /// their progress. On a terminal, a progress bar shows it continuously.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        progress_every: Duration,
        /// age identity file for restoring and verifying encrypted backups.
        #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
        identity: Option<PathBuf>,
    },
    /// What a change to a plan does: steps added, removed and changed, conditions,
    /// retention, schedule, targets and repositories (weakened guards called out).
    Diff {
        /// The plan before the change (e.g. `git show main:plans/nightly.yaml > old.yaml`).
        old: PathBuf,
        /// The plan after it.
        new: PathBuf,
        /// text or markdown (for a pull-request comment).
        #[arg(long, value_enum, default_value = "text")]
        format: PreviewFormat,
    },
    /// Print the step DAG as Graphviz DOT or a Mermaid flowchart.
    Graph {
        #[command(flatten)]
        plan: PlanFileArgs,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// What a backup repository holds.
    Backups {
        #[command(subcommand)]
        command: BackupsCommand,
    },
    /// The history of runs kept in the state directory ($OPSRUNNER_STATE_DIR,
    /// $XDG_STATE_HOME/opsrunner, ~/.local/state/opsrunner).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Write what runs a plan on its `schedule:`: systemd units or Kubernetes CronJobs.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// A repository itself: its lock.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// PostgreSQL's WAL archive: `archive_command` (push) and `restore_command` (fetch).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Print the JSON Schema of the plan file or of the run report.
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
}

#[derive(Args)]
struct RepositoryArgs {
    /// A repository URL (file:///var/backups) or the name of one declared in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// The plan that declares the repository named by --repository.
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// A oneshot .service (hardened, OnFailure=, LogsDirectory=, StateDirectory=), a .timer
    /// (Persistent, RandomizedDelaySec) and the OnFailure= template unit.
    #[command(after_help = "Example:
  opsrunner schedule systemd plans/nightly.yaml --plan-path /etc/opsrunner/nightly.yaml \\
      --writable /var/backups/app --out /etc/systemd/system
  systemctl daemon-reload && systemctl enable --now opsrunner-nightly.timer")]
    Systemd {
        /// The plan file.
        file: PathBuf,
        /// Write the unit files into this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Use this schedule instead of the plan's `schedule:` (OnCalendar or cron syntax).
        #[arg(long, value_name = "WHEN")]
        schedule: Option<String>,
        /// The opsrunner binary the service runs (default: this one).
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Where the plan is on the machine that runs it (default: FILE's absolute path).
        #[arg(long, value_name = "PATH")]
        plan_path: Option<PathBuf>,
        /// The user (and group) the service runs as.
        #[arg(long, value_name = "NAME", default_value = "opsrunner")]
        user: String,
        /// The EnvironmentFile= with the plan's variables (default /etc/opsrunner/NAME.env).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
        /// Pass this variable as a systemd credential (LoadCredential=NAME, from
        /// /etc/credstore/NAME) instead of through the environment file (repeatable).
        #[arg(long = "credential", value_name = "NAME")]
        credentials: Vec<String>,
        /// The credentials are encrypted with `systemd-creds encrypt` (LoadCredentialEncrypted=).
        #[arg(long)]
        encrypted_credentials: bool,
        /// A directory the service may write (a local repository whose path the plan takes
        /// from the environment); repeatable. Literal file:// repositories are added themselves.
        #[arg(long, value_name = "DIR")]
        writable: Vec<PathBuf>,
        /// RandomizedDelaySec= of the timer.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
        randomized_delay: Duration,
        /// TimeoutStartSec= of the service: the longest one run may take.
        #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
        max_runtime: Duration,
        /// The unit OnFailure= starts (default: the generated opsrunner-failure@.service).
        #[arg(long, value_name = "UNIT")]
        on_failure: Option<String>,
        /// Write Prometheus metrics into this directory (node_exporter's textfile collector).
        #[arg(long, value_name = "DIR")]
        metrics_dir: Option<PathBuf>,
        /// Pass --confirm TARGET to apply (repeatable).
        #[arg(long, value_name = "TARGET")]
        confirm: Vec<String>,
    },
    /// A ConfigMap with the plan and a CronJob per plan (concurrencyPolicy: Forbid,
    /// backoffLimit: 0, secrets from Secret references, non-root, read-only root filesystem).
    #[command(after_help = "Example:
  opsrunner schedule k8s plans/nightly.yaml plans/drill.yaml --image registry.example/opsrunner:0.1.0 \\
      --namespace backups --state-claim opsrunner-state > cronjobs.yaml
  kubectl apply -f cronjobs.yaml")]
    K8s {
        /// The plan files: one CronJob each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the manifests into this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The container image (built from docker/Dockerfile).
        #[arg(long, value_name = "IMAGE", default_value = concat!("opsrunner:", env!("CARGO_PKG_VERSION")))]
        image: String,
        #[arg(long, value_name = "NAME")]
        namespace: Option<String>,
        /// The Secret with the plans' environment variables, one key each (default: a Secret
        /// named like each CronJob).
        #[arg(long, value_name = "NAME")]
        secret: Option<String>,
        /// A PersistentVolumeClaim for the state directory (run history, --resume).
        #[arg(long, value_name = "CLAIM")]
        state_claim: Option<String>,
        /// A PersistentVolumeClaim mounted at the plans' local repository directories.
        #[arg(long, value_name = "CLAIM")]
        repository_claim: Option<String>,
        /// How late a missed run may still start.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        starting_deadline: Duration,
        /// The longest a run may take (activeDeadlineSeconds).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_runtime: Option<Duration>,
        /// Pass --confirm TARGET to apply (repeatable).
        #[arg(long, value_name = "TARGET")]
        confirm: Vec<String>,
    },
}

#[derive(Args)]
struct WalRepositoryArgs {
    /// A repository URL (file:///var/backups, s3://bucket/prefix) or the name of one declared in --plan.
    #[arg(long, value_name = "URL|NAME")]
    repository: String,
    /// The plan that declares the repository named by --repository (its encryption too).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
}

#[derive(Subcommand)]
enum WalCommand {
    /// Archive one WAL file: `archive_command = 'opsrunner wal push %p --repository NAME --plan FILE'`.
    /// Exit 0 only when it is archived (now, or before with the same content).
    #[command(
        after_help = "Exit codes: 0 archived (or already there with the same content); 1 not archived
(PostgreSQL keeps the file and tries again), among them a file of that name already
archived with different content; 2 invalid command line."
    )]
    Push {
        /// The file (`%p`: relative to the data directory, the command's working directory).
        path: PathBuf,
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// none, gzip[:1-9] or zstd[:1-19].
        #[arg(long, value_name = "ALGORITHM[:LEVEL]", default_value = "zstd", value_parser = parse_compression)]
        compression: opsrunner::repo::compression::Compression,
    },
    /// Restore one WAL file: `restore_command = 'opsrunner wal fetch %f %p --repository NAME --plan FILE'`.
    #[command(
        after_help = "Exit codes: 0 written; 1 proven absent from the archive (PostgreSQL's `end of the
archive`); 255 the archive could not be read for --retry-for, the copy is damaged or the
key is missing: PostgreSQL then aborts recovery instead of ending it early."
    )]
    Fetch {
        /// The file's name (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// age identity file, for an encrypted archive.
        #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        /// How long to keep trying an archive that cannot be read (network, throttling)
        /// before giving up with exit 255.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        retry_for: Duration,
    },
    /// What the archive holds: the newest segment and its age (the RPO), timelines, gaps.
    #[command(
        after_help = "Exit codes: 0 fine; 5 the newest segment is older than --max-age (or there is none);
6 a segment is missing between the first and the last of a timeline; 1 the archive
cannot be read."
    )]
    Status {
        #[command(flatten)]
        repo: WalRepositoryArgs,
        /// Fail (exit 5) when the newest archived segment is older than this.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Remove the lock (local) or lease (S3) a run holds on the repository, when that run
    /// is not running any more; refused (exit 3) while its holder is alive.
    Unlock {
        /// A repository URL (file:///var/backups) or the name of one declared in --plan.
        #[arg(long, value_name = "URL|NAME")]
        repository: String,
        /// The plan that declares the repository named by --repository.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// The kept runs, newest first: id, plan, status, start, duration, failed steps.
    List {
        /// Only runs of this plan (its `name`).
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value = "50")]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One run: each step's outcome, error and outputs (`--json`: the whole report).
    Show {
        #[arg(value_name = "RUN_ID")]
        id: String,
        /// The run report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackupsCommand {
    /// The published backups, newest first: id, database, created, age, size, compression,
    /// last verification.
    List(RepositoryArgs),
    /// One backup's manifest and last verification.
    Show {
        /// The backup id.
        id: String,
        #[command(flatten)]
        repo: RepositoryArgs,
        /// age identity file: shows the encrypted part of an encrypted backup's manifest
        /// (its tables and fingerprints).
        #[arg(long, value_name = "FILE", env = "OPSRUNNER_AGE_IDENTITY_FILE")]
        identity: Option<PathBuf>,
    },
    /// Health for monitoring and CI: exit 0 when the newest backup (and with
    /// --require-verified the newest one verified by a test restore) is younger than
    /// --max-age, else exit 1; one line says why.
    Check {
        #[command(flatten)]
        repo: RepositoryArgs,
        /// The oldest the newest backup may be, e.g. 26h.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Duration,
        /// The newest backup that passed a test restore must be younger than --max-age too.
        #[arg(long)]
        require_verified: bool,
        /// Only backups of this database.
        #[arg(long)]
        database: Option<String>,
    },
    /// Delete the backups a retention policy does not keep (restic's semantics; see README).
    Prune {
        #[command(flatten)]
        repo: RepositoryArgs,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_last: Option<u32>,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_hourly: Option<u32>,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_daily: Option<u32>,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_weekly: Option<u32>,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_monthly: Option<u32>,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep_yearly: Option<u32>,
        /// Keep everything within this span before the newest backup, e.g. 14d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        keep_within: Option<Duration>,
        /// Never delete backups younger than this.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        min_age: Option<Duration>,
        /// Only backups of this database.
        #[arg(long)]
        database: Option<String>,
        /// Also remove leftovers of unfinished backups (no manifest) untouched for
        /// --orphan-age; no --keep-* needed for this alone.
        #[arg(long)]
        orphans: bool,
        /// How long a leftover must be untouched before --orphans removes it (a backup in
        /// progress looks the same).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
        orphan_age: Duration,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty KEY"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    opsrunner::plan::duration::parse(s)
}

fn plan_args(p: PlanFileArgs, confirm: Vec<String>, color: bool) -> PlanArgs {
    PlanArgs {
        limits: Limits {
            max_bytes: p.max_plan_bytes,
            max_nodes: p.max_plan_nodes,
            ..Limits::default()
        },
        file: p.file,
        vars: p.vars,
        confirm,
        color,
        untrusted: false,
        base: None,
    }
}

fn main() {
    let cli = Cli::parse();
    let color = stderr_wants_color();
    init_tracing(cli.log_format);
    let result: Result<String, Failure> = match cli.command {
        Command::Validate(p) => commands::validate(&plan_args(p, vec![], color)),
        Command::Plan {
            plan,
            format,
            out,
            confirm,
            untrusted,
            base,
            max_chars,
            strict,
        } => {
            let args = PlanArgs {
                untrusted,
                base,
                ..plan_args(plan, confirm, color)
            };
            let output = commands::PlanOutput {
                format: PreviewFormat::chosen(format, out.as_deref()),
                out: out.as_deref(),
                max_chars,
                strict,
            };
            commands::plan(&args, &output)
        }
        Command::Diff { old, new, format } => commands::diff(&old, &new, format),
        Command::Graph { plan, format } => commands::graph(&plan_args(plan, vec![], color), format),
        Command::Schema { which } => Ok(commands::schema(which)),
        Command::Schedule { command } => schedule(command),
        Command::Wal { command } => wal(command),
        Command::Runs { command } => match command {
            RunsCommand::List { plan, limit, json } => {
                opsrunner::runs::list(plan.as_deref(), limit, json)
            }
            RunsCommand::Show { id, json } => opsrunner::runs::show(&id, json),
        },
        Command::Repo {
            command: RepoCommand::Unlock { repository, plan },
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
            runtime.block_on(backups::unlock(&repository, plan.as_deref()))
        }
        Command::Backups { command } => {
            let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
            runtime.block_on(async {
                match command {
                    BackupsCommand::List(r) => {
                        let store = backups::open_store(&r.repository, r.plan.as_deref()).await?;
                        backups::list(&store, r.json).await
                    }
                    BackupsCommand::Show { id, repo, identity } => {
                        let identities = commands::load_identities(identity.as_deref())?;
                        let store =
                            backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
                        backups::show(&store, &id, repo.json, identities.as_ref()).await
                    }
                    BackupsCommand::Check {
                        repo,
                        max_age,
                        require_verified,
                        database,
                    } => {
                        let store =
                            backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
                        backups::check(
                            &store,
                            max_age,
                            require_verified,
                            database.as_deref(),
                            repo.json,
                        )
                        .await
                    }
                    BackupsCommand::Prune {
                        repo,
                        keep_last,
                        keep_hourly,
                        keep_daily,
                        keep_weekly,
                        keep_monthly,
                        keep_yearly,
                        keep_within,
                        min_age,
                        database,
                        orphans,
                        orphan_age,
                        dry_run,
                    } => {
                        let store =
                            backups::open_store(&repo.repository, repo.plan.as_deref()).await?;
                        let keep = opsrunner::repo::retention::Keep {
                            last: keep_last,
                            hourly: keep_hourly,
                            daily: keep_daily,
                            weekly: keep_weekly,
                            monthly: keep_monthly,
                            yearly: keep_yearly,
                            within: keep_within.map(opsrunner::plan::duration::HumanDuration),
                        };
                        let orphans = orphans.then_some(orphan_age);
                        let request = backups::PruneRequest {
                            keep,
                            min_age,
                            database,
                            orphans,
                            dry_run,
                            json: repo.json,
                        };
                        backups::prune(&store, request).await
                    }
                }
            })
        }
        Command::Apply {
            plan,
            report,
            junit,
            dry_run,
            concurrency,
            confirm,
            kill_grace,
            wait_lock,
            resume,
            metrics,
            progress_every,
            identity,
        } => {
            let args = ApplyArgs {
                plan: plan_args(plan, confirm, color),
                report,
                junit,
                dry_run,
                concurrency: concurrency.map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get()),
                    usize::from,
                ),
                log_format: cli.log_format,
                kill_grace,
                wait_lock,
                resume,
                metrics,
                progress_every,
                identity,
            };
            let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
            runtime
                .block_on(commands::apply(args))
                .map(|()| String::new())
        }
    };
    let code = match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.flush())
                .is_err()
            {
                exit::STEP_FAILED
            } else {
                exit::SUCCESS
            }
        }
        Err(failure) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(failure.output().as_bytes())
                .and_then(|_| stdout.flush());
            eprint!("{}", failure.message(color));
            failure.exit_code()
        }
    };
    std::process::exit(code);
}

fn schedule(command: ScheduleCommand) -> Result<String, Failure> {
    use opsrunner::schedule;
    match command {
        ScheduleCommand::Systemd {
            file,
            out,
            schedule: when,
            bin,
            plan_path,
            user,
            env_file,
            credentials,
            encrypted_credentials,
            writable,
            randomized_delay,
            max_runtime,
            on_failure,
            metrics_dir,
            confirm,
        } => {
            let plan = schedule::read(&file, when.as_deref())?;
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let bin = match bin {
                Some(b) => b,
                None => std::env::current_exe().map_err(|e| {
                    Failure::Usage(format!("cannot tell this binary's path ({e}); give --bin"))
                })?,
            };
            let options = schedule::systemd::Options {
                bin,
                plan_path: absolute(plan_path.unwrap_or(file)),
                user,
                env_file,
                credentials,
                encrypted_credentials,
                writable,
                randomized_delay,
                max_runtime,
                on_failure,
                metrics_dir,
                confirm,
            };
            let files = schedule::systemd::generate(&plan, &options)?;
            schedule::emit(files, out.as_deref())
        }
        ScheduleCommand::K8s {
            files,
            out,
            image,
            namespace,
            secret,
            state_claim,
            repository_claim,
            starting_deadline,
            max_runtime,
            confirm,
        } => {
            let plans = files
                .iter()
                .map(|f| schedule::read(f, None))
                .collect::<Result<Vec<_>, _>>()?;
            let options = schedule::k8s::Options {
                image,
                namespace,
                secret,
                state_claim,
                repository_claim,
                starting_deadline_seconds: starting_deadline.as_secs(),
                active_deadline_seconds: max_runtime.map(|d| d.as_secs()),
                confirm,
            };
            let files = schedule::k8s::generate(&plans, &options)?;
            schedule::emit(files, out.as_deref())
        }
    }
}

/// Internal diagnostics (`OPSRUNNER_LOG=debug`), separate from the live log of events.
///
/// By default the AWS SDK's own warnings (every `aws_*` target) are left out: each failed credential provider
/// and retried request would print a line with a debug dump of the SDK's structures, and
/// what finally went wrong reaches the step's error anyway, in one line. `OPSRUNNER_LOG`
/// (e.g. `debug` or `warn,aws_config=debug`) shows them.
fn wal(command: WalCommand) -> Result<String, Failure> {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match command {
        WalCommand::Push {
            path,
            repo,
            compression,
        } => {
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            runtime.block_on(opsrunner::wal::push(&path, &at, compression))
        }
        WalCommand::Fetch {
            name,
            dest,
            repo,
            identity,
            retry_for,
        } => {
            let identities = commands::load_identities(identity.as_deref())
                .map_err(|e| Failure::WalUnreadable(e.message(false).trim().to_string()))?;
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            let options = opsrunner::wal::FetchOptions {
                identities: identities.as_ref(),
                retry_for,
            };
            runtime.block_on(opsrunner::wal::fetch(&name, &dest, &at, &options))
        }
        WalCommand::Status {
            repo,
            max_age,
            json,
        } => {
            let at = opsrunner::wal::WalRepository {
                repository: &repo.repository,
                plan: repo.plan.as_deref(),
            };
            runtime.block_on(opsrunner::wal::status(&at, max_age, json))
        }
    }
}

fn parse_compression(s: &str) -> Result<opsrunner::repo::compression::Compression, String> {
    opsrunner::repo::compression::Compression::parse(s)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws=error"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(opsrunner::run::log::LibraryLog::new(format))
        .try_init();
}
