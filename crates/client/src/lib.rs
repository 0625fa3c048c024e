//! The client side of the platform, shared by the gateway and every service.
//!
//! [`config`] fetches the service's configuration from the config server at start-up
//! (or runs on its local file), and keeps it current from refresh events on the bus,
//! swapping the whole typed configuration at once and refusing one that is not valid.

pub mod config;
