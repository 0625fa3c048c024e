//! Turns a run's `results.jsonl` into the Markdown tables of bench/README.md.
//!
//! Every line is `{"instances":N,"measurement":M,"target":"registry"|"hello","result":{..}}`.
//! A registry figure is paired with the hello figure of the same measurement at the
//! same instance count, which `run.sh` measured right before it.

use std::fmt::Write as _;
use std::ops::Not;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Renewals must reach this share of the bare-hyper rate.
const RENEWAL_RATIO_TARGET: f64 = 0.5;
/// Resident memory with 100,000 instances, at most (decimal megabytes).
const RSS_TARGET_MB: f64 = 200.0;
/// Propagation to the last of 100 watchers, p99, under this (milliseconds).
const PROPAGATION_P99_TARGET_MS: f64 = 50.0;

struct Record {
    instances: u64,
    measurement: String,
    target: String,
    result: Value,
}

/// Prints the tables.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    print!("{}", render(&records));
    Ok(())
}

fn parse(line: &str) -> anyhow::Result<Record> {
    let value: Value = serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
    let field = |name: &str| value.get(name).with_context(|| format!("`{name}` missing in {line}"));
    Ok(Record {
        instances: field("instances")?.as_u64().unwrap_or(0),
        measurement: field("measurement")?.as_str().unwrap_or("").to_owned(),
        target: field("target")?.as_str().unwrap_or("").to_owned(),
        result: field("result")?.clone(),
    })
}

fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(us: Option<f64>) -> String {
    us.map_or("–".to_owned(), |us| format!("{:.2}", us / 1000.0))
}

fn describe(measurement: &str) -> &str {
    match measurement {
        "seed" => "registrations from empty (own client, `seed`)",
        "register" => "registrations on top (wrk, `POST /v1/apps/{app}`)",
        "renew-native" => "renewals (wrk, `PUT /v1/apps/{app}/{id}/heartbeat`)",
        "renew-eureka" => "renewals (wrk, Eureka `PUT /eureka/apps/{APP}/{id}`)",
        "fetch-native" => "full fetches (wrk, `GET /v1/apps`)",
        "fetch-eureka" => "full fetches (wrk, Eureka `GET /eureka/apps`, JSON)",
        other => other,
    }
}

/// A mark on a figure taken while a compiler was running on the machine.
fn disturbed(record: Option<&Record>) -> &'static str {
    match record.and_then(|r| number(&r.result, "rustc_samples")) {
        Some(seen) if seen > 0.0 => " †",
        _ => "",
    }
}

fn render(records: &[Record]) -> String {
    let mut out = String::new();
    let hello = |instances: u64, measurement: &str| {
        records
            .iter()
            .find(|r| r.target == "hello" && r.instances == instances && r.measurement == measurement)
    };
    let rates: Vec<&Record> = records
        .iter()
        .filter(|r| r.target == "registry" && number(&r.result, "rps").is_some())
        .collect();
    let _ = writeln!(
        out,
        "| instances | measurement | rtalpha req/s | p50 ms | p99 ms | MB/s received | bare hyper req/s | ratio | non-2xx / socket errors |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut renewal_ratios = Vec::new();
    for record in &rates {
        let rps = number(&record.result, "rps").unwrap_or(0.0);
        let baseline = hello(record.instances, &record.measurement).and_then(|h| number(&h.result, "rps"));
        let ratio = baseline.map(|b| rps / b);
        if record.measurement.starts_with("renew")
            && let Some(ratio) = ratio
        {
            renewal_ratios.push((record.instances, record.measurement.clone(), ratio));
        }
        let errors = match (
            number(&record.result, "non2xx"),
            number(&record.result, "socket_errors"),
        ) {
            (Some(status), Some(socket)) => format!("{status:.0} / {socket:.0}"),
            _ => "0 / 0".to_owned(),
        };
        let throughput = match (number(&record.result, "bytes"), number(&record.result, "seconds")) {
            (Some(bytes), Some(seconds)) if seconds > 0.0 => {
                format!("{:.0}", bytes / seconds / 1e6)
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {} | {} | {} | {}{} | {} | {} |",
            grouped(record.instances as f64),
            describe(&record.measurement),
            disturbed(Some(record)),
            grouped(rps),
            millis(number(&record.result, "p50_us")),
            millis(number(&record.result, "p99_us")),
            throughput,
            baseline.map_or("–".to_owned(), grouped),
            disturbed(hello(record.instances, &record.measurement)),
            ratio.map_or("–".to_owned(), |r| if r >= 0.1 {
                format!("{r:.2}")
            } else {
                format!("{r:.4}")
            }),
            errors,
        );
    }

    let _ = writeln!(out, "\nFirst full fetch after a change (encoded, then cached):\n");
    let _ = writeln!(out, "| instances | API | time s | body MB |");
    let _ = writeln!(out, "|---:|---|---:|---:|");
    for record in records.iter().filter(|r| r.measurement.starts_with("first-fetch")) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.1} |",
            grouped(record.instances as f64),
            record.measurement.trim_start_matches("first-fetch-"),
            number(&record.result, "seconds").unwrap_or(0.0),
            number(&record.result, "bytes").unwrap_or(0.0) / 1e6,
        );
    }

    let _ = writeln!(out, "\nResident memory of the registry process (`/proc/PID/status`):\n");
    let _ = writeln!(out, "| instances held | when | VmRSS MB | VmHWM (peak) MB |");
    let _ = writeln!(out, "|---:|---|---:|---:|");
    let mut rss_at_100k: Vec<f64> = Vec::new();
    for record in records.iter().filter(|r| r.measurement == "rss") {
        let held = number(&record.result, "instances_held").unwrap_or(record.instances as f64);
        let rss = number(&record.result, "vm_rss_kb").unwrap_or(0.0) * 1024.0 / 1e6;
        let hwm = number(&record.result, "vm_hwm_kb").unwrap_or(0.0) * 1024.0 / 1e6;
        if held as u64 == 100_000 {
            rss_at_100k.push(rss);
        }
        let _ = writeln!(
            out,
            "| {} | {} | {rss:.1} | {hwm:.1} |",
            grouped(held),
            record.result.get("when").and_then(Value::as_str).unwrap_or(""),
        );
    }

    let _ = writeln!(
        out,
        "\nChange propagation (cancel sent → the last of the watchers parsed the event):\n"
    );
    let _ = writeln!(
        out,
        "| instances | watchers | rounds | last told p50 ms | last told p99 ms | last told max ms | first told p50 ms | DELETE answered p50 / p99 ms |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut propagation_p99 = Vec::new();
    for record in records.iter().filter(|r| r.measurement == "propagation") {
        let r = &record.result;
        if let Some(p99) = number(r, "last_watcher_p99_us") {
            propagation_p99.push((record.instances, p99 / 1000.0));
        }
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {:.0} | {} | {} | {} | {} | {} / {} |",
            grouped(record.instances as f64),
            disturbed(Some(record)),
            number(r, "watchers").unwrap_or(0.0),
            number(r, "rounds").unwrap_or(0.0),
            millis(number(r, "last_watcher_p50_us")),
            millis(number(r, "last_watcher_p99_us")),
            millis(number(r, "last_watcher_max_us")),
            millis(number(r, "first_watcher_p50_us")),
            millis(number(r, "cancel_answered_p50_us")),
            millis(number(r, "cancel_answered_p99_us")),
        );
    }

    if records.iter().any(|r| disturbed(Some(r)).is_empty().not()) {
        let _ = writeln!(
            out,
            "\n† a rustc process was running during at least part of this measurement."
        );
    }

    let _ = writeln!(out, "\nTargets:\n");
    let _ = writeln!(out, "| target | measured | met? |");
    let _ = writeln!(out, "|---|---|---|");
    let verdict = |ok: bool| if ok { "yes" } else { "**no**" };
    for (instances, measurement, ratio) in &renewal_ratios {
        let _ = writeln!(
            out,
            "| renewals ≥ {RENEWAL_RATIO_TARGET} × bare hyper ({}, {}) | {ratio:.2} | {} |",
            grouped(*instances as f64),
            measurement.trim_start_matches("renew-"),
            verdict(*ratio >= RENEWAL_RATIO_TARGET),
        );
    }
    if let Some(worst) = rss_at_100k.iter().copied().reduce(f64::max) {
        let _ = writeln!(
            out,
            "| 100,000 instances in ≤ {RSS_TARGET_MB} MB (highest VmRSS while holding 100,000) | {worst:.1} MB | {} |",
            verdict(worst <= RSS_TARGET_MB),
        );
    }
    for (instances, p99) in &propagation_p99 {
        let _ = writeln!(
            out,
            "| propagation p99 < {PROPAGATION_P99_TARGET_MS} ms ({}) | {p99:.2} ms | {} |",
            grouped(*instances as f64),
            verdict(*p99 < PROPAGATION_P99_TARGET_MS),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_each_rate_with_the_baseline_of_the_same_measurement() {
        let lines = [
            r#"{"instances":10000,"measurement":"renew-native","target":"hello","result":{"rps":1000.0}}"#,
            r#"{"instances":10000,"measurement":"renew-native","target":"registry","result":{"rps":400.0,"p50_us":1500,"p99_us":9000,"non2xx":0,"socket_errors":0}}"#,
        ];
        let records: Vec<Record> = lines.iter().map(|l| parse(l).unwrap()).collect();
        let text = render(&records);
        assert!(text.contains("| 10,000 | renewals (wrk, `PUT /v1/apps/{app}/{id}/heartbeat`) | 400 | 1.50 | 9.00 | – | 1,000 | 0.40 | 0 / 0 |"), "{text}");
        assert!(text.contains("| 0.40 | **no** |"), "{text}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
    }
}
