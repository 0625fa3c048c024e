//! The relay transport: events published by POST to the config server and delivered
//! to every subscriber as server-sent events, for a laptop without a broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rtalpha_proto::bus::RemoteEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{BusError, Delivery, reconnect_pause};

/// The path of the relay on the config server: POST publishes, GET subscribes (SSE).
pub const RELAY_PATH: &str = "/bus/events";

/// How long a publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay itself, served by the config server: a fan-out of events.
#[derive(Debug, Clone)]
pub struct Relay {
    deliveries: broadcast::Sender<Delivery>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            deliveries: broadcast::channel(crate::SUBSCRIBER_BACKLOG).0,
        }
    }
}

impl Relay {
    /// Sends an event to every subscriber.
    pub fn publish(&self, event: RemoteEvent) {
        let _ = self.deliveries.send(Delivery::Event(event));
    }

    /// The fan-out's sender, for subscriptions.
    pub fn deliveries(&self) -> broadcast::Sender<Delivery> {
        self.deliveries.clone()
    }
}

pub(crate) struct RelayClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    connected: Arc<AtomicBool>,
}

impl RelayClient {
    pub(crate) fn start(base: String, deliveries: broadcast::Sender<Delivery>, shutdown: CancellationToken) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let connected = Arc::new(AtomicBool::new(false));
        let (url, flag, subscriber) = (
            format!("{}{RELAY_PATH}", base.trim_end_matches('/')),
            connected.clone(),
            client.clone(),
        );
        tokio::spawn(async move { keep_subscribed(url, subscriber, flag, deliveries, shutdown).await });
        RelayClient {
            base,
            client,
            connected,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) async fn publish(&self, event: &RemoteEvent) -> Result<(), BusError> {
        let body = serde_json::to_vec(event).map_err(|err| BusError::Unavailable(err.to_string()))?;
        let request = http::Request::post(format!("{}{RELAY_PATH}", self.base.trim_end_matches('/')))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| BusError::Unavailable(err.to_string()))?;
        let response = tokio::time::timeout(PUBLISH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| BusError::Unavailable("the relay did not answer in time".to_owned()))?
            .map_err(|err| BusError::Unavailable(format!("cannot reach the relay: {err}")))?;
        if !response.status().is_success() {
            return Err(BusError::Unavailable(format!(
                "the relay answered {}",
                response.status()
            )));
        }
        Ok(())
    }
}

async fn keep_subscribed(
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    connected: Arc<AtomicBool>,
    deliveries: broadcast::Sender<Delivery>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut was_connected = false;
    loop {
        let request = http::Request::get(&url)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()));
        let response = match request {
            Ok(request) => tokio::select! {
                response = client.request(request) => response.ok().filter(|r| r.status().is_success()),
                () = shutdown.cancelled() => return,
            },
            Err(_) => None,
        };
        if let Some(response) = response {
            attempt = 0;
            connected.store(true, Ordering::Relaxed);
            if was_connected {
                let _ = deliveries.send(Delivery::MayHaveMissed);
            }
            was_connected = true;
            let mut body = response.into_body();
            let mut buffer = String::new();
            loop {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    () = shutdown.cancelled() => return,
                };
                let Some(Ok(frame)) = frame else { break };
                let Ok(data) = frame.into_data() else { continue };
                buffer.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let payload: String = block
                        .lines()
                        .filter_map(|line| line.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if let Ok(event) = serde_json::from_str::<RemoteEvent>(&payload) {
                        let _ = deliveries.send(Delivery::Event(event));
                    }
                }
            }
            connected.store(false, Ordering::Relaxed);
            let _ = deliveries.send(Delivery::MayHaveMissed);
            tracing::warn!(url = %url, "bus: lost the relay; reconnecting");
        }
        tokio::select! {
            () = tokio::time::sleep(reconnect_pause(attempt)) => {}
            () = shutdown.cancelled() => return,
        }
        attempt = attempt.saturating_add(1);
    }
}
