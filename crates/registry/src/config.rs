//! The registry's typed configuration (every key in docs/config.md).

use std::net::SocketAddr;
use std::time::Duration;

use rtalpha_runtime::config::Validate;
use rtalpha_runtime::{ConfigError, ServerConfig, TelemetryConfig};
use serde::{Deserialize, Serialize};

/// The registry's default bind address, as Eureka's.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8761);

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
    /// The other nodes of the cluster, as base URLs (`http://host:port`, with
    /// `user:password@` when they need credentials). The same list may be given to
    /// every node: a node recognises and skips itself.
    pub peers: Vec<String>,
    /// Replication, anti-entropy and warm-up.
    pub cluster: ClusterSettings,
    /// Active health checks of instances that opt in.
    pub health_checks: HealthCheckSettings,
}

/// How the nodes of a cluster keep each other current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's name in the cluster; by default its bind address (the host name
    /// when bound to all interfaces) and port.
    pub node_id: Option<String>,
    /// The most writes sent in one replication batch.
    pub batch_size: usize,
    /// How long a write may wait for others to fill its batch.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// The most writes waiting for one peer; past it the backlog is dropped and the peer
    /// is marked for a full resync by anti-entropy.
    pub max_backlog: usize,
    /// The first pause after a failed send; it doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// The longest pause between attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long one request to a peer may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often digests are exchanged with each peer.
    #[serde(with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// After start, how long eviction stays suspended.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// At start, how long to keep trying peers for a full copy before serving without.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// How long a cancellation is remembered, so anti-entropy does not revive it.
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: None,
            batch_size: 250,
            batch_delay: Duration::from_millis(10),
            max_backlog: 50_000,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(30),
            warmup: Duration::from_secs(120),
            sync_timeout: Duration::from_secs(10),
            tombstone_retention: Duration::from_secs(600),
        }
    }
}

/// Active health checks: the registry probes the health-check URL of an instance whose
/// metadata says `rtalpha.health-check: http`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// Whether this node probes at all.
    pub enabled: bool,
    /// Time between probes of one instance (metadata `rtalpha.health-check.interval`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a probe may take (metadata `rtalpha.health-check.timeout`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures before the instance goes DOWN.
    pub failures_before_down: u32,
    /// Consecutive successes before it comes back.
    pub successes_before_up: u32,
    /// The most probes in flight at once.
    pub concurrency: usize,
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        HealthCheckSettings {
            enabled: true,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failures_before_down: 3,
            successes_before_up: 2,
            concurrency: 64,
        }
    }
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
            peers: Vec::new(),
            cluster: ClusterSettings::default(),
            health_checks: HealthCheckSettings::default(),
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
        let cluster = &registry.cluster;
        let durations = [
            ("registry.cluster.batch_delay", cluster.batch_delay),
            ("registry.cluster.retry_initial", cluster.retry_initial),
            ("registry.cluster.retry_max", cluster.retry_max),
            ("registry.cluster.request_timeout", cluster.request_timeout),
            ("registry.cluster.anti_entropy_interval", cluster.anti_entropy_interval),
            ("registry.cluster.tombstone_retention", cluster.tombstone_retention),
            ("registry.health_checks.interval", registry.health_checks.interval),
            ("registry.health_checks.timeout", registry.health_checks.timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        let counts = [
            ("registry.cluster.batch_size", cluster.batch_size),
            ("registry.cluster.max_backlog", cluster.max_backlog),
            ("registry.health_checks.concurrency", registry.health_checks.concurrency),
            (
                "registry.health_checks.failures_before_down",
                registry.health_checks.failures_before_down as usize,
            ),
            (
                "registry.health_checks.successes_before_up",
                registry.health_checks.successes_before_up as usize,
            ),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for (position, peer) in registry.peers.iter().enumerate() {
            crate::cluster::PeerUrl::parse(peer)
                .map_err(|problem| ConfigError::invalid(format!("registry.peers[{position}]"), problem))?;
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
        assert!(err.contains("registry.self_preservation.threshold"), "{err}");
        let mut config = Config::default();
        config.registry.auth.username = Some("admin".into());
        assert!(config.validate().unwrap_err().to_string().contains("registry.auth"));
    }
}
