//! Three instances of a service on the embedded bus: the relay of a real config server
//! started in-process on loopback, each instance with its own HTTP connection to it.

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use fleet::{Source, config, converges, fleet, synchronised, unique, until};
use rtalpha_bus::Bus;
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_proto::cache::CacheInvalidation;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A config server serving an empty directory, for its relay.
struct ConfigServer {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl ConfigServer {
    async fn start(address: SocketAddr) -> ConfigServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = rtalpha_config_server::Config::default();
        config.config_server.native_dir = Some(dir.path().to_path_buf());
        config.server.shutdown_grace = Duration::from_millis(100);
        let listener = TcpListener::bind(address).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rtalpha_config_server::run(config, listener, shutdown.clone()));
        ConfigServer {
            address,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn relay_bus(url: &str, shutdown: &CancellationToken) -> Option<Bus> {
    Some(Bus::connect(url, shutdown.clone()).expect("relay URL"))
}

#[tokio::test]
async fn a_write_on_one_instance_reaches_the_others_within_the_bound() {
    let server = ConfigServer::start("127.0.0.1:0".parse().unwrap()).await;
    let shutdown = CancellationToken::new();
    let service = unique("relay-write");
    let url = server.url();
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || relay_bus(&url, &shutdown),
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
        assert_eq!(source.read(cache, "p-1").await, "v1");
    }
    assert_eq!(source.loads(), loads, "warm caches answer from memory");

    // A put on the first instance.
    source.set("p-1", "v2");
    caches[0].put("p-1", "v2".to_owned()).await;
    let took = converges(&source, &caches, "p-1", "v2", Instant::now()).await;
    println!("put reached the others in {took:?}");
    // An invalidation on the second.
    source.set("p-1", "v3");
    caches[1].invalidate("p-1").await;
    converges(&source, &caches, "p-1", "v3", Instant::now()).await;
    // Everything, from the third.
    source.set("p-1", "v4");
    caches[2].invalidate_all().await;
    converges(&source, &caches, "p-1", "v4", Instant::now()).await;
    assert!(caches[0].stats().invalidations_sent >= 1);
    assert!(caches[2].stats().invalidations_received >= 2, "{:?}", caches[2].stats());
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test]
async fn a_lost_invalidation_is_seen_as_a_gap_and_nothing_stale_is_served() {
    let server = ConfigServer::start("127.0.0.1:0".parse().unwrap()).await;
    let shutdown = CancellationToken::new();
    let service = unique("relay-gap");
    let url = server.url();
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || relay_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    source.set("p-2", "w1");
    for cache in &caches {
        source.read(cache, "p-1").await;
        source.read(cache, "p-2").await;
    }
    // A fourth instance, speaking the wire format itself, writes twice; the message of
    // its second write (number 2, for p-1) is lost on the way, and what arrives next is
    // its heartbeat with number 2.
    let writer = Bus::connect(&url, shutdown.clone()).expect("bus");
    until("the writer's bus is connected", Duration::from_secs(5), async || {
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
    source.set("p-2", "w2");
    writer.publish(&message(1, &["p-2"])).await.expect("published");
    converges(&source, &caches, "p-2", "w2", Instant::now()).await;
    let clears_before: Vec<u64> = caches.iter().map(|c| c.stats().clears).collect();
    for cache in &caches {
        let held = cache.get("p-1").await;
        assert_eq!(held.as_deref().map(String::as_str), Some("v1"), "p-1 is still cached");
    }

    source.set("p-1", "v2");
    // Message 2 ({p-1}) is dropped: never sent.
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
    server.stop().await;
}

#[tokio::test]
async fn a_relay_outage_clears_the_caches_and_they_recover_without_stale_reads() {
    let server = ConfigServer::start("127.0.0.1:0".parse().unwrap()).await;
    // The instances reach the relay through a proxy that the test cuts: an outage of
    // the relay as the instances see it (the config server itself keeps running).
    let link = proxy::Proxy::start(server.address).await;
    let shutdown = CancellationToken::new();
    let service = unique("relay-outage");
    let url = link.url();
    let caches = fleet(
        3,
        &config(None, "t"),
        &service,
        "products",
        || relay_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    let clears_before: Vec<u64> = caches.iter().map(|c| c.stats().clears).collect();

    link.cut();
    for cache in &caches {
        until("the outage is noticed", fleet::SILENCE * 3, async || {
            !cache.is_synchronised()
        })
        .await;
    }
    // During the outage a write cannot be announced; readers go to the source.
    source.set("p-1", "v2");
    caches[0].put("p-1", "v2".to_owned()).await;
    assert!(caches[0].stats().propagation_failures >= 1, "{:?}", caches[0].stats());
    let loads = source.loads();
    for cache in &caches[1..] {
        assert_eq!(source.read(cache, "p-1").await, "v2", "no stale read during the outage");
    }
    assert!(source.loads() > loads, "reads went to the source");
    for (cache, before) in caches.iter().zip(&clears_before) {
        assert!(
            cache.stats().clears > *before,
            "cleared on the outage: {:?}",
            cache.stats()
        );
    }

    link.heal();
    synchronised(&caches).await;
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v2");
    }
    // The path works again, from memory.
    let loads = source.loads();
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v2");
    }
    assert_eq!(source.loads(), loads, "served from memory again");
    source.set("p-1", "v3");
    caches[2].put("p-1", "v3".to_owned()).await;
    converges(&source, &caches, "p-1", "v3", Instant::now()).await;
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test]
async fn a_write_whose_announcement_failed_is_caught_up_by_the_gap_it_leaves() {
    let server = ConfigServer::start("127.0.0.1:0".parse().unwrap()).await;
    // Only the writer reaches the relay through a proxy; the readers connect directly.
    let writer_link = proxy::Proxy::start(server.address).await;
    let shutdown = CancellationToken::new();
    let service = unique("relay-writer-cut");
    let config = config(None, "t");
    let writer = rtalpha_cache::Caches::new(
        &config,
        &service,
        relay_bus(&writer_link.url(), &shutdown),
        shutdown.clone(),
    )
    .expect("caches")
    .cache::<String>("products");
    let url = server.url();
    let readers = fleet(
        2,
        &config,
        &service,
        "products",
        || relay_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&readers).await;
    synchronised(std::slice::from_ref(&writer)).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for reader in &readers {
        source.read(reader, "p-1").await;
    }
    // Let every reader hear the writer at least once, so it knows its number.
    tokio::time::sleep(fleet::HEARTBEAT * 3).await;

    writer_link.cut();
    source.set("p-1", "v2");
    writer.put("p-1", "v2".to_owned()).await;
    assert!(
        writer.stats().propagation_failures >= 1,
        "the announcement could not be sent"
    );
    for reader in &readers {
        let held = reader.get("p-1").await;
        assert_eq!(
            held.as_deref().map(String::as_str),
            Some("v1"),
            "nothing told the reader yet"
        );
    }
    writer_link.heal();
    // The writer's next message (a heartbeat) carries the spent number: a gap.
    converges(&source, &readers, "p-1", "v2", Instant::now()).await;
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_misses_run_the_loader_once() {
    let server = ConfigServer::start("127.0.0.1:0".parse().unwrap()).await;
    let shutdown = CancellationToken::new();
    let service = unique("relay-stampede");
    let url = server.url();
    let caches = fleet(
        1,
        &config(None, "t"),
        &service,
        "products",
        || relay_bus(&url, &shutdown),
        &shutdown,
    );
    synchronised(&caches).await;
    let cache = caches[0].clone();
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..100 {
        let (cache, loads) = (cache.clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", || async move {
                    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::convert::Infallible>("loaded".to_owned())
                })
                .await
        }));
    }
    for reader in readers {
        let value = reader.await.expect("reader").expect("loaded");
        assert_eq!(*value, "loaded");
    }
    assert_eq!(
        loads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one load for 100 misses"
    );
    assert_eq!(cache.stats().loads, 1);
    shutdown.cancel();
    server.stop().await;
}
