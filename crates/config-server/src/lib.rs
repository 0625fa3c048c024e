//! The rtalpha config server.
//!
//! It serves the configuration of every other process from an immutable in-memory
//! [`environment::Snapshot`] per label and commit, in Spring Cloud Config's HTTP API,
//! so Spring's clients and ours work unchanged. The request path never touches the
//! network: a background task fetches the git remote ([`store::Store::refresh`]) and
//! swaps snapshots whole; when the remote is down, the last good copy is served and
//! `/health` and each answer's `state` say so.

pub mod cipher;
pub mod config;
pub mod environment;
pub mod monitor;
pub mod parse;
pub mod repo;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::run;
