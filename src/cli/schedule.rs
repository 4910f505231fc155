//! `opsrunner schedule systemd|k8s`: what runs a plan on its `schedule:`.

use super::args::parse_duration;
use opsrunner::exit::Failure;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
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

pub(crate) fn run(command: Command) -> Result<String, Failure> {
    use opsrunner::schedule;
    match command {
        Command::Systemd {
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
        Command::K8s {
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
