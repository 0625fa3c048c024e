//! Convergence after a partition: how long until every node holds the same instances.
//!
//! The probe reads every node's `/v1/status` (the replication health before), heals
//! the partition by sending `POST` to `--heal` (the fault proxy's `/pass`) and starts
//! the clock just before it. Then, every `poll`, it fetches `GET /v1/apps` of all nodes
//! at once with `Accept-Encoding: gzip`, as Eureka clients do, and compares their sets
//! of `(app, instance id)`. The figure is the time from the heal to the end of the
//! first poll that found the sets identical (and, with `--expect-count`, equal to the
//! expected set); so it is late by at most one poll. Afterwards it reads `/v1/status`
//! again, at once and after `--settle`, for the anti-entropy repair counts.

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use flate2::read::GzDecoder;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use crate::client::{self, Connection, REQUEST_TIMEOUT};
use crate::seed::{app_of, id_of};

/// What to compare.
#[derive(Debug, Args)]
pub struct ConvergeArgs {
    /// A node's base URL (give one per node).
    #[arg(long, required = true)]
    node: Vec<String>,
    /// A URL to `POST` to first, which heals the partition.
    #[arg(long)]
    heal: Option<String>,
    /// The time between polls.
    #[arg(long, default_value = "200ms", value_parser = crate::parse_duration)]
    poll: Duration,
    /// Give up after this long.
    #[arg(long, default_value = "180s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// With `--expect-count`: the expected set is the seeder's instances
    /// `expect_first..expect_first + expect_count`.
    #[arg(long, default_value_t = 0)]
    expect_first: usize,
    /// How many instances every node must end up with (0: any, as long as all agree).
    #[arg(long, default_value_t = 0)]
    expect_count: usize,
    /// The app count the seeder used.
    #[arg(long, default_value_t = 100)]
    apps: usize,
    /// After converging, wait this long and read the nodes' status once more.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    settle: Duration,
}

type Keys = BTreeSet<(String, String)>;

/// Heals, polls until the nodes agree, and prints one JSON line.
pub async fn run(args: ConvergeArgs) -> anyhow::Result<()> {
    let mut connections = Vec::new();
    for url in &args.node {
        connections.push(Connection::open(&client::authority(url)?).await?);
    }
    let expected: Option<Keys> = (args.expect_count > 0).then(|| {
        (args.expect_first..args.expect_first + args.expect_count)
            .map(|n| (app_of(n, args.apps), id_of(n)))
            .collect()
    });
    let status_before = statuses(&mut connections).await?;

    let started = Instant::now();
    if let Some(heal) = &args.heal {
        let uri: hyper::Uri = heal.parse().with_context(|| format!("`{heal}` is not a URL"))?;
        let mut control = Connection::open(&client::authority(heal)?).await?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let (status, body) = control.send(Method::POST, path, None).await?;
        if !status.is_success() {
            bail!("POST {heal} answered {status}: {}", String::from_utf8_lossy(&body));
        }
    }
    let healed_after = started.elapsed();

    let mut polls = 0u64;
    let mut first_poll: Option<Vec<usize>> = None;
    let mut first_identical: Option<Duration> = None;
    let mut outcome = None;
    while started.elapsed() < args.timeout {
        polls += 1;
        let sets = fetch_all(&mut connections).await?;
        let at = started.elapsed();
        first_poll.get_or_insert_with(|| sets.iter().map(BTreeSet::len).collect());
        let identical = sets.windows(2).all(|pair| pair[0] == pair[1]);
        if identical {
            first_identical.get_or_insert(at);
            let as_expected = expected.as_ref().is_none_or(|keys| *keys == sets[0]);
            if as_expected {
                outcome = Some((at, sets[0].len()));
                break;
            }
        }
        tokio::time::sleep(args.poll).await;
    }
    let status_at_convergence = statuses(&mut connections).await?;
    let status_after_settle = if args.settle.is_zero() {
        Value::Null
    } else {
        tokio::time::sleep(args.settle).await;
        statuses(&mut connections).await?
    };
    let seconds = |d: Duration| d.as_secs_f64();
    let line = json!({
        "converged": outcome.is_some(),
        "seconds": outcome.map(|(at, _)| seconds(at)),
        "first_identical_seconds": first_identical.map(seconds),
        "heal_answered_seconds": seconds(healed_after),
        "instances": outcome.map(|(_, count)| count),
        "expected_instances": expected.as_ref().map(BTreeSet::len),
        "polls": polls,
        "poll_ms": args.poll.as_millis() as u64,
        "instances_at_first_poll": first_poll,
        "status_before": status_before,
        "status_at_convergence": status_at_convergence,
        "status_after_settle": status_after_settle,
    });
    println!("{line}");
    Ok(())
}

/// Every node's instance keys, fetched at the same time.
async fn fetch_all(connections: &mut [Connection]) -> anyhow::Result<Vec<Keys>> {
    let fetches = connections.iter_mut().map(fetch_keys);
    futures_util::future::join_all(fetches).await.into_iter().collect()
}

async fn fetch_keys(connection: &mut Connection) -> anyhow::Result<Keys> {
    let response = connection
        .start_with(Method::GET, "/v1/apps", None, &[("accept-encoding", "gzip")])
        .await?;
    if !response.status().is_success() {
        bail!("GET /v1/apps answered {}", response.status());
    }
    let gzipped = response
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await
        .context("GET /v1/apps: body not read in time")??
        .to_bytes();
    let json = if gzipped {
        let mut plain = Vec::with_capacity(body.len() * 8);
        GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .context("inflating GET /v1/apps")?;
        plain
    } else {
        body.to_vec()
    };
    keys(&serde_json::from_slice(&json).context("GET /v1/apps is not JSON")?)
}

/// `(app, instance id)` of every instance in a `/v1/apps` answer.
fn keys(apps: &Value) -> anyhow::Result<Keys> {
    let mut keys = Keys::new();
    for app in apps["apps"].as_array().context("no `apps` array")? {
        let name = app["name"].as_str().unwrap_or("");
        for instance in app["instances"].as_array().into_iter().flatten() {
            let id = instance["instance_id"].as_str().unwrap_or("");
            keys.insert((name.to_owned(), id.to_owned()));
        }
    }
    Ok(keys)
}

/// The replication health of every node: its `cluster.peers`, trimmed to the counters.
async fn statuses(connections: &mut [Connection]) -> anyhow::Result<Value> {
    let mut nodes = Vec::new();
    for connection in connections.iter_mut() {
        let (status, body) = connection.send(Method::GET, "/v1/status", None).await?;
        if !status.is_success() {
            bail!("GET /v1/status answered {status}");
        }
        let status: Value = serde_json::from_slice(&body)?;
        let peers: Vec<Value> = status["cluster"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|peer| {
                json!({
                    "url": peer["url"],
                    "reachable": peer["reachable"],
                    "backlog": peer["backlog"],
                    "resync_pending": peer["resync_pending"],
                    "dropped_total": peer["dropped_total"],
                    "replicated_total": peer["replicated_total"],
                    "repaired_total": peer["repaired_total"],
                })
            })
            .collect();
        nodes.push(json!({
            "node": status["cluster"]["node_id"],
            "instances": status["instances"],
            "peers": peers,
        }));
    }
    Ok(Value::Array(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_app_and_instance_ids() {
        let apps = json!({"index": 3, "apps": [
            {"name": "A", "instances": [{"instance_id": "i-1"}, {"instance_id": "i-2"}]},
            {"name": "B", "instances": [{"instance_id": "i-1"}]}
        ]});
        let keys = keys(&apps).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&("B".to_owned(), "i-1".to_owned())));
    }
}
