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
use http_body_util::BodyExt;
use hyper::Method;
use tokio::sync::mpsc;

use crate::client::{self, Connection};
use crate::seed::{app_of, id_of};
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

/// What a watcher saw.
enum Heard {
    Hello,
    Cancelled { instance_id: String, at: Instant },
}

/// Runs the rounds and prints one JSON line.
pub async fn run(args: PropagationArgs) -> anyhow::Result<()> {
    let authority = client::authority(&args.registry)?;
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for watcher in 0..args.watchers.clamp(1, 1000) {
        let mut connection = Connection::open(&authority).await?;
        let response = connection.start(Method::GET, "/v1/watch", None).await?;
        if !response.status().is_success() {
            bail!("GET /v1/watch answered {}", response.status());
        }
        let heard_tx = heard_tx.clone();
        tasks.push(tokio::spawn(async move {
            // Keep the connection's sender alive as long as the stream is read.
            let _connection = connection;
            let mut body = response.into_body();
            let mut buffer = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let at = Instant::now();
                buffer.extend_from_slice(data);
                while let Some(end) = find_event_end(&buffer) {
                    let event: Vec<u8> = buffer.drain(..end).collect();
                    if let Some(news) = parse_event(&event, at)
                        && heard_tx.send((watcher, news)).is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(heard_tx);

    let mut hellos = HashSet::new();
    let deadline = Instant::now() + ROUND_TIMEOUT;
    while hellos.len() < tasks.len() {
        match tokio::time::timeout_at(deadline.into(), heard.recv()).await {
            Ok(Some((watcher, Heard::Hello))) => {
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
                Ok(Some((watcher, Heard::Cancelled { instance_id, at }))) if instance_id == id => {
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

/// The length of the first complete event in `buffer`, blank line included.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|pair| pair == b"\n\n").map(|at| at + 2)
}

/// A `hello`, or a `change` that cancelled an instance; `None` for anything else.
fn parse_event(event: &[u8], at: Instant) -> Option<Heard> {
    let text = std::str::from_utf8(event).ok()?;
    let mut kind = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    match kind {
        "hello" => Some(Heard::Hello),
        "change" => {
            let change: serde_json::Value = serde_json::from_str(&data).ok()?;
            if change.get("kind")?.as_str()? != "cancelled" {
                return None;
            }
            let instance_id = change.get("instance_id")?.as_str()?.to_owned();
            Some(Heard::Cancelled { instance_id, at })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cancel_and_ignores_other_events() {
        let now = Instant::now();
        let cancel = b"event: change\nid: 7\ndata: {\"index\":7,\"kind\":\"cancelled\",\"app\":\"A\",\"instance_id\":\"i-3\"}\n\n";
        assert!(matches!(
            parse_event(cancel, now),
            Some(Heard::Cancelled { instance_id, .. }) if instance_id == "i-3"
        ));
        let registered = b"event: change\ndata: {\"kind\":\"registered\",\"instance_id\":\"i-3\"}\n\n";
        assert!(parse_event(registered, now).is_none());
        assert!(matches!(
            parse_event(b"event: hello\nid: 1\ndata: {\"index\":1}\n\n", now),
            Some(Heard::Hello)
        ));
        assert!(parse_event(b": keep-alive\n\n", now).is_none());
    }

    #[test]
    fn finds_where_the_first_event_ends() {
        assert_eq!(find_event_end(b"event: a\n\nevent: b"), Some(10));
        assert_eq!(find_event_end(b"event: a\n"), None);
    }
}
