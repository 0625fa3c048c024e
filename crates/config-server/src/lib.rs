//! The rtalpha config server.

pub mod cipher;
pub mod environment;
pub mod parse;
pub mod repo;
