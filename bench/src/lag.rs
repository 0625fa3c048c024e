//! Replication lag: how long a write accepted by one node takes to be visible on its
//! peers.
//!
//! The probe opens one SSE stream on `/v1/watch` of every `--watch` node. Then, every
//! `interval` for `duration`, it writes to the `--write` node on one keep-alive
//! connection, alternately registering probe instance `lag-PID-k` and cancelling it, without
//! waiting for the previous write to be seen. Each watcher's figure for a write is the
//! time from just before the write was sent to the moment that watcher parsed the
//! `change` event of that kind for that instance; so it includes the write's own round
//! trip. Meanwhile it reads `/v1/status` of every `--status` node once a second and
//! keeps each peer link's `lag_ms` and `backlog`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, Connection};
use crate::sse::{self, Event};
use crate::stats::{micros, percentile};

/// How long the probe waits, after the last write, for writes not yet seen.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the replication health is read.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The most writes, whatever the duration and interval say.
const MAX_WRITES: usize = 100_000;

/// What to probe.
#[derive(Debug, Args)]
pub struct LagArgs {
    /// The node the probe writes to.
    #[arg(long)]
    write: String,
    /// A node to watch for the writes (give one per node).
    #[arg(long, required = true)]
    watch: Vec<String>,
    /// A node whose `/v1/status` is sampled every second (give one per node).
    #[arg(long)]
    status: Vec<String>,
    /// The time between writes.
    #[arg(long, default_value = "50ms", value_parser = crate::parse_duration)]
    interval: Duration,
    /// How long to keep writing.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// The app the probe instances go to.
    #[arg(long, default_value = "LAG-PROBE")]
    app: String,
}

/// One write, and when each watcher saw it.
struct Write {
    sent: Instant,
    seen: Vec<Option<Instant>>,
}

/// Runs the probe and prints one JSON line.
pub async fn run(args: LagArgs) -> anyhow::Result<()> {
    let write_authority = client::authority(&args.write)?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watchers = Vec::new();
    for (watcher, url) in args.watch.iter().enumerate() {
        let authority = client::authority(url)?;
        watchers.push(sse::spawn_watcher(&authority, watcher, events_tx.clone()).await?);
    }
    drop(events_tx);
    let mut hellos = vec![false; watchers.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while hellos.iter().any(|said| !said) {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Some((watcher, Event::Hello, _))) => hellos[watcher] = true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("not every watcher said hello within 5 s"),
        }
    }

    let (stop_sampling, stop) = oneshot::channel();
    let sampler = {
        let urls = args.status.clone();
        let limit = args.duration + DRAIN_TIMEOUT;
        tokio::spawn(async move { sample_status(urls, stop, limit).await })
    };

    let mut writer = Connection::open(&write_authority).await?;
    // (instance, kind) → the write.
    let mut writes: HashMap<(String, &'static str), Write> = HashMap::new();
    let mut answered = Vec::new();
    let mut write_errors = 0u64;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0usize;
    while started.elapsed() < args.duration && k < MAX_WRITES {
        ticks.tick().await;
        while let Ok(event) = events.try_recv() {
            note(&mut writes, event);
        }
        // Unique to this run: an id left registered by an earlier probe would make its
        // registration here a renewal, which no watcher hears of.
        let id = format!("lag-{}-{}", std::process::id(), k / 2);
        let (method, path, body, kind) = if k.is_multiple_of(2) {
            let body =
                format!(r#"{{"instance_id":"{id}","host_name":"{id}.probe","port":8080,"lease_duration_secs":3600}}"#);
            (
                Method::POST,
                format!("/v1/apps/{}", args.app),
                Some(Bytes::from(body)),
                "registered",
            )
        } else {
            (Method::DELETE, format!("/v1/apps/{}/{id}", args.app), None, "cancelled")
        };
        let sent = Instant::now();
        let outcome = writer.send(method, &path, body).await;
        match outcome {
            Ok((status, _)) if status.is_success() => {
                answered.push(sent.elapsed());
                writes.insert(
                    (id, kind),
                    Write {
                        sent,
                        seen: vec![None; watchers.len()],
                    },
                );
            }
            Ok(_) => write_errors += 1,
            Err(_) => {
                write_errors += 1;
                writer = Connection::open(&write_authority).await?;
            }
        }
        k += 1;
    }
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while writes.values().any(|w| w.seen.iter().any(Option::is_none)) {
        match tokio::time::timeout_at(drain_until.into(), events.recv()).await {
            Ok(Some(event)) => note(&mut writes, event),
            Ok(None) | Err(_) => break,
        }
    }
    for watcher in watchers {
        watcher.abort();
    }
    let _ = stop_sampling.send(());
    let status = sampler.await.context("the status sampler panicked")?;

    let mut per_watcher = Vec::new();
    for (watcher, url) in args.watch.iter().enumerate() {
        let mut lags: Vec<Duration> = writes
            .values()
            .filter_map(|w| w.seen[watcher].map(|at| at.saturating_duration_since(w.sent)))
            .collect();
        per_watcher.push(json!({
            "node": url,
            "seen": lags.len(),
            "missed": writes.len() - lags.len(),
            "p50_us": micros(percentile(&mut lags, 50.0)),
            "p99_us": micros(percentile(&mut lags, 99.0)),
            "max_us": micros(percentile(&mut lags, 100.0)),
        }));
    }
    let line = json!({
        "write_node": args.write,
        "writes": writes.len(),
        "write_errors": write_errors,
        "interval_ms": args.interval.as_millis() as u64,
        "seconds": started.elapsed().as_secs_f64(),
        "write_answered_p50_us": micros(percentile(&mut answered, 50.0)),
        "write_answered_p99_us": micros(percentile(&mut answered, 99.0)),
        "watchers": per_watcher,
        "status": status,
    });
    println!("{line}");
    Ok(())
}

fn note(writes: &mut HashMap<(String, &'static str), Write>, (watcher, event, at): (usize, Event, Instant)) {
    let Event::Change { kind, instance_id } = event else {
        return;
    };
    let kind: &'static str = match kind.as_str() {
        "registered" => "registered",
        "cancelled" => "cancelled",
        _ => return,
    };
    if let Some(write) = writes.get_mut(&(instance_id, kind))
        && let Some(slot) = write.seen.get_mut(watcher)
    {
        slot.get_or_insert(at);
    }
}

/// One node's link to one peer, as sampled.
struct Link {
    node: String,
    peer: String,
    lag_ms: Vec<u64>,
    backlog: Vec<u64>,
    last: Value,
}

/// Reads every node's `/v1/status` once a second until told to stop (or `limit` has
/// passed); for each node and peer link: the samples, and the p50 and highest `lag_ms`
/// and `backlog` seen.
async fn sample_status(urls: Vec<String>, mut stop: oneshot::Receiver<()>, limit: Duration) -> Value {
    let mut links: Vec<Link> = Vec::new();
    let mut failures = 0u64;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(STATUS_EVERY);
    let mut connections: Vec<Option<Connection>> = urls.iter().map(|_| None).collect();
    while started.elapsed() < limit {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => break,
        }
        for (url, connection) in urls.iter().zip(connections.iter_mut()) {
            let Ok(status) = read_status(url, connection).await else {
                failures += 1;
                *connection = None;
                continue;
            };
            for peer in status["cluster"]["peers"].as_array().into_iter().flatten() {
                let peer_url = peer["url"].as_str().unwrap_or("");
                let at = match links.iter().position(|l| l.node == *url && l.peer == peer_url) {
                    Some(at) => at,
                    None => {
                        links.push(Link {
                            node: url.clone(),
                            peer: peer_url.to_owned(),
                            lag_ms: Vec::new(),
                            backlog: Vec::new(),
                            last: Value::Null,
                        });
                        links.len() - 1
                    }
                };
                let link = &mut links[at];
                link.lag_ms.push(peer["lag_ms"].as_u64().unwrap_or(0));
                link.backlog.push(peer["backlog"].as_u64().unwrap_or(0));
                link.last = peer.clone();
            }
        }
    }
    let links: Vec<Value> = links
        .into_iter()
        .map(|link| {
            let Link {
                node,
                peer,
                lag_ms: mut lag,
                mut backlog,
                last,
            } = link;
            lag.sort_unstable();
            backlog.sort_unstable();
            let at = |samples: &[u64], share: f64| -> Option<u64> {
                if samples.is_empty() {
                    return None;
                }
                let rank = ((share * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
                Some(samples[rank - 1])
            };
            json!({
                "node": node,
                "peer": peer,
                "samples": lag.len(),
                "lag_ms_p50": at(&lag, 0.5),
                "lag_ms_max": lag.last(),
                "backlog_p50": at(&backlog, 0.5),
                "backlog_max": backlog.last(),
                "last": last,
            })
        })
        .collect();
    json!({ "links": links, "failures": failures })
}

async fn read_status(url: &str, connection: &mut Option<Connection>) -> anyhow::Result<Value> {
    if connection.is_none() {
        *connection = Some(Connection::open(&client::authority(url)?).await?);
    }
    let Some(open) = connection.as_mut() else {
        bail!("no connection");
    };
    let (status, body) = open.send(Method::GET, "/v1/status", None).await?;
    if !status.is_success() {
        bail!("GET /v1/status answered {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}
