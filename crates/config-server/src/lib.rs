//! The rtalpha config server.

pub mod cipher;
pub mod parse;
pub mod repo;
