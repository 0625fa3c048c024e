//! The cache's typed configuration, the `cache` section of a service's config (every key
//! in docs/cache.md): where the shared tier is, how invalidations are checked, and the
//! bounds of each named cache.

use std::collections::BTreeMap;
use std::time::Duration;

use rtalpha_runtime::ConfigError;
use rtalpha_runtime::config::Validate;
use serde::{Deserialize, Serialize};

/// The entry bound of a cache that names neither bound.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// The `cache` section: the mode, the consistency checks, and each named cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://…` (or `redis+unix://…`) for the distributed mode (Redis as the shared tier under each near
    /// cache, invalidations by Redis pub/sub); unset, the invalidation mode (near caches
    /// only, invalidations over the service's bus).
    pub url: Option<String>,
    /// Run without any synchronisation: a single instance, nobody to tell. Only allowed
    /// with no `url`, and then no bus is needed.
    pub local_only: bool,
    /// Prefix of every Redis key and channel of the distributed mode.
    pub key_prefix: String,
    /// How often each cache announces its last sequence number when it has sent nothing
    /// else: a lost invalidation is noticed by the others within this long.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A cache that has not heard its own announcement back for this long, or whose
    /// transport is down, stops serving from memory (and clears it) until it hears it
    /// again: the bound on staleness when the path itself fails silently.
    #[serde(with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// How long one Redis command may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Settings per cache name; a cache not listed gets [`CacheSettings::default`].
    pub caches: BTreeMap<String, CacheSettings>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: None,
            local_only: false,
            key_prefix: "rtalpha:cache".to_owned(),
            heartbeat: Duration::from_secs(1),
            silence_timeout: Duration::from_secs(3),
            redis_timeout: Duration::from_millis(500),
            caches: BTreeMap::new(),
        }
    }
}

/// The bounds of one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// At most this many entries (the default bound: 10,000 when neither is set).
    pub max_entries: Option<u64>,
    /// At most this many bytes of values, counted as their JSON encoding.
    pub max_bytes: Option<u64>,
    /// An entry is dropped this long after it was written (also the Redis expiry in the
    /// distributed mode); `0s` for never. Read it through [`CacheSettings::time_to_live`].
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// An entry is dropped when it was not read for this long; unset or `0s` for never.
    #[serde(with = "humantime_serde")]
    pub tti: Option<Duration>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: None,
            max_bytes: None,
            ttl: Some(Duration::from_secs(600)),
            tti: None,
        }
    }
}

/// The size bound a cache's settings resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeBound {
    /// A number of entries.
    Entries(u64),
    /// A number of bytes of JSON-encoded values.
    Bytes(u64),
}

impl CacheSettings {
    /// The time to live, if any (`0s` means none).
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl.filter(|ttl| !ttl.is_zero())
    }

    /// The time to idle, if any (`0s` means none).
    pub fn time_to_idle(&self) -> Option<Duration> {
        self.tti.filter(|tti| !tti.is_zero())
    }

    /// The size bound: bytes when `max_bytes` is set, else entries.
    pub fn size_bound(&self) -> SizeBound {
        match (self.max_bytes, self.max_entries) {
            (Some(bytes), _) => SizeBound::Bytes(bytes),
            (None, entries) => SizeBound::Entries(entries.unwrap_or(DEFAULT_MAX_ENTRIES)),
        }
    }

    fn validate_as(&self, name: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("cache.caches.{name}.{field}");
        if self.max_entries.is_some() && self.max_bytes.is_some() {
            return Err(ConfigError::invalid(
                key("max_bytes"),
                "set either max_entries or max_bytes, not both",
            ));
        }
        if self.max_entries == Some(0) {
            return Err(ConfigError::invalid(key("max_entries"), "must be at least 1"));
        }
        if self.max_bytes == Some(0) {
            return Err(ConfigError::invalid(key("max_bytes"), "must be at least 1"));
        }
        for (field, value) in [("ttl", self.ttl), ("tti", self.tti)] {
            // moka refuses durations over 1000 years; refuse them here with the key named.
            if value.is_some_and(|d| d > Duration::from_secs(100 * 365 * 24 * 3600)) {
                return Err(ConfigError::invalid(key(field), "must be at most 100 years"));
            }
        }
        Ok(())
    }
}

impl CacheConfig {
    /// The settings of the cache called `name`.
    pub fn settings(&self, name: &str) -> CacheSettings {
        self.caches.get(name).cloned().unwrap_or_default()
    }

    /// Whether this is the distributed mode (a Redis shared tier).
    pub fn is_distributed(&self) -> bool {
        self.url.is_some()
    }
}

impl Validate for CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            // TLS (`rediss://`) is not built in: the redis crate's TLS features are off.
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                return Err(ConfigError::invalid(
                    "cache.url",
                    format!(
                        "`{url}` is not a Redis URL this build supports (redis://host:port/db or redis+unix:///path)"
                    ),
                ));
            }
            if self.local_only {
                return Err(ConfigError::invalid(
                    "cache.local_only",
                    "cannot be true with cache.url set: the shared tier is synchronised",
                ));
            }
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::invalid("cache.heartbeat", "must be longer than zero"));
        }
        if self.silence_timeout <= self.heartbeat {
            return Err(ConfigError::invalid(
                "cache.silence_timeout",
                "must be longer than cache.heartbeat (three heartbeats is a good value)",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(ConfigError::invalid("cache.redis_timeout", "must be longer than zero"));
        }
        if self.key_prefix.is_empty() {
            return Err(ConfigError::invalid("cache.key_prefix", "must not be empty"));
        }
        for (name, settings) in &self.caches {
            settings.validate_as(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bound_by_entries() {
        let config = CacheConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(
            config.settings("any").size_bound(),
            SizeBound::Entries(DEFAULT_MAX_ENTRIES)
        );
        assert!(!config.is_distributed());
    }

    #[test]
    fn reads_every_key_from_json() {
        let config: CacheConfig = serde_json::from_value(serde_json::json!({
            "url": "redis://127.0.0.1:6379/0",
            "heartbeat": "200ms",
            "silence_timeout": "1s",
            "caches": {"products": {"max_bytes": 1048576, "ttl": "5m", "tti": "1m"}}
        }))
        .expect("parses");
        config.validate().expect("valid");
        let products = config.settings("products");
        assert_eq!(products.size_bound(), SizeBound::Bytes(1_048_576));
        assert_eq!(products.ttl, Some(Duration::from_secs(300)));
        assert_eq!(products.tti, Some(Duration::from_secs(60)));
        assert_eq!(config.heartbeat, Duration::from_millis(200));
        assert!(config.is_distributed());
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"url": "http://x"}), "cache.url"),
            (serde_json::json!({"url": "rediss://x"}), "cache.url"),
            (
                serde_json::json!({"url": "redis://x", "local_only": true}),
                "cache.local_only",
            ),
            (serde_json::json!({"heartbeat": "0s"}), "cache.heartbeat"),
            (
                serde_json::json!({"heartbeat": "2s", "silence_timeout": "2s"}),
                "cache.silence_timeout",
            ),
            (serde_json::json!({"redis_timeout": "0s"}), "cache.redis_timeout"),
            (serde_json::json!({"key_prefix": ""}), "cache.key_prefix"),
            (
                serde_json::json!({"caches": {"p": {"max_entries": 5, "max_bytes": 5}}}),
                "cache.caches.p.max_bytes",
            ),
            (
                serde_json::json!({"caches": {"p": {"max_entries": 0}}}),
                "cache.caches.p.max_entries",
            ),
            (
                serde_json::json!({"caches": {"p": {"ttl": "200y"}}}),
                "cache.caches.p.ttl",
            ),
        ];
        for (json, key) in cases {
            let config: CacheConfig = serde_json::from_value(json.clone()).expect("parses");
            match config.validate() {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key, "{json}"),
                other => panic!("{json}: expected an error naming {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_listed_cache_keeps_the_default_ttl_unless_it_sets_one_and_zero_means_none() {
        let config: CacheConfig = serde_json::from_value(serde_json::json!({
            "caches": {"a": {"max_entries": 5}, "b": {"ttl": "0s", "tti": "0s"}}
        }))
        .expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.settings("a").time_to_live(), Some(Duration::from_secs(600)));
        assert_eq!(config.settings("b").time_to_live(), None);
        assert_eq!(config.settings("b").time_to_idle(), None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parsed = serde_json::from_value::<CacheConfig>(serde_json::json!({"urll": "redis://x"}));
        assert!(parsed.is_err());
    }
}
