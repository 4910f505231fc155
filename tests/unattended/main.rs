//! Unattended operation, against real PostgreSQL clusters, a local repository and a real
//! S3-compatible server: no overlapping runs ([`locks`]), run history, resume and metrics
//! ([`history`]), progress and log shapes ([`progress`]).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/s3.rs"]
mod s3;

mod history;
mod locks;
mod progress;
