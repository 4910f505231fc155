//! How a step failed, and whether trying again can help.

use std::fmt;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Might pass on another try: a dropped connection, a busy server, a non-zero exit.
    Transient,
    /// Will fail the same way again: bad SQL, a missing file, a command that does not exist.
    Permanent,
    /// Stopped by a timeout or Ctrl-C.
    Cancelled,
    /// A safety rule stopped the step before it changed anything (exit code 3).
    Refused,
    /// A verification's finding about a backup (never retried: the backup will not change).
    Verdict(crate::exec::events::Verdict),
}

#[derive(Debug, Clone)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StepError {
    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
    pub fn verdict(verdict: crate::exec::events::Verdict, message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Verdict(verdict),
            message: message.into(),
        }
    }
    pub fn cancelled() -> Self {
        StepError {
            kind: ErrorKind::Cancelled,
            message: "cancelled".into(),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A repository I/O error as a step error: missing permissions, missing objects and
/// corrupt data will not change on a retry; anything else (the network) may.
pub fn io_error(context: &str, e: &std::io::Error) -> StepError {
    use std::io::ErrorKind::*;
    match e.kind() {
        PermissionDenied | NotFound | InvalidData | InvalidInput => {
            StepError::permanent(format!("{context}: {e}"))
        }
        _ => StepError::transient(format!("{context}: {e}")),
    }
}

/// A repository that cannot be opened will not open on a retry.
impl From<crate::repo::OpenError> for StepError {
    fn from(e: crate::repo::OpenError) -> Self {
        StepError::permanent(e.to_string())
    }
}
