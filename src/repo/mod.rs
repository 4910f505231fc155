//! Backup repositories. Every backend (a local directory, S3, memory) implements one
//! object interface, [`Store`] ([`store`]); everything a repository holds — backups and
//! their manifests and verification records ([`layout`]), WAL ([`wal`]), marks, leases —
//! is laid out on it once, above the backends. [`AnyStore`] is a repository of any
//! backend; the streaming pipeline in [`pipeline`] writes through it.

mod any;
pub mod archive;
pub mod azure;
pub mod bundle;
pub mod compression;
pub mod copy;
pub mod crypto;
pub mod export;
pub mod faults;
pub mod layout;
pub mod lease;
pub mod listing;
pub mod local;
pub mod manifest;
pub mod mark;
pub mod memory;
pub mod parts;
pub mod pipeline;
pub mod prune;
pub mod record;
pub mod registry;
pub mod retention;
#[cfg(feature = "s3")]
pub mod s3;
pub mod store;
pub mod timeline;
pub mod wal;

pub use any::AnyStore;
pub use registry::open;
pub use store::{
    BackupStore, Condition, FileSink, Listed, MAX_SMALL_FILE, OpenError, Reader, Slot, Small, Stat,
    Store, check_id,
};
