//! `rtalpha up`: the whole system on this machine, each part its own process. The config
//! server serves `config-repo/` as a plain directory (it refreshes on every change).
//!
//! The supervisor starts the parts in the platform's start order, waits for each to
//! report ready before starting the next, restarts a part that dies, and on SIGINT or
//! SIGTERM stops them in reverse order and waits for them to exit.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a part may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a part may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause before a part that died is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Options of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the config server listens.
    #[arg(long, default_value = "127.0.0.1:8888")]
    config_server_bind: SocketAddr,
    /// The directory of configuration files the config server serves.
    #[arg(long, default_value = "config-repo")]
    config_repo: std::path::PathBuf,
    /// Where the registry listens.
    #[arg(long, default_value = "127.0.0.1:8761")]
    registry_bind: SocketAddr,
}

/// One part of the system.
struct Part {
    name: &'static str,
    args: Vec<String>,
    bind: SocketAddr,
    child: Option<Child>,
}

impl Part {
    async fn start(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the rtalpha binary")?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        wait_ready(self.name, self.bind).await
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => eprintln!("rtalpha up: {} stopped ({status})", self.name),
            _ => {
                eprintln!("rtalpha up: {} did not stop in time; killing it", self.name);
                let _ = child.kill().await;
            }
        }
    }
}

async fn wait_ready(name: &str, bind: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect(bind).await.is_ok() {
            eprintln!("rtalpha up: {name} is up on http://{bind}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not start listening on {bind} within {READY_TIMEOUT:?}")
}

/// Runs the system until a shutdown signal.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = rtalpha_runtime::shutdown::on_signal();
    if !args.config_repo.is_dir() {
        bail!(
            "{} is not a directory: run `up` from the repository's root or give --config-repo DIR",
            args.config_repo.display()
        );
    }
    // The start order of the platform: the config server first, then the registry.
    let mut parts = vec![
        Part {
            name: "config server",
            args: vec![
                "config-server".into(),
                "--bind".into(),
                args.config_server_bind.to_string(),
                "--native-dir".into(),
                args.config_repo.display().to_string(),
            ],
            bind: args.config_server_bind,
            child: None,
        },
        Part {
            name: "registry",
            args: vec!["registry".into(), "--bind".into(), args.registry_bind.to_string()],
            bind: args.registry_bind,
            child: None,
        },
    ];
    for position in 0..parts.len() {
        if let Err(err) = parts[position].start().await {
            for started in parts[..=position].iter_mut().rev() {
                started.stop().await;
            }
            return Err(err);
        }
    }
    eprintln!(
        "rtalpha up: running; config at http://{}/application/default, registry dashboard at http://{} — Ctrl-C stops everything",
        args.config_server_bind, args.registry_bind
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for part in &mut parts {
            let exited = match part.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                eprintln!("rtalpha up: {} exited ({status}); restarting", part.name);
                part.child = None;
                tokio::time::sleep(RESTART_DELAY).await;
                if let Err(err) = part.start().await {
                    eprintln!("rtalpha up: {err:#}");
                }
            }
        }
    }
    for part in parts.iter_mut().rev() {
        part.stop().await;
    }
    Ok(())
}
