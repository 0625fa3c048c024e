//! Fills the registry: `count` instances, spread over `apps` apps, registered over
//! `concurrency` keep-alive connections, one request at a time on each. With
//! `--cancel` it cancels them instead, and `--first` shifts the numbers, so that the
//! cluster benchmark can register and cancel known ranges on each node.
//!
//! Instance `n` is `i-n` of app `BENCH-(n mod apps)`; the wrk scripts and the
//! propagation probe derive the same names.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use crate::client::{self, Connection};
use crate::stats::{micros, percentile};

/// What to seed.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The server's base URL.
    #[arg(long)]
    registry: String,
    /// How many instances.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// The number of the first instance: instances `first..first + count`.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Cancel (`DELETE`) the instances instead of registering them.
    #[arg(long)]
    cancel: bool,
    /// Over how many apps.
    #[arg(long, default_value_t = 100)]
    apps: usize,
    /// How many connections register in parallel.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The lease each instance asks for: long enough that none expires during a run.
    #[arg(long, default_value_t = 3600)]
    lease_secs: u32,
    /// Accept any 2xx (for the `hello` baseline, which answers 200 to everything).
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
}

/// The app of instance `n`.
pub fn app_of(n: usize, apps: usize) -> String {
    format!("BENCH-{}", n % apps.max(1))
}

/// The id of instance `n`.
pub fn id_of(n: usize) -> String {
    format!("i-{n}")
}

/// Registers (or cancels) every instance and prints one JSON line with the rate and
/// latencies.
pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    let authority = client::authority(&args.registry)?;
    let next = Arc::new(AtomicUsize::new(0));
    let args = Arc::new(args);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 1024) {
        let (authority, next, args) = (authority.clone(), next.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            let mut connection = Connection::open(&authority).await?;
            let mut latencies = Vec::new();
            // Bounded: each worker takes numbers until all `count` are handed out.
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= args.count {
                    return anyhow::Ok(latencies);
                }
                let n = args.first + k;
                let (method, path, body) = if args.cancel {
                    (Method::DELETE, format!("/v1/apps/{}/{}", app_of(n, args.apps), id_of(n)), None)
                } else {
                    let body = format!(
                        r#"{{"instance_id":"{id}","host_name":"h{n}.bench","port":8080,"lease_duration_secs":{lease}}}"#,
                        id = id_of(n),
                        lease = args.lease_secs,
                    );
                    (Method::POST, format!("/v1/apps/{}", app_of(n, args.apps)), Some(Bytes::from(body)))
                };
                let sent = Instant::now();
                let (status, answer) = connection.send(method.clone(), &path, body).await?;
                latencies.push(sent.elapsed());
                if status.as_u16() != args.expect_status {
                    bail!("{method} {path} answered {status}: {}", String::from_utf8_lossy(&answer));
                }
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.count);
    for worker in workers {
        latencies.extend(worker.await.context("a seeding worker panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "requests": latencies.len(),
        "seconds": elapsed,
        "rps": latencies.len() as f64 / elapsed,
        "p50_us": micros(percentile(&mut latencies, 50.0)),
        "p99_us": micros(percentile(&mut latencies, 99.0)),
        "connections": args.concurrency,
    });
    println!("{line}");
    Ok(())
}
