//! What steps, PostgreSQL plumbing and the executor share, below all three: a step's error
//! and its kinds ([`error`]), the context a step runs in ([`context`]) and the events it
//! emits ([`events`]). Nothing here imports `steps/`, `pg/` or `run/`, so the import graph
//! has no cycle (`tests/it/architecture.rs` keeps it so).

pub mod context;
pub mod error;
pub mod events;
pub mod output;
pub mod progress;

pub use context::{EphemeralDir, StepContext};
pub use error::{ErrorKind, StepError, io_error};
