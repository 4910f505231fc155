//! Engine benchmarks (not timed tests): `cargo bench --bench engine`.
//!
//! 1. validate + preview of a generated 1,000-step plan, against the baseline of merely
//!    parsing the same YAML into events (the floor for any loader).
//! 2. executor overhead per no-op step, against the baseline of spawning and joining the
//!    same number of no-op tokio tasks on the same runtime.
//!
//! Each figure is the median of several runs; ratios to the baseline measured in the same
//! process are what BENCHMARKS.md records, since absolute times on shared machines are noisy.

use opsrunner::commands::{self, PlanArgs, PreviewFormat};
use opsrunner::exec::StepContext;
use opsrunner::exec::events::{Events, Outputs};
use opsrunner::plan::model::StepKind;
use opsrunner::plan::{self, PlanSource};
use opsrunner::redact::Redactor;
use opsrunner::run::executor::{self, ExecOptions, RunInfo};
use opsrunner::run::report::{Mode, ReportBuilder};
use opsrunner::steps::{StepFuture, StepRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const STEPS: usize = 1000;
const RUNS: usize = 15;

/// A plan shaped like real ones: fan-out groups of ten independent steps, each group
/// joined by a step that needs all ten and uses an output of one of them.
fn generate_plan() -> String {
    let mut yaml = String::from(
        "version: 1\nname: generated\nvars:\n  greeting: hi\ntargets:\n  db: { url: \"postgres://app:pw@localhost/app\" }\nsteps:\n",
    );
    let mut group: Vec<String> = Vec::new();
    let mut group_shell: Option<String> = None;
    let mut last_join: Option<String> = None;
    for i in 0..STEPS {
        let id = format!("s{i:04}");
        if group.len() == 10 {
            let needs = group.join(", ");
            yaml.push_str(&format!(
                "  - id: {id}\n    type: shell\n    needs: [{needs}]\n    command: echo {{{{ steps.{}.outputs.stdout }}}} {{{{ vars.greeting }}}}\n    retry: {{ attempts: 3, delay: 1s, backoff: exponential }}\n    timeout: 10m\n",
                group_shell.take().expect("every group has a shell step")
            ));
            group.clear();
            last_join = Some(id);
        } else {
            let needs = last_join
                .as_ref()
                .map(|j| format!("    needs: [{j}]\n"))
                .unwrap_or_default();
            if i % 3 == 0 {
                yaml.push_str(&format!(
                    "  - id: {id}\n    type: sql\n    target: db\n{needs}    query: select {i}\n"
                ));
            } else {
                yaml.push_str(&format!(
                    "  - id: {id}\n    type: shell\n{needs}    command: echo {i} {{{{ run.id }}}}\n"
                ));
                group_shell.get_or_insert_with(|| id.clone());
            }
            group.push(id);
        }
    }
    yaml
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(mut f: impl FnMut() -> T) -> Duration {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        std::hint::black_box(f());
        samples.push(start.elapsed());
    }
    median(samples)
}

struct Noop;

impl StepRunner for Noop {
    /// Does nothing but set the outputs the step type declares, so templates downstream render.
    fn run<'a>(&'a self, kind: &'a StepKind, _ctx: &'a StepContext) -> StepFuture<'a> {
        Box::pin(async move {
            Ok(kind
                .output_names()
                .iter()
                .map(|name| (name.to_string(), "x".to_string()))
                .collect::<Outputs>())
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let yaml = generate_plan();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generated.yaml");
    std::fs::write(&path, &yaml).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. validate + preview.
    let parse_only = time(|| {
        saphyr_parser::Parser::new_from_str(&yaml)
            .filter(|e| e.is_ok())
            .count()
    });
    let validate_preview = time(|| {
        let args = PlanArgs {
            file: path.clone(),
            ..Default::default()
        };
        let prepared = commands::prepare(&args, BTreeMap::new())
            .unwrap_or_else(|e| panic!("generated plan is invalid:\n{}", e.message(false)));
        let preview = runtime.block_on(commands::build_preview(&prepared, &[]));
        commands::render_preview(&preview, PreviewFormat::Text).len()
    });
    println!(
        "validate+preview, {STEPS} steps: {:.2} ms (YAML event parse alone: {:.2} ms, ratio {:.1}x)",
        ms(validate_preview),
        ms(parse_only),
        validate_preview.as_secs_f64() / parse_only.as_secs_f64()
    );

    if std::env::var_os("BENCH_PHASES").is_some() {
        let t = time(|| plan::load::load_str(&yaml).is_ok());
        println!("  phase load: {:.2} ms", ms(t));
        let p = plan::load::load_str(&yaml).unwrap();
        let t = time(|| {
            plan::validate::validate(p.clone(), &yaml, plan::yaml::Limits::default()).is_ok()
        });
        println!("  phase validate: {:.2} ms", ms(t));
        let args = PlanArgs {
            file: path.clone(),
            ..Default::default()
        };
        let prepared = commands::prepare(&args, BTreeMap::new()).ok().unwrap();
        let t = time(|| {
            runtime
                .block_on(commands::build_preview(&prepared, &[]))
                .steps
                .len()
        });
        println!("  phase preview build: {:.2} ms", ms(t));
    }

    // 2. executor overhead.

    let source = PlanSource::read(&path).unwrap();
    let (source, valid) = plan::check(source).map_err(|e| e.render(false)).unwrap();
    let valid = Arc::new(valid);
    let concurrency = std::thread::available_parallelism().map_or(2, |n| n.get());
    let executor_time = time(|| {
        runtime.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let run = RunInfo::new("generated");
            let mut builder =
                ReportBuilder::new(&source, &valid, &run.id, Mode::Apply, run.started_at);
            let consumer = tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    builder.on_event(&e);
                }
                builder
            });
            let opts = ExecOptions {
                abort: Default::default(),
                locks: None,
                reused: BTreeMap::new(),
                resumed_from: None,
                confirmed: Vec::new(),
                concurrency,
                vars: valid.plan.vars.clone(),
                env: BTreeMap::new(),
                base_dir: dir.path().to_path_buf(),
                run,
                kill_grace: Duration::from_secs(1),
                identities: None,
                fixed_target_urls: BTreeMap::new(),
                ephemeral: Default::default(),
            };
            let summary = executor::execute(
                valid.clone(),
                opts,
                Arc::new(Noop),
                Events::new(tx, Redactor::new()),
                CancellationToken::new(),
            )
            .await;
            assert!(!summary.failed && !summary.cancelled);
            consumer.await.unwrap()
        })
    });
    let spawn_baseline = time(|| {
        runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..STEPS {
                set.spawn(async move { std::hint::black_box(i) });
            }
            while set.join_next().await.is_some() {}
        })
    });
    let per_step = executor_time / STEPS as u32;
    println!(
        "executor, {STEPS} no-op steps: {:.2} ms total, {:.1} µs per step (tokio spawn+join baseline: {:.1} µs per task, ratio {:.1}x)",
        ms(executor_time),
        per_step.as_secs_f64() * 1e6,
        (spawn_baseline / STEPS as u32).as_secs_f64() * 1e6,
        executor_time.as_secs_f64() / spawn_baseline.as_secs_f64()
    );
}
