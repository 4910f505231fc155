//! Ephemeral clusters: `initdb` into a temporary directory, a server listening only on a
//! Unix socket inside that directory (so no port can clash and nothing is reachable from
//! the network), trust authentication, and removal when dropped — at the end of the run,
//! also when it failed or was interrupted. PostgreSQL refuses to run as root, so as root
//! the server runs as another user (`postgres` unless the target says otherwise).

use super::tools;
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an ephemeral cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    ToolMissing(#[from] tools::ToolMissing),
    #[error("invalid user name `{0}`")]
    BadUserName(String),
    #[error(
        "opsrunner runs as root and PostgreSQL refuses to; the server would run as user `{0}`, which does not exist (create it, or set `run_as` on the target)"
    )]
    NoSuchUser(String),
    #[error("cannot create a directory for the cluster: {0}")]
    Directory(std::io::Error),
    #[error("cannot hand the cluster directory to `{user}`: {error}")]
    Chown { user: String, error: std::io::Error },
    #[error("{what}: cannot start: {error}")]
    CannotStart {
        what: &'static str,
        error: std::io::Error,
    },
    /// A tool ran and failed: its own words, and the server's log when there is one.
    #[error("{what} failed: {output}")]
    Failed { what: &'static str, output: String },
}

pub struct EphemeralCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    run_as: String,
    pub major: u32,
    pub port: u16,
}

/// The fixed port number: with the socket in a private directory it only names the socket
/// file, so every cluster can use the same one.
const PORT: u16 = 5432;

pub fn user_ids(name: &str) -> Result<(u32, u32), ClusterError> {
    let cname = CString::new(name).map_err(|_| ClusterError::BadUserName(name.to_string()))?;
    // getpwnam_r, not getpwnam: steps start clusters from several threads at once, and
    // getpwnam's one static entry would be shared between them.
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpwnam_r to fill in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, the buffer for its length; the entry's
    // strings point into `buffer`, which outlives the reads below.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(ClusterError::NoSuchUser(name.to_string()));
    }
    Ok((entry.pw_uid, entry.pw_gid))
}

fn run(
    mut command: Command,
    owner: Option<(u32, u32)>,
    what: &'static str,
) -> Result<(), ClusterError> {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    let out = command
        .output()
        .map_err(|error| ClusterError::CannotStart { what, error })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Failed {
            what,
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl EphemeralCluster {
    /// Creates and starts a cluster. Blocking (about a second); call from `spawn_blocking`.
    /// The newest server found is used: it loads dumps of every older one.
    pub fn start(run_as: &str, search: &tools::Search) -> Result<EphemeralCluster, ClusterError> {
        EphemeralCluster::start_with(run_as, search.find("initdb", tools::Want::Any)?)
    }

    /// A cluster of exactly PostgreSQL `major`.
    pub fn start_major(
        run_as: &str,
        search: &tools::Search,
        major: u32,
    ) -> Result<EphemeralCluster, ClusterError> {
        EphemeralCluster::start_with(run_as, search.find("initdb", tools::Want::Exact(major))?)
    }

    fn start_with(run_as: &str, initdb: tools::Found) -> Result<EphemeralCluster, ClusterError> {
        let major = initdb.major;
        let bin = initdb
            .path
            .parent()
            .expect("a file has a parent")
            .to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("opsrunner-cluster-")
            .tempdir()
            .map_err(ClusterError::Directory)?;
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(user_ids(run_as)?)
        } else {
            None
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|error| {
                ClusterError::Chown {
                    user: run_as.to_string(),
                    error,
                }
            })?;
        }
        let data = dir.path().join("data");
        let mut cmd = Command::new(&initdb.path);
        cmd.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]);
        run(cmd, owner, "initdb")?;
        let cluster = EphemeralCluster {
            dir,
            bin,
            owner,
            run_as: run_as.to_string(),
            major,
            port: PORT,
        };
        let mut ctl = Command::new(cluster.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(cluster.options())
            .arg("start");
        if let Err(e) = run(ctl, owner, "pg_ctl start") {
            let log =
                std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default();
            return Err(match e {
                ClusterError::Failed { what, output } => ClusterError::Failed {
                    what,
                    output: format!("{output}\n{log}"),
                },
                other => other,
            });
        }
        Ok(cluster)
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's options: only the private socket, and no durability (a throwaway).
    fn options(&self) -> String {
        format!(
            "-p {PORT} -k {} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            self.dir.path().display()
        )
    }

    /// What a step needs to replace this cluster's contents.
    pub fn handle(&self) -> crate::exec::EphemeralDir {
        crate::exec::EphemeralDir {
            dir: self.dir.path().to_path_buf(),
            bin: self.bin.clone(),
            major: self.major,
            port: self.port,
            owner: self.owner,
            run_as: self.run_as.clone(),
            options: self.options(),
        }
    }

    /// A URL for `database` over the cluster's socket, as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        let host = percent_encoding::utf8_percent_encode(
            &self.dir.path().to_string_lossy(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        format!(
            "postgres://postgres@localhost:{}/{database}?host={host}",
            self.port
        )
    }

    fn stop(&self) {
        // A point-in-time restore that failed leaves its server stopped: nothing to do.
        if !self.dir.path().join("data/postmaster.pid").exists() {
            return;
        }
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = run(ctl, self.owner, "pg_ctl stop") {
            tracing::warn!("stopping the ephemeral cluster: {e}");
        }
    }
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        self.stop();
        // The TempDir removes the directory after this.
    }
}
