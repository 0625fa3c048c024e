//! Active health checks (Consul's lesson: a process can heartbeat while it is broken).
//!
//! An instance that registers a health-check URL and the metadata
//! `rtalpha.health-check: http` is probed by the registry: a GET that must answer 2xx
//! or 3xx within the timeout. After `failures_before_down` failures in a row its status
//! becomes DOWN; after `successes_before_up` successes it gets back the status it
//! reported. Verdicts are changes like any other: pushed to watchers and replicated.
//! In a cluster one node probes a given instance: the owner chosen by rendezvous
//! hashing over the instance and the nodes that answer, so a node that dies hands its
//! instances to the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::cluster::{Cluster, owner};
use crate::server::AppState;
use crate::table::HealthCheckTarget;

/// How often the prober looks for due probes.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct ProbeState {
    next_due: Instant,
    failures: u32,
    successes: u32,
}

/// Starts the prober; it returns at shutdown, or at once when health checks are off.
pub fn spawn(state: AppState, cluster: Option<Arc<Cluster>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if state.settings.health_checks.enabled {
            run(state, cluster).await;
        }
    })
}

fn parse_or(text: Option<&str>, default: Duration) -> Duration {
    text.and_then(|t| humantime_serde::re::humantime::parse_duration(t).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

async fn run(state: AppState, cluster: Option<Arc<Cluster>>) {
    let settings = state.settings.health_checks.clone();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.timeout));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut probes: HashMap<(String, String), ProbeState> = HashMap::new();
    let mut ticks = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        let targets = state.table.read().health_check_targets();
        let nodes = cluster.as_ref().map(|c| c.live_nodes());
        let mine: Vec<HealthCheckTarget> = targets
            .into_iter()
            .filter(|target| match &nodes {
                Some(nodes) => {
                    let key = format!("{}/{}", target.app, target.instance_id);
                    owner(&key, nodes.iter().map(String::as_str)) == Some(state.node_id())
                }
                None => true,
            })
            .collect();
        // Forget instances that left or that another node now owns.
        probes.retain(|key, _| mine.iter().any(|t| (&t.app, &t.instance_id) == (&key.0, &key.1)));
        let now = Instant::now();
        let due: Vec<HealthCheckTarget> = mine
            .into_iter()
            .filter(|target| {
                probes
                    .get(&(target.app.clone(), target.instance_id.clone()))
                    .is_none_or(|probe| probe.next_due <= now)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let results: Vec<(HealthCheckTarget, Result<(), String>)> = futures_util::stream::iter(due)
            .map(|target| {
                let client = client.clone();
                let timeout = parse_or(target.timeout.as_deref(), settings.timeout);
                async move {
                    let outcome = probe(&client, &target.url, timeout).await;
                    (target, outcome)
                }
            })
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        for (target, outcome) in results {
            let interval = parse_or(target.interval.as_deref(), settings.interval);
            let key = (target.app.clone(), target.instance_id.clone());
            let probe_state = probes.entry(key).or_insert(ProbeState {
                next_due: Instant::now(),
                failures: 0,
                successes: 0,
            });
            probe_state.next_due = Instant::now() + interval;
            let verdict = match &outcome {
                Ok(()) => {
                    probe_state.failures = 0;
                    probe_state.successes += 1;
                    (probe_state.successes >= settings.successes_before_up && target.passing != Some(true))
                        .then_some((true, String::new()))
                }
                Err(problem) => {
                    probe_state.successes = 0;
                    probe_state.failures += 1;
                    (probe_state.failures >= settings.failures_before_down && target.passing != Some(false))
                        .then(|| (false, problem.clone()))
                }
            };
            if let Some((passing, detail)) = verdict {
                match state
                    .table
                    .set_health_verdict(&target.app, &target.instance_id, passing, &detail)
                {
                    Ok(change) => {
                        if passing {
                            tracing::info!(app = %target.app, instance = %target.instance_id, "health check passes");
                        } else {
                            tracing::warn!(app = %target.app, instance = %target.instance_id, problem = %detail, "health check fails: instance DOWN");
                        }
                        metrics::counter!("rtalpha_registry_health_verdicts_total", "passing" => passing.to_string())
                            .increment(1);
                        state.replicate(change.as_ref());
                    }
                    Err(err) => tracing::debug!(error = %err, "instance left before its verdict"),
                }
            }
        }
    }
}

async fn probe(client: &Client<HttpConnector, Empty<Bytes>>, url: &str, timeout: Duration) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|err| format!("bad health-check URL `{url}`: {err}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "cannot probe `{url}`: only http:// health checks are supported"
        ));
    }
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(err)) => Err(format!("cannot connect: {err}")),
        Ok(Ok(response)) => {
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        }
    }
}
