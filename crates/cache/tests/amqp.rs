//! Three instances of a service on a real RabbitMQ (`RTALPHA_TEST_AMQP_URL`), each with
//! its own connection: invalidations on the cache exchange, a lost one, and the broker
//! dropping every connection.

#[path = "support/fleet.rs"]
mod fleet;

use std::process::Command;
use std::time::Duration;

use fleet::{Source, amqp_url, config, converges, fleet, synchronised, unique, until};
use rtalpha_bus::Bus;
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_proto::cache::CacheInvalidation;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One test at a time: the outage test drops every connection of the broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_bus(url: &str, shutdown: &CancellationToken) -> Option<Bus> {
    Some(Bus::connect(url, shutdown.clone()).expect("amqp URL"))
}

#[tokio::test]
async fn a_write_on_one_instance_reaches_the_others_within_the_bound() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let service = unique("amqp-write");
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || amqp_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v1");
    }
    let loads = source.loads();
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    assert_eq!(source.loads(), loads, "warm caches answer from memory");

    source.set("p-1", "v2");
    caches[0].put("p-1", "v2".to_owned()).await;
    converges(&source, &caches, "p-1", "v2", Instant::now()).await;
    source.set("p-1", "v3");
    caches[1].invalidate("p-1").await;
    converges(&source, &caches, "p-1", "v3", Instant::now()).await;
    source.set("p-1", "v4");
    caches[2].invalidate_all().await;
    converges(&source, &caches, "p-1", "v4", Instant::now()).await;

    // Another service's cache of the same name hears nothing of these.
    let other = fleet(
        1,
        &config(None, "t"),
        &unique("amqp-other"),
        "products",
        || amqp_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&other).await;
    source.set("p-1", "v5");
    caches[0].put("p-1", "v5".to_owned()).await;
    converges(&source, &caches, "p-1", "v5", Instant::now()).await;
    assert_eq!(
        other[0].stats().invalidations_received,
        0,
        "routed per service and cache"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_lost_invalidation_is_seen_as_a_gap_and_nothing_stale_is_served() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let service = unique("amqp-gap");
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || amqp_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    // A fourth instance speaking the wire format: its message 1 arrives, message 2 (for
    // p-1) is lost, then its heartbeat says 2.
    let writer = Bus::connect(&url, shutdown.clone()).expect("bus");
    until("the writer is connected", Duration::from_secs(5), async || {
        writer.is_connected()
    })
    .await;
    let message = |sequence: u64, keys: &[&str]| {
        RemoteEvent::CacheInvalidation(CacheInvalidation {
            timestamp: rtalpha_bus::now_ms(),
            origin_service: format!("{service}:products:writer"),
            destination_service: CacheInvalidation::destination_of(&service),
            cache: "products".to_owned(),
            sequence,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            all: false,
        })
    };
    writer.publish(&message(1, &["p-0"])).await.expect("published");
    until("message 1 arrived", Duration::from_secs(5), async || {
        caches.iter().all(|c| c.stats().invalidations_received >= 1)
    })
    .await;
    for cache in &caches {
        assert_eq!(cache.get("p-1").await.as_deref().map(String::as_str), Some("v1"));
    }
    let clears_before: Vec<u64> = caches.iter().map(|c| c.stats().clears).collect();
    source.set("p-1", "v2");
    let written = Instant::now();
    writer.publish(&message(2, &[])).await.expect("heartbeat published");
    converges(&source, &caches, "p-1", "v2", written).await;
    for (cache, before) in caches.iter().zip(clears_before) {
        assert!(
            cache.stats().clears > before,
            "the gap cleared the cache: {:?}",
            cache.stats()
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn the_broker_dropping_every_connection_clears_the_caches_and_they_recover() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let service = unique("amqp-outage");
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || amqp_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    let clears_before: Vec<u64> = caches.iter().map(|c| c.stats().clears).collect();
    source.set("p-1", "v2");
    let closed = Command::new("rabbitmqctl")
        .args(["close_all_connections", "rtalpha cache test: dropping connections"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    // The write happens while the connections are down (or coming back): its message
    // may be lost, and must not leave a stale entry anywhere.
    caches[0].put("p-1", "v2".to_owned()).await;
    for (cache, before) in caches.iter().zip(&clears_before) {
        until("the drop is noticed", Duration::from_secs(10), async || {
            cache.stats().clears > *before
        })
        .await;
    }
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v2", "no stale read after the drop");
    }
    synchronised(&caches).await;
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v2");
    }
    source.set("p-1", "v3");
    caches[1].put("p-1", "v3".to_owned()).await;
    converges(&source, &caches, "p-1", "v3", Instant::now()).await;
    shutdown.cancel();
}
