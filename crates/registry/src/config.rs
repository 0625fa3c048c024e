//! The registry's typed configuration (every key in docs/config.md).

use std::net::SocketAddr;
use std::time::Duration;

use rtalpha_runtime::config::Validate;
use rtalpha_runtime::{ConfigError, ServerConfig, TelemetryConfig};
use serde::{Deserialize, Serialize};

/// The registry's default bind address, as Eureka's.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8761);

/// Everything `rtalpha registry` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    /// The registry itself.
    pub registry: RegistrySettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::with_bind(DEFAULT_BIND),
            telemetry: TelemetryConfig::default(),
            registry: RegistrySettings::default(),
        }
    }
}

/// Leases, deltas, self-preservation and access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// How often the eviction sweep runs.
    #[serde(with = "humantime_serde")]
    pub eviction_interval: Duration,
    /// How long changes are kept for delta fetches and watch resumption.
    #[serde(with = "humantime_serde")]
    pub delta_retention: Duration,
    /// The longest `wait` a blocking query may ask for.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Self-preservation.
    pub self_preservation: SelfPreservationSettings,
    /// HTTP Basic credentials; when both are set, every API call needs them.
    pub auth: AuthSettings,
    /// How often the dashboard page reloads itself.
    #[serde(with = "humantime_serde")]
    pub dashboard_refresh: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            eviction_interval: Duration::from_secs(5),
            delta_retention: Duration::from_secs(180),
            max_wait: Duration::from_secs(300),
            self_preservation: SelfPreservationSettings::default(),
            auth: AuthSettings::default(),
            dashboard_refresh: Duration::from_secs(5),
        }
    }
}

/// When eviction is suspended because renewals fell below the expected rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfPreservationSettings {
    /// Whether the mode may engage at all.
    pub enabled: bool,
    /// The share of expected renewals below which eviction stops (0 to 1).
    pub threshold: f64,
    /// The window renewals are counted over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The mode never engages while fewer instances are registered: in a small
    /// registry one dead instance already looks like a mass outage.
    pub min_instances: usize,
}

impl Default for SelfPreservationSettings {
    fn default() -> Self {
        SelfPreservationSettings {
            enabled: true,
            threshold: 0.85,
            window: Duration::from_secs(60),
            min_instances: 3,
        }
    }
}

/// HTTP Basic credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The user name.
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.telemetry.validate()?;
        let registry = &self.registry;
        let positive = [
            ("registry.eviction_interval", registry.eviction_interval),
            ("registry.delta_retention", registry.delta_retention),
            ("registry.max_wait", registry.max_wait),
            ("registry.dashboard_refresh", registry.dashboard_refresh),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        let preservation = &registry.self_preservation;
        if !(0.0..=1.0).contains(&preservation.threshold) {
            return Err(ConfigError::invalid(
                "registry.self_preservation.threshold",
                format!("{} is not between 0 and 1", preservation.threshold),
            ));
        }
        if preservation.window < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "registry.self_preservation.window",
                "must be at least 1s",
            ));
        }
        let auth = &registry.auth;
        if auth.username.is_some() != auth.password.is_some() {
            return Err(ConfigError::invalid(
                "registry.auth",
                "username and password must be set together",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(Config::default().validate().is_ok());
        let mut config = Config::default();
        config.registry.self_preservation.threshold = 1.5;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.self_preservation.threshold"),
            "{err}"
        );
        let mut config = Config::default();
        config.registry.auth.username = Some("admin".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("registry.auth")
        );
    }
}
