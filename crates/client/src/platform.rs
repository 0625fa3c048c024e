//! One call that gives a service its part in the platform from its
//! configuration: the bus, its registration and the registry's view,
//! load-balanced calls, and its near caches. A service's typed config carries
//! a [`PlatformSettings`] (the `discovery`, `lb`, `cache` and `bus` keys) and
//! starts everything with [`Platform::start`]; the config client is started
//! apart, because it produces that typed config.

use rtalpha_bus::Bus;
use rtalpha_cache::{CacheConfig, Caches};
use rtalpha_proto::registry::Registration;
use rtalpha_runtime::health::Health;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::discovery::{DiscoveryClient, DiscoverySettings};
use crate::lb::{LbClient, LbSettings};

/// The platform sections of a service's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformSettings {
    /// Registration and the registry's view.
    pub discovery: DiscoverySettings,
    /// Load-balanced calls.
    pub lb: LbSettings,
    /// Near caches; their invalidations travel on `bus` (or Redis).
    pub cache: CacheConfig,
    /// `amqp://…` (RabbitMQ) or a config server's `http://host:port` (its relay);
    /// unset, no bus.
    pub bus: Option<String>,
}

impl PlatformSettings {
    /// The problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.discovery.problems();
        problems.extend(self.lb.problems());
        if let Err(err) = rtalpha_runtime::config::Validate::validate(&self.cache) {
            problems.push(format!("cache: {err}"));
        }
        if let Some(bus) = &self.bus
            && !(bus.starts_with("amqp://") || bus.starts_with("amqps://") || bus.starts_with("http://"))
        {
            problems.push(format!("bus: `{bus}` is neither amqp:// nor http://"));
        }
        problems
    }
}

/// Why the platform parts could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The settings are not valid.
    #[error("invalid platform settings: {0}")]
    Invalid(String),
    /// The bus URL was refused.
    #[error("bus: {0}")]
    Bus(String),
    /// The caches could not be set up.
    #[error("cache: {0}")]
    Cache(String),
}

/// A service's platform parts.
#[derive(Clone, Debug)]
pub struct Platform {
    /// The bus, when one is configured.
    pub bus: Option<Bus>,
    /// Registration and the registry's view.
    pub discovery: DiscoveryClient,
    /// `lb://` calls.
    pub lb: LbClient,
    /// The service's near caches: `platform.caches.cache::<Product>("products")`.
    pub caches: Caches,
}

impl Platform {
    /// Starts the parts of service `app`: connects the bus, registers
    /// `registration` (when registering is on), follows the registry, and sets
    /// up the caches. Background work stops at `shutdown`; call
    /// [`Platform::shutdown`] first to cancel the lease.
    pub fn start(
        app: &str,
        registration: Option<Registration>,
        settings: &PlatformSettings,
        health: Option<Health>,
        shutdown: CancellationToken,
    ) -> Result<Platform, PlatformError> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(PlatformError::Invalid(problems.join("; ")));
        }
        let bus = settings
            .bus
            .as_deref()
            .map(|url| Bus::connect(url, shutdown.clone()))
            .transpose()
            .map_err(|err| PlatformError::Bus(err.to_string()))?;
        let discovery = DiscoveryClient::start(settings.discovery.clone(), app, registration, health)
            .map_err(|err| PlatformError::Invalid(err.to_string()))?;
        let lb = LbClient::new(discovery.clone(), settings.lb.clone()).map_err(PlatformError::Invalid)?;
        let caches = Caches::new(&settings.cache, app, bus.clone(), shutdown)
            .map_err(|err| PlatformError::Cache(err.to_string()))?;
        Ok(Platform {
            bus,
            discovery,
            lb,
            caches,
        })
    }

    /// Cancels the lease and stops following the registry.
    pub async fn shutdown(&self) {
        self.discovery.shutdown().await;
    }
}
