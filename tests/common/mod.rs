//! Test harness: run the real `opsrunner` binary on plans written to a temporary directory,
//! and start throwaway PostgreSQL clusters.
#![allow(dead_code)]

pub mod pg;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_plan(&self, yaml: &str) -> PathBuf {
        let path = self.path("plan.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn report_path(&self) -> PathBuf {
        self.path("report.json")
    }

    /// `opsrunner apply plan.yaml --report report.json ARGS…`
    pub fn apply(&self, yaml: &str, args: &[&str]) -> Applied {
        self.apply_env(yaml, args, &[])
    }

    /// Starts `opsrunner apply plan.yaml --report report.json ARGS…` without waiting, for
    /// tests that interrupt a run; finish with [`Workspace::interrupt`].
    pub fn spawn_apply(
        &self,
        plan: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> std::process::Child {
        opsrunner()
            .arg("apply")
            .arg(plan)
            .arg("--report")
            .arg(self.report_path())
            .args(args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Sends `signal` to a run started with [`Workspace::spawn_apply`] and collects it.
    pub fn interrupt(&self, child: std::process::Child, signal: i32) -> Applied {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, signal) };
        Applied::from(child.wait_with_output().unwrap(), &self.report_path())
    }

    /// Runs `opsrunner backups ARGS… --repository file://<workspace>/repo`; returns stdout.
    pub fn backups(&self, args: &[&str]) -> String {
        let out = opsrunner()
            .arg("backups")
            .args(args)
            .arg("--repository")
            .arg(format!("file://{}", self.path("repo").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Workspace::apply`], with extra environment variables.
    /// [`Workspace::apply_env`] with an environment of owned values.
    pub fn apply_owned(
        &self,
        yaml: &str,
        args: &[&str],
        env: &[(&'static str, String)],
    ) -> Applied {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.apply_env(yaml, args, &env)
    }

    /// `opsrunner backups ARGS --repository NAME --plan plan.yaml`: (exit code, stdout,
    /// stderr).
    pub fn backups_of(
        &self,
        repository: &str,
        args: &[&str],
        env: &[(&'static str, String)],
    ) -> (i32, String, String) {
        run(opsrunner()
            .arg("backups")
            .args(args)
            .args(["--repository", repository, "--plan"])
            .arg(self.path("plan.yaml"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))))
    }

    pub fn apply_env(&self, yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Applied {
        let plan = self.write_plan(yaml);
        let output = opsrunner()
            .arg("apply")
            .arg(&plan)
            .arg("--report")
            .arg(self.report_path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Applied::from(output, &self.report_path())
    }
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Runs a command to its end: (exit code, stdout, stderr); -1 when killed by a signal.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn opsrunner() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsrunner"));
    cmd.env("NO_COLOR", "1");
    // The run history goes to a directory of the test process, not the tester's home; a
    // test that reads it sets its own.
    cmd.env("OPSRUNNER_STATE_DIR", state_dir());
    cmd
}

/// Where test runs keep their history: one temporary directory per test binary.
fn state_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

pub struct Applied {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Value,
}

impl Applied {
    pub fn from(output: Output, report: &Path) -> Applied {
        let report = std::fs::read_to_string(report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        Applied {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
            report,
        }
    }

    pub fn step(&self, id: &str) -> &Value {
        self.report["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["id"] == id))
            .unwrap_or_else(|| {
                panic!(
                    "no step {id} in report: {}\nstderr:\n{}",
                    self.report, self.stderr
                )
            })
    }

    pub fn status(&self, id: &str) -> String {
        self.step(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn attempts(&self, id: &str) -> usize {
        self.step(id)["attempts"].as_array().map_or(0, Vec::len)
    }

    pub fn everything(&self) -> String {
        format!("{}\n{}\n{}", self.stdout, self.stderr, self.report)
    }
}

/// A small tmpfs of `bytes` at a fresh directory, to fill a disk; unmounted when dropped.
/// Mounting needs root, as the tests run here (the PostgreSQL harness needs it as well).
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    pub fn new(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k", bytes.div_ceil(1024)),
            ])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "these tests mount a small tmpfs to fill a disk (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A Python interpreter that can import `module` (installing `package` from PyPI into a
/// virtual environment under `.ci/venv` the first time): for checking what opsrunner writes
/// with the reference implementation of its format. `OPSRUNNER_TEST_PYTHON` names one.
pub fn python_with(module: &str, package: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let works = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(python) = std::env::var_os("OPSRUNNER_TEST_PYTHON").map(PathBuf::from) {
        assert!(
            works(&python),
            "{} cannot import {module}",
            python.display()
        );
        return python;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
    }
    if !works(&python) {
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", package])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install {package} failed");
    }
    assert!(
        works(&python),
        "{} cannot import {module}",
        python.display()
    );
    python
}

/// A local HTTP receiver: records each request (head and body) and answers with the
/// statuses given, the last one repeated.
pub fn receiver(statuses: &[u16]) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let statuses = statuses.to_vec();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as content-length says.
            while let Ok(k) = stream.read(&mut buf) {
                if k == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..k]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&data).to_string());
            let status = *statuses.get(n).or(statuses.last()).unwrap();
            // Like Express's default error page, a refusal echoes the request's path (where
            // a webhook's token lives), percent-decoded too, then a long page.
            let head = String::from_utf8_lossy(&data).to_string();
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            let answer = if status >= 300 {
                format!(
                    "<pre>Cannot POST {path} ({})</pre>{}",
                    percent_encoding::percent_decode_str(&path).decode_utf8_lossy(),
                    "x".repeat(4000)
                )
            } else {
                "ok".to_string()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (format!("http://{addr}"), seen)
}

/// A fresh age identity in `dir/identity.txt` (mode 600): its path and public key.
pub fn identity_file(dir: &Path) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;
    let identity = age::x25519::Identity::generate();
    let path = dir.join("identity.txt");
    std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, identity.to_public().to_string())
}

/// Flips the bits of one byte `from_end` bytes before the end of a file: damage that
/// leaves its size as it was.
pub fn damage(path: &Path, from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}
