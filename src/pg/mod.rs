//! PostgreSQL plumbing, knowing nothing of steps: connection details ([`conn`]), finding
//! the programs ([`tools`]), throwaway clusters ([`cluster`]), databases ([`database`]) and
//! replacing one without destroying it first ([`swap`]).

pub mod basebackup;
pub mod cluster;
pub mod compat;
pub mod conn;
pub mod copy_in;
pub mod custom_archive;
pub mod data_directory;
pub mod database;
pub mod files;
pub mod fingerprint;
pub mod lock;
pub mod process;
pub mod recovery;
pub mod restore;
pub mod rows;
pub mod server;
pub mod statements;
pub mod swap;
pub mod tables;
pub mod tools;
pub mod unpack;
