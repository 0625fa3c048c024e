//! Test harness: git repositories made with the git command line, a config server served
//! in-process on 127.0.0.1:0, and a small HTTP client.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rtalpha_config_server::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs git in `dir` with a fixed identity; panics with git's message when it fails.
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

/// A repository with files committed on `main`.
pub fn repository(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit(dir.path(), files, "initial");
    dir
}

/// Writes the files, commits everything, and returns the new commit id.
pub fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("dirs");
        }
        std::fs::write(full, text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A config server running in this process.
pub struct Server {
    pub base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rtalpha_config_server::run(config, listener, shutdown.clone()));
        Server { base, shutdown, task }
    }

    /// Status, headers and body of one request, within 10 s.
    pub async fn answer(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .expect("answer in time")
            .expect("answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn call(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let (status, _, body) = self.answer(method, path, body, headers).await;
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        self.call("GET", path, "", &[]).await
    }

    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    }

    /// `/health` as JSON, whatever its status.
    pub async fn health(&self) -> Value {
        serde_json::from_str(&self.get("/health").await.1).expect("health is json")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops")
            .expect("no panic");
        result.expect("clean stop");
    }
}

/// A git-backed configuration that polls every 200 ms and searches `{application}/`.
pub fn git_config(uri: &str, basedir: &Path) -> Config {
    let mut config = Config::default();
    config.config_server.git.uri = Some(uri.to_owned());
    config.config_server.git.basedir = Some(basedir.to_path_buf());
    config.config_server.git.refresh_rate = Duration::from_millis(200);
    config.config_server.git.search_paths = vec!["{application}".to_owned()];
    config.server.shutdown_grace = Duration::from_secs(2);
    config
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
