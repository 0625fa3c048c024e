//! What the cache's integration tests share: a source of truth that counts its loads,
//! a fleet of instances of one service, the real services' URLs, and waiting helpers.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rtalpha_bus::Bus;
use rtalpha_cache::{Cache, CacheConfig, Caches};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the tests' caches announce themselves.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long the tests' caches trust a silent path: ten heartbeats, so that a loaded
/// machine's scheduling delays are not taken for an outage.
pub const SILENCE: Duration = Duration::from_millis(1000);
/// How long after a write no instance may still serve the old value: one trip over a
/// loopback transport is milliseconds; a lost message is seen with the next heartbeat.
pub const INVALIDATION_BOUND: Duration = Duration::from_millis(1500);

/// The source of truth behind the caches (a database, in a service), counting loads.
#[derive(Default)]
pub struct Source {
    values: Mutex<HashMap<String, String>>,
    loads: AtomicUsize,
}

impl Source {
    pub fn new() -> Arc<Source> {
        Arc::new(Source::default())
    }

    pub fn set(&self, key: &str, value: &str) {
        self.values.lock().unwrap().insert(key.to_owned(), value.to_owned());
    }

    pub fn get(&self, key: &str) -> String {
        self.values.lock().unwrap().get(key).cloned().unwrap_or_default()
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Reads through `cache`, loading from here on a miss.
    pub async fn read(self: &Arc<Self>, cache: &Cache<String>, key: &str) -> String {
        let source = self.clone();
        let owned = key.to_owned();
        let value = cache
            .get_or_load(key, || async move {
                source.loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(source.get(&owned))
            })
            .await
            .expect("the loader cannot fail");
        (*value).clone()
    }
}

/// The tests' configuration: quick heartbeats, so bounds are short.
pub fn config(url: Option<String>, key_prefix: &str) -> CacheConfig {
    CacheConfig {
        url,
        key_prefix: key_prefix.to_owned(),
        heartbeat: HEARTBEAT,
        silence_timeout: SILENCE,
        redis_timeout: Duration::from_millis(300),
        ..CacheConfig::default()
    }
}

/// `count` instances of `service`, each with its own cache `name` (as separate processes
/// would have), over their own bus connections or Redis.
pub fn fleet(
    count: usize,
    config: &CacheConfig,
    service: &str,
    name: &str,
    bus: impl Fn() -> Option<Bus>,
    shutdown: &CancellationToken,
) -> Vec<Cache<String>> {
    (0..count)
        .map(|_| {
            Caches::new(config, service, bus(), shutdown.clone())
                .expect("caches")
                .cache::<String>(name)
        })
        .collect()
}

/// Waits until `check` holds, for at most `limit`; panics naming `what` otherwise.
pub async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every cache serves from memory (its invalidation path is proven).
pub async fn synchronised(caches: &[Cache<String>]) {
    for cache in caches {
        until("the cache is synchronised", Duration::from_secs(15), async || {
            cache.is_synchronised()
        })
        .await;
    }
}

/// After a write of `expected` at `written`, reads every cache until each serves it,
/// and fails if one still serves anything else later than [`INVALIDATION_BOUND`];
/// returns how long the slowest took. Once a cache served the new value, it must keep
/// serving it.
pub async fn converges(
    source: &Arc<Source>,
    caches: &[Cache<String>],
    key: &str,
    expected: &str,
    written: Instant,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for cache in caches {
        loop {
            let value = source.read(cache, key).await;
            if value == expected {
                slowest = slowest.max(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() <= INVALIDATION_BOUND,
                "an instance still serves `{value}` for {key} {:?} after `{expected}` was written",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for cache in caches {
        for _ in 0..5 {
            assert_eq!(
                source.read(cache, key).await,
                expected,
                "no old value after the new one"
            );
        }
    }
    slowest
}

/// `RTALPHA_TEST_AMQP_URL`, or a skip (a failure under `CI=true`).
pub fn amqp_url() -> Option<String> {
    service_url("RTALPHA_TEST_AMQP_URL")
}

/// `RTALPHA_TEST_REDIS_URL`, or a skip (a failure under `CI=true`).
pub fn redis_url() -> Option<String> {
    service_url("RTALPHA_TEST_REDIS_URL")
}

fn service_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("{variable} is unset but CI=true"),
        _ => {
            println!("skipped: {variable} is unset");
            None
        }
    }
}

/// A prefix no other test run shares, for keys, channels and service names.
pub fn unique(label: &str) -> String {
    let random: u64 = rand::random();
    format!("{label}-{random:016x}")
}
