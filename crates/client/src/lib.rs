//! The client side of the platform, shared by the gateway and every service.
//!
//! [`config`] fetches the service's configuration from the config server at start-up
//! (or runs on its local file), and keeps it current from refresh events on the bus,
//! swapping the whole typed configuration at once and refusing one that is not valid.
//!
//! [`discovery`] registers the instance, keeps its lease and a local copy of the
//! registry that the registry's push watch keeps current. [`lb`] sends `lb://service/path`
//! requests to the service's instances, with breakers, outlier ejection and retries.
//! [`platform`] starts the bus, discovery, load balancing and the near caches
//! (`rtalpha-cache`) of a service from its configuration in one call.

pub mod config;
pub mod discovery;
pub mod lb;
pub mod platform;
mod transport;
