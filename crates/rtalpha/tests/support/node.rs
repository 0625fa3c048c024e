//! Real `rtalpha registry` processes on loopback, and a plain HTTP/1.1 client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_rtalpha");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// One request over a fresh connection: status and body, or `None` when nothing answers.
pub fn http(method: &str, port: u16, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\n\
         accept: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer.as_str(), ""));
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Some((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

pub fn get_json(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http("GET", port, path, None)?;
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// Polls `check` every 50 ms until it holds or `limit` passes; true when it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry process.
pub struct Node {
    pub port: u16,
    pub child: Child,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Settings that make a cluster converge in seconds rather than minutes.
pub fn fast_cluster_env() -> Vec<(String, String)> {
    [
        ("RTALPHA_REGISTRY__CLUSTER__ANTI_ENTROPY_INTERVAL", "1s"),
        ("RTALPHA_REGISTRY__CLUSTER__REQUEST_TIMEOUT", "1s"),
        ("RTALPHA_REGISTRY__CLUSTER__RETRY_MAX", "500ms"),
        ("RTALPHA_REGISTRY__CLUSTER__SYNC_TIMEOUT", "3s"),
        ("RTALPHA_REGISTRY__CLUSTER__WARMUP", "10s"),
        ("RTALPHA_REGISTRY__EVICTION_INTERVAL", "1s"),
        ("RTALPHA_TELEMETRY__LOG_LEVEL", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Node {
    pub fn start(port: u16, peers: &[String], env: &[(String, String)]) -> Node {
        let mut args = vec!["registry".to_owned(), "--bind".to_owned(), format!("127.0.0.1:{port}")];
        if !peers.is_empty() {
            args.push("--peers".to_owned());
            args.push(peers.join(","));
        }
        let child = spawn(&args, env);
        let mut node = Node {
            port,
            child,
            args,
            env: env.to_vec(),
        };
        node.wait_healthy();
        node
    }

    fn wait_healthy(&mut self) {
        let port = self.port;
        let child = &mut self.child;
        let up = eventually(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("node {port} exited early: {status}");
            }
            matches!(http("GET", port, "/health", None), Some((200, _)))
        });
        assert!(up, "node {port} not healthy within 20 s");
    }

    /// Waits until `/ready` answers 200 (a cluster node has warmed up).
    pub fn wait_ready(&self, limit: Duration) {
        let port = self.port;
        assert!(
            eventually(limit, || matches!(http("GET", port, "/ready", None), Some((200, _)))),
            "node {port} not ready within {limit:?}"
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = spawn(&self.args, &self.env);
        self.wait_healthy();
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Registers through the native API.
    pub fn register(&self, app: &str, id: &str, extra: &str) {
        let body = format!(r#"{{"instance_id":"{id}","host_name":"{id}.test","port":8080{extra}}}"#);
        let answer = http("POST", self.port, &format!("/v1/apps/{app}"), Some(&body));
        assert!(
            matches!(answer, Some((200, _))),
            "register {id} on {}: {answer:?}",
            self.port
        );
    }

    pub fn cancel(&self, app: &str, id: &str) {
        let answer = http("DELETE", self.port, &format!("/v1/apps/{app}/{id}"), None);
        assert!(
            matches!(answer, Some((200, _))),
            "cancel {id} on {}: {answer:?}",
            self.port
        );
    }

    pub fn heartbeat(&self, app: &str, id: &str) -> Option<u16> {
        http("PUT", self.port, &format!("/v1/apps/{app}/{id}/heartbeat"), None).map(|(status, _)| status)
    }

    /// `(app, id, status)` of every instance, sorted.
    pub fn instances(&self) -> Option<Vec<(String, String, String)>> {
        let view = get_json(self.port, "/v1/apps")?;
        let mut all = Vec::new();
        for app in view["apps"].as_array()? {
            for instance in app["instances"].as_array()? {
                all.push((
                    app["name"].as_str()?.to_owned(),
                    instance["instance_id"].as_str()?.to_owned(),
                    instance["status"].as_str()?.to_owned(),
                ));
            }
        }
        all.sort();
        Some(all)
    }

    pub fn status(&self) -> Value {
        get_json(self.port, "/v1/status").expect("status")
    }
}

fn spawn(args: &[String], env: &[(String, String)]) -> Child {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn rtalpha registry")
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
