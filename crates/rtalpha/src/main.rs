//! The rtalpha binary: each server of the platform is a subcommand, and `up` runs
//! them all as child processes. `main` parses the command line, loads the server's
//! config, starts telemetry and calls the server crate's `run`.

mod status;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rtalpha_runtime::config::Overrides;
use rtalpha_runtime::{shutdown, telemetry};
use tokio::net::TcpListener;

/// mimalloc rather than the system allocator: with glibc's, a buffer allocated on
/// one worker thread and freed on another takes the first thread's arena lock, and
/// under load the two workers spend their time waking each other on that lock
/// (bench/README.md, config server).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rtalpha: a microservice platform.
#[derive(Debug, Parser)]
#[command(name = "rtalpha", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on this machine, each part in its own process.
    Up(up::UpArgs),
    /// Run the service registry (default 127.0.0.1:8761).
    Registry(RegistryArgs),
    /// Run the config server (default 127.0.0.1:8888).
    ConfigServer(ConfigServerArgs),
    /// Print what the registry sees, as a table.
    Status(status::StatusArgs),
}

/// What every server takes.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The address to listen on, as ADDR:PORT.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// A TOML or YAML config file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RegistryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The other registry nodes, as base URLs separated by commas (the same list may be
    /// given to every node; a node skips its own address).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
}

#[derive(Debug, Args)]
struct ConfigServerArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The git repository: a URL (https, http, git, ssh, file) or a local path.
    #[arg(long)]
    git_uri: Option<String>,
    /// A plain directory of configuration files instead of git.
    #[arg(long)]
    native_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rtalpha: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rtalpha: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up::run(args).await,
        Command::Registry(args) => registry(args).await,
        Command::Status(args) => status::run(args).await,
        Command::ConfigServer(args) => config_server(args).await,
    }
}

async fn registry(args: RegistryArgs) -> anyhow::Result<()> {
    let mut overrides = Overrides::new();
    overrides.set("server.bind", args.server.bind);
    overrides.set("registry.peers", args.peers);
    let config: rtalpha_registry::Config = rtalpha_runtime::config::load(args.server.config.as_deref(), &overrides)?;
    telemetry::init(&config.telemetry);
    let listener = TcpListener::bind(config.server.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.bind))?;
    let shutdown = shutdown::on_signal();
    rtalpha_registry::run(config, listener, shutdown).await?;
    tracing::info!("registry stopped");
    Ok(())
}

async fn config_server(args: ConfigServerArgs) -> anyhow::Result<()> {
    let mut overrides = Overrides::new();
    overrides.set("server.bind", args.server.bind);
    overrides.set("config_server.git.uri", args.git_uri);
    overrides.set("config_server.native_dir", args.native_dir);
    let config: rtalpha_config_server::Config =
        rtalpha_runtime::config::load(args.server.config.as_deref(), &overrides)?;
    telemetry::init(&config.telemetry);
    let listener = TcpListener::bind(config.server.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.bind))?;
    let shutdown = shutdown::on_signal();
    rtalpha_config_server::run(config, listener, shutdown).await?;
    tracing::info!("config server stopped");
    Ok(())
}
