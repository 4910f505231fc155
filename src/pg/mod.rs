//! PostgreSQL plumbing shared by the steps: connection details ([`conn`]), finding the
//! programs ([`tools`]) and throwaway clusters ([`cluster`]).

pub mod cluster;
pub mod conn;
pub mod fingerprint;
pub mod process;
pub mod restore;
pub mod server;
pub mod swap;
pub mod tools;
