//! Exit codes, in one place. They are part of opsrunner's interface (README, "Exit codes"):
//! systemd units and CI jobs branch on them.

/// Everything that was asked for succeeded.
pub const SUCCESS: i32 = 0;
/// A step failed (or opsrunner could not write its output).
pub const STEP_FAILED: i32 = 1;
/// The plan is invalid, or the command line is (clap uses 2 for usage errors too).
pub const INVALID: i32 = 2;
/// A guard refused the run (a destructive step on a protected target without `--confirm`;
/// nothing was touched), or another run holds a lock on a target or repository this run
/// writes to.
pub const REFUSED: i32 = 3;
/// `plan --strict`: the preview is incomplete, because a target or repository it needed
/// could not be read (what a prune would delete, which backup `latest` is, which
/// migrations are pending is unknown).
pub const INCOMPLETE: i32 = 4;
/// `apply`: a verify found the backup intact but older than its `max_age` (and none
/// corrupt): backups have stopped.
pub const BACKUP_TOO_OLD: i32 = 5;
/// `apply`: a verify found a backup damaged, not restoring, or restoring different
/// content from what it recorded.
pub const BACKUP_CORRUPT: i32 = 6;
/// `wal fetch`: the archive proved the file absent (PostgreSQL reads any code from 1 to 125
/// as "not in the archive": the end of recovery).
pub const WAL_NOT_FOUND: i32 = 1;
/// `wal fetch`: the archive could not be read (for `--retry-for`), the file is damaged, or
/// the key is missing. Above 125, so that PostgreSQL aborts recovery instead of ending it
/// early at the wrong point.
pub const WAL_UNREADABLE: i32 = 255;
/// Interrupted by Ctrl-C or SIGTERM; running steps were cancelled.
pub const INTERRUPTED: i32 = 130;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    Plan(crate::plan::PlanError),
    Usage(String),
    Refused(String),
    Io(String),
    StepsFailed,
    /// Steps failed, among them verifications with this finding.
    Verdict(crate::exec::events::Verdict),
    Interrupted,
    /// `plan --strict` could not read everything; `output` is the preview, still printed.
    Incomplete {
        output: String,
        message: String,
    },
    /// A check found this (`wal status`: too old, or a gap); `output` is still printed.
    Found {
        verdict: crate::exec::events::Verdict,
        output: String,
        message: String,
    },
    /// `wal fetch`: proven absent from the archive.
    WalNotFound(String),
    /// `wal fetch`: nothing is known (see [`WAL_UNREADABLE`]).
    WalUnreadable(String),
    /// `psql`: the interactive program's own exit code, passed on.
    Passed(i32),
}

/// A repository that cannot be opened is a mistake in its definition or the command line.
impl From<crate::repo::OpenError> for Failure {
    fn from(e: crate::repo::OpenError) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl Failure {
    /// What still goes to stdout when the command did not succeed.
    pub fn output(&self) -> &str {
        match self {
            Failure::Incomplete { output, .. } | Failure::Found { output, .. } => output,
            _ => "",
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Plan(_) | Failure::Usage(_) => INVALID,
            Failure::Refused(_) => REFUSED,
            Failure::Io(_) | Failure::StepsFailed => STEP_FAILED,
            Failure::Verdict(crate::exec::events::Verdict::BackupTooOld) => BACKUP_TOO_OLD,
            Failure::Verdict(crate::exec::events::Verdict::BackupCorrupt) => BACKUP_CORRUPT,
            Failure::Interrupted => INTERRUPTED,
            Failure::Incomplete { .. } => INCOMPLETE,
            Failure::Found { verdict, .. } => Failure::Verdict(*verdict).exit_code(),
            Failure::WalNotFound(_) => WAL_NOT_FOUND,
            Failure::WalUnreadable(_) => WAL_UNREADABLE,
            Failure::Passed(code) => *code,
        }
    }

    /// What to print on stderr; empty when the live log already told the story.
    pub fn message(&self, color: bool) -> String {
        match self {
            Failure::Plan(e) => e.render(color),
            Failure::Usage(m) => format!("error: {m}\n"),
            Failure::Refused(m) => format!("refused: {m}\n"),
            Failure::Io(m) => format!("error: {m}\n"),
            Failure::Incomplete { message, .. } => format!("error: {message}\n"),
            Failure::WalNotFound(m) => format!("{m}\n"),
            Failure::Found { message, .. } => format!("error: {message}\n"),
            Failure::WalUnreadable(m) => format!("error: {m}\n"),
            Failure::StepsFailed
            | Failure::Verdict(_)
            | Failure::Interrupted
            | Failure::Passed(_) => String::new(),
        }
    }
}
