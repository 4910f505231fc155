//! opsrunner: PostgreSQL operations declared as a YAML plan, checked, previewed and run as a
//! DAG of typed steps.
//!
//! Pipeline: [`plan`] (YAML → validated DAG) → [`run`] (preview or execute, emitting events
//! to the live log and the run report) → [`exit`] codes. [`commands`] holds the CLI verbs.

#![warn(unreachable_pub)]

pub mod atomic;
pub mod backups;
pub mod commands;
pub mod counting;
pub mod diag;
pub mod diff;
pub mod digest;
pub mod exec;
pub mod exit;
pub mod oneshot;
pub mod pg;
pub mod pipe;
pub mod plan;
pub mod process;
pub mod redact;
pub mod repo;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod schema;
pub mod steps;
pub mod wal;
