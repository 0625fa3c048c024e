//! Turns a run's `results.jsonl` into the Markdown tables of bench/README.md.
//!
//! Every line is `{"instances":N,"measurement":M,"target":"registry"|"hello","result":{..}}`.
//! A registry figure is paired with the hello figure of the same measurement at the
//! same instance count, which `run.sh` measured right before it. With `--before`, an
//! earlier run's figure of the same measurement is shown next to each, labelled with
//! its commit. `cluster.sh`'s lines (`cluster.jsonl`) are rendered by [`crate::cluster_report`].

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

/// One line of a run's results.
pub struct Record {
    /// The instance count the line belongs to.
    pub instances: u64,
    /// What was measured.
    pub measurement: String,
    /// The server (or setting) it was measured on.
    pub target: String,
    /// The measurement's own JSON.
    pub result: Value,
}

/// An earlier run to compare with, and its label (a commit).
pub struct Before<'a> {
    records: &'a [Record],
    label: &'a str,
}

/// Prints the tables.
pub fn run(path: &Path, before: Option<(&Path, &str)>) -> anyhow::Result<()> {
    let records = load(path)?;
    if records
        .iter()
        .any(|r| crate::cluster_report::is_cluster(&r.measurement))
    {
        print!("{}", crate::cluster_report::render(&records));
        return Ok(());
    }
    let earlier = before.map(|(path, _)| load(path)).transpose()?;
    let before = earlier
        .as_deref()
        .zip(before)
        .map(|(records, (_, label))| Before { records, label });
    print!("{}", render(&records, before.as_ref()));
    Ok(())
}

/// The records of a JSON-lines file.
pub fn load(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines().filter(|line| !line.trim().is_empty()).map(parse).collect()
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

pub fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

pub fn grouped(n: f64) -> String {
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

pub fn millis(us: Option<f64>) -> String {
    us.map_or("–".to_owned(), |us| format!("{:.2}", us / 1000.0))
}

fn describe(measurement: &str) -> &str {
    match measurement {
        "seed" => "registrations from empty (own client, `seed`)",
        "register" => "registrations on top (wrk, `POST /v1/apps/{app}`)",
        "renew-native" => "renewals (wrk, `PUT /v1/apps/{app}/{id}/heartbeat`)",
        "renew-eureka" => "renewals (wrk, Eureka `PUT /eureka/apps/{APP}/{id}`)",
        "fetch-native" => "full fetches (wrk, `GET /v1/apps`, plain)",
        "fetch-native-gzip" => "full fetches (wrk, `GET /v1/apps`, `Accept-Encoding: gzip`)",
        "fetch-eureka" => "full fetches (wrk, Eureka `GET /eureka/apps`, JSON, plain)",
        "fetch-eureka-gzip" => "full fetches (wrk, Eureka `GET /eureka/apps`, JSON, `Accept-Encoding: gzip`)",
        other => other,
    }
}

/// A mark on a figure taken while a compiler was running on the machine.
pub fn disturbed(record: Option<&Record>) -> &'static str {
    match record.and_then(|r| number(&r.result, "rustc_samples")) {
        Some(seen) if seen > 0.0 => " †",
        _ => "",
    }
}

/// Which memory reading of an earlier run a reading corresponds to: the `when` texts
/// changed as the fetch runs were split by format.
fn rss_moment(when: &str) -> &'static str {
    if when == "after seeding" {
        "seeded"
    } else if when.contains("two encodings") || when.contains("all fetch runs") {
        "after all fetch runs"
    } else if when.contains("change log pruned") {
        "pruned"
    } else if when.contains("stale cache") {
        "stale"
    } else if when.contains("registration run") {
        "registrations"
    } else {
        "other"
    }
}

fn ratio_text(r: f64) -> String {
    if r >= 0.1 { format!("{r:.2}") } else { format!("{r:.4}") }
}

impl Before<'_> {
    fn find(&self, instances: u64, measurement: &str, target: &str) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.instances == instances && r.measurement == measurement && r.target == target)
    }

    /// The earlier rate and its ratio to the earlier baseline, as `req/s / ratio`.
    fn rate(&self, instances: u64, measurement: &str) -> String {
        let rps = self
            .find(instances, measurement, "registry")
            .and_then(|r| number(&r.result, "rps"));
        let base = self
            .find(instances, measurement, "hello")
            .and_then(|r| number(&r.result, "rps"));
        match (rps, base) {
            (Some(rps), Some(base)) => format!("{} / {}", grouped(rps), ratio_text(rps / base)),
            _ => "–".to_owned(),
        }
    }

    fn ratio(&self, instances: u64, measurement: &str) -> Option<f64> {
        let rps = self
            .find(instances, measurement, "registry")
            .and_then(|r| number(&r.result, "rps"))?;
        let base = self
            .find(instances, measurement, "hello")
            .and_then(|r| number(&r.result, "rps"))?;
        Some(rps / base)
    }

    fn rss(&self, instances: u64, when: &str) -> Option<f64> {
        let moment = rss_moment(when);
        self.records
            .iter()
            .filter(|r| r.measurement == "rss" && r.instances == instances)
            .find(|r| rss_moment(r.result.get("when").and_then(Value::as_str).unwrap_or("")) == moment)
            .and_then(|r| number(&r.result, "vm_rss_kb"))
            .map(|kb| kb * 1024.0 / 1e6)
    }
}

fn render(records: &[Record], before: Option<&Before<'_>>) -> String {
    let mut out = String::new();
    let hello = |instances: u64, measurement: &str| {
        records
            .iter()
            .find(|r| r.target == "hello" && r.instances == instances && r.measurement == measurement)
    };
    let label = before.map_or("", |b| b.label);
    let rates: Vec<&Record> = records
        .iter()
        .filter(|r| r.target == "registry" && number(&r.result, "rps").is_some())
        .collect();
    let _ = write!(
        out,
        "| instances | measurement | rtalpha req/s | p50 ms | p99 ms | MB/s received | bare hyper req/s | ratio | non-2xx / socket errors |"
    );
    if before.is_some() {
        let _ = write!(out, " before (`{label}`) req/s / ratio |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    if before.is_some() {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
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
        let _ = write!(
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
            ratio.map_or("–".to_owned(), ratio_text),
            errors,
        );
        if let Some(before) = before {
            let _ = write!(out, " {} |", before.rate(record.instances, &record.measurement));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(
        out,
        "\nFull fetch right after seeding (it encodes, gzip), then once more without gzip (inflated from the held encoding):\n"
    );
    let _ = write!(out, "| instances | API | request | time s | MB on the wire |");
    if before.is_some() {
        let _ = write!(out, " before (`{label}`): first fetch s, MB |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---:|---|---|---:|---:|");
    if before.is_some() {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    for record in records
        .iter()
        .filter(|r| r.measurement.starts_with("first-fetch") || r.measurement.starts_with("cached-fetch"))
    {
        let first = record.measurement.starts_with("first-fetch");
        let api = record
            .measurement
            .trim_start_matches("first-fetch-")
            .trim_start_matches("cached-fetch-");
        let request = if first {
            "first, `Accept-Encoding: gzip` (encodes)"
        } else {
            "next, plain (inflates)"
        };
        let _ = write!(
            out,
            "| {} | {api} | {request} | {:.3} | {:.1} |",
            grouped(record.instances as f64),
            number(&record.result, "seconds").unwrap_or(0.0),
            number(&record.result, "bytes").unwrap_or(0.0) / 1e6,
        );
        if let Some(before) = before {
            let earlier = first
                .then(|| before.find(record.instances, &record.measurement, "registry"))
                .flatten();
            let text = earlier.map_or("–".to_owned(), |r| {
                format!(
                    "{:.3} s, {:.1}",
                    number(&r.result, "seconds").unwrap_or(0.0),
                    number(&r.result, "bytes").unwrap_or(0.0) / 1e6
                )
            });
            let _ = write!(out, " {text} |");
        }
        let _ = writeln!(out);
    }

    let per_step = records
        .iter()
        .any(|r| r.measurement == "rss" && r.result.get("hwm_reset") == Some(&Value::Bool(true)));
    let _ = writeln!(out, "\nResident memory of the registry process (`/proc/PID/status`):\n");
    let peak = if per_step {
        "peak since the row above (VmHWM, reset after each reading) MB"
    } else {
        "VmHWM (peak) MB"
    };
    let _ = write!(out, "| instances held | when | VmRSS MB | {peak} |");
    if before.is_some() {
        let _ = write!(out, " before (`{label}`) VmRSS MB |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---:|---|---:|---:|");
    if before.is_some() {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    let mut rss_at_100k: Vec<f64> = Vec::new();
    let mut peak_at_100k: Vec<f64> = Vec::new();
    for record in records.iter().filter(|r| r.measurement == "rss") {
        let held = number(&record.result, "instances_held").unwrap_or(record.instances as f64);
        let rss = number(&record.result, "vm_rss_kb").unwrap_or(0.0) * 1024.0 / 1e6;
        let hwm = number(&record.result, "vm_hwm_kb").unwrap_or(0.0) * 1024.0 / 1e6;
        if held as u64 == 100_000 {
            rss_at_100k.push(rss);
        }
        if record.instances == 100_000 && held as u64 <= 100_000 {
            peak_at_100k.push(hwm);
        }
        let when = record.result.get("when").and_then(Value::as_str).unwrap_or("");
        let _ = write!(out, "| {} | {when} | {rss:.1} | {hwm:.1} |", grouped(held));
        if let Some(before) = before {
            let earlier = before.rss(record.instances, when);
            let _ = write!(out, " {} |", earlier.map_or("–".to_owned(), |mb| format!("{mb:.1}")));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(
        out,
        "\nChange propagation (cancel sent → the last of the watchers parsed the event):\n"
    );
    let _ = write!(
        out,
        "| instances | watchers | rounds | last told p50 ms | last told p99 ms | last told max ms | first told p50 ms | DELETE answered p50 / p99 ms |"
    );
    if before.is_some() {
        let _ = write!(out, " before (`{label}`) last told p99 ms |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    if before.is_some() {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    let mut propagation_p99 = Vec::new();
    for record in records.iter().filter(|r| r.measurement == "propagation") {
        let r = &record.result;
        if let Some(p99) = number(r, "last_watcher_p99_us") {
            propagation_p99.push((record.instances, p99 / 1000.0));
        }
        let _ = write!(
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
        if let Some(before) = before {
            let earlier = before
                .find(record.instances, "propagation", "registry")
                .and_then(|r| number(&r.result, "last_watcher_p99_us"));
            let _ = write!(out, " {} |", millis(earlier));
        }
        let _ = writeln!(out);
    }

    if records.iter().any(|r| disturbed(Some(r)).is_empty().not()) {
        let _ = writeln!(
            out,
            "\n† a rustc process was running during at least part of this measurement."
        );
    }

    let _ = writeln!(out, "\nTargets:\n");
    let _ = write!(out, "| target | measured | met? |");
    if before.is_some() {
        let _ = write!(out, " before (`{label}`) |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---|---|---|");
    if before.is_some() {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    let verdict = |ok: bool| if ok { "yes" } else { "**no**" };
    for (instances, measurement, ratio) in &renewal_ratios {
        let _ = write!(
            out,
            "| renewals ≥ {RENEWAL_RATIO_TARGET} × bare hyper ({}, {}) | {ratio:.2} | {} |",
            grouped(*instances as f64),
            measurement.trim_start_matches("renew-"),
            verdict(*ratio >= RENEWAL_RATIO_TARGET),
        );
        if let Some(before) = before {
            let earlier = before.ratio(*instances, measurement);
            let _ = write!(out, " {} |", earlier.map_or("–".to_owned(), |r| format!("{r:.2}")));
        }
        let _ = writeln!(out);
    }
    if let Some(worst) = rss_at_100k.iter().copied().reduce(f64::max) {
        let _ = write!(
            out,
            "| 100,000 instances in ≤ {RSS_TARGET_MB} MB (highest VmRSS while holding 100,000) | {worst:.1} MB | {} |",
            verdict(worst <= RSS_TARGET_MB),
        );

        if let Some(before) = before {
            let earlier = before
                .records
                .iter()
                .filter(|r| r.measurement == "rss" && number(&r.result, "instances_held") == Some(100_000.0))
                .filter_map(|r| number(&r.result, "vm_rss_kb"))
                .map(|kb| kb * 1024.0 / 1e6)
                .reduce(f64::max);
            let _ = write!(out, " {} |", earlier.map_or("–".to_owned(), |mb| format!("{mb:.1} MB")));
        }
        let _ = writeln!(out);
    }
    if let Some(peak) = peak_at_100k.iter().copied().reduce(f64::max) {
        let _ = write!(
            out,
            "| the same, at the peak (highest VmHWM of the 100,000 registry before its registration run) | {peak:.1} MB | {} |",
            verdict(peak <= RSS_TARGET_MB),
        );
        if let Some(before) = before {
            let earlier = before
                .records
                .iter()
                .filter(|r| r.measurement == "rss" && r.instances == 100_000)
                .filter(|r| number(&r.result, "instances_held").is_some_and(|held| held <= 100_000.0))
                .filter_map(|r| number(&r.result, "vm_hwm_kb"))
                .map(|kb| kb * 1024.0 / 1e6)
                .reduce(f64::max);
            let _ = write!(out, " {} |", earlier.map_or("–".to_owned(), |mb| format!("{mb:.1} MB")));
        }
        let _ = writeln!(out);
    }
    for (instances, p99) in &propagation_p99 {
        let _ = write!(
            out,
            "| propagation p99 < {PROPAGATION_P99_TARGET_MS} ms ({}) | {p99:.2} ms | {} |",
            grouped(*instances as f64),
            verdict(*p99 < PROPAGATION_P99_TARGET_MS),
        );
        if let Some(before) = before {
            let earlier = before
                .find(*instances, "propagation", "registry")
                .and_then(|r| number(&r.result, "last_watcher_p99_us"));
            let _ = write!(out, " {} ms |", millis(earlier));
        }
        let _ = writeln!(out);
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
        let text = render(&records, None);
        assert!(text.contains("| 10,000 | renewals (wrk, `PUT /v1/apps/{app}/{id}/heartbeat`) | 400 | 1.50 | 9.00 | – | 1,000 | 0.40 | 0 / 0 |"), "{text}");
        assert!(text.contains("| 0.40 | **no** |"), "{text}");
    }

    #[test]
    fn shows_the_earlier_run_next_to_each_figure() {
        let now = [
            r#"{"instances":10000,"measurement":"renew-native","target":"hello","result":{"rps":1000.0}}"#,
            r#"{"instances":10000,"measurement":"renew-native","target":"registry","result":{"rps":600.0,"non2xx":0,"socket_errors":0}}"#,
            r#"{"instances":100000,"measurement":"rss","target":"registry","result":{"when":"after the Eureka JSON fetch run (plain; all fetch runs done)","instances_held":100000,"vm_rss_kb":100000,"vm_hwm_kb":100000}}"#,
        ];
        let earlier = [
            r#"{"instances":10000,"measurement":"renew-native","target":"hello","result":{"rps":1000.0}}"#,
            r#"{"instances":10000,"measurement":"renew-native","target":"registry","result":{"rps":300.0}}"#,
            r#"{"instances":100000,"measurement":"rss","target":"registry","result":{"when":"after the fetch runs (two encodings cached)","instances_held":100000,"vm_rss_kb":1000000,"vm_hwm_kb":1000000}}"#,
        ];
        let records: Vec<Record> = now.iter().map(|l| parse(l).unwrap()).collect();
        let earlier: Vec<Record> = earlier.iter().map(|l| parse(l).unwrap()).collect();
        let before = Before {
            records: &earlier,
            label: "abc1234",
        };
        let text = render(&records, Some(&before));
        assert!(text.contains("| 0.60 | 0 / 0 | 300 / 0.30 |"), "{text}");
        assert!(text.contains("| 102.4 | 102.4 | 1024.0 |"), "{text}");
        assert!(text.contains("| 0.60 | yes | 0.30 |"), "{text}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
    }
}
