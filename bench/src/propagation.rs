//! Change propagation: how long from a cancel until every watcher has heard of it.
//!
//! The probe opens `watchers` SSE streams on `/v1/watch`, each on its own connection,
//! and waits for every `hello`. Then, round by round, it cancels one seeded instance
//! and waits until each watcher has parsed the `change` event naming it. A round's
//! figure is the time from just before the DELETE is sent to the moment the last
//! watcher parsed the event; so it includes the DELETE's own trip, as a client
//! calling cancel would see it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hyper::Method;
use tokio::sync::mpsc;

use crate::client::{self, Connection};
use crate::seed::{app_of, id_of};
use crate::sse::{self, Event};
use crate::stats::{micros, percentile};

/// How long one round may wait for all watchers.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between rounds, so a round's events do not overlap the next one's.
const ROUND_GAP: Duration = Duration::from_millis(20);

/// What to probe.
#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// The registry's base URL.
    #[arg(long)]
    registry: String,
    /// How many SSE watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// How many cancels.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// The app count the seeder used.
    #[arg(long, default_value_t = 100)]
    apps: usize,
    /// The number of the first seeded instance to cancel; rounds take the next ones.
    #[arg(long, default_value_t = 0)]
    first: usize,
}

/// Runs the rounds and prints one JSON line.
pub async fn run(args: PropagationArgs) -> anyhow::Result<()> {
    let authority = client::authority(&args.registry)?;
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for watcher in 0..args.watchers.clamp(1, 1000) {
        tasks.push(sse::spawn_watcher(&authority, watcher, heard_tx.clone()).await?);
    }
    drop(heard_tx);

    let mut hellos = HashSet::new();
    let deadline = Instant::now() + ROUND_TIMEOUT;
    while hellos.len() < tasks.len() {
        match tokio::time::timeout_at(deadline.into(), heard.recv()).await {
            Ok(Some((watcher, Event::Hello, _))) => {
                hellos.insert(watcher);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("only {} watchers said hello", hellos.len()),
        }
    }

    let mut cancels = Connection::open(&authority).await?;
    let mut last_told = Vec::with_capacity(args.rounds);
    let mut first_told = Vec::with_capacity(args.rounds);
    let mut cancel_answered = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let n = args.first + round;
        let (app, id) = (app_of(n, args.apps), id_of(n));
        let path = format!("/v1/apps/{app}/{id}");
        let sent = Instant::now();
        let (status, answer) = cancels.send(Method::DELETE, &path, None).await?;
        cancel_answered.push(sent.elapsed());
        if !status.is_success() {
            bail!("DELETE {path} answered {status}: {}", String::from_utf8_lossy(&answer));
        }
        let mut told = HashSet::new();
        let mut first: Option<Instant> = None;
        let mut last = sent;
        let deadline = sent + ROUND_TIMEOUT;
        while told.len() < tasks.len() {
            match tokio::time::timeout_at(deadline.into(), heard.recv()).await {
                Ok(Some((watcher, Event::Change { kind, instance_id }, at)))
                    if kind == "cancelled" && instance_id == id =>
                {
                    told.insert(watcher);
                    first = Some(first.map_or(at, |f| f.min(at)));
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the watchers' streams ended"),
                Err(_) => bail!(
                    "round {round}: only {} of {} watchers heard of {id} within {ROUND_TIMEOUT:?}",
                    told.len(),
                    tasks.len()
                ),
            }
        }
        last_told.push(last.duration_since(sent));
        first_told.push(first.unwrap_or(last).duration_since(sent));
        tokio::time::sleep(ROUND_GAP).await;
    }
    for task in tasks {
        task.abort();
    }
    let line = serde_json::json!({
        "watchers": hellos.len(),
        "rounds": last_told.len(),
        "last_watcher_p50_us": micros(percentile(&mut last_told, 50.0)),
        "last_watcher_p99_us": micros(percentile(&mut last_told, 99.0)),
        "last_watcher_max_us": micros(percentile(&mut last_told, 100.0)),
        "first_watcher_p50_us": micros(percentile(&mut first_told, 50.0)),
        "cancel_answered_p50_us": micros(percentile(&mut cancel_answered, 50.0)),
        "cancel_answered_p99_us": micros(percentile(&mut cancel_answered, 99.0)),
    });
    println!("{line}");
    Ok(())
}
