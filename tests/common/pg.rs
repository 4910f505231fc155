//! Throwaway PostgreSQL clusters for tests: `initdb` into a temporary directory, a free
//! port, the socket inside that directory, password authentication over TCP, and
//! `pg_ctl stop` when dropped. As root the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "Tr0ub4dor&3-not-in-output";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// Where the harness's own psql and pg_basebackup come from: the server's installation
    /// when it has them, Debian's otherwise (npm's builds are server programs only).
    client: PathBuf,
    user: Option<(u32, u32)>,
}

/// The server programs of PostgreSQL `major`: Debian's when installed, else those
/// `.ci/install-postgres` puts under `.ci/pg/MAJOR/bin` (run here when they are missing,
/// so that a fresh clone's `cargo test` gets them as CI does).
pub fn server_bin_of(major: u32) -> PathBuf {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("initdb").exists() {
        return debian;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci");
    let bin = root.join(format!("pg/{major}/bin"));
    if !bin.join("postgres").exists() {
        let out = Command::new(root.join("install-postgres"))
            .arg(major.to_string())
            .output()
            .expect("running .ci/install-postgres");
        assert!(
            out.status.success(),
            ".ci/install-postgres {major} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// The directory of PostgreSQL `major`'s client programs (16, 18: the wheels; 15: Debian).
pub fn client_bin_of(major: u32) -> Option<PathBuf> {
    let bin = server_bin_of(major);
    bin.join("pg_dump").exists().then_some(bin)
}

/// Finds the newest installed server binaries.
fn server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect(
        "PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )
}

fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static passwd entry, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs a `postgres` user to run the server"
    );
    // SAFETY: pw is non-null and points at a valid passwd struct.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_in(server_bin())
    }

    /// A cluster of PostgreSQL `major` (13 to 18).
    pub fn start_major(major: u32) -> Cluster {
        Cluster::start_in(server_bin_of(major))
    }

    /// The server's major version, as it says.
    pub fn major(&self) -> u32 {
        self.psql(
            "postgres",
            "select current_setting('server_version_num')::int / 10000",
        )
        .parse()
        .unwrap()
    }

    fn client_for(bin: &Path) -> PathBuf {
        if bin.join("psql").exists() {
            bin.to_path_buf()
        } else {
            // The newest client tools read every older server (pg_dump refuses newer ones).
            server_bin_of(18)
        }
    }

    fn start_in(bin: PathBuf) -> Cluster {
        let client = Cluster::client_for(&bin);
        let dir = tempfile::tempdir().unwrap();
        let user = postgres_ids();
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid);
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = user {
            chown(&pwfile, uid, gid);
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, user);
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut ctl = Command::new(bin.join("pg_ctl"));
            ctl.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .arg("-w")
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ))
                .arg("start");
            if let Some((uid, gid)) = user {
                ctl.uid(uid).gid(gid);
            }
            let out = ctl.output().unwrap();
            if out.status.success() {
                return Cluster {
                    dir,
                    port,
                    bin,
                    client,
                    user,
                };
            }
            last_err = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        }
        panic!("PostgreSQL did not start:\n{last_err}");
    }

    /// A URL with the password, as a user would put in `DATABASE_URL`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            urlencode(PASSWORD),
            self.port
        )
    }

    /// Runs SQL as the superuser over the socket with psql; returns stdout.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.psql_command(database, sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The psql command [`Cluster::psql`] runs, for running it in the background.
    pub fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut cmd = Command::new(self.client.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-h",
        ])
        .arg(self.dir.path())
        .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]);
        cmd
    }
}

impl Cluster {
    /// Stops the server at once, as a crash or an operator's `pg_ctl stop -m immediate`.
    pub fn stop(&self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(ctl, self.user);
    }

    /// Stops the server cleanly (a shutdown checkpoint: every page is on disk).
    pub fn stop_clean(&self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(ctl, self.user);
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) {
        self.restart_env(&[]);
    }

    /// Starts a stopped server again with `env` added to its environment.
    pub fn restart_env(&self, env: &[(&str, &str)]) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .envs(env.iter().copied());
        run(ctl, self.user);
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started on its own port.
    /// It inherits the primary's configuration, `archive_command` included; a standby does
    /// not archive until it is promoted.
    pub fn standby(&self) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = self.user {
            chown(dir.path(), uid, gid);
        }
        let data = dir.path().join("data");
        let mut copy = self.tool("pg_basebackup");
        copy.arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "-h", "127.0.0.1"])
            .arg(format!("-p{}", self.port))
            .args(["-U", "postgres"]);
        run(copy, self.user);
        let standby = Cluster {
            dir,
            port: free_port(),
            bin: self.bin.clone(),
            client: self.client.clone(),
            user: self.user,
        };
        standby.restart();
        standby
    }

    /// Starts the server of a data directory someone else made in `dir/data` (a restore),
    /// with the configuration it holds, on a free port.
    pub fn adopt(dir: tempfile::TempDir) -> Cluster {
        Cluster::adopt_env(dir, &[])
    }

    /// [`Cluster::adopt`] with `env` in the server's environment.
    pub fn adopt_env(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Cluster {
        let bin = server_bin();
        let cluster = Cluster {
            dir,
            port: free_port(),
            client: Cluster::client_for(&bin),
            bin,
            user: postgres_ids(),
        };
        cluster.restart_env(env);
        cluster
    }

    /// Waits until the server has left recovery.
    pub fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql("postgres", "select pg_is_in_recovery()") != "f" {
            assert!(
                Instant::now() < deadline,
                "still in recovery:\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A field of `pg_controldata` for the (stopped or running) data directory `data`.
    pub fn control_field(data: &Path, field: &str) -> String {
        let out = Command::new(server_bin().join("pg_controldata"))
            .arg("-D")
            .arg(data)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{field}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    }

    /// Promotes a standby: it leaves recovery on a new timeline.
    pub fn promote(&self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "promote"]);
        run(ctl, self.user);
    }

    /// Databases whose names mark them as opsrunner's staging or replaced databases.
    pub fn restore_leftovers(&self) -> String {
        self.psql(
            "postgres",
            "select coalesce(string_agg(datname, ',' order by datname), '') from pg_database where datname like '%\\_opsrunner\\_%'",
        )
    }

    /// Turns page checksums on (`pg_checksums --enable`, the server stopped meanwhile).
    pub fn enable_checksums(&self) {
        self.stop_clean();
        let mut enable = Command::new(self.bin.join("pg_checksums"));
        enable
            .arg("--enable")
            .arg("-D")
            .arg(self.dir.path().join("data"));
        run(enable, self.user);
        self.restart();
    }

    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.client.join(name));
        cmd.env("PGPASSWORD", PASSWORD);
        cmd
    }

    /// Waits until some session holds an exclusive lock on `table`: tests that make pg_dump
    /// wait must not race the session taking the lock.
    pub fn wait_for_exclusive_lock(&self, database: &str, table: &str) {
        let sql = format!(
            "select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = '{table}' and l.mode = 'AccessExclusiveLock' and l.granted"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.psql(database, &sql) != "1" {
            assert!(
                std::time::Instant::now() < deadline,
                "nobody took the lock on {table}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Runs a SQL file with psql, stopping at the first error.
    pub fn psql_file(&self, database: &str, file: &Path) {
        let out = self
            .tool("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", database, "-f"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql -f failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_dump --schema-only`, without the random `\restrict` lines of PG 15.14+.
    pub fn schema(&self, database: &str) -> String {
        let out = self
            .tool("pg_dump")
            .args(["--schema-only", "--no-sync", "-U", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", database])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every user table's and materialized view's rows as `COPY … TO STDOUT` text, sorted,
    /// plus the large objects and sequence values: an independent picture of a database's
    /// content. A partitioned table shows its partitions' rows again, which is harmless.
    pub fn content(&self, database: &str) -> String {
        let tables = self.psql(
            database,
            "select format('%I.%I', schemaname, tablename) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')
             union all select format('%I.%I', schemaname, matviewname) from pg_matviews order by 1",
        );
        let mut out = String::new();
        for table in tables.lines() {
            let copied = self.psql(database, &format!("copy (select * from {table}) to stdout"));
            let mut rows: Vec<&str> = copied.lines().collect();
            rows.sort();
            out.push_str(&format!(
                "== {table} ({} rows)\n{}\n",
                rows.len(),
                rows.join("\n")
            ));
        }
        out.push_str(&self.psql(database, "select string_agg(oid::text || ':' || md5(lo_get(oid)), ',' order by oid) from pg_largeobject_metadata"));
        out.push('\n');
        out.push_str(&self.psql(
            database,
            "select string_agg(format('%I.%I=%s', schemaname, sequencename, last_value), ',' order by schemaname, sequencename) from pg_sequences",
        ));
        out
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn run(mut cmd: Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        if let Some((uid, gid)) = self.user {
            ctl.uid(uid).gid(gid);
        }
        let _ = ctl.output();
    }
}

/// The uid and gid the test clusters' server runs as (the `postgres` user when root).
pub fn server_owner(cluster: &Cluster) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(cluster.dir.path().join("data")).unwrap();
    (meta.uid(), meta.gid())
}

/// Makes `cluster` archive with `opsrunner wal push %p ARGS`, through a script that sets
/// `env` (the server's own environment is the test's, set when it started).
pub fn archive_with(cluster: &Cluster, args: &str, env: &[(&str, String)]) {
    // A repository is made on purpose before anything archives into it, as an operator
    // would: `opsrunner repo init` with the same repository (and plan).
    let words: Vec<&str> = args.split_whitespace().collect();
    let value = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let mut init = std::process::Command::new(env!("CARGO_BIN_EXE_opsrunner"));
    init.args([
        "repo",
        "init",
        value("--repository").expect("archive_with names --repository"),
    ]);
    if let Some(plan) = value("--plan") {
        init.args(["--plan", plan]);
    }
    let out = init.envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
    assert!(
        out.status.success(),
        "repo init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = cluster.dir.path().join("archive.sh");
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{exports}exec {} wal push \"$1\" {args}\n",
            env!("CARGO_BIN_EXE_opsrunner")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    cluster.psql("postgres", "alter system set archive_mode = on");
    cluster.psql(
        "postgres",
        &format!(
            "alter system set archive_command = '{} %p'",
            script.display()
        ),
    );
    cluster.stop();
    cluster.restart();
}

/// Writes some WAL and switches segments until `count` files have been archived.
pub fn archived_at_least(cluster: &Cluster, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived: u64 = cluster
            .psql("postgres", "select archived_count from pg_stat_archiver")
            .trim()
            .parse()
            .unwrap();
        if archived >= count {
            break;
        }
        let failed = cluster.psql(
            "postgres",
            "select failed_count || ' ' || coalesce(last_failed_wal, '') from pg_stat_archiver",
        );
        assert!(
            Instant::now() < deadline,
            "only {archived} archived, failures: {failed}\n{}",
            std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default()
        );
        cluster.psql(
            "postgres",
            "create table if not exists churn (v text); insert into churn select md5(g::text) from generate_series(1, 5000) g; select pg_switch_wal()",
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Switches to a new WAL segment and waits until the one holding everything written so far
/// is in the archive (found by `archived`).
pub fn archive_everything(cluster: &Cluster, archived: impl Fn(&str) -> bool) {
    let segment = cluster
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .trim()
        .to_string();
    cluster.psql("postgres", "select pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archived(&segment) {
        assert!(
            Instant::now() < deadline,
            "{segment} was not archived: {}",
            cluster.psql(
                "postgres",
                "select failed_count || ' ' || coalesce(last_failed_wal, '') from pg_stat_archiver"
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The archive of a local repository at `repo` holds `segment`.
pub fn in_local(repo: &Path) -> impl Fn(&str) -> bool + '_ {
    move |segment| repo.join(".wal").join(segment).exists()
}

/// The server's clock now, as an RFC 3339 time a restore can aim at.
pub fn server_now(cluster: &Cluster) -> String {
    cluster.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}
