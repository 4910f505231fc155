//! The crash and fault harness: the work is interrupted at random moments — SIGKILL of
//! opsrunner during backup, restore with overwrite, verify and prune, on a local and on an
//! S3 repository; the server stopped during backup and restore; the repository's disk and
//! the temporary disk full — and after every interruption the invariants are checked:
//!
//! 1. every published backup passes verify, and none is listed as damaged;
//! 2. the database a restore replaces is either the old one, untouched, or the new one,
//!    complete — never missing, never half there;
//! 3. nothing outside the repository changed;
//! 4. the next run of the same operation succeeds and leaves no leftovers.
//!
//! `OPSRUNNER_CRASH_ROUNDS` (default 2) sets the rounds per scenario and
//! `OPSRUNNER_CRASH_SEED` the random moments; the seed is printed so that a failure can
//! be replayed. RELIABILITY.md has the figures of a long run.

use crate::common::pg::Cluster;
use crate::common::{SmallDisk, Workspace, opsrunner};
use crate::s3::{BUCKET, S3Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const ROWS: u32 = 200_000;

fn rounds() -> usize {
    std::env::var("OPSRUNNER_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("OPSRUNNER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("OPSRUNNER_CRASH_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Local,
    S3,
}

struct Harness {
    cluster: Cluster,
    url: String,
    ws: Workspace,
    s3: S3Server,
    /// Files outside the repository that nothing may change, with their contents.
    outside: Vec<(PathBuf, Vec<u8>)>,
    /// `count:md5` of `items` as the backups hold it.
    expected_items: String,
    log: Vec<String>,
}

impl Harness {
    fn new() -> Harness {
        let cluster = Cluster::start();
        cluster.psql("postgres", "create database app");
        cluster.psql(
            "app",
            &format!(
                "create table items (id int primary key, label text, body text);
                 insert into items select g, md5(g::text), repeat(md5((g * 7)::text), 4) from generate_series(1, {ROWS}) g;
                 create index on items (label)"
            ),
        );
        let url = cluster.url("postgres");
        let ws = Workspace::new();
        let s3 = S3Server::start(&ws.path("s3"));
        // A neighbour of the repository, reachable by a link planted inside it.
        let neighbour = ws.path("neighbour");
        std::fs::create_dir_all(neighbour.join("old-backup")).unwrap();
        std::fs::write(neighbour.join("old-backup/manifest.json"), "{}").unwrap();
        std::fs::write(neighbour.join("precious.txt"), "do not touch").unwrap();
        std::fs::create_dir_all(ws.path("repo")).unwrap();
        std::os::unix::fs::symlink(neighbour.join("old-backup"), ws.path("repo/00-link")).unwrap();
        let outside = crate::common::files_under(&neighbour)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        let expected_items = cluster.psql(
            "app",
            "select count(*) || ':' || md5(string_agg(label || body, ',' order by id)) from items",
        );
        let h = Harness {
            cluster,
            url,
            ws,
            s3,
            outside,
            expected_items,
            log: Vec::new(),
        };
        h.reset_precious();
        h
    }

    fn plan(&self, store: Store, repo_dir: &str, steps: &str) -> PathBuf {
        let repository = match store {
            Store::Local => format!("{{ url: \"file://{repo_dir}\", create: true }}"),
            Store::S3 => format!(
                "{{ url: \"s3://{BUCKET}/app\", endpoint: \"{}\", force_path_style: true, part_size_mib: 5, create: true }}",
                self.s3.endpoint
            ),
        };
        let text = format!(
            "version: 1\nname: harness\ntargets:\n  db: {{ url: \"{{{{ env.DATABASE_URL }}}}\" }}\nrepositories:\n  repo: {repository}\nsteps:\n{steps}"
        );
        let path = self.ws.path(&format!("plan-{}.yaml", fastrand::u32(..)));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, args: &[&str], tmpdir: Option<&Path>) -> std::process::Command {
        let mut cmd = opsrunner();
        cmd.args(args).env("DATABASE_URL", &self.url);
        for (k, v) in crate::s3::aws_env() {
            cmd.env(k, v);
        }
        if let Some(t) = tmpdir {
            cmd.env("TMPDIR", t);
        }
        cmd.current_dir(self.ws.dir.path());
        cmd
    }

    fn spawn(&self, plan: &Path, tmpdir: Option<&Path>) -> Child {
        self.command(&["apply", plan.to_str().unwrap()], tmpdir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, plan: &Path, tmpdir: Option<&Path>) -> Output {
        self.command(&["apply", plan.to_str().unwrap()], tmpdir)
            .output()
            .unwrap()
    }

    fn must_run(&self, plan: &Path) -> Output {
        let out = self.run(plan, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `backups list --json` of a repository, through a plan that declares it.
    fn listed(&self, store: Store, repo_dir: &str) -> Vec<serde_json::Value> {
        let plan = self.plan(
            store,
            repo_dir,
            "  - { id: x, type: shell, command: \"true\" }\n",
        );
        let out = self
            .command(
                &[
                    "backups",
                    "list",
                    "--json",
                    "--repository",
                    "repo",
                    "--plan",
                    plan.to_str().unwrap(),
                ],
                None,
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn backup_steps() -> &'static str {
        "  - { id: backup, type: backup, target: db, database: app, repository: repo, compression: zstd }\n"
    }

    fn restore_steps(extra: &str) -> String {
        format!(
            "  - {{ id: restore, type: restore, repository: repo, backup: latest, source_database: app, into: {{ target: db, database: precious }}, overwrite: true{extra} }}\n"
        )
    }

    fn reset_precious(&self) {
        self.cluster
            .psql("postgres", "drop database if exists precious with (force)");
        self.cluster.psql("postgres", "create database precious");
        self.cluster.psql(
            "precious",
            "create table keep (v text); insert into keep values ('mine')",
        );
    }

    /// Invariant 2: `precious` is the old database or the complete new one.
    fn precious_state(&self) -> &'static str {
        let exists = self.cluster.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'precious'",
        );
        assert_eq!(exists, "1", "the database being replaced is gone");
        let tables = self.cluster.psql(
            "precious",
            "select coalesce(string_agg(tablename, ',' order by tablename), '') from pg_tables where schemaname = 'public'",
        );
        match tables.as_str() {
            "keep" => {
                assert_eq!(self.cluster.psql("precious", "select v from keep"), "mine");
                "old"
            }
            "items" => {
                let items = self.cluster.psql(
                    "precious",
                    "select count(*) || ':' || md5(string_agg(label || body, ',' order by id)) from items",
                );
                assert_eq!(items, self.expected_items, "the new database is incomplete");
                "new"
            }
            other => panic!("precious holds neither the old nor the new database: tables {other}"),
        }
    }

    /// Invariants 1 and 3.
    fn check_repository(&self, store: Store, repo_dir: &str) {
        let listed = self.listed(store, repo_dir);
        let mut steps = String::new();
        for (i, entry) in listed.iter().enumerate() {
            let id = entry["backup_id"].as_str().unwrap();
            if entry.get("damaged").is_some() {
                assert!(
                    store == Store::Local && id == "00-link",
                    "a damaged backup appeared: {entry}"
                );
                continue;
            }
            assert!(
                entry.get("verification_problem").is_none(),
                "a verification record went bad: {entry}"
            );
            steps.push_str(&format!(
                "  - {{ id: v{i}, type: verify, repository: repo, backup: \"{id}\" }}\n"
            ));
        }
        if !steps.is_empty() {
            let out = self.run(&self.plan(store, repo_dir, &steps), None);
            assert!(
                out.status.success(),
                "a published backup fails verify: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (path, bytes) in &self.outside {
            assert_eq!(
                std::fs::read(path).ok().as_ref(),
                Some(bytes),
                "{} changed",
                path.display()
            );
        }
    }

    /// How long an uninterrupted run of `plan` takes (to aim the interruptions).
    fn measure(&self, plan: &Path) -> Duration {
        let started = Instant::now();
        self.must_run(plan);
        started.elapsed()
    }

    fn note(&mut self, line: String) {
        eprintln!("{line}");
        self.log.push(line);
    }
}

fn kill(child: &mut Child) -> bool {
    let finished = child.try_wait().unwrap().is_some();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    !finished
}

/// SIGKILL at random moments of backup, restore with overwrite, verify and prune.
fn sigkill_scenarios(store: Store) {
    let mut h = Harness::new();
    let mut rng = rng();
    let repo = "./repo";
    let backup = h.plan(store, repo, Harness::backup_steps());
    let restore = h.plan(store, repo, &Harness::restore_steps(""));
    let verify = h.plan(
        store,
        repo,
        "  - { id: verify, type: verify, repository: repo, backup: latest }\n",
    );
    let prune = h.plan(
        store,
        repo,
        "  - { id: prune, type: prune, repository: repo, keep: { last: 2 } }\n",
    );
    let scenarios: [(&str, &PathBuf); 4] = [
        ("backup", &backup),
        ("restore", &restore),
        ("verify", &verify),
        ("prune", &prune),
    ];
    for (name, plan) in scenarios {
        // Enough backups for prune to have work: measured as in every round, three to
        // delete.
        for _ in 0..3 {
            h.must_run(&backup);
        }
        if name == "prune" {
            h.must_run(&prune);
            for _ in 0..3 {
                h.must_run(&backup);
            }
        }
        let normal = h.measure(plan);
        let mut interrupted = 0;
        for _ in 0..rounds() {
            if name == "prune" {
                for _ in 0..3 {
                    h.must_run(&backup);
                }
            }
            h.reset_precious();
            // Start-up takes a good part of a short run: aim at its later part.
            let at = normal.mul_f64(0.2 + rng.f64() * 0.9);
            let mut child = h.spawn(plan, None);
            std::thread::sleep(at);
            interrupted += usize::from(kill(&mut child));
            if name == "restore" {
                h.precious_state();
            }
            h.check_repository(store, repo);
            if name == "prune" {
                let newest = h.listed(store, repo);
                assert!(
                    newest.iter().any(|e| e.get("damaged").is_none()),
                    "prune left nothing"
                );
            }
            // The next run succeeds and cleans up after the killed one.
            h.must_run(plan);
            if name == "restore" {
                assert_eq!(h.precious_state(), "new");
                assert_eq!(h.cluster.restore_leftovers(), "");
            }
        }
        h.note(format!(
            "{store:?} SIGKILL during {name}: {} rounds, {interrupted} killed mid-run (run takes {normal:?}); invariants held",
            rounds()
        ));
    }
}

#[test]
fn sigkill_at_random_moments_on_a_local_repository() {
    sigkill_scenarios(Store::Local);
}

#[test]
fn sigkill_at_random_moments_on_an_s3_repository() {
    sigkill_scenarios(Store::S3);
}

/// The server stopped (immediate shutdown) at random moments of backup and restore.
#[test]
fn server_stopped_at_random_moments() {
    let mut h = Harness::new();
    let mut rng = rng();
    let repo = "./repo";
    let backup = h.plan(Store::Local, repo, Harness::backup_steps());
    let restore = h.plan(Store::Local, repo, &Harness::restore_steps(""));
    h.must_run(&backup);
    for (name, plan) in [("backup", &backup), ("restore", &restore)] {
        let normal = h.measure(plan);
        let mut failed = 0;
        for _ in 0..rounds() {
            h.reset_precious();
            let mut child = h.spawn(plan, None);
            std::thread::sleep(normal.mul_f64(rng.f64()));
            h.cluster.stop();
            let status = child.wait().unwrap();
            failed += usize::from(!status.success());
            h.cluster.restart();
            if name == "restore" {
                h.precious_state();
            }
            h.check_repository(Store::Local, repo);
            h.must_run(plan);
            if name == "restore" {
                assert_eq!(h.precious_state(), "new");
                assert_eq!(h.cluster.restore_leftovers(), "");
            }
        }
        h.note(format!(
            "server stopped during {name}: {} rounds, {failed} runs failed by it; invariants held",
            rounds()
        ));
    }
}

/// The repository's disk and the temporary disk full at random sizes.
#[test]
fn full_disks_at_random_sizes() {
    let mut h = Harness::new();
    let mut rng = rng();
    let mut outcomes = (0, 0);
    for _ in 0..rounds() {
        // Repository: the backup (about 6 MB) fits or does not.
        let disk = SmallDisk::new(rng.u64(64 << 10..12 << 20));
        let repo = disk.path().display().to_string();
        let backup = h.plan(Store::Local, &repo, Harness::backup_steps());
        let first = h.run(&backup, None);
        let second = h.run(&backup, None);
        outcomes.0 += usize::from(!first.status.success()) + usize::from(!second.status.success());
        h.check_repository(Store::Local, &repo);
        drop(disk);
    }
    let repo = "./repo";
    h.must_run(&h.plan(Store::Local, repo, Harness::backup_steps()));
    let restore = h.plan(Store::Local, repo, &Harness::restore_steps(", jobs: 2"));
    for _ in 0..rounds() {
        // Temporary disk of a parallel restore: the spooled archive fits or does not.
        h.reset_precious();
        let disk = SmallDisk::new(rng.u64(64 << 10..96 << 20));
        let out = h.run(&restore, Some(disk.path()));
        if !out.status.success() {
            outcomes.1 += 1;
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(text.contains("No space left on device"), "{text}");
            assert_eq!(h.precious_state(), "old");
        } else {
            assert_eq!(h.precious_state(), "new");
        }
        assert_eq!(h.cluster.restore_leftovers(), "");
        drop(disk);
    }
    h.note(format!(
        "full disks: {} rounds each; {} of {} backups and {} of {} parallel restores failed for lack of space; invariants held",
        rounds(),
        outcomes.0,
        2 * rounds(),
        outcomes.1,
        rounds()
    ));
}
