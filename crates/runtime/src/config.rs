//! Layered, typed configuration: built-in defaults < file < config server < environment <
//! command line.
//!
//! Each server declares one `Config` type with serde and a `Default`; [`load`] merges
//! the layers with figment, deserializes once, and turns every failure into a
//! [`ConfigError`] that names the key. Environment variables are `RTALPHA_` followed
//! by the key path with `__` between sections: `RTALPHA_SERVER__BIND=0.0.0.0:8761`;
//! a prefixed name without `__` is not a configuration key and is left alone.
//! [`load_with_remote`] adds the config server's layer (fetched by `rtalpha-client`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The prefix of environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "RTALPHA_";

/// Configuration that could not be loaded or is not valid; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed, or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A value parsed but is not allowed.
    #[error("invalid configuration: key `{key}`: {problem}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What is wrong with the value.
        problem: String,
    },
}

impl ConfigError {
    /// A value that parsed but is not allowed.
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A configuration that checks its own values after it is loaded.
pub trait Validate {
    /// Every rule the types alone cannot express; the error names the key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Where the HTTP server listens and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to bind.
    pub bind: SocketAddr,
    /// The largest request body accepted; larger ones are answered with 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults with the given bind address.
    pub fn with_bind(bind: SocketAddr) -> Self {
        ServerConfig {
            bind,
            ..ServerConfig::default()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("server.max_body_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `info,rtalpha_registry=debug`.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Human,
            log_level: "info".to_owned(),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map(|_| ())
            .map_err(|err| ConfigError::invalid("telemetry.log_level", err.to_string()))
    }
}

/// Command-line settings, as `(dotted key, value)` pairs: the last layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides(Vec<(String, serde_json::Value)>);

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Overrides::default()
    }

    /// Sets `key` (dotted path) to `value` when `value` is `Some`.
    pub fn set<T: Serialize>(&mut self, key: &str, value: Option<T>) -> &mut Self {
        if let Some(value) = value
            && let Ok(json) = serde_json::to_value(value)
        {
            self.0.push((key.to_owned(), json));
        }
        self
    }
}

/// Loads `T` from its defaults, an optional file (TOML, or YAML by a `.yml`/`.yaml`
/// extension), the `RTALPHA_*` environment and the command-line overrides, in that
/// order, then validates it.
pub fn load<T>(file: Option<&Path>, overrides: &Overrides) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    load_with_env(file, None, overrides, environment()).map(|loaded| loaded.config)
}

/// Configuration from a config server: a layer over the file and under the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteLayer {
    /// Names the layer in error messages, such as `config server http://host:8888`.
    pub name: String,
    /// The values, nested (`{"server": {"port": 9000}}`).
    pub values: serde_json::Value,
    /// Leave out keys the configuration type does not know rather than refuse them: one
    /// shared file configures every application, so most of its keys are someone else's.
    pub ignore_unknown: bool,
}

/// A configuration loaded with a remote layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The configuration, validated.
    pub config: T,
    /// The remote keys left out because the type does not know them (dotted paths).
    pub ignored: Vec<String>,
}

/// Loads `T` as [`load`] does, with `remote` between the file and the environment.
///
/// Strings convert to numbers and booleans where the type wants them, as Spring's
/// binding does: `.properties` files have nothing but strings. A remote empty string
/// where a list or map is wanted is an empty one (Spring flattens `[]` and `{}` to "").
pub fn load_with_remote<T>(
    file: Option<&Path>,
    remote: &RemoteLayer,
    overrides: &Overrides,
) -> Result<Loaded<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    load_with_env(file, Some(remote), overrides, environment())
}

/// The `RTALPHA_*` layer. Only names with a section separator are keys
/// (`RTALPHA_SERVER__BIND`); others with the prefix, such as the tests' `RTALPHA_TEST_*`
/// or `rtalpha status`'s `RTALPHA_REGISTRY_URL`, belong to someone else.
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// A figment provider with a name of its own, so that errors can tell its keys apart.
struct Named<'a> {
    name: &'a str,
    values: &'a serde_json::Value,
}

impl Provider for Named<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.to_owned())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self.values).data()
    }
}

/// Removes the value at `path` from a JSON tree; whether there was one.
fn remove_path(values: &mut serde_json::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = values;
    for key in parents {
        let next = match node {
            serde_json::Value::Object(map) => map.get_mut(key),
            serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match node {
        serde_json::Value::Object(map) => map.remove(last).is_some(),
        _ => false,
    }
}

fn load_with_env<T>(
    file: Option<&Path>,
    remote: Option<&RemoteLayer>,
    overrides: &Overrides,
    env: Env,
) -> Result<Loaded<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let Some(remote) = remote else {
        let config: T = layers::<T>(file, None, overrides, env)?.extract().map_err(load_error)?;
        config.validate()?;
        return Ok(Loaded {
            config,
            ignored: Vec::new(),
        });
    };
    let mut values = remote.values.clone();
    let mut ignored = Vec::new();
    loop {
        let layer = Named {
            name: &remote.name,
            values: &values,
        };
        let figment = layers::<T>(file, Some(layer), overrides, env.clone())?;
        let err = match figment.extract_lossy::<T>() {
            Ok(config) => {
                config.validate()?;
                return Ok(Loaded { config, ignored });
            }
            Err(err) => err,
        };
        // serde reports one problem at a time, so each of these runs once per such key.
        let from_remote = err.metadata.as_ref().is_some_and(|m| m.name == remote.name.as_str());
        match &err.kind {
            // An unknown key that only the remote layer has is left out.
            figment::error::Kind::UnknownField(..)
                if from_remote && remote.ignore_unknown && remove_path(&mut values, &err.path) =>
            {
                ignored.push(err.path.join("."));
            }
            // Spring's flattening writes an empty list or map as an empty string, and
            // Spring binds a comma-separated string to a list.
            figment::error::Kind::InvalidType(figment::error::Actual::Str(text), expected)
                if from_remote && replace_string(&mut values, &err.path, text, expected) => {}
            _ => return Err(load_error(err)),
        }
    }
}

/// Replaces the string `text` at `path` by what the type `expected` wants, as Spring
/// binds it: a list of its comma-separated items (none for the empty string), or an
/// empty map for the empty string; whether it did.
fn replace_string(values: &mut serde_json::Value, path: &[String], text: &str, expected: &str) -> bool {
    let replacement = if expected.contains("sequence") || expected.contains("array") {
        serde_json::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| serde_json::Value::String(item.to_owned()))
                .collect(),
        )
    } else if text.is_empty() && (expected.contains("map") || expected.starts_with("struct")) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        return false;
    };
    let mut node = values;
    for key in path {
        let next = match node {
            serde_json::Value::Object(map) => map.get_mut(key),
            serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    if node.as_str() != Some(text) {
        return false;
    }
    *node = replacement;
    true
}

/// The layers below and above the remote one, merged in order.
fn layers<T>(
    file: Option<&Path>,
    remote: Option<Named<'_>>,
    overrides: &Overrides,
    env: Env,
) -> Result<Figment, ConfigError>
where
    T: Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let is_yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"));
        figment = if is_yaml {
            figment.merge(Yaml::file(path))
        } else {
            figment.merge(Toml::file(path))
        };
    }
    if let Some(remote) = remote {
        figment = figment.merge(remote);
    }
    figment = figment.merge(env);
    for (key, value) in &overrides.0 {
        figment = figment.merge(Serialized::default(key, value));
    }
    Ok(figment)
}

fn load_error(err: figment::Error) -> ConfigError {
    let messages: Vec<String> = err
        .into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map_or_else(|| "defaults".to_owned(), |m| m.name.to_string());
            if e.path.is_empty() {
                format!("{} (from {source})", e.kind)
            } else {
                format!("key `{}`: {} (from {source})", e.path.join("."), e.kind)
            }
        })
        .collect();
    ConfigError::Load(messages.join("; "))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        server: ServerConfig,
        telemetry: TelemetryConfig,
        answer: u32,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.server.validate()?;
            self.telemetry.validate()?;
            if self.answer > 100 {
                return Err(ConfigError::invalid("answer", "must be at most 100"));
            }
            Ok(())
        }
    }

    /// An environment layer that matches no variable, so that tests do not depend on
    /// the process environment; the real `RTALPHA_*` layer is tested through the binary.
    fn no_env() -> Env {
        Env::prefixed("RTALPHA_UNIT_TEST_NEVER_SET_").split("__")
    }

    #[test]
    fn later_layers_win_over_earlier_ones() {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        writeln!(
            file,
            "answer = 7\n[server]\nbind = \"127.0.0.1:9000\"\nmax_body_bytes = 10"
        )
        .unwrap();

        let only_file: Sample = load_with_env(Some(file.path()), None, &Overrides::new(), no_env())
            .unwrap()
            .config;
        assert_eq!(only_file.answer, 7);
        assert_eq!(only_file.server.bind.port(), 9000);
        assert_eq!(
            only_file.server.shutdown_grace,
            Duration::from_secs(10),
            "defaults fill the rest"
        );

        let mut overrides = Overrides::new();
        overrides.set("server.bind", Some("127.0.0.1:9999"));
        let with_cli: Sample = load_with_env(Some(file.path()), None, &overrides, no_env())
            .unwrap()
            .config;
        assert_eq!(with_cli.server.bind.port(), 9999);
        assert_eq!(with_cli.server.max_body_bytes, 10);
    }

    #[test]
    fn yaml_files_are_read_by_extension() {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        writeln!(file, "answer: 9\ntelemetry:\n  log_format: json").unwrap();
        let config: Sample = load_with_env(Some(file.path()), None, &Overrides::new(), no_env())
            .unwrap()
            .config;
        assert_eq!(config.answer, 9);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        writeln!(file, "[server]\nbind = \"not an address\"").unwrap();
        let err = load_with_env::<Sample>(Some(file.path()), None, &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");

        let mut overrides = Overrides::new();
        overrides.set("answer", Some(1000));
        let err = load_with_env::<Sample>(None, None, &overrides, no_env()).unwrap_err();
        assert!(err.to_string().contains("`answer`"), "{err}");

        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        writeln!(file, "[server]\nbindd = \"127.0.0.1:1\"").unwrap();
        let err = load_with_env::<Sample>(Some(file.path()), None, &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
    }

    fn remote(values: serde_json::Value, ignore_unknown: bool) -> RemoteLayer {
        RemoteLayer {
            name: "config server http://test".to_owned(),
            values,
            ignore_unknown,
        }
    }

    #[test]
    fn the_remote_layer_sits_between_the_file_and_the_command_line() {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        writeln!(
            file,
            "answer = 7\n[server]\nmax_body_bytes = 10\nbind = \"127.0.0.1:9000\""
        )
        .unwrap();
        // `.properties` values are strings: they convert where the type wants a number.
        let layer = remote(
            serde_json::json!({"answer": "8", "server": {"max_body_bytes": 20}, "telemetry": {"log_level": "debug"}}),
            true,
        );
        let mut overrides = Overrides::new();
        overrides.set("server.max_body_bytes", Some(30));
        let loaded: Loaded<Sample> = load_with_env(Some(file.path()), Some(&layer), &overrides, no_env()).unwrap();
        assert_eq!(loaded.config.answer, 8, "remote over file");
        assert_eq!(loaded.config.server.max_body_bytes, 30, "command line over remote");
        assert_eq!(
            loaded.config.server.bind.port(),
            9000,
            "the file where the remote is silent"
        );
        assert_eq!(loaded.config.telemetry.log_level, "debug");
        assert!(loaded.ignored.is_empty());
    }

    #[test]
    fn unknown_remote_keys_are_left_out_or_refused() {
        let values = serde_json::json!({"answer": 5, "platform": {"registry": "x"}, "server": {"colour": "red"}});
        let loaded: Loaded<Sample> =
            load_with_env(None, Some(&remote(values.clone(), true)), &Overrides::new(), no_env()).unwrap();
        assert_eq!(loaded.config.answer, 5);
        let mut ignored = loaded.ignored.clone();
        ignored.sort();
        assert_eq!(ignored, ["platform", "server.colour"]);

        let err = load_with_env::<Sample>(None, Some(&remote(values, false)), &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("config server http://test"), "{err}");

        // An unknown key of the file stays an error even when remote ones are left out.
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        writeln!(file, "colour = 1").unwrap();
        let layer = remote(serde_json::json!({"colour": 2}), true);
        let err = load_with_env::<Sample>(Some(file.path()), Some(&layer), &Overrides::new(), no_env()).unwrap_err();
        assert!(
            err.to_string().contains("TOML file"),
            "the file's key, once the remote one is left out: {err}"
        );
        let layer = remote(serde_json::json!({"shade": 2}), true);
        let err = load_with_env::<Sample>(Some(file.path()), Some(&layer), &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn an_empty_string_from_the_remote_layer_is_an_empty_list_or_map_where_one_is_wanted() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Lists {
            tags: Vec<String>,
            labels: std::collections::BTreeMap<String, String>,
            name: String,
        }
        impl Validate for Lists {
            fn validate(&self) -> Result<(), ConfigError> {
                Ok(())
            }
        }
        let layer = remote(serde_json::json!({"tags": "", "labels": "", "name": ""}), true);
        let loaded: Loaded<Lists> = load_with_env(None, Some(&layer), &Overrides::new(), no_env()).unwrap();
        assert!(loaded.config.tags.is_empty() && loaded.config.labels.is_empty());
        assert_eq!(loaded.config.name, "", "a string stays a string");
    }

    #[test]
    fn a_comma_separated_remote_string_is_a_list_where_one_is_wanted() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Lists {
            tags: Vec<String>,
            ports: Vec<u16>,
            name: String,
        }
        impl Validate for Lists {
            fn validate(&self) -> Result<(), ConfigError> {
                Ok(())
            }
        }
        let layer = remote(
            serde_json::json!({"tags": "a, b,c", "ports": "8080,8081", "name": "x,y"}),
            true,
        );
        let loaded: Loaded<Lists> = load_with_env(None, Some(&layer), &Overrides::new(), no_env()).unwrap();
        assert_eq!(loaded.config.tags, ["a", "b", "c"]);
        assert_eq!(loaded.config.ports, [8080, 8081], "items take the list's type");
        assert_eq!(loaded.config.name, "x,y", "a string stays a string");
        let layer = remote(serde_json::json!({"ports": "8080,many"}), true);
        let err = load_with_env::<Lists>(None, Some(&layer), &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("ports"), "{err}");
    }

    #[test]
    fn a_remote_value_of_the_wrong_type_or_out_of_range_is_refused() {
        let layer = remote(serde_json::json!({"answer": "many"}), true);
        let err = load_with_env::<Sample>(None, Some(&layer), &Overrides::new(), no_env()).unwrap_err();
        assert!(err.to_string().contains("`answer`"), "{err}");
        let layer = remote(serde_json::json!({"answer": 1000}), true);
        let err = load_with_env::<Sample>(None, Some(&layer), &Overrides::new(), no_env()).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { ref key, .. } if key == "answer"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load_with_env::<Sample>(
            Some(Path::new("/nonexistent/rtalpha.toml")),
            None,
            &Overrides::new(),
            no_env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
