//! What the config client's tests share: real config servers started in-process on
//! `127.0.0.1:0` over temporary directories or git repositories made with the git
//! command line, the RabbitMQ convention of the bus tests, and bounded waiting.

#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rtalpha_bus::{Bus, Delivery};
use rtalpha_config_server::Config;
use rtalpha_proto::bus::RemoteEvent;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The broker for the AMQP tests; unset, the test is skipped, except under `CI=true`.
pub fn amqp_url() -> Option<String> {
    match std::env::var("RTALPHA_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("RTALPHA_TEST_AMQP_URL is unset but CI=true"),
        _ => {
            println!("skipped: RTALPHA_TEST_AMQP_URL is unset");
            None
        }
    }
}

/// An application name no other test (here or on a shared broker) uses, without `-`
/// so that the config server's destinations for it match nothing else.
pub fn unique_app(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "cfg{kind}{}x{nanos:x}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits up to `limit` for `check` to hold.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A git repository with `files` committed on `main`.
pub fn repository(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit(dir.path(), files, "initial");
    dir
}

/// Writes `files` and commits them; the commit id.
pub fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        std::fs::write(dir.join(path), text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Replaces a file of a plain directory in one step (write beside it, then rename), so
/// the server never reads half of it.
pub fn write_file(dir: &Path, name: &str, text: &str) {
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, text).expect("write");
    std::fs::rename(&staging, dir.join(name)).expect("rename");
}

/// A config server serving a plain directory, with its own relay as the bus.
pub fn native_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.config_server.native_dir = Some(dir.to_path_buf());
    config.config_server.git.refresh_rate = Duration::from_millis(200);
    config.server.shutdown_grace = Duration::from_millis(500);
    config
}

/// A config server following a git repository.
pub fn git_config(uri: &str, basedir: &Path) -> Config {
    let mut config = Config::default();
    config.config_server.git.uri = Some(uri.to_owned());
    config.config_server.git.basedir = Some(basedir.to_path_buf());
    config.config_server.git.refresh_rate = Duration::from_millis(200);
    config.server.shutdown_grace = Duration::from_millis(500);
    config
}

/// A config server running in this process.
pub struct ConfigServer {
    pub base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ConfigServer {
    pub async fn start(config: Config) -> ConfigServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        ConfigServer::start_on(listener, config)
    }

    /// Starts on a listener bound earlier (connections made meanwhile wait in its backlog).
    pub fn start_on(listener: TcpListener, config: Config) -> ConfigServer {
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rtalpha_config_server::run(config, listener, shutdown.clone()));
        ConfigServer { base, shutdown, task }
    }

    /// The JSON at `path`, or the status that came instead.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, u16> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: http::Uri = format!("{}{path}", self.base).parse().expect("uri");
        let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
            .await
            .expect("answer in time")
            .expect("answer");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        if status != 200 {
            return Err(status);
        }
        Ok(serde_json::from_slice(&body).expect("json"))
    }

    /// Waits until the server serves `key` = `value` for `app` (first source that has it).
    pub async fn serves(&self, app: &str, key: &str, value: serde_json::Value) -> bool {
        eventually(Duration::from_secs(10), async || {
            let Ok(environment) = self.get(&format!("/{app}/default")).await else {
                return false;
            };
            environment["propertySources"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|source| source["source"].get(key).cloned())
                == Some(value.clone())
        })
        .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops in time")
            .expect("no panic");
        result.expect("clean stop");
    }
}

/// A port that refuses connections: bound, then closed again.
pub fn refusing_url() -> String {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A server that accepts each connection and closes it at once, counting them: a config
/// server that is there but never answers.
pub struct Slammer {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
}

impl Slammer {
    pub fn start() -> Slammer {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Slammer { url, connections }
    }
}

/// A bus connection that watches what goes by.
pub struct Observer {
    pub bus: Bus,
    deliveries: broadcast::Receiver<Delivery>,
    pub seen: Vec<RemoteEvent>,
}

impl Observer {
    pub async fn connect(url: &str, shutdown: &CancellationToken) -> Observer {
        let bus = Bus::connect(url, shutdown.clone()).expect("bus");
        assert!(
            eventually(Duration::from_secs(5), async || bus.is_connected()).await,
            "the observer's bus connects"
        );
        let deliveries = bus.subscribe();
        Observer {
            bus,
            deliveries,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for an event that `wanted` picks, keeping all it sees.
    pub async fn wait_for(&mut self, limit: Duration, wanted: impl Fn(&RemoteEvent) -> bool) -> Option<RemoteEvent> {
        if let Some(found) = self.seen.iter().find(|event| wanted(event)) {
            return Some(found.clone());
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Ok(Delivery::Event(event))) => {
                    self.seen.push(event.clone());
                    if wanted(&event) {
                        return Some(event);
                    }
                }
                Ok(Ok(Delivery::MayHaveMissed)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    }
}

/// The id of a refresh event.
pub fn refresh_id(event: &RemoteEvent) -> Option<&str> {
    match event {
        RemoteEvent::RefreshRemoteApplicationEvent { id, .. } => Some(id),
        _ => None,
    }
}

/// Whether `event` is an acknowledgement by `origin` (of the event `ack_of`, if given).
pub fn is_ack(event: &RemoteEvent, origin: &str, ack_of: Option<&str>) -> bool {
    matches!(event, RemoteEvent::AckRemoteApplicationEvent { origin_service, ack_id, .. }
        if origin_service == origin && ack_of.is_none_or(|wanted| wanted == ack_id))
}

/// A local configuration file with `text` (TOML).
pub fn local_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write");
    path
}
