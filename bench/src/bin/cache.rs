//! `rtalpha-bench-cache`: the figures of `bench/cache/run.sh`, each beside a baseline
//! measured in the same run.
//!
//! - **Hit latency**: a warm key read a million times through an `rtalpha-cache` cache,
//!   and through a bare moka future cache holding the same value (the baseline).
//! - **Propagation**: three instances; one writes, and the figure is the time from just
//!   before its `put` until the last of the other two no longer answers the old value
//!   from its near cache (a thread per reader calls `get` every 50 µs). Per transport: the config server's relay
//!   (a real config server in this process, on loopback), RabbitMQ and Redis. The
//!   baseline is the bare transport in the same run: one message from a publisher to
//!   two subscribers on the same relay, exchange or Redis channel.
//! - **Throughput**: `get_or_load` under a mix of 90 % reads and 10 % `put`s over 10,000
//!   keys, from 4 tasks, for a fixed time; against a bare moka cache (`get_with` and
//!   `insert`) with the same mix. Writes announce on the transport, so with a relay
//!   or Redis they include its round trip.
//!
//! Every figure is a JSON line on stdout. Loopback only; every loop is bounded.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use rtalpha_bus::{Bus, Delivery};
use rtalpha_cache::{Cache, CacheConfig, Caches};
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_proto::cache::CacheInvalidation;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long one propagation round may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between rounds, so that one round's messages do not overlap the next's.
const ROUND_GAP: Duration = Duration::from_millis(5);
/// How often a watcher looks at a reader's value during a propagation round.
const POLL: Duration = Duration::from_micros(50);

/// What to measure.
#[derive(Debug, Parser)]
#[command(
    name = "rtalpha-bench-cache",
    about = "Cache benchmarks: hit latency, propagation, throughput"
)]
struct Args {
    /// RabbitMQ for the AMQP transport (skipped when absent).
    #[arg(long)]
    amqp_url: Option<String>,
    /// Redis for the distributed mode (skipped when absent).
    #[arg(long)]
    redis_url: Option<String>,
    /// Propagation rounds per transport.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Reads per hit-latency measurement.
    #[arg(long, default_value_t = 1_000_000)]
    hits: u32,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let run_id: u64 = rand::random();
    hit_latency(args.hits).await;

    let relay = RelayServer::start(&shutdown).await?;
    let relay_url = relay.url.clone();
    let transports: Vec<(&str, Option<String>)> = vec![
        ("relay", Some(relay_url.clone())),
        ("amqp", args.amqp_url.clone()),
        ("redis", args.redis_url.clone()),
    ];
    for (transport, url) in &transports {
        let Some(url) = url else {
            eprintln!("bench: {transport} skipped (no URL)");
            continue;
        };
        let service = format!("bench-{transport}-{run_id:x}");
        let caches = fleet(transport, url, &service, run_id, &shutdown)?;
        synchronised(&caches).await?;
        let cache_rounds = propagation(&caches, args.rounds).await?;
        let raw_rounds = match *transport {
            "redis" => raw_redis(url, &service, args.rounds).await?,
            _ => raw_bus(url, &service, args.rounds, &shutdown).await?,
        };
        println!(
            "{}",
            json!({"measure": "propagation", "transport": transport, "rounds": args.rounds,
                "cache_p50_us": micros(percentile(&cache_rounds, 50.0)), "cache_p99_us": micros(percentile(&cache_rounds, 99.0)),
                "raw_p50_us": micros(percentile(&raw_rounds, 50.0)), "raw_p99_us": micros(percentile(&raw_rounds, 99.0))})
        );
        let ops = mixed_throughput(&caches[0], Duration::from_secs(args.seconds)).await;
        println!(
            "{}",
            json!({"measure": "throughput", "mode": transport, "seconds": args.seconds, "ops_per_s": ops})
        );
    }
    let local = Caches::new(
        &CacheConfig {
            local_only: true,
            ..CacheConfig::default()
        },
        "bench-local",
        None,
        shutdown.clone(),
    )?
    .cache::<String>("products");
    let ops = mixed_throughput(&local, Duration::from_secs(args.seconds)).await;
    println!(
        "{}",
        json!({"measure": "throughput", "mode": "local", "seconds": args.seconds, "ops_per_s": ops})
    );
    let bare = bare_throughput(Duration::from_secs(args.seconds)).await;
    println!(
        "{}",
        json!({"measure": "throughput", "mode": "bare moka", "seconds": args.seconds, "ops_per_s": bare})
    );
    shutdown.cancel();
    relay.stop().await;
    Ok(())
}

/// A config server in this process, serving an empty directory, for its relay.
struct RelayServer {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: std::path::PathBuf,
}

impl RelayServer {
    async fn start(parent: &CancellationToken) -> anyhow::Result<RelayServer> {
        let random: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("rtalpha-bench-cache-{random:x}"));
        std::fs::create_dir_all(&dir).context("a directory for the config server")?;
        let mut config = rtalpha_config_server::Config::default();
        config.config_server.native_dir = Some(dir.clone());
        config.server.shutdown_grace = Duration::from_millis(100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = parent.child_token();
        let task = tokio::spawn(rtalpha_config_server::run(config, listener, shutdown.clone()));
        Ok(RelayServer {
            url,
            shutdown,
            task,
            dir,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fleet(
    transport: &str,
    url: &str,
    service: &str,
    run_id: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Cache<String>>> {
    let mut caches = Vec::new();
    for _ in 0..3 {
        let (config, bus) = match transport {
            "redis" => (
                CacheConfig {
                    url: Some(url.to_owned()),
                    key_prefix: format!("rtalpha-bench-{run_id:x}"),
                    ..CacheConfig::default()
                },
                None,
            ),
            _ => (CacheConfig::default(), Some(Bus::connect(url, shutdown.clone())?)),
        };
        caches.push(Caches::new(&config, service, bus, shutdown.clone())?.cache::<String>("products"));
    }
    Ok(caches)
}

async fn synchronised(caches: &[Cache<String>]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !caches.iter().all(Cache::is_synchronised) {
        if Instant::now() > deadline {
            bail!("the caches did not synchronise within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn hit_latency(reads: u32) {
    let cache = Caches::new(
        &CacheConfig {
            local_only: true,
            ..CacheConfig::default()
        },
        "bench-hits",
        None,
        CancellationToken::new(),
    )
    .expect("a local cache")
    .cache::<String>("products");
    cache.put("k", "value".to_owned()).await;
    let bare: moka::future::Cache<String, Arc<String>> = moka::future::Cache::new(10_000);
    bare.insert("k".to_owned(), Arc::new("value".to_owned())).await;
    // Warm both, then time each twice, interleaved, and keep the faster of each.
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        let started = Instant::now();
        for _ in 0..reads {
            std::hint::black_box(cache.get("k").await);
        }
        best.0 = best.0.min(started.elapsed().as_nanos() as f64 / f64::from(reads));
        let started = Instant::now();
        for _ in 0..reads {
            std::hint::black_box(bare.get("k").await);
        }
        best.1 = best.1.min(started.elapsed().as_nanos() as f64 / f64::from(reads));
    }
    println!(
        "{}",
        json!({"measure": "hit", "reads": reads, "cache_ns": (best.0 * 10.0).round() / 10.0,
            "bare_moka_ns": (best.1 * 10.0).round() / 10.0})
    );
}

/// Rounds of: both readers hold `v{i}`; the writer puts `v{i+1}`; time until the last
/// reader's `get` no longer answers `v{i}`.
async fn propagation(caches: &[Cache<String>], rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let (writer, readers) = (&caches[0], &caches[1..]);
    writer.put("k", "v0".to_owned()).await;
    let mut figures = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let old = format!("v{round}");
        for reader in readers {
            let deadline = Instant::now() + ROUND_TIMEOUT;
            loop {
                let value = reader
                    .get_or_load("k", || async { Ok::<_, Infallible>(old.clone()) })
                    .await
                    .expect("infallible");
                if *value == old && reader.get("k").await.as_deref() == Some(&old) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("round {round}: a reader never held {old}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Each reader is watched from a thread of its own that polls every 50 µs, so the
        // watching takes neither the runtime's workers nor a whole core.
        let started = Instant::now();
        let handle = tokio::runtime::Handle::current();
        let watchers: Vec<_> = readers
            .iter()
            .map(|reader| {
                let (reader, old, handle) = (reader.clone(), old.clone(), handle.clone());
                std::thread::spawn(move || {
                    let deadline = started + ROUND_TIMEOUT;
                    while handle.block_on(reader.get("k")).as_deref() == Some(&old) {
                        if Instant::now() > deadline {
                            return None;
                        }
                        std::thread::sleep(POLL);
                    }
                    Some(started.elapsed())
                })
            })
            .collect();
        writer.put("k", format!("v{}", round + 1)).await;
        let mut last = Duration::ZERO;
        for watcher in watchers {
            let outcome = tokio::task::spawn_blocking(move || watcher.join()).await?;
            match outcome {
                Ok(Some(took)) => last = last.max(took),
                _ => bail!("round {round}: a reader kept the old value for {ROUND_TIMEOUT:?}"),
            }
        }
        figures.push(last);
        tokio::time::sleep(ROUND_GAP).await;
    }
    Ok(figures)
}

/// The bare bus: one cache-invalidation event from a publisher to two subscribers.
async fn raw_bus(
    url: &str,
    service: &str,
    rounds: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Duration>> {
    let service = format!("{service}-raw");
    let publisher = Bus::connect(url, shutdown.clone())?;
    let subscribers = [
        Bus::connect(url, shutdown.clone())?,
        Bus::connect(url, shutdown.clone())?,
    ];
    for bus in std::iter::once(&publisher).chain(&subscribers) {
        bus.join_cache_topic(&service, "raw").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bus.is_connected() {
            if Instant::now() > deadline {
                bail!("the raw bus did not connect");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Let subscriptions settle (the relay's SSE stream, the AMQP bindings).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut figures = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let sequence = round as u64 + 1;
        let event = RemoteEvent::CacheInvalidation(CacheInvalidation {
            timestamp: rtalpha_bus::now_ms(),
            origin_service: format!("{service}:raw:publisher"),
            destination_service: CacheInvalidation::destination_of(&service),
            cache: "raw".to_owned(),
            sequence,
            keys: vec!["k".to_owned()],
            all: false,
        });
        let started = Instant::now();
        let waits: Vec<_> = subscribers
            .iter()
            .map(|bus| {
                let mut deliveries = bus.subscribe();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::from_std(started + ROUND_TIMEOUT);
                    loop {
                        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
                            Ok(Ok(Delivery::Event(RemoteEvent::CacheInvalidation(m)))) if m.sequence == sequence => {
                                return Some(started.elapsed());
                            }
                            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                            _ => return None,
                        }
                    }
                })
            })
            .collect();
        publisher.publish(&event).await?;
        let mut last = Duration::ZERO;
        for wait in waits {
            match wait.await? {
                Some(took) => last = last.max(took),
                None => bail!("raw round {round}: a subscriber did not hear the event"),
            }
        }
        figures.push(last);
        tokio::time::sleep(ROUND_GAP).await;
    }
    Ok(figures)
}

/// Bare Redis pub/sub: one PUBLISH to two subscriber connections.
async fn raw_redis(url: &str, service: &str, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let client = redis::Client::open(url)?;
    let channel = format!("rtalpha-bench:{service}:raw");
    let mut publisher = client.get_multiplexed_async_connection().await?;
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let stop = Arc::new(AtomicBool::new(false));
    for subscriber in 0..2 {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let (sender, stop) = (sender.clone(), stop.clone());
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(_message) = messages.next().await {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let _ = sender.send((subscriber, Instant::now()));
            }
        });
    }
    let mut figures = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(round.to_string())
            .query_async(&mut publisher)
            .await?;
        let mut seen = [None, None];
        while seen.iter().any(Option::is_none) {
            match tokio::time::timeout(ROUND_TIMEOUT, heard.recv()).await {
                Ok(Some((subscriber, at))) => seen[subscriber] = Some(at),
                _ => bail!("raw redis round {round}: a subscriber did not hear the message"),
            }
        }
        let last = seen.iter().flatten().max().copied().unwrap_or(started);
        figures.push(last.duration_since(started));
        tokio::time::sleep(ROUND_GAP).await;
    }
    stop.store(true, Ordering::Relaxed);
    Ok(figures)
}

const KEYS: u64 = 10_000;
const TASKS: u64 = 4;

/// Operations per second of 90 % `get_or_load` and 10 % `put` over `KEYS` keys.
async fn mixed_throughput(cache: &Cache<String>, duration: Duration) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (cache, done) = (cache.clone(), done.clone());
            tokio::spawn(async move {
                let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ task;
                let mut ops = 0u64;
                while Instant::now() < until {
                    for _ in 0..64 {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let key = format!("k{}", (state >> 33) % KEYS);
                        if (state >> 20).is_multiple_of(10) {
                            cache.put(&key, format!("written {ops}")).await;
                        } else {
                            let value = cache
                                .get_or_load(&key, || async { Ok::<_, Infallible>(format!("loaded {key}")) })
                                .await;
                            std::hint::black_box(value.ok());
                        }
                        ops += 1;
                    }
                }
                done.fetch_add(ops, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    (done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()) as u64
}

/// The same mix on a bare moka cache: `get_with` for reads, `insert` for writes.
async fn bare_throughput(duration: Duration) -> u64 {
    let cache: moka::future::Cache<String, Arc<String>> = moka::future::Cache::new(10_000);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (cache, done) = (cache.clone(), done.clone());
            tokio::spawn(async move {
                let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ task;
                let mut ops = 0u64;
                while Instant::now() < until {
                    for _ in 0..64 {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let key = format!("k{}", (state >> 33) % KEYS);
                        if (state >> 20).is_multiple_of(10) {
                            cache.insert(key, Arc::new(format!("written {ops}"))).await;
                        } else {
                            let loaded = format!("loaded {key}");
                            std::hint::black_box(cache.get_with(key, async { Arc::new(loaded) }).await);
                        }
                        ops += 1;
                    }
                }
                done.fetch_add(ops, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    (done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()) as u64
}

/// The nearest-rank percentile of `samples`.
fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn micros(duration: Option<Duration>) -> Option<u64> {
    duration.map(|d| d.as_micros() as u64)
}
