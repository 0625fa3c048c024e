//! The config server's typed configuration (every key in docs/config.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtalpha_runtime::config::Validate;
use rtalpha_runtime::{ConfigError, ServerConfig, TelemetryConfig};
use serde::{Deserialize, Serialize};

/// The config server's default bind address, as Spring Cloud Config's.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8888);

/// Everything `rtalpha config-server` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    /// The repository and how it is followed.
    pub config_server: ConfigServerSettings,
    /// The symmetric key for `{cipher}` values (Spring's `encrypt.key`).
    pub encrypt: EncryptSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::with_bind(DEFAULT_BIND),
            telemetry: TelemetryConfig::default(),
            config_server: ConfigServerSettings::default(),
            encrypt: EncryptSettings::default(),
        }
    }
}

/// Where configuration comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigServerSettings {
    /// A plain directory of files (the "native" backend); used when set.
    pub native_dir: Option<PathBuf>,
    /// A git repository.
    pub git: GitSettings,
    /// HTTP Basic credentials for every config endpoint, when both are set.
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
    /// The bus that carries refresh events.
    pub bus: BusSettings,
}

/// The bus that carries refresh events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// `amqp://…` for RabbitMQ (Spring Cloud Bus), `http://host:port` for another
    /// config server's relay; unset, this server's own relay (`/bus/events`) is the bus.
    pub url: Option<String>,
    /// The application name in this server's bus id (`name:port:random`).
    pub app_name: String,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            url: None,
            app_name: "config-server".to_owned(),
        }
    }
}

/// A git repository and how it is followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// A URL (`https://`, `http://`, `git://`, `ssh://`, `file://`) or a local path.
    pub uri: Option<String>,
    /// The label served when a request names none.
    pub default_label: String,
    /// Directories searched besides the root; `{application}`, `{profile}` and
    /// `{label}` are replaced.
    pub search_paths: Vec<String>,
    /// Where the local clone lives (default: a directory under the system's temporary
    /// directory named after the URI).
    pub basedir: Option<PathBuf>,
    /// Clone at start-up rather than on the first request.
    pub clone_on_start: bool,
    /// Clone and fetch only this many commits.
    pub depth: Option<u32>,
    /// Accepted for Spring compatibility: the clone is bare and always follows the
    /// remote, so local changes cannot block a pull.
    pub force_pull: bool,
    /// How long a clone or fetch may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the remote is fetched in the background.
    #[serde(with = "humantime_serde")]
    pub refresh_rate: Duration,
    /// Further repositories, each serving the applications its patterns match.
    pub repos: Vec<PatternRepo>,
    /// The user name for an `http(s)://` remote.
    pub username: Option<String>,
    /// The password, or an access token, for an `http(s)://` remote.
    pub password: Option<String>,
    /// PEM certificates an `https://` remote's certificate must chain to, instead of the
    /// system's roots (as git's `http.sslCAInfo`); for a private CA.
    pub ca_file: Option<PathBuf>,
    /// The private key for an `ssh://` remote (only this key is offered).
    pub private_key_file: Option<PathBuf>,
    /// The known hosts file for an `ssh://` remote (ssh's own files when unset).
    pub known_hosts_file: Option<PathBuf>,
    /// Refuse an ssh server whose host key is not known; `false` accepts any.
    pub strict_host_key_checking: bool,
}

/// A repository for the applications whose name (or `name/profile`) matches a pattern.
///
/// Its trust settings (`ca_file`, `known_hosts_file`, `strict_host_key_checking`) default to
/// the main repository's; its identity (`username`, `password`, `private_key_file`) does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRepo {
    /// A name for logs and `/health`.
    pub name: String,
    /// Patterns with `*` wildcards, such as `user-*` or `*/dev`; a pattern without `/`
    /// matches any profile.
    pub pattern: Vec<String>,
    /// The repository.
    pub uri: String,
    /// Its search paths.
    #[serde(default)]
    pub search_paths: Vec<String>,
    /// Its default label (the main repository's when unset).
    #[serde(default)]
    pub default_label: Option<String>,
    /// Its user name for `http(s)://`.
    #[serde(default)]
    pub username: Option<String>,
    /// Its password or token for `http(s)://`.
    #[serde(default)]
    pub password: Option<String>,
    /// Its CA certificates for `https://` (the main repository's when unset).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Its private key for `ssh://`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Its known hosts file for `ssh://` (the main repository's when unset).
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// Its host key checking (the main repository's when unset).
    #[serde(default)]
    pub strict_host_key_checking: Option<bool>,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            uri: None,
            default_label: "main".to_owned(),
            search_paths: Vec::new(),
            basedir: None,
            clone_on_start: true,
            depth: None,
            force_pull: false,
            timeout: Duration::from_secs(10),
            refresh_rate: Duration::from_secs(30),
            repos: Vec::new(),
            username: None,
            password: None,
            ca_file: None,
            private_key_file: None,
            known_hosts_file: None,
            strict_host_key_checking: true,
        }
    }
}

/// The symmetric key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptSettings {
    /// The key text (also from the `ENCRYPT_KEY` environment variable).
    pub key: Option<String>,
    /// The hex salt.
    pub salt: String,
}

impl Default for EncryptSettings {
    fn default() -> Self {
        EncryptSettings {
            key: None,
            salt: crate::cipher::DEFAULT_SALT.to_owned(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.telemetry.validate()?;
        let settings = &self.config_server;
        if settings.native_dir.is_none() && settings.git.uri.is_none() {
            return Err(ConfigError::invalid(
                "config_server.git.uri",
                "set a git repository (--git-uri) or a directory (--native-dir)",
            ));
        }
        if settings.native_dir.is_some() && settings.git.uri.is_some() {
            return Err(ConfigError::invalid(
                "config_server.native_dir",
                "set either a directory or a git repository, not both",
            ));
        }
        for (key, value) in [
            ("config_server.git.timeout", settings.git.timeout),
            ("config_server.git.refresh_rate", settings.git.refresh_rate),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        validate_access_files(
            "config_server.git",
            settings.git.ca_file.as_deref(),
            settings.git.private_key_file.as_deref(),
            settings.git.known_hosts_file.as_deref(),
        )?;
        for (position, repo) in settings.git.repos.iter().enumerate() {
            if repo.pattern.is_empty() || repo.pattern.iter().any(|p| p.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("config_server.git.repos[{position}].pattern"),
                    "needs at least one non-empty pattern",
                ));
            }
            validate_access_files(
                &format!("config_server.git.repos[{position}]"),
                repo.ca_file.as_deref(),
                repo.private_key_file.as_deref(),
                repo.known_hosts_file.as_deref(),
            )?;
        }
        if settings.git.default_label.trim().is_empty() {
            return Err(ConfigError::invalid(
                "config_server.git.default_label",
                "must not be empty",
            ));
        }
        if settings.username.is_some() != settings.password.is_some() {
            return Err(ConfigError::invalid(
                "config_server.username",
                "username and password must be set together",
            ));
        }
        if let Some(url) = &settings.bus.url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://") || url.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                "config_server.bus.url",
                format!("`{url}` is not amqp:// or http://"),
            ));
        }
        if hex::decode(&self.encrypt.salt).is_err() {
            return Err(ConfigError::invalid("encrypt.salt", "must be hex"));
        }
        Ok(())
    }
}

/// The files that say how a remote is reached must exist, and a CA file must hold
/// certificates: a typo here would otherwise surface only as a failed fetch.
fn validate_access_files(
    prefix: &str,
    ca_file: Option<&Path>,
    private_key_file: Option<&Path>,
    known_hosts_file: Option<&Path>,
) -> Result<(), ConfigError> {
    if let Some(path) = ca_file {
        crate::repo::read_certificates(path)
            .map_err(|err| ConfigError::invalid(format!("{prefix}.ca_file"), err.to_string()))?;
    }
    for (name, path) in [
        ("private_key_file", private_key_file),
        ("known_hosts_file", known_hosts_file),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(ConfigError::invalid(
                format!("{prefix}.{name}"),
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(config: &Config) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("an invalid key, not {other:?}"),
        }
    }

    fn git(uri: &str) -> Config {
        let mut config = Config::default();
        config.config_server.git.uri = Some(uri.to_owned());
        config
    }

    #[test]
    fn access_files_must_exist_and_a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing");

        let mut config = git("https://git.example/config");
        config.config_server.git.ca_file = Some(not_pem.clone());
        assert_eq!(key_of(&config), "config_server.git.ca_file");
        config.config_server.git.ca_file = Some(missing.clone());
        assert_eq!(key_of(&config), "config_server.git.ca_file");

        let mut config = git("ssh://git@git.example/config");
        config.config_server.git.known_hosts_file = Some(missing.clone());
        assert_eq!(key_of(&config), "config_server.git.known_hosts_file");
        config.config_server.git.known_hosts_file = Some(not_pem.clone());
        config.config_server.git.repos = vec![PatternRepo {
            name: "users".into(),
            pattern: vec!["user-*".into()],
            uri: "ssh://git@git.example/users".into(),
            private_key_file: Some(missing),
            ..Default::default()
        }];
        assert_eq!(key_of(&config), "config_server.git.repos[0].private_key_file");
        config.config_server.git.repos[0].private_key_file = Some(not_pem);
        config.validate().unwrap();
    }
}
