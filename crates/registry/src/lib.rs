//! The rtalpha service registry.
//!
//! A lease table ([`table::LeaseTable`]) holds every instance; an eviction sweep
//! removes the ones that stopped renewing, unless self-preservation judges that the
//! renewals were lost on the way. Changes are pushed to watchers at once (blocking
//! queries and server-sent events) and served over two APIs: a native JSON API under
//! `/v1/` ([`api`]) and Eureka's REST API under `/eureka/` ([`eureka`]).

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
mod dashboard;
pub mod encode;
pub mod eureka;
pub mod probe;
pub mod replication;
pub mod server;
pub mod table;
pub mod watch;
pub mod xml;

pub use config::Config;
pub use server::run;
