//! The integration tests, one binary (one link of the whole dependency tree instead of one
//! per file): real PostgreSQL clusters, real S3-compatible servers and the real `opsrunner`
//! binary, started by the harness in `common/`.

#[path = "../common/azure.rs"]
mod azure;
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/s3.rs"]
mod s3;

mod apply;
mod architecture;
mod azure_repository;
mod backup_restore;
mod before_the_run;
mod closed_repository;
mod copy;
mod crash_harness;
mod data_safety;
mod encryption;
mod file_backup;
mod hostile_inputs;
mod incremental;
mod migrate_seed_reset;
mod mistakes;
mod one_table_back;
mod oneshot;
mod pg_targets;
mod pitr;
mod plan_errors;
mod plans;
mod preview;
mod prune_catalog;
mod readme;
mod repository_record;
mod rows;
mod s3_repository;
mod saved_plans;
mod schemas;
mod sql_step;
mod store_conformance;
mod unattended_history;
mod unattended_locks;
mod unattended_progress;
mod versions;
mod wal_archive;
mod where_it_runs;
