//! The config client's own settings: the `config_client` section of a service's
//! configuration (every key in docs/config.md). They are read from the local layers only
//! (defaults, file, environment, command line): they say where the remote layer comes
//! from, so the remote layer cannot change them.

use std::time::Duration;

use rtalpha_resilience::backoff::Backoff;
use rtalpha_runtime::ConfigError;
use rtalpha_runtime::config::Validate;
use serde::{Deserialize, Serialize};

/// Where a service's configuration comes from and how it is kept current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigClientSettings {
    /// Off: the service runs on its local configuration and listens to no bus.
    pub enabled: bool,
    /// Config servers, tried in order; the one that answered last is tried first next
    /// time. `http://user:password@host:port` carries credentials.
    pub uris: Vec<String>,
    /// The application name asked for (`/{name}/{profiles}`), and the first segment of
    /// this instance's bus id.
    pub name: String,
    /// The profiles asked for, highest precedence last (Spring's order).
    pub profiles: Vec<String>,
    /// The label (branch, tag or commit); unset, the server's default label.
    pub label: Option<String>,
    /// HTTP Basic user name for the config server (with `password`).
    pub username: Option<String>,
    /// HTTP Basic password for the config server.
    pub password: Option<String>,
    /// Stop start-up when no config server answers after `max_attempts` rounds;
    /// otherwise start on the local configuration and keep trying in the background.
    pub fail_fast: bool,
    /// The pause between rounds over the URLs (exponential, full jitter).
    pub retry: Backoff,
    /// Rounds over the URLs at start-up with `fail_fast` (at least 1).
    pub max_attempts: u32,
    /// How long one request to one config server may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The bus that carries refresh events: `amqp://…` (RabbitMQ) or a config server's
    /// `http://host:port` (its embedded relay); unset, no live refresh.
    pub bus: Option<String>,
    /// This instance's bus id, matched against refresh destinations
    /// (`user-service:9100:**`); unset, `{name}:{port}:{random}`.
    pub bus_id: Option<String>,
    /// Also re-fetch this often, for deployments without a bus; unset, never.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Leave out remote keys the service's configuration type does not know, as Spring
    /// does (the shared `application.yml` configures every application); off, such a key
    /// makes the remote configuration invalid.
    pub ignore_unknown_keys: bool,
}

impl Default for ConfigClientSettings {
    fn default() -> Self {
        ConfigClientSettings {
            enabled: true,
            uris: vec!["http://127.0.0.1:8888".to_owned()],
            name: "application".to_owned(),
            profiles: vec!["default".to_owned()],
            label: None,
            username: None,
            password: None,
            fail_fast: false,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            max_attempts: 6,
            timeout: Duration::from_secs(5),
            bus: None,
            bus_id: None,
            poll_interval: None,
            ignore_unknown_keys: true,
        }
    }
}

impl Validate for ConfigClientSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("config_client.{name}");
        if !self.enabled {
            return Ok(());
        }
        if self.uris.is_empty() {
            return Err(ConfigError::invalid(
                key("uris"),
                "at least one config server URL (or `enabled = false`)",
            ));
        }
        for uri in &self.uris {
            if let Err(problem) = super::fetch::Endpoint::parse(uri) {
                return Err(ConfigError::invalid(key("uris"), format!("`{uri}`: {problem}")));
            }
        }
        if !valid_segment(&self.name) {
            return Err(ConfigError::invalid(
                key("name"),
                "an application name without `/`, `,` or spaces",
            ));
        }
        if self.profiles.is_empty() || !self.profiles.iter().all(|p| valid_segment(p)) {
            return Err(ConfigError::invalid(
                key("profiles"),
                "one or more profile names without `/`, `,` or spaces",
            ));
        }
        if self.label.as_deref().is_some_and(|label| label.trim().is_empty()) {
            return Err(ConfigError::invalid(
                key("label"),
                "empty; leave it unset for the default label",
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::invalid(
                key("password"),
                "set both `username` and `password`, or neither",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(key("max_attempts"), "must be at least 1"));
        }
        if self.retry.initial > self.retry.max || self.retry.multiplier < 1.0 {
            return Err(ConfigError::invalid(
                key("retry"),
                "`initial` must not exceed `max`, and `multiplier` must be at least 1",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(key("timeout"), "must be longer than zero"));
        }
        if self.poll_interval.is_some_and(|every| every.is_zero()) {
            return Err(ConfigError::invalid(key("poll_interval"), "must be longer than zero"));
        }
        if let Some(bus) = &self.bus
            && !["amqp://", "amqps://", "http://"]
                .iter()
                .any(|scheme| bus.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                key("bus"),
                format!("`{bus}`: expected amqp://, amqps:// or a config server's http:// URL"),
            ));
        }
        if self.bus_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return Err(ConfigError::invalid(
                key("bus_id"),
                "empty; leave it unset for the default",
            ));
        }
        Ok(())
    }
}

/// A name that can stand as one path segment of the config server's API.
fn valid_segment(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', ',', '\\', ' ']) && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(
            ConfigClientSettings::default().validate().map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn each_bad_value_is_named_by_its_key() {
        type Change = fn(&mut ConfigClientSettings);
        let cases: Vec<(&str, Change)> = vec![
            ("config_client.uris", |s| s.uris.clear()),
            ("config_client.uris", |s| s.uris = vec!["ftp://x".into()]),
            ("config_client.uris", |s| s.uris = vec!["http://".into()]),
            ("config_client.name", |s| s.name = "a/b".into()),
            ("config_client.profiles", |s| s.profiles = vec!["dev,db".into()]),
            ("config_client.profiles", |s| s.profiles.clear()),
            ("config_client.label", |s| s.label = Some(" ".into())),
            ("config_client.password", |s| s.username = Some("u".into())),
            ("config_client.max_attempts", |s| s.max_attempts = 0),
            ("config_client.retry", |s| s.retry.initial = Duration::from_secs(60)),
            ("config_client.timeout", |s| s.timeout = Duration::ZERO),
            ("config_client.poll_interval", |s| {
                s.poll_interval = Some(Duration::ZERO)
            }),
            ("config_client.bus", |s| s.bus = Some("redis://x".into())),
            ("config_client.bus_id", |s| s.bus_id = Some(String::new())),
        ];
        for (key, change) in cases {
            let mut settings = ConfigClientSettings::default();
            change(&mut settings);
            let err = settings.validate().expect_err(key);
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
        let disabled = ConfigClientSettings {
            enabled: false,
            uris: Vec::new(),
            ..ConfigClientSettings::default()
        };
        assert!(disabled.validate().is_ok(), "nothing else matters when disabled");
    }

    #[test]
    fn settings_deserialize_with_readable_durations() {
        let settings: ConfigClientSettings = serde_json::from_value(serde_json::json!({
            "uris": ["http://a:8888", "http://b:8888"],
            "name": "user-service",
            "retry": {"initial": "50ms", "max": "2s"},
            "timeout": "1s",
            "poll_interval": "30s",
        }))
        .expect("settings");
        assert_eq!(settings.uris.len(), 2);
        assert_eq!(settings.retry.initial, Duration::from_millis(50));
        assert_eq!(settings.retry.multiplier, 2.0, "the rest of the backoff defaults");
        assert_eq!(settings.poll_interval, Some(Duration::from_secs(30)));
        assert_eq!(settings.profiles, ["default"]);
    }
}
