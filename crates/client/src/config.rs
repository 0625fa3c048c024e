//! The config client: a service's typed configuration from the config server, kept
//! current by refresh events on the bus.
//!
//! At start-up [`ConfigClientBuilder::start`] fetches `/{name}/{profiles}[/{label}]` from
//! one of the configured config servers and layers it between the service's local file
//! and its environment: defaults < file < config server < `RTALPHA_*` < command line
//! (`rtalpha_runtime::config::load_with_remote`). When no server answers it either fails
//! (`fail_fast`) or starts on the local layers alone and keeps asking in the background.
//!
//! Afterwards a refresh event on the bus whose destination matches this instance's bus
//! id (or a reconnection of the bus, after which events may have been lost) makes it
//! fetch again. A new configuration is deserialized and validated as a whole and then
//! swapped in at once; one that fails is refused whole, the one in force stays, and the
//! refusal is logged and shown by [`ConfigStatus`] (and `/health`, when the client was
//! given the service's [`Health`]). Subscribers of [`ConfigClient::changes`] hear which
//! keys changed; the event is acknowledged on the bus once the new configuration is in
//! force (or found unchanged), as Spring Cloud Bus's acknowledgements do.

mod diff;
mod environment;
mod fetch;
mod settings;

use std::marker::PhantomData;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rtalpha_bus::{Bus, BusError, Delivery};
use rtalpha_proto::bus::{RemoteEvent, destination_matches};
use rtalpha_runtime::config::{Loaded, Overrides, RemoteLayer, Validate};
use rtalpha_runtime::{ConfigError, Health, HealthState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use fetch::{EndpointError, FetchError};
pub use settings::ConfigClientSettings;

use environment::{Environment, PropertySource};
use fetch::{Fetched, Fetcher};

/// The name of the config client's check in `/health`.
pub const HEALTH_CHECK: &str = "config";

/// How many change notifications a slow subscriber may fall behind before it is told it
/// lagged (and should read the whole configuration again).
const CHANGE_BACKLOG: usize = 64;

/// How often the bus connection is looked at, for `/health` and for the fetch that
/// follows the first connection.
const BUS_CHECK_EVERY: Duration = Duration::from_millis(250);

/// What a service's configuration type must be: layered by figment from its defaults,
/// compared key by key through its serialization, and validated as a whole.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Validate + Send + Sync + 'static {}

impl<T> ServiceConfig for T where T: Serialize + DeserializeOwned + Default + Validate + Send + Sync + 'static {}

/// Where the configuration in force comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ConfigOrigin {
    /// The local layers alone: no config server has answered yet, or the client is off.
    Local,
    /// The config server at `uri` (without credentials), over the local file.
    Remote {
        /// The config server that answered.
        uri: String,
    },
}

/// One configuration in force: the typed value (also reachable through `Deref`), with
/// where it came from. Never changes; a refresh swaps in a new one.
#[derive(Debug)]
pub struct Snapshot<T> {
    config: T,
    origin: ConfigOrigin,
    version: Option<String>,
    generation: u64,
    /// `config` serialized, to tell which keys the next one changes.
    value: serde_json::Value,
}

impl<T> Snapshot<T> {
    /// The typed configuration.
    pub fn config(&self) -> &T {
        &self.config
    }

    /// Where it came from.
    pub fn origin(&self) -> &ConfigOrigin {
        &self.origin
    }

    /// The config server's version (the commit id for git), when it sent one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// 0 for the configuration the service started with, one more for each swap.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl<T> Deref for Snapshot<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.config
    }
}

/// A new configuration was swapped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// The generation now in force.
    pub generation: u64,
    /// The config server's version of it.
    pub version: Option<String>,
    /// The keys whose values changed, dotted (`database.url`, `tags[0]`), sorted.
    pub changed_keys: Vec<String>,
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new configuration is in force.
    Applied(ConfigChange),
    /// No key of the configuration changed, so nobody is told. Nothing was swapped,
    /// unless the same values now come from another server or version, which
    /// [`ConfigClient::status`] then shows.
    Unchanged,
}

/// A refresh that left the configuration in force as it was, for a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// No config server answered; the client keeps asking in the background.
    #[error(transparent)]
    Unavailable(#[from] FetchError),
    /// The new configuration does not parse or validate; it was refused whole.
    #[error("the new configuration was refused, the one in force stays: {0}")]
    Refused(String),
}

/// A config client that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigClientError {
    /// The `config_client` settings are not valid.
    #[error(transparent)]
    Settings(ConfigError),
    /// `fail_fast`, and no config server answered in `max_attempts` rounds.
    #[error("fail_fast: {0}")]
    Unavailable(FetchError),
    /// The configuration (local, or local with the config server's) is not valid:
    /// start-up stops, as with any invalid configuration.
    #[error(transparent)]
    Config(ConfigError),
    /// The bus URL cannot be used.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The bus as the config client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusStatus {
    /// No bus configured: no live refresh (unless polling).
    None,
    /// Connected: refresh events arrive.
    Connected,
    /// Not connected (yet, or any more): refresh events are not received.
    Disconnected,
}

/// The config client's state, for `/health` and for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigStatus {
    /// Whether the client is on; off, the service runs on its local configuration.
    pub enabled: bool,
    /// Where the configuration in force comes from.
    pub origin: ConfigOrigin,
    /// Its version, from the config server.
    pub version: Option<String>,
    /// Its generation (see [`Snapshot::generation`]).
    pub generation: u64,
    /// Why the last fetch failed, until one succeeds.
    pub unavailable: Option<String>,
    /// Why the last configuration fetched was refused, until one is accepted.
    pub refused: Option<String>,
    /// What the config server said about its answer (`stale: …`), if anything.
    pub server_state: Option<String>,
    /// The bus.
    pub bus: BusStatus,
}

impl ConfigStatus {
    /// The check as `/health` shows it: DEGRADED while the service runs on its local
    /// configuration for want of a config server, while a refused configuration is
    /// waiting to be fixed, or while refresh events cannot arrive; never DOWN, since a
    /// configuration is always in force.
    pub fn health(&self) -> (HealthState, String) {
        let in_force = match (&self.origin, &self.version) {
            (ConfigOrigin::Local, _) => "the local configuration".to_owned(),
            (ConfigOrigin::Remote { uri }, Some(version)) => format!("version {version} from {uri}"),
            (ConfigOrigin::Remote { uri }, None) => format!("the configuration from {uri}"),
        };
        if !self.enabled {
            return (
                HealthState::Up,
                "the config client is off: running on the local configuration".to_owned(),
            );
        }
        let mut problems = Vec::new();
        if let Some(refused) = &self.refused {
            problems.push(format!(
                "a new configuration was refused ({refused}); {in_force} stays in force"
            ));
        }
        if let Some(unavailable) = &self.unavailable {
            problems.push(format!("{unavailable}; running on {in_force}"));
        }
        if self.bus == BusStatus::Disconnected {
            problems.push("the bus is not connected: refresh events are not received".to_owned());
        }
        if problems.is_empty() {
            let mut detail = format!("running on {in_force}");
            if let Some(state) = &self.server_state {
                detail.push_str(&format!(" (the config server says: {state})"));
            }
            (HealthState::Up, detail)
        } else {
            (HealthState::Degraded, problems.join(" | "))
        }
    }
}

/// Builds and starts a [`ConfigClient`].
pub struct ConfigClientBuilder<T> {
    settings: ConfigClientSettings,
    file: Option<PathBuf>,
    overrides: Overrides,
    port: u16,
    health: Option<Health>,
    bus: Option<Bus>,
    config: PhantomData<fn() -> T>,
}

/// A service's live configuration. Cheap to clone; every clone sees the same.
pub struct ConfigClient<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ConfigClient<T> {
    fn clone(&self) -> Self {
        ConfigClient {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<T> {
    settings: ConfigClientSettings,
    file: Option<PathBuf>,
    overrides: Overrides,
    /// None when the client is off.
    fetcher: Option<Fetcher>,
    bus: Option<Bus>,
    bus_id: String,
    current: ArcSwap<Snapshot<T>>,
    changes: broadcast::Sender<ConfigChange>,
    status: Mutex<ConfigStatus>,
    health: Option<Health>,
    /// One refresh at a time; what the last one evaluated.
    last: tokio::sync::Mutex<Option<Evaluated>>,
}

/// An Environment already judged: the same answer again needs no second look.
#[derive(Debug, Clone, PartialEq)]
struct Evaluated {
    version: Option<String>,
    sources: Vec<PropertySource>,
    /// Why it was refused, if it was.
    refusal: Option<String>,
}

impl<T: ServiceConfig> ConfigClient<T> {
    /// A builder for a client with these settings (the service's `config_client` section,
    /// read from its local layers).
    pub fn builder(settings: ConfigClientSettings) -> ConfigClientBuilder<T> {
        ConfigClientBuilder {
            settings,
            file: None,
            overrides: Overrides::new(),
            port: 0,
            health: None,
            bus: None,
            config: PhantomData,
        }
    }

    /// The configuration in force. Lock-free; hold the `Arc` for one consistent view
    /// across several reads.
    pub fn config(&self) -> Arc<Snapshot<T>> {
        self.shared.current.load_full()
    }

    /// Every configuration swapped in from now on, with the keys that changed.
    pub fn changes(&self) -> broadcast::Receiver<ConfigChange> {
        self.shared.changes.subscribe()
    }

    /// The client's state now.
    pub fn status(&self) -> ConfigStatus {
        self.shared.status()
    }

    /// This instance's bus id, which refresh destinations are matched against.
    pub fn bus_id(&self) -> &str {
        &self.shared.bus_id
    }

    /// The bus connection, for the service's other uses of the bus (cache invalidations).
    pub fn bus(&self) -> Option<&Bus> {
        self.shared.bus.as_ref()
    }

    /// Fetches and applies the configuration now, as a refresh event would (Spring's
    /// `/actuator/refresh`), without acknowledging anything on the bus.
    pub async fn refresh(&self) -> Result<RefreshOutcome, RefreshError> {
        self.shared.refresh().await
    }
}

impl<T: ServiceConfig> ConfigClientBuilder<T> {
    /// The service's local configuration file (TOML, or YAML by extension).
    pub fn file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }

    /// The command-line layer, over everything else.
    pub fn overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// The port the service listens on: the second segment of its default bus id.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Keeps the [`HEALTH_CHECK`] check of this `Health` current.
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Uses this bus connection rather than opening one from `settings.bus`.
    pub fn bus(mut self, bus: Bus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Fetches the configuration (or falls back to the local one) and starts following
    /// refresh events until `shutdown`.
    pub async fn start(self, shutdown: CancellationToken) -> Result<ConfigClient<T>, ConfigClientError> {
        let ConfigClientBuilder {
            settings,
            file,
            overrides,
            port,
            health,
            bus,
            ..
        } = self;
        settings.validate().map_err(ConfigClientError::Settings)?;
        let bus_id = settings
            .bus_id
            .clone()
            .unwrap_or_else(|| rtalpha_bus::bus_id(&settings.name, port));
        if !settings.enabled {
            let config: T =
                rtalpha_runtime::config::load(file.as_deref(), &overrides).map_err(ConfigClientError::Config)?;
            let shared = Shared::new(
                settings,
                file,
                overrides,
                None,
                None,
                bus_id,
                health,
                config,
                ConfigOrigin::Local,
                None,
            )?;
            return Ok(ConfigClient { shared });
        }
        let fetcher = Fetcher::new(&settings)
            .map_err(|problem| ConfigClientError::Settings(ConfigError::invalid("config_client.uris", problem)))?;
        let bus = match bus {
            Some(bus) => Some(bus),
            None => settings
                .bus
                .as_deref()
                .map(|url| Bus::connect(url, shutdown.child_token()))
                .transpose()?,
        };
        // Subscribed before the first fetch, so that a change announced while it runs is
        // not lost.
        let deliveries = bus.as_ref().map(Bus::subscribe);

        let first = first_fetch(&settings, &fetcher, &shutdown).await;
        let (shared, retry) = match first {
            Ok(fetched) => {
                let loaded = evaluate::<T>(&settings, file.as_deref(), &overrides, &fetched)
                    .map_err(ConfigClientError::Config)?;
                log_ignored(&loaded.ignored);
                let version = fetched.environment.version.clone();
                let origin = ConfigOrigin::Remote {
                    uri: fetched.uri.clone(),
                };
                tracing::info!(uri = %fetched.uri, version = ?version, "configuration fetched from the config server");
                let shared = Shared::new(
                    settings,
                    file,
                    overrides,
                    Some(fetcher),
                    bus,
                    bus_id,
                    health,
                    loaded.config,
                    origin,
                    version.clone(),
                )?;
                shared.note_answer(&fetched);
                *shared.last.lock().await = Some(Evaluated {
                    version,
                    sources: fetched.environment.property_sources,
                    refusal: None,
                });
                (shared, None)
            }
            Err(err) if settings.fail_fast => return Err(ConfigClientError::Unavailable(err)),
            Err(err) => {
                tracing::warn!(error = %err, "no config server answered: starting on the local configuration and trying again in the background");
                let config: T =
                    rtalpha_runtime::config::load(file.as_deref(), &overrides).map_err(ConfigClientError::Config)?;
                let shared = Shared::new(
                    settings,
                    file,
                    overrides,
                    Some(fetcher),
                    bus,
                    bus_id,
                    health,
                    config,
                    ConfigOrigin::Local,
                    None,
                )?;
                shared.note_unavailable(&err);
                (shared, Some(0))
            }
        };
        tokio::spawn(follow(shared.clone(), deliveries, retry, shutdown));
        Ok(ConfigClient { shared })
    }
}

/// The start-up rounds: one without `fail_fast` (the background keeps trying), up to
/// `max_attempts` with it, pausing with the backoff between rounds.
async fn first_fetch(
    settings: &ConfigClientSettings,
    fetcher: &Fetcher,
    shutdown: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let rounds = if settings.fail_fast { settings.max_attempts } else { 1 };
    let mut attempt = 0;
    loop {
        let err = match fetcher.fetch().await {
            Ok(fetched) => return Ok(fetched),
            Err(err) => err,
        };
        attempt += 1;
        if attempt >= rounds || !err.is_retryable() {
            return Err(err);
        }
        let pause = settings.retry.delay(attempt - 1);
        tracing::info!(error = %err, attempt, ?pause, "no config server answered; trying again");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Err(err),
        }
    }
}

/// The remote layer over the local ones, deserialized and validated.
fn evaluate<T: ServiceConfig>(
    settings: &ConfigClientSettings,
    file: Option<&std::path::Path>,
    overrides: &Overrides,
    fetched: &Fetched,
) -> Result<Loaded<T>, ConfigError> {
    let values = fetched
        .environment
        .nested()
        .map_err(|err| ConfigError::Load(err.to_string()))?;
    let layer = RemoteLayer {
        name: format!("config server {}", fetched.uri),
        values,
        ignore_unknown: settings.ignore_unknown_keys,
    };
    rtalpha_runtime::config::load_with_remote(file, &layer, overrides)
}

fn log_ignored(ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::debug!(keys = ?ignored, "remote keys this service's configuration does not have were left out");
    }
}

impl<T: ServiceConfig> Shared<T> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        settings: ConfigClientSettings,
        file: Option<PathBuf>,
        overrides: Overrides,
        fetcher: Option<Fetcher>,
        bus: Option<Bus>,
        bus_id: String,
        health: Option<Health>,
        config: T,
        origin: ConfigOrigin,
        version: Option<String>,
    ) -> Result<Arc<Shared<T>>, ConfigClientError> {
        let value = serde_json::to_value(&config).map_err(|err| {
            ConfigClientError::Config(ConfigError::Load(format!("cannot compare configurations: {err}")))
        })?;
        let status = ConfigStatus {
            enabled: settings.enabled,
            origin: origin.clone(),
            version: version.clone(),
            generation: 0,
            unavailable: None,
            refused: None,
            server_state: None,
            // Connected only once the refresh task has seen the subscription up and
            // fetched once after it (see `follow`).
            bus: match &bus {
                None => BusStatus::None,
                Some(_) => BusStatus::Disconnected,
            },
        };
        let snapshot = Snapshot {
            config,
            origin,
            version,
            generation: 0,
            value,
        };
        let shared = Arc::new(Shared {
            settings,
            file,
            overrides,
            fetcher,
            bus,
            bus_id,
            current: ArcSwap::from_pointee(snapshot),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            status: Mutex::new(status),
            health,
            last: tokio::sync::Mutex::new(None),
        });
        shared.update_status(|_| {});
        Ok(shared)
    }

    fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes the status and shows it in `/health`.
    fn update_status(&self, change: impl FnOnce(&mut ConfigStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status);
        if let Some(health) = &self.health {
            let (state, detail) = status.health();
            health.set(HEALTH_CHECK, state, detail);
        }
    }

    fn note_answer(&self, fetched: &Fetched) {
        let state = fetched.environment.state.clone().filter(|state| !state.is_empty());
        self.update_status(|status| {
            status.unavailable = None;
            status.server_state = state;
        });
    }

    fn note_unavailable(&self, err: &FetchError) {
        self.update_status(|status| status.unavailable = Some(err.to_string()));
    }

    fn note_bus(&self, connected: bool) {
        let bus = if connected {
            BusStatus::Connected
        } else {
            BusStatus::Disconnected
        };
        if self.status().bus != bus {
            if connected {
                tracing::info!("config client: the bus is connected; refresh events arrive");
            } else {
                tracing::warn!("config client: the bus is not connected; refresh events are not received");
            }
            self.update_status(|status| status.bus = bus);
        }
    }

    /// Whether `event` asks this instance to refresh: a refresh event from someone else
    /// whose destination matches this bus id (Spring's `ServiceMatcher`).
    fn is_for_me(&self, event: &RemoteEvent) -> bool {
        matches!(event, RemoteEvent::RefreshRemoteApplicationEvent { .. })
            && event.origin() != self.bus_id
            && destination_matches(event.destination(), &self.bus_id)
    }

    async fn refresh(&self) -> Result<RefreshOutcome, RefreshError> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(RefreshOutcome::Unchanged);
        };
        let mut last = self.last.lock().await;
        let fetched = match fetcher.fetch().await {
            Ok(fetched) => fetched,
            Err(err) => {
                tracing::warn!(error = %err, "config refresh: no config server answered; the configuration in force stays");
                self.note_unavailable(&err);
                return Err(RefreshError::Unavailable(err));
            }
        };
        self.note_answer(&fetched);
        let environment: &Environment = &fetched.environment;
        if let Some(previous) = last.as_ref()
            && previous.version == environment.version
            && previous.sources == environment.property_sources
        {
            return match &previous.refusal {
                Some(refusal) => Err(RefreshError::Refused(refusal.clone())),
                None => Ok(RefreshOutcome::Unchanged),
            };
        }
        let result = evaluate::<T>(&self.settings, self.file.as_deref(), &self.overrides, &fetched)
            .map_err(|err| err.to_string())
            .and_then(|loaded| {
                let value = serde_json::to_value(&loaded.config)
                    .map_err(|err| format!("cannot compare configurations: {err}"))?;
                Ok((loaded, value))
            });
        *last = Some(Evaluated {
            version: environment.version.clone(),
            sources: environment.property_sources.clone(),
            refusal: result.as_ref().err().cloned(),
        });
        let (loaded, value) = match result {
            Ok(accepted) => accepted,
            Err(refusal) => {
                tracing::error!(uri = %fetched.uri, version = ?environment.version, error = %refusal, "config refresh: the new configuration is not valid and was refused whole; the one in force stays");
                metrics::counter!("rtalpha_config_client_refused_total").increment(1);
                self.update_status(|status| status.refused = Some(refusal.clone()));
                return Err(RefreshError::Refused(refusal));
            }
        };
        log_ignored(&loaded.ignored);
        let current = self.current.load();
        let origin = ConfigOrigin::Remote {
            uri: fetched.uri.clone(),
        };
        let changed_keys = diff::changed_keys(&current.value, &value);
        if changed_keys.is_empty() && current.origin == origin && current.version == environment.version {
            self.update_status(|status| status.refused = None);
            return Ok(RefreshOutcome::Unchanged);
        }
        let generation = current.generation + 1;
        let version = environment.version.clone();
        drop(current);
        self.current.store(Arc::new(Snapshot {
            config: loaded.config,
            origin: origin.clone(),
            version: version.clone(),
            generation,
            value,
        }));
        self.update_status(|status| {
            status.refused = None;
            status.origin = origin;
            status.version = version.clone();
            status.generation = generation;
        });
        let change = ConfigChange {
            generation,
            version,
            changed_keys,
        };
        tracing::info!(uri = %fetched.uri, version = ?change.version, generation, keys = ?change.changed_keys, "config refresh: new configuration in force");
        metrics::counter!("rtalpha_config_client_applied_total").increment(1);
        if change.changed_keys.is_empty() {
            // The same values from elsewhere (another server, a new version): in force
            // now, but nothing for subscribers to act on.
            return Ok(RefreshOutcome::Unchanged);
        }
        let _ = self.changes.send(change.clone());
        Ok(RefreshOutcome::Applied(change))
    }

    async fn acknowledge(&self, events: &[RemoteEvent]) {
        let Some(bus) = &self.bus else { return };
        for event in events {
            let Some(ack) = rtalpha_bus::ack_event(&self.bus_id, event) else {
                continue;
            };
            if let Err(err) = bus.publish(&ack).await {
                tracing::warn!(error = %err, "config refresh: cannot send the acknowledgement");
            }
        }
    }
}

/// Follows the bus (and the poll and retry timers) until `shutdown`.
async fn follow<T: ServiceConfig>(
    shared: Arc<Shared<T>>,
    mut deliveries: Option<broadcast::Receiver<Delivery>>,
    mut retry_attempt: Option<u32>,
    shutdown: CancellationToken,
) {
    let settings = &shared.settings;
    let mut retry_at = retry_attempt.map(|attempt| Instant::now() + settings.retry.delay(attempt));
    let mut poll = settings.poll_interval.map(|every| {
        let mut poll = tokio::time::interval_at(Instant::now() + every, every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll
    });
    let mut bus_check = tokio::time::interval(BUS_CHECK_EVERY);
    bus_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bus_was_connected = false;
    // Whether the fetch after the first connection has been done.
    let mut caught_up = true;
    // Refresh events acted on but not yet acknowledged (a fetch failed; it is retried).
    let mut to_acknowledge: Vec<RemoteEvent> = Vec::new();
    loop {
        let mut refresh = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            delivery = next_delivery(&mut deliveries) => {
                let mut delivery = Some(delivery);
                // Take whatever else has arrived too: one fetch answers a burst of events
                // (a change to several files sends one per destination).
                while let Some(next) = delivery.take() {
                    match next {
                        Ok(Delivery::Event(event)) if shared.is_for_me(&event) => {
                            tracing::info!(destination = %event.destination(), from = %event.origin(), "config refresh event");
                            to_acknowledge.push(event);
                            refresh = true;
                        }
                        Ok(Delivery::Event(_)) => {}
                        Ok(Delivery::MayHaveMissed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            tracing::info!("config client: refresh events may have been missed; fetching once");
                            refresh = true;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            deliveries = None;
                            break;
                        }
                    }
                    delivery = deliveries.as_mut().and_then(|receiver| match receiver.try_recv() {
                        Ok(delivery) => Some(Ok(delivery)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                        Err(_) => None,
                    });
                }
            }
            _ = bus_check.tick(), if shared.bus.is_some() => {
                let connected = shared.bus.as_ref().is_some_and(Bus::is_connected);
                if connected && !bus_was_connected {
                    // Events sent before the subscription was in place are lost: fetch
                    // once now that it is, and only then say the bus is up, so that
                    // "connected" means that no change can have been missed.
                    bus_was_connected = true;
                    refresh = true;
                    caught_up = false;
                } else if caught_up {
                    shared.note_bus(connected);
                }
            }
            _ = next_tick(&mut poll) => refresh = true,
            () = sleep_until(retry_at) => refresh = true,
        }
        if !refresh {
            continue;
        }
        let result = shared.refresh().await;
        if !caught_up {
            caught_up = true;
            shared.note_bus(shared.bus.as_ref().is_some_and(Bus::is_connected));
        }
        match result {
            Ok(_) => {
                retry_attempt = None;
                retry_at = None;
                shared.acknowledge(&to_acknowledge).await;
                to_acknowledge.clear();
            }
            Err(RefreshError::Unavailable(_)) => {
                let attempt = retry_attempt.map_or(0, |attempt| attempt.saturating_add(1));
                retry_attempt = Some(attempt);
                retry_at = Some(Instant::now() + settings.retry.delay(attempt));
            }
            Err(RefreshError::Refused(_)) => {
                // Not in force, so not acknowledged; a fix to the configuration sends a
                // new event.
                retry_attempt = None;
                retry_at = None;
                to_acknowledge.clear();
            }
        }
    }
}

async fn next_delivery(
    deliveries: &mut Option<broadcast::Receiver<Delivery>>,
) -> Result<Delivery, broadcast::error::RecvError> {
    match deliveries {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ConfigStatus {
        ConfigStatus {
            enabled: true,
            origin: ConfigOrigin::Remote {
                uri: "http://c:8888".into(),
            },
            version: Some("abc".into()),
            generation: 3,
            unavailable: None,
            refused: None,
            server_state: None,
            bus: BusStatus::Connected,
        }
    }

    #[test]
    fn health_is_degraded_for_each_problem_and_never_down() {
        let (state, detail) = status().health();
        assert_eq!(state, HealthState::Up);
        assert!(detail.contains("version abc from http://c:8888"), "{detail}");

        type Change = fn(&mut ConfigStatus);
        let cases: Vec<(Change, &str)> = vec![
            (
                |s| s.refused = Some("key `pool.max`: must be at least 1".into()),
                "refused",
            ),
            (
                |s| {
                    s.origin = ConfigOrigin::Local;
                    s.unavailable = Some("no config server answered".into());
                },
                "running on the local configuration",
            ),
            (|s| s.bus = BusStatus::Disconnected, "bus is not connected"),
        ];
        for (change, expected) in cases {
            let mut status = status();
            change(&mut status);
            let (state, detail) = status.health();
            assert_eq!(state, HealthState::Degraded, "{detail}");
            assert!(detail.contains(expected), "{detail}");
        }
        let off = ConfigStatus {
            enabled: false,
            origin: ConfigOrigin::Local,
            bus: BusStatus::None,
            ..status()
        };
        assert_eq!(off.health().0, HealthState::Up);
    }
}
