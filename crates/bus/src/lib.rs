//! The platform's event bus: refresh events and their acknowledgements, in Spring Cloud
//! Bus's format, over one of two transports behind one API.
//!
//! - **AMQP** (`amqp://`): RabbitMQ, with Spring Cloud Bus's topic exchange
//!   `springCloudBus`, so Spring Boot services on the same broker take part. Each
//!   subscriber has its own exclusive queue bound with `#`. A lost connection is
//!   re-established with a doubling pause, the subscription with it.
//! - **Relay** (`http://`): the config server relays events itself, published by POST
//!   and delivered as server-sent events, so a laptop needs no broker.
//!
//! Cache invalidations ([`RemoteEvent::CacheInvalidation`]) share the API and the relay,
//! but over AMQP they go to their own exchange (`rtalphaCache`), by a routing key per
//! service and cache, so Spring's consumers never see them; a process receives those of
//! the caches it joined with [`Bus::join_cache_topic`].
//!
//! Subscribers receive [`Delivery::Event`]s, and a [`Delivery::MayHaveMissed`] whenever
//! the transport was disconnected: what was sent meanwhile is lost, so a subscriber
//! that keeps state from events (a cache) must start over.

mod amqp;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use rtalpha_proto::bus::RemoteEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use relay::{RELAY_PATH, Relay};

/// How many deliveries a slow subscriber may fall behind before it is told it missed some.
const SUBSCRIBER_BACKLOG: usize = 1024;
/// The first pause before reconnecting; it doubles up to [`MAX_RECONNECT_PAUSE`].
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between reconnection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event from another participant.
    Event(RemoteEvent),
    /// The transport was disconnected (or this subscriber fell behind): events may have
    /// been missed.
    MayHaveMissed,
}

/// A bus that could not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The URL is not one the bus understands.
    #[error("unsupported bus URL `{0}`: expected amqp://, or http:// for the config server's relay")]
    UnsupportedUrl(String),
    /// The transport is down; the event was not sent.
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

enum Transport {
    Amqp(amqp::Amqp),
    Relay(Box<relay::RelayClient>),
    Local(Relay),
}

/// A connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    transport: Arc<Transport>,
    deliveries: broadcast::Sender<Delivery>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport.as_ref() {
            Transport::Amqp(_) => "amqp",
            Transport::Relay(_) => "relay",
            Transport::Local(_) => "local relay",
        };
        f.debug_struct("Bus").field("transport", &kind).finish()
    }
}

impl Bus {
    /// Connects to `url` (`amqp://…` or the config server's `http://host:port`) and
    /// keeps the connection up until `shutdown`.
    pub fn connect(url: &str, shutdown: CancellationToken) -> Result<Bus, BusError> {
        let (deliveries, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        let transport = if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Transport::Amqp(amqp::Amqp::start(url.to_owned(), deliveries.clone(), shutdown))
        } else if url.starts_with("http://") {
            Transport::Relay(Box::new(relay::RelayClient::start(
                url.to_owned(),
                deliveries.clone(),
                shutdown,
            )))
        } else {
            return Err(BusError::UnsupportedUrl(url.to_owned()));
        };
        Ok(Bus {
            transport: Arc::new(transport),
            deliveries,
        })
    }

    /// A bus on a relay served in this process (the config server's own).
    pub fn local(relay: Relay) -> Bus {
        let deliveries = relay.deliveries();
        Bus {
            transport: Arc::new(Transport::Local(relay)),
            deliveries,
        }
    }

    /// Sends an event to every participant.
    pub async fn publish(&self, event: &RemoteEvent) -> Result<(), BusError> {
        match self.transport.as_ref() {
            Transport::Amqp(amqp) => amqp.publish(event).await,
            Transport::Relay(relay) => relay.publish(event).await,
            Transport::Local(relay) => {
                relay.publish(event.clone());
                Ok(())
            }
        }
    }

    /// Receives every event sent from now on (including this process's own; filter by
    /// `origin_service`).
    pub fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.deliveries.subscribe()
    }

    /// Receives, from now on, the cache invalidations of `service`'s cache `cache` (they
    /// arrive through [`Bus::subscribe`] like every event). Over AMQP this binds the
    /// subscription to the cache's routing key, now and after every reconnection; the
    /// relay carries every event to everyone, so there it changes nothing.
    pub async fn join_cache_topic(&self, service: &str, cache: &str) {
        if let Transport::Amqp(amqp) = self.transport.as_ref() {
            amqp.join_topic(rtalpha_proto::cache::routing_key(service, cache)).await;
        }
    }

    /// Whether the transport is connected now.
    pub fn is_connected(&self) -> bool {
        match self.transport.as_ref() {
            Transport::Amqp(amqp) => amqp.is_connected(),
            Transport::Relay(relay) => relay.is_connected(),
            Transport::Local(_) => true,
        }
    }
}

/// A bus id for this process, Spring-style: `app:port:random`.
pub fn bus_id(app: &str, port: u16) -> String {
    use rand::Rng;
    let random: u64 = rand::rng().random();
    format!("{app}:{port}:{random:016x}")
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new random event id.
pub fn event_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A refresh event from `origin` to `destination` (normalised as Spring does).
pub fn refresh_event(origin: &str, destination: &str) -> RemoteEvent {
    RemoteEvent::RefreshRemoteApplicationEvent {
        timestamp: now_ms(),
        origin_service: origin.to_owned(),
        destination_service: rtalpha_proto::bus::normalize_destination(destination),
        id: event_id(),
    }
}

/// The acknowledgement of `event` by `origin`.
pub fn ack_event(origin: &str, event: &RemoteEvent) -> Option<RemoteEvent> {
    match event {
        RemoteEvent::RefreshRemoteApplicationEvent {
            id,
            destination_service,
            ..
        } => Some(RemoteEvent::AckRemoteApplicationEvent {
            timestamp: now_ms(),
            origin_service: origin.to_owned(),
            destination_service: "**".to_owned(),
            id: event_id(),
            ack_id: id.clone(),
            ack_destination_service: destination_service.clone(),
            event: rtalpha_proto::bus::REFRESH_EVENT_CLASS.to_owned(),
        }),
        RemoteEvent::AckRemoteApplicationEvent { .. } | RemoteEvent::CacheInvalidation(_) => None,
    }
}

/// The pause before reconnection attempt `attempt` (0-based).
fn reconnect_pause(attempt: u32) -> Duration {
    FIRST_RECONNECT_PAUSE
        .saturating_mul(2u32.saturating_pow(attempt.min(8)))
        .min(MAX_RECONNECT_PAUSE)
}
