//! Near caches that stay correct when another instance of the service writes.
//!
//! A [`Caches`] is made once per process from the `cache` section of the configuration
//! ([`CacheConfig`]); [`Caches::cache`] hands out a typed [`Cache`] per name. Values are
//! any serde type; in memory they are kept decoded (moka), in Redis as JSON.
//!
//! Two modes:
//! - **Invalidation mode** (no `cache.url`): each instance has its own near cache; a
//!   `put` or `invalidate` on one instance is announced on the service's bus (the
//!   config server's relay or RabbitMQ) and the others drop the key.
//! - **Distributed mode** (`cache.url = redis://…`): Redis is a shared tier under every
//!   near cache (memory, then Redis, then the loader); writes go to Redis and are
//!   announced by Redis pub/sub (ARCHITECTURE.md says why not by the bus or by RESP3
//!   client tracking). When Redis is unreachable readers go to the loader, without
//!   errors, and the near cache is cleared when Redis is back.
//!
//! In both, every announcement is numbered per publisher and heartbeats repeat the last
//! number, so a lost one is noticed (see the `sync` module); a cache that lost, or could
//! not prove, its path serves nothing from memory until it can.

mod config;
mod near;
mod shared;
mod stats;
mod sync;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use rtalpha_bus::Bus;
use rtalpha_runtime::config::Validate;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use config::{CacheConfig, CacheSettings, DEFAULT_MAX_ENTRIES, SizeBound};
pub use stats::CacheStats;

use near::{Flight, FlightKind, FlightResult, Near};
use shared::Shared;
use sync::{Channel, NearControl, RedisChannel, SyncSetup};

/// The pause between probes of an unreachable Redis.
const PROBE_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Caches could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configuration is not valid; the message names the key.
    #[error(transparent)]
    Config(#[from] rtalpha_runtime::ConfigError),
    /// The invalidation mode needs a bus to tell the other instances.
    #[error(
        "cache.url is unset and no bus was given: the caches cannot tell the other instances (set cache.local_only = true for a single instance)"
    )]
    NoBus,
    /// The Redis URL could not be used.
    #[error("cache.url: {0}")]
    Redis(String),
}

/// Every cache of one process, made from one [`CacheConfig`].
#[derive(Clone)]
pub struct Caches {
    config: CacheConfig,
    service: String,
    mode: Mode,
    shutdown: CancellationToken,
}

#[derive(Clone)]
enum Mode {
    Local,
    Bus(Bus),
    Redis {
        client: redis::Client,
        connection: redis::aio::ConnectionManager,
    },
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Local => "local",
            Mode::Bus(_) => "invalidation over the bus",
            Mode::Redis { .. } => "distributed (redis)",
        };
        f.debug_struct("Caches")
            .field("service", &self.service)
            .field("mode", &mode)
            .finish()
    }
}

impl Caches {
    /// Sets up the caches of `service` (its application name, the same on every
    /// instance) from `config`. The invalidation mode announces on `bus`; the distributed
    /// mode connects to `config.url` lazily, so Redis may be down at start. Background
    /// work stops at `shutdown`.
    pub fn new(
        config: &CacheConfig,
        service: &str,
        bus: Option<Bus>,
        shutdown: CancellationToken,
    ) -> Result<Caches, CacheError> {
        config.validate()?;
        let mode = match (&config.url, bus) {
            (Some(url), _) => {
                let client = redis::Client::open(url.as_str()).map_err(|err| CacheError::Redis(err.to_string()))?;
                let manager = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.redis_timeout))
                    .set_response_timeout(Some(config.redis_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(config.redis_timeout);
                let connection = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager)
                    .map_err(|err| CacheError::Redis(err.to_string()))?;
                Mode::Redis { client, connection }
            }
            (None, _) if config.local_only => Mode::Local,
            (None, Some(bus)) => Mode::Bus(bus),
            (None, None) => return Err(CacheError::NoBus),
        };
        Ok(Caches {
            config: config.clone(),
            service: service.to_owned(),
            mode,
            shutdown,
        })
    }

    /// The cache called `name`, with its settings from `cache.caches.<name>`. Every call
    /// makes a new cache; keep the one you get.
    pub fn cache<V>(&self, name: &str) -> Cache<V>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let settings = self.config.settings(name);
        let counters = Arc::new(stats::Counters::new(&self.service, name));
        let near = Arc::new(Near::new(name, &settings, counters.clone()));
        let setup = |channel| SyncSetup {
            service: self.service.clone(),
            cache: name.to_owned(),
            heartbeat: self.config.heartbeat,
            silence_timeout: self.config.silence_timeout,
            channel,
            near: near.clone() as Arc<dyn NearControl>,
            counters: counters.clone(),
        };
        let (sync, shared) = match &self.mode {
            Mode::Local => (None, None),
            Mode::Bus(bus) => (
                Some(sync::Synchroniser::start(
                    setup(Channel::Bus(bus.clone())),
                    self.shutdown.clone(),
                )),
                None,
            ),
            Mode::Redis { client, connection } => {
                let base = format!("{}:{}:{name}", self.config.key_prefix, self.service);
                let channel = RedisChannel {
                    client: client.clone(),
                    connection: connection.clone(),
                    name: format!("{base}:invalidations"),
                    timeout: self.config.redis_timeout,
                };
                let shared = Arc::new(Shared::new(
                    connection.clone(),
                    base,
                    self.config.redis_timeout,
                    settings.time_to_live(),
                ));
                let sync = sync::Synchroniser::start(setup(Channel::Redis(channel)), self.shutdown.clone());
                (Some(sync), Some(shared))
            }
        };
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            near,
            sync,
            shared,
            counters,
            probe: Arc::new(tokio::sync::Notify::new()),
        });
        if let Some(shared) = &inner.shared {
            tokio::spawn(watch_shared_tier(
                Arc::downgrade(&inner),
                shared.clone(),
                inner.probe.clone(),
                self.shutdown.clone(),
            ));
        }
        Cache { inner }
    }

    /// The service these caches belong to.
    pub fn service(&self) -> &str {
        &self.service
    }
}

/// A typed cache, shared by cloning.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("name", &self.inner.name).finish()
    }
}

struct Inner<V> {
    name: String,
    near: Arc<Near<V>>,
    sync: Option<Arc<sync::Synchroniser>>,
    shared: Option<Arc<Shared>>,
    counters: Arc<stats::Counters>,
    /// Woken when Redis failed, so the watcher probes at once.
    probe: Arc<tokio::sync::Notify>,
}

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The value for `key` from memory or, in the distributed mode, from Redis; `None`
    /// when neither has it (or Redis is unreachable).
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        if self.serves_from_memory()
            && let Some(value) = self.inner.near.get(key).await
        {
            self.inner.counters.hit();
            return Some(value);
        }
        self.inner.counters.miss();
        let shared = self.usable_shared()?;
        let flight = self.inner.near.join(key, FlightKind::Probe);
        let result = flight.run(|| self.probe_shared(key, &flight, shared)).await;
        self.inner.near.leave(key, FlightKind::Probe, &flight);
        result.ok().flatten()
    }

    /// The value for `key`, loaded by `load` on a miss (after Redis, in the distributed
    /// mode) and stored. Concurrent misses on one key run one load and share its result,
    /// including its error.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, load: F) -> Result<Arc<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        if self.serves_from_memory()
            && let Some(value) = self.inner.near.get(key).await
        {
            self.inner.counters.hit();
            return Ok(value);
        }
        self.inner.counters.miss();
        let mut load = Some(load);
        let flight = self.inner.near.join(key, FlightKind::Load);
        let result = flight
            .run(|| {
                let load = load.take();
                self.lead_load(key, &flight, load)
            })
            .await;
        self.inner.near.leave(key, FlightKind::Load, &flight);
        match result {
            Ok(Some(value)) => Ok(value),
            Ok(None) => unreachable!("a load flight always yields a value or an error"),
            Err(error) => match error.downcast::<E>() {
                Ok(error) => Err(error),
                // The flight was led by a caller with another error type and failed:
                // this caller loads for itself.
                Err(_) => match load.take() {
                    Some(load) => self.load_alone(load).await,
                    None => unreachable!("a caller whose loader ran owns the flight's error type"),
                },
            },
        }
    }

    /// Stores `value` for `key` here (and in Redis) and tells the other instances to drop
    /// their copy. Failures to reach them are logged and counted; they clear themselves
    /// when they notice the gap.
    pub async fn put(&self, key: &str, value: V) {
        // Encoded only when Redis or a byte bound needs it.
        let encoded = if self.inner.shared.is_some() || self.inner.near.weighs_bytes() {
            serde_json::to_vec(&value).map_err(|_| ())
        } else {
            Err(())
        };
        let value = Arc::new(value);
        if let Some(shared) = &self.inner.shared {
            let stored = match &encoded {
                _ if !shared.is_up() => Err(None),
                Ok(bytes) => shared.write(key, bytes).await.map_err(Some),
                // A value JSON cannot encode: at least the old one must not stay.
                Err(()) => shared.remove(key).await.map_err(Some),
            };
            if let Err(failure) = stored {
                if let Some(err) = failure {
                    self.shared_failed(&err);
                }
                shared.remember(Some(key));
            }
        }
        if self.serves_from_memory() {
            let weight = self.weight(encoded.as_ref().map(Vec::len).unwrap_or(0));
            self.inner.near.insert_written(key, value, weight, None).await;
        } else {
            self.inner.near.invalidate(key).await;
        }
        self.announce(vec![key.to_owned()], false).await;
    }

    /// Drops `key` here (and in Redis) and on the other instances.
    pub async fn invalidate(&self, key: &str) {
        self.inner.near.invalidate(key).await;
        if let Some(shared) = &self.inner.shared {
            let removed = if shared.is_up() {
                shared.remove(key).await.map_err(|err| self.shared_failed(&err))
            } else {
                Err(())
            };
            if removed.is_err() {
                shared.remember(Some(key));
            }
        }
        self.announce(vec![key.to_owned()], false).await;
    }

    /// Drops every entry here (and in Redis) and on the other instances.
    pub async fn invalidate_all(&self) {
        self.inner.near.clear();
        self.inner.counters.cleared("invalidate_all");
        if let Some(shared) = &self.inner.shared {
            let removed = if shared.is_up() {
                shared.remove_all().await.map_err(|err| self.shared_failed(&err))
            } else {
                Err(())
            };
            if removed.is_err() {
                shared.remember(None);
            }
        }
        self.announce(Vec::new(), true).await;
    }

    /// The counters since this cache was made.
    pub fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot()
    }

    /// The number of entries in memory (moka's estimate, after its pending maintenance).
    pub async fn entry_count(&self) -> u64 {
        self.inner.near.run_pending_tasks().await;
        self.inner.near.entry_count()
    }

    /// Whether this cache serves from memory now: its invalidation path is proven (and,
    /// in the distributed mode, Redis is reachable). Otherwise reads go to the source.
    pub fn is_synchronised(&self) -> bool {
        self.serves_from_memory()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn serves_from_memory(&self) -> bool {
        self.inner.sync.as_ref().is_none_or(|sync| sync.is_healthy())
            && self.inner.shared.as_ref().is_none_or(|shared| shared.is_up())
    }

    fn usable_shared(&self) -> Option<&Arc<Shared>> {
        self.inner.shared.as_ref().filter(|shared| shared.is_up())
    }

    fn weight(&self, encoded_len: usize) -> u32 {
        if self.inner.near.weighs_bytes() {
            u32::try_from(encoded_len).unwrap_or(u32::MAX).max(1)
        } else {
            1
        }
    }

    async fn announce(&self, keys: Vec<String>, all: bool) {
        if let Some(sync) = &self.inner.sync {
            sync.announce(keys, all).await;
        }
    }

    fn shared_failed(&self, err: &shared::Unreachable) {
        self.inner.counters.propagation_failed();
        if let Some(shared) = &self.inner.shared
            && shared.mark_down()
        {
            tracing::warn!(cache = %self.inner.name, error = %err, "cache: Redis unreachable; reading from the loader until it is back");
            self.inner.near.clear();
            self.inner.counters.cleared("redis_down");
            self.inner.probe.notify_one();
        }
    }

    /// A `get` that missed memory, in the distributed mode: Redis only.
    async fn probe_shared(&self, key: &str, flight: &Flight<V>, shared: &Arc<Shared>) -> FlightResult<V> {
        match shared.read(key).await {
            Ok(found) => Ok(self.keep_found(key, flight, found.value, found.expires_in).await),
            Err(err) => {
                self.shared_failed(&err);
                Ok(None)
            }
        }
    }

    /// Decodes what Redis had and keeps it in memory; `None` when it had nothing usable.
    async fn keep_found(
        &self,
        key: &str,
        flight: &Flight<V>,
        bytes: Option<Vec<u8>>,
        expires_in: Option<std::time::Duration>,
    ) -> Option<Arc<V>> {
        let bytes = bytes?;
        match serde_json::from_slice::<V>(&bytes) {
            Ok(value) => {
                self.inner.counters.shared_hit();
                let value = Arc::new(value);
                if self.serves_from_memory() {
                    let weight = self.weight(bytes.len());
                    self.inner
                        .near
                        .insert_from(key, flight, value.clone(), weight, expires_in)
                        .await;
                }
                Some(value)
            }
            Err(err) => {
                // Another version of the service wrote another shape: load afresh.
                tracing::debug!(cache = %self.inner.name, error = %err, "cache: a Redis value does not decode; loading");
                None
            }
        }
    }

    /// The leader of a load flight: Redis, then the loader; stores what it got.
    async fn lead_load<F, Fut, E>(&self, key: &str, flight: &Flight<V>, load: Option<F>) -> FlightResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let Some(load) = load else {
            unreachable!("only a caller that still holds its loader leads a flight")
        };
        let mut stamp = None;
        if let Some(shared) = self.usable_shared() {
            match shared.read(key).await {
                Ok(found) => {
                    if let Some(value) = self.keep_found(key, flight, found.value, found.expires_in).await {
                        return Ok(Some(value));
                    }
                    stamp = Some(found.stamp);
                }
                Err(err) => self.shared_failed(&err),
            }
        }
        let started = Instant::now();
        let loaded = load().await;
        self.inner.counters.loaded(started.elapsed(), loaded.is_ok());
        let value = match loaded {
            Ok(value) => value,
            Err(error) => return Err(Arc::new(error) as Arc<dyn Any + Send + Sync>),
        };
        let encoded = if stamp.is_some() || self.inner.near.weighs_bytes() {
            serde_json::to_vec(&value).ok()
        } else {
            None
        };
        if let (Some(stamp), Some(bytes), Some(shared)) = (&stamp, &encoded, self.usable_shared())
            && let Err(err) = shared.fill(key, stamp, bytes).await
        {
            self.shared_failed(&err);
        }
        let value = Arc::new(value);
        if self.serves_from_memory() {
            let weight = self.weight(encoded.as_ref().map_or(0, Vec::len));
            self.inner
                .near
                .insert_from(key, flight, value.clone(), weight, None)
                .await;
        }
        Ok(Some(value))
    }

    async fn load_alone<F, Fut, E>(&self, load: F) -> Result<Arc<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let started = Instant::now();
        let loaded = load().await;
        self.inner.counters.loaded(started.elapsed(), loaded.is_ok());
        loaded.map(Arc::new).map_err(Arc::new)
    }
}

impl<V: Send + Sync + 'static> NearControl for Near<V> {
    fn invalidate<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for key in keys {
                Near::invalidate(self, key).await;
            }
        })
    }

    fn clear(&self) {
        Near::clear(self);
    }
}

/// Probes an unreachable Redis until it answers, replays the writes it missed, clears
/// the near cache and lets the cache use Redis (and memory) again.
async fn watch_shared_tier<V>(
    cache: std::sync::Weak<Inner<V>>,
    shared: Arc<Shared>,
    probe: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    loop {
        if cache.strong_count() == 0 {
            return;
        }
        if shared.is_up() {
            // Wait for a failure; look again now and then, to stop once the cache is gone.
            tokio::select! {
                _ = tokio::time::timeout(PROBE_PAUSE * 4, probe.notified()) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        if shared.ping().await {
            match shared.replay().await {
                Ok(replayed) => {
                    let Some(inner) = cache.upgrade() else { return };
                    inner.near.clear();
                    shared.mark_up();
                    tracing::info!(cache = %inner.name, "cache: Redis is reachable; using it again");
                    if let Some(sync) = &inner.sync {
                        match replayed {
                            Some(keys) if keys.is_empty() => {}
                            Some(keys) => {
                                sync.announce(keys, false).await;
                            }
                            None => {
                                sync.announce(Vec::new(), true).await;
                            }
                        }
                    }
                    continue;
                }
                Err(err) => tracing::debug!(error = %err, "cache: Redis answers but the replay failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_PAUSE) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
