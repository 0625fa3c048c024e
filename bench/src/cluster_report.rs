//! The tables of `cluster.sh`'s `cluster.jsonl` (bench/README.md, "Registry cluster").
//!
//! Lines: `renew-split` (targets `hello`, `single`, `cluster`: three wrk processes at
//! once, their RESULT lines under `processes`; the cluster's also carries the lag
//! probe and the nodes' status around the load), `lag-idle` (the lag probe on the idle
//! cluster) and `partition` (targets `defaults` and `fast`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::{Record, disturbed, grouped, millis, number};

/// The measurements this module renders.
pub fn is_cluster(measurement: &str) -> bool {
    matches!(measurement, "renew-split" | "lag-idle" | "partition")
}

/// Accepted renewals per second over the processes, the highest p50 and p99 (µs), and
/// the non-2xx and socket error counts.
fn accepted(result: &Value) -> Option<(f64, f64, f64, f64, f64)> {
    let processes = result.get("processes")?.as_array()?;
    if processes.is_empty() {
        return None;
    }
    let (mut rate, mut p50, mut p99, mut non2xx, mut socket) = (0.0, 0.0f64, 0.0f64, 0.0, 0.0);
    for process in processes {
        let requests = number(process, "requests")?;
        let failed = number(process, "non2xx").unwrap_or(0.0);
        let seconds = number(process, "seconds")?;
        rate += (requests - failed) / seconds;
        p50 = p50.max(number(process, "p50_us").unwrap_or(0.0));
        p99 = p99.max(number(process, "p99_us").unwrap_or(0.0));
        non2xx += failed;
        socket += number(process, "socket_errors").unwrap_or(0.0);
    }
    Some((rate, p50, p99, non2xx, socket))
}

/// The sum of one counter over a raw `/v1/status`'s peers.
fn peer_sum(status: &Value, key: &str) -> f64 {
    status["cluster"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|peer| number(peer, key))
        .sum()
}

/// `A`, `B` or `C` for a node's base URL or node id, by the lag probe's roles.
fn name_of(url: &str, roles: &[(String, &'static str)]) -> String {
    let bare = url.trim_start_matches("http://");
    roles
        .iter()
        .find(|(known, _)| known.trim_start_matches("http://") == bare)
        .map_or_else(|| url.to_owned(), |(_, name)| (*name).to_owned())
}

/// Renders every table of a cluster run.
pub fn render(records: &[Record]) -> String {
    let mut out = String::new();
    let find = |measurement: &str, target: &str| {
        records
            .iter()
            .find(|r| r.measurement == measurement && r.target == target)
    };
    let rate_of = |target: &str| {
        find("renew-split", target)
            .and_then(|r| accepted(&r.result))
            .map(|a| a.0)
    };
    let (hello, single) = (rate_of("hello"), rate_of("single"));

    let _ = writeln!(
        out,
        "Renewals (`PUT /v1/apps/{{app}}/{{id}}/heartbeat`), three wrk processes at once, {} instances:\n",
        grouped(records.first().map_or(0.0, |r| r.instances as f64))
    );
    let _ = writeln!(
        out,
        "| server | wrk processes → nodes | renewals accepted/s | p50 ms (slowest process) | p99 ms (slowest process) | ratio to bare hyper | ratio to single node | non-2xx / socket errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for (target, label, spread) in [
        ("hello", "bare hyper (`rtalpha-bench hello`)", "3 → 1"),
        ("single", "single registry node", "3 → 1"),
        ("cluster", "3-node registry cluster", "1 → each of 3"),
    ] {
        let Some(record) = find("renew-split", target) else {
            continue;
        };
        let Some((rate, p50, p99, non2xx, socket)) = accepted(&record.result) else {
            continue;
        };
        let ratio = |base: Option<f64>| base.map_or("–".to_owned(), |b| format!("{:.2}", rate / b));
        let _ = writeln!(
            out,
            "| {label}{} | {spread} | {} | {} | {} | {} | {} | {non2xx:.0} / {socket:.0} |",
            disturbed(Some(record)),
            grouped(rate),
            millis(Some(p50)),
            millis(Some(p99)),
            ratio(hello),
            ratio(single),
        );
    }

    let cluster = find("renew-split", "cluster");
    if let Some(record) = cluster {
        let r = &record.result;
        let nodes = |key: &str| r[key].as_array().cloned().unwrap_or_default();
        let (before, after, later) = (
            nodes("status_before_load"),
            nodes("status_after_load"),
            nodes("status_5s_later"),
        );
        let seconds = r["processes"]
            .as_array()
            .and_then(|p| p.iter().filter_map(|p| number(p, "seconds")).reduce(f64::max))
            .unwrap_or(0.0);
        if !after.is_empty() && before.len() == after.len() {
            let _ = writeln!(
                out,
                "\nReplication during the cluster's renewal run (each node's `/v1/status`, summed over its two peer links):\n"
            );
            let _ = writeln!(
                out,
                "| node | writes delivered to peers during the run | per second | backlog right after | backlog 5 s later | dropped (overflow) | resync pending |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
            for (n, name) in ["A", "B", "C"].iter().enumerate().take(after.len()) {
                let delivered = peer_sum(&after[n], "replicated_total") - peer_sum(&before[n], "replicated_total");
                let resync = after[n]["cluster"]["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["resync_pending"] == true);
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                    grouped(delivered),
                    if seconds > 0.0 {
                        grouped(delivered / seconds)
                    } else {
                        "–".to_owned()
                    },
                    peer_sum(&after[n], "backlog"),
                    later.get(n).map_or(0.0, |s| peer_sum(s, "backlog")),
                    peer_sum(&after[n], "dropped_total"),
                    if resync { "yes" } else { "no" },
                );
            }
        }
    }

    let lag_rows: Vec<(&str, &Record, &Value)> = [
        ("idle", find("lag-idle", "cluster").map(|r| (r, &r.result))),
        (
            "under the renewal load",
            cluster.and_then(|r| r.result.get("lag").map(|lag| (r, lag))),
        ),
    ]
    .into_iter()
    .filter_map(|(label, found)| found.map(|(record, lag)| (label, record, lag)))
    .collect();
    if !lag_rows.is_empty() {
        let _ = writeln!(
            out,
            "\nReplication lag: a registration or cancellation on A every 50 ms, until an SSE watcher on the peer parsed its `change` event:\n"
        );
        let _ = writeln!(
            out,
            "| cluster | writes on A | watcher on | seen / missed | p50 ms | p99 ms | max ms | write answered by A p50 / p99 ms |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|");
        for (label, record, lag) in &lag_rows {
            let roles = roles(lag);
            for watcher in lag["watchers"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "| {label}{} | {:.0} | {} | {:.0} / {:.0} | {} | {} | {} | {} / {} |",
                    disturbed(Some(record)),
                    number(lag, "writes").unwrap_or(0.0),
                    name_of(watcher["node"].as_str().unwrap_or(""), &roles),
                    number(watcher, "seen").unwrap_or(0.0),
                    number(watcher, "missed").unwrap_or(0.0),
                    millis(number(watcher, "p50_us")),
                    millis(number(watcher, "p99_us")),
                    millis(number(watcher, "max_us")),
                    millis(number(lag, "write_answered_p50_us")),
                    millis(number(lag, "write_answered_p99_us")),
                );
            }
        }
        let _ = writeln!(
            out,
            "\nThe lag gauge of `/v1/status` (`cluster.peers[].lag_ms`, `backlog`), read once a second on every node while the probe ran:\n"
        );
        let _ = writeln!(
            out,
            "| cluster | link | samples | lag_ms p50 | lag_ms max | backlog p50 | backlog max |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for (label, _, lag) in &lag_rows {
            let roles = roles(lag);
            for link in lag["status"]["links"].as_array().into_iter().flatten() {
                let text = |key: &str| number(link, key).map_or("–".to_owned(), grouped);
                let _ = writeln!(
                    out,
                    "| {label} | {} → {} | {} | {} | {} | {} | {} |",
                    name_of(link["node"].as_str().unwrap_or(""), &roles),
                    name_of(link["peer"].as_str().unwrap_or(""), &roles),
                    text("samples"),
                    text("lag_ms_p50"),
                    text("lag_ms_max"),
                    text("backlog_p50"),
                    text("backlog_max"),
                );
            }
        }
    }

    let partitions: Vec<&Record> = records.iter().filter(|r| r.measurement == "partition").collect();
    if !partitions.is_empty() {
        let _ = writeln!(
            out,
            "\nPartition: B cut off (all its links, both ways, closed by the proxy), writes on both sides, then healed:\n"
        );
        let _ = writeln!(
            out,
            "| settings | partition s | writes during it | held when healed A / B / C | converged after s | polls | instances everywhere (expected) | repaired by anti-entropy, at convergence (A / B / C) | repaired, after settling | writes delivered by the queues during healing |"
        );
        let _ = writeln!(out, "|---|---:|---|---|---:|---:|---:|---|---|---:|");
        for record in partitions {
            let r = &record.result;
            let converge = &r["converge"];
            let held = r["held_during_partition"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .map(|n| n.as_f64().map_or("?".to_owned(), grouped))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default();
            let per_node = |key: &str, field: &str| -> Vec<f64> {
                let before = converge["status_before"].as_array().cloned().unwrap_or_default();
                let then = converge[key].as_array().cloned().unwrap_or_default();
                then.iter()
                    .enumerate()
                    .map(|(n, node)| {
                        let sum = |status: &Value| -> f64 {
                            status["peers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|p| number(p, field))
                                .sum()
                        };
                        sum(node) - before.get(n).map_or(0.0, sum)
                    })
                    .collect()
            };
            let slash = |values: &[f64]| {
                if values.is_empty() {
                    "–".to_owned()
                } else {
                    values.iter().map(|v| grouped(*v)).collect::<Vec<_>>().join(" / ")
                }
            };
            let repaired = per_node("status_at_convergence", "repaired_total");
            let settled = per_node("status_after_settle", "repaired_total");
            let delivered: f64 = per_node("status_at_convergence", "replicated_total").iter().sum();
            let settings = match record.target.as_str() {
                "defaults" => "defaults".to_owned(),
                _ => format!("`{}`", r["env"].as_str().unwrap_or(&record.target)),
            };
            let converged = if converge["converged"] == true {
                format!("{:.2}", number(converge, "seconds").unwrap_or(0.0))
            } else {
                "**not within the timeout**".to_owned()
            };
            let _ = writeln!(
                out,
                "| {settings}{} | {:.0} | A and C: 1,000 registered, 1,000 cancelled; B: 500 registered | {held} | {converged} | {:.0} | {} ({}) | {} | {} | {} |",
                disturbed(Some(record)),
                number(r, "partition_seconds").unwrap_or(0.0),
                number(converge, "polls").unwrap_or(0.0),
                number(converge, "instances").map_or("–".to_owned(), grouped),
                number(converge, "expected_instances").map_or("–".to_owned(), grouped),
                slash(&repaired),
                slash(&settled),
                grouped(delivered),
            );
        }
    }
    if records.iter().any(|r| !disturbed(Some(r)).is_empty()) {
        let _ = writeln!(
            out,
            "\n† a rustc process was running during at least part of this measurement."
        );
    }
    out
}

/// The lag probe's nodes by role: the written node is A, the watched ones B and C.
fn roles(lag: &Value) -> Vec<(String, &'static str)> {
    let mut roles = Vec::new();
    if let Some(write) = lag["write_node"].as_str() {
        roles.push((write.to_owned(), "A"));
    }
    for (watcher, name) in lag["watchers"].as_array().into_iter().flatten().zip(["B", "C"]) {
        if let Some(node) = watcher["node"].as_str() {
            roles.push((node.to_owned(), name));
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(measurement: &str, target: &str, result: Value) -> Record {
        Record {
            instances: 10_000,
            measurement: measurement.to_owned(),
            target: target.to_owned(),
            result,
        }
    }

    #[test]
    fn sums_the_processes_and_compares_with_both_baselines() {
        let process = |rps: f64| json!({"requests": rps * 10.0, "seconds": 10.0, "non2xx": 0, "socket_errors": 0, "p50_us": 1000, "p99_us": 2000});
        let records = [
            record(
                "renew-split",
                "hello",
                json!({"processes": [process(100.0), process(100.0)]}),
            ),
            record(
                "renew-split",
                "single",
                json!({"processes": [process(50.0), process(50.0)]}),
            ),
            record(
                "renew-split",
                "cluster",
                json!({"processes": [process(25.0), process(25.0)]}),
            ),
        ];
        let text = render(&records);
        assert!(
            text.contains("| 3-node registry cluster | 1 → each of 3 | 50 | 1.00 | 2.00 | 0.25 | 0.50 | 0 / 0 |"),
            "{text}"
        );
    }

    #[test]
    fn names_nodes_by_their_role_in_the_probe() {
        let lag = json!({"write_node": "http://127.0.0.1:1", "watchers": [{"node": "http://127.0.0.1:2"}, {"node": "http://127.0.0.1:3"}]});
        let roles = roles(&lag);
        assert_eq!(name_of("http://127.0.0.1:2", &roles), "B");
        assert_eq!(name_of("127.0.0.1:1", &roles), "A");
        assert_eq!(name_of("http://127.0.0.1:9", &roles), "http://127.0.0.1:9");
    }
}
