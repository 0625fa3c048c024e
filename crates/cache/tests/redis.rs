//! The distributed mode: three instances over a real Redis (`RTALPHA_TEST_REDIS_URL`,
//! isolated by a unique key prefix), and over a private `redis-server` of the test's
//! own on a free loopback port, which the test freezes, kills and restarts.

#[path = "support/fleet.rs"]
mod fleet;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet::{Source, config, converges, fleet, redis_url, synchronised, unique, until};
use rtalpha_cache::Cache;
use rtalpha_proto::cache::CacheInvalidation;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The redis-server of one test: no persistence, in a temporary directory.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        // A free port: bound, read and released, then given to redis-server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = PrivateRedis {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not answer on port {} within 2 s", self.port);
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill();
    }
}

fn distributed(url: &str, prefix: &str) -> rtalpha_cache::CacheConfig {
    config(Some(url.to_owned()), prefix)
}

#[tokio::test]
async fn a_write_on_one_instance_reaches_the_others_through_redis_within_the_bound() {
    let Some(url) = redis_url() else { return };
    let shutdown = CancellationToken::new();
    let prefix = unique("rtalpha-test");
    let caches = fleet(3, &distributed(&url, &prefix), "svc", "products", || None, &shutdown);
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        assert_eq!(source.read(cache, "p-1").await, "v1");
    }
    assert_eq!(
        source.loads(),
        1,
        "the first instance loaded; the others read it from Redis"
    );
    assert_eq!(caches[1].stats().shared_hits + caches[2].stats().shared_hits, 2);
    let loads = source.loads();
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    assert_eq!(source.loads(), loads, "then from memory");
    assert!(caches.iter().all(|c| c.stats().hits >= 1));

    source.set("p-1", "v2");
    caches[0].put("p-1", "v2".to_owned()).await;
    // The others see the value the writer put in Redis, without loading.
    let loads = source.loads();
    converges(&source, &caches, "p-1", "v2", Instant::now()).await;
    assert_eq!(source.loads(), loads, "the put went to Redis; nobody had to load");
    source.set("p-1", "v3");
    caches[1].invalidate("p-1").await;
    converges(&source, &caches, "p-1", "v3", Instant::now()).await;
    source.set("p-1", "v4");
    caches[2].invalidate_all().await;
    converges(&source, &caches, "p-1", "v4", Instant::now()).await;
    assert!(caches[0].get("p-1").await.is_some(), "get reads Redis (or memory)");
    shutdown.cancel();
}

#[tokio::test]
async fn a_lost_invalidation_is_seen_as_a_gap_and_nothing_stale_is_served() {
    let Some(url) = redis_url() else { return };
    let shutdown = CancellationToken::new();
    let prefix = unique("rtalpha-test");
    let caches = fleet(3, &distributed(&url, &prefix), "svc", "products", || None, &shutdown);
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    for cache in &caches {
        source.read(cache, "p-1").await;
    }
    // A fourth instance, speaking the protocol itself: it writes p-1 in Redis (the
    // entry's place: epoch 0, `v:` and the key), its message 1 says so but is lost, and
    // its heartbeat says 1.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connection");
    let base = format!("{prefix}:svc:products");
    let _: () = redis::cmd("SET")
        .arg(format!("{base}:0:v:p-1"))
        .arg("\"v2\"")
        .query_async(&mut connection)
        .await
        .expect("SET");
    source.set("p-1", "v2");
    let heartbeat = CacheInvalidation {
        timestamp: rtalpha_bus::now_ms(),
        origin_service: "svc:products:writer".to_owned(),
        destination_service: CacheInvalidation::destination_of("svc"),
        cache: "products".to_owned(),
        sequence: 1,
        keys: Vec::new(),
        all: false,
    };
    let clears_before: Vec<u64> = caches.iter().map(|c| c.stats().clears).collect();
    let written = Instant::now();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{base}:invalidations"))
        .arg(serde_json::to_vec(&heartbeat).expect("json"))
        .query_async(&mut connection)
        .await
        .expect("PUBLISH");
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
async fn a_write_during_a_slow_load_is_not_undone_by_the_load() {
    let Some(url) = redis_url() else { return };
    let shutdown = CancellationToken::new();
    let prefix = unique("rtalpha-test");
    let caches = fleet(3, &distributed(&url, &prefix), "svc", "products", || None, &shutdown);
    synchronised(&caches).await;
    // The second instance misses and loads slowly what the source held before the write.
    let slow = {
        let cache = caches[1].clone();
        tokio::spawn(async move {
            cache
                .get_or_load("p-1", || async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::convert::Infallible>("before".to_owned())
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    caches[0].put("p-1", "after".to_owned()).await;
    let loaded = slow.await.expect("reader").expect("loaded");
    assert_eq!(*loaded, "before", "the slow reader itself overlapped the write");
    let source = Source::new();
    source.set("p-1", "after");
    // Neither Redis nor any near cache keeps what the slow load read.
    converges(&source, &caches, "p-1", "after", Instant::now()).await;
    assert_eq!(
        source.loads(),
        0,
        "everyone reads the written value from Redis or memory"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_hundred_concurrent_misses_run_the_loader_once() {
    let Some(url) = redis_url() else { return };
    let shutdown = CancellationToken::new();
    let prefix = unique("rtalpha-test");
    let caches = fleet(1, &distributed(&url, &prefix), "svc", "products", || None, &shutdown);
    synchronised(&caches).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..100 {
        let (cache, loads) = (caches[0].clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::convert::Infallible>("loaded".to_owned())
                })
                .await
        }));
    }
    for reader in readers {
        assert_eq!(*reader.await.expect("reader").expect("loaded"), "loaded");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 100 misses");
    shutdown.cancel();
}

/// Reads every cache, asserting each answers `expected` without an error.
async fn all_read(source: &Arc<Source>, caches: &[Cache<String>], expected: &str) {
    for cache in caches {
        let value = tokio::time::timeout(Duration::from_secs(2), source.read(cache, "p-1"))
            .await
            .expect("a read answers while Redis is down");
        assert_eq!(value, expected);
    }
}

#[tokio::test]
async fn redis_frozen_killed_and_restarted_costs_no_error_and_no_stale_read() {
    let mut redis = PrivateRedis::start();
    let shutdown = CancellationToken::new();
    let caches = fleet(
        3,
        &distributed(&redis.url(), "rtalpha-test"),
        "svc",
        "products",
        || None,
        &shutdown,
    );
    synchronised(&caches).await;
    let source = Source::new();
    source.set("p-1", "v1");
    all_read(&source, &caches, "v1").await;

    // Frozen: connections stay open, commands time out; Redis keeps v1.
    redis.signal("-STOP");
    for cache in &caches {
        until("Redis is seen frozen", Duration::from_secs(5), async || {
            source.read(cache, "p-1").await;
            !cache.is_synchronised()
        })
        .await;
    }
    source.set("p-1", "v2");
    caches[0].put("p-1", "v2".to_owned()).await;
    let loads = source.loads();
    all_read(&source, &caches, "v2").await;
    assert!(source.loads() > loads, "readers fell back to the loader");
    redis.signal("-CONT");
    synchronised(&caches).await;
    // Redis still held v1; the writer's missed write was replayed before it was used.
    all_read(&source, &caches, "v2").await;
    let loads = source.loads();
    all_read(&source, &caches, "v2").await;
    assert_eq!(source.loads(), loads, "from memory again");

    // Killed: connections drop; restarted empty on the same port.
    redis.kill();
    for cache in &caches {
        until("Redis is seen gone", Duration::from_secs(5), async || {
            source.read(cache, "p-1").await;
            !cache.is_synchronised()
        })
        .await;
    }
    source.set("p-1", "v3");
    caches[1].invalidate("p-1").await;
    all_read(&source, &caches, "v3").await;
    redis.spawn();
    synchronised(&caches).await;
    all_read(&source, &caches, "v3").await;
    source.set("p-1", "v4");
    caches[2].put("p-1", "v4".to_owned()).await;
    converges(&source, &caches, "p-1", "v4", Instant::now()).await;
    for cache in &caches {
        assert!(cache.stats().clears >= 2, "cleared on each outage: {:?}", cache.stats());
    }
    shutdown.cancel();
}
