//! Wire types of the rtalpha platform.
//!
//! Everything that crosses the network between our servers, clients and third-party
//! tools is declared here, so that a change to a contract is a change to this crate.
//! The registry's native JSON API, the Eureka-compatible shapes, and the JSON error
//! body that every server answers with live side by side.

pub mod bus;
pub mod cache;
pub mod error;
pub mod eureka;
pub mod instance;
pub mod registry;
pub mod replication;

pub use error::ErrorBody;
pub use instance::{DataCenter, Instance, LeaseInfo, Port, Status, StatusParseError};
