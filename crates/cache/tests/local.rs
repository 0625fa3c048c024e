//! One cache on its own (`local_only`): bounds, expiry, shared load errors, the
//! configuration's refusals and the metrics a service's `/metrics` shows.

#[path = "support/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet::{Source, unique};
use rtalpha_cache::{CacheConfig, CacheError, CacheSettings, Caches};
use tokio_util::sync::CancellationToken;

fn local(settings: CacheSettings) -> CacheConfig {
    CacheConfig {
        local_only: true,
        caches: [("c".to_owned(), settings)].into_iter().collect(),
        ..CacheConfig::default()
    }
}

fn cache(config: &CacheConfig, service: &str) -> rtalpha_cache::Cache<String> {
    Caches::new(config, service, None, CancellationToken::new())
        .expect("caches")
        .cache("c")
}

#[tokio::test]
async fn entries_expire_after_the_ttl_and_when_idle_for_the_tti() {
    let source = Source::new();
    source.set("k", "v");
    let ttl = cache(
        &local(CacheSettings {
            ttl: Some(Duration::from_millis(150)),
            ..CacheSettings::default()
        }),
        "svc",
    );
    source.read(&ttl, "k").await;
    // Read often: the TTL counts from the write, not from the last read.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        source.read(&ttl, "k").await;
    }
    assert_eq!(source.loads(), 2, "expired once in 200 ms of reads");

    let source = Source::new();
    let tti = cache(
        &local(CacheSettings {
            ttl: None,
            tti: Some(Duration::from_millis(150)),
            ..CacheSettings::default()
        }),
        "svc",
    );
    source.read(&tti, "k").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        source.read(&tti, "k").await;
    }
    assert_eq!(source.loads(), 1, "read within the TTI, it stays");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(tti.get("k").await, None, "idle past the TTI, it is gone");
}

#[tokio::test]
async fn the_entry_bound_evicts_and_evictions_are_counted() {
    let cache = cache(
        &local(CacheSettings {
            max_entries: Some(10),
            ..CacheSettings::default()
        }),
        "svc",
    );
    for i in 0..200 {
        cache.put(&format!("k{i}"), format!("v{i}")).await;
    }
    let count = cache.entry_count().await;
    assert!(count <= 10, "{count} entries in a cache of 10");
    assert!(cache.stats().evictions >= 190, "{:?}", cache.stats());
}

#[tokio::test]
async fn a_failed_load_reaches_every_waiting_caller_once_and_the_next_miss_retries() {
    let cache = cache(&local(CacheSettings::default()), "svc");
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..100 {
        let (cache, loads) = (cache.clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load("k", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<String, _>(std::io::Error::other("database down"))
                })
                .await
        }));
    }
    for reader in readers {
        let error = reader.await.expect("reader").expect_err("the load failed");
        assert_eq!(error.to_string(), "database down");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one failed load for 100 callers");
    let value = cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("v".to_owned()) })
        .await
        .expect("a new load");
    assert_eq!(*value, "v");
    assert_eq!(cache.stats().load_errors, 1);
    assert_eq!(cache.stats().loads, 2);
}

#[tokio::test]
async fn invalidation_mode_without_a_bus_and_invalid_settings_are_refused() {
    let no_bus = Caches::new(&CacheConfig::default(), "svc", None, CancellationToken::new());
    assert!(matches!(no_bus, Err(CacheError::NoBus)), "{no_bus:?}");
    let invalid = Caches::new(
        &local(CacheSettings {
            max_entries: Some(0),
            ..CacheSettings::default()
        }),
        "svc",
        None,
        CancellationToken::new(),
    );
    let message = invalid.expect_err("refused").to_string();
    assert!(message.contains("cache.caches.c.max_entries"), "{message}");
}

#[tokio::test]
async fn hits_misses_loads_and_load_time_are_metrics() {
    let handle = rtalpha_runtime::telemetry::metrics();
    let service = unique("metrics");
    let cache = cache(&local(CacheSettings::default()), &service);
    let source = Source::new();
    source.set("k", "v");
    source.read(&cache, "k").await;
    source.read(&cache, "k").await;
    source.read(&cache, "k").await;
    cache.invalidate("k").await;
    let text = handle.render();
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name) && line.contains(&service))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(value("rtalpha_cache_hits_total").as_deref(), Some("2"), "{text}");
    assert_eq!(value("rtalpha_cache_misses_total").as_deref(), Some("1"));
    assert_eq!(value("rtalpha_cache_loads_total").as_deref(), Some("1"));
    assert!(value("rtalpha_cache_load_seconds_count").is_some(), "load time: {text}");
}
