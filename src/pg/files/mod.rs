//! File-level base backups: the cluster's files read straight from its data directory
//! between `pg_backup_start` and `pg_backup_stop`, by several workers at once, each file
//! stored on its own — so that a later backup stores only the files, and in large files
//! only the blocks, that changed, and a restore into a directory one change behind
//! rewrites only those. For servers of any supported version, where opsrunner runs on the
//! database host (the target's `data_directory`); the server's own incremental backup
//! (PostgreSQL 17+, `pg_basebackup --incremental`) is the remote way.
//!
//! [`walk`] says what is copied, [`copy`] copies it, [`contents`] is what the backup
//! records, [`restore`] writes it back.

pub mod checksum;
pub mod contents;
pub mod copy;
pub mod restore;
pub mod walk;
