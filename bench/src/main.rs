//! `rtalpha-bench`: the harnesses behind `bench/registry/run.sh`.
//!
//! The load itself comes from `wrk`, a neutral generator in its own process; this
//! binary supplies what `wrk` cannot: the bare hyper baseline server, a fast seeder
//! that fills the registry over keep-alive connections, the change-propagation probe
//! with its 100 watchers, and the report that turns the run's JSON lines into tables.
//! For `bench/registry/cluster.sh` it adds a fault proxy that partitions a node, the
//! replication-lag probe and the convergence probe.

mod client;
mod cluster_report;
mod converge;
mod hello;
mod lag;
mod propagation;
mod proxy;
mod report;
mod seed;
mod sse;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Benchmark harnesses of the rtalpha platform.
#[derive(Debug, Parser)]
#[command(name = "rtalpha-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A bare hyper HTTP/1.1 server answering `hello` to every request: the baseline.
    Hello {
        /// The address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// The server stops by itself after this long, so a forgotten one does not linger.
        #[arg(long, default_value = "2h", value_parser = parse_duration)]
        max_run: Duration,
        /// Answer the bytes of this file instead of `hello`.
        #[arg(long)]
        body_file: Option<PathBuf>,
    },
    /// Registers `count` instances over keep-alive connections and prints the rate.
    Seed(seed::SeedArgs),
    /// Opens SSE watchers, cancels instances one by one and times the news reaching
    /// every watcher.
    Propagation(propagation::PropagationArgs),
    /// Forwards TCP links and cuts them all on command: a partition.
    Proxy(proxy::ProxyArgs),
    /// Writes to one node and times the writes reaching watchers on its peers.
    Lag(lag::LagArgs),
    /// Heals a partition and times the nodes until they hold the same instances.
    Converge(converge::ConvergeArgs),
    /// Prints the Markdown tables of a run's `results.jsonl` (or `cluster.jsonl`).
    Report {
        /// The JSON-lines file `run.sh` (or `cluster.sh`) wrote.
        results: PathBuf,
        /// An earlier run's `results.jsonl`, shown next to each figure.
        #[arg(long)]
        before: Option<PathBuf>,
        /// What to call the earlier run (its commit).
        #[arg(long, default_value = "before")]
        before_label: String,
    },
}

/// Parses `10s`, `250ms`, `2m` or `2h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 10s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        _ => Err(format!("`{text}`: the unit must be ms, s, m or h")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Report {
        results,
        before,
        before_label,
    } = &cli.command
    {
        let before = before.as_deref().map(|path| (path, before_label.as_str()));
        return finish(report::run(results, before));
    }
    // The same runtime as the `rtalpha` binary: multi-threaded, one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rtalpha-bench: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    finish(runtime.block_on(async move {
        match cli.command {
            Command::Hello {
                bind,
                max_run,
                body_file,
            } => match body_file.map(std::fs::read).transpose() {
                Ok(body) => hello::run(bind, max_run, body.map(bytes::Bytes::from)).await,
                Err(err) => Err(anyhow::anyhow!("cannot read the body file: {err}")),
            },
            Command::Seed(args) => seed::run(args).await,
            Command::Propagation(args) => propagation::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Lag(args) => lag::run(args).await,
            Command::Converge(args) => converge::run(args).await,
            Command::Report { .. } => Ok(()),
        }
    }))
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rtalpha-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
