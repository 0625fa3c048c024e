//! Test harness: a registry served in-process on 127.0.0.1:0 and a small HTTP client.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rtalpha_registry::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A registry running in this process.
pub struct TestRegistry {
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, headers and the whole body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn index(&self) -> u64 {
        self.headers
            .get("x-rtalpha-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("every registry answer carries x-rtalpha-index")
    }

    /// Asserts the JSON error body of DESIGN.md §5 and returns its message.
    pub fn error_message(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert!(body["path"].as_str().is_some_and(|p| p.starts_with('/')), "{body}");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
        body["message"].as_str().expect("message").to_owned()
    }
}

pub fn quiet_config() -> Config {
    let mut config = Config::default();
    config.server.shutdown_grace = Duration::from_secs(2);
    config
}

pub async fn start(config: Config) -> TestRegistry {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rtalpha_registry::run(config, listener, shutdown.clone()));
    let client = Client::builder(TokioExecutor::new()).build_http();
    TestRegistry {
        base,
        shutdown,
        task,
        client,
    }
}

impl TestRegistry {
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        let response = self.raw(method, path, headers, body).await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("body within 10 s")
            .expect("body")
            .to_bytes();
        Answer { status, headers, body }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper::Response<Incoming> {
        let mut request = Request::builder().method(method).uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .expect("answer within 10 s")
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_json(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[("accept", "application/json")], Bytes::new())
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Registers through the native API.
    pub async fn register(&self, app: &str, id: &str, port: u16) -> Answer {
        let body = serde_json::json!({"instance_id": id, "host_name": format!("{id}.test"), "port": port});
        let answer = self.post_json(&format!("/v1/apps/{app}"), &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        answer
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the registry stops within 10 s")
            .expect("the server task does not panic");
        result.expect("the server stops cleanly");
    }
}

/// A Eureka registration body.
pub fn eureka_instance(app: &str, id: &str, port: u16) -> Value {
    serde_json::json!({"instance": {
        "instanceId": id, "hostName": format!("{id}.test"), "app": app, "ipAddr": "127.0.0.1",
        "status": "UP", "overriddenstatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
        "vipAddress": app.to_lowercase(), "secureVipAddress": format!("{}-secure", app.to_lowercase()),
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"zone": "zone-a"},
        "lastDirtyTimestamp": "1000"
    }})
}

/// Reads server-sent events from a streaming response.
pub struct EventReader {
    body: Incoming,
    buffer: String,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl EventReader {
    pub fn new(response: hyper::Response<Incoming>) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        EventReader {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` when the stream ends or `limit` passes.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: String::new(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
