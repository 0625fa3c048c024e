//! The AMQP transport: Spring Cloud Bus's topic exchange on RabbitMQ, and beside it
//! rtalpha's own exchange for cache invalidations, which Spring's consumers never bind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rtalpha_proto::bus::{RemoteEvent, SPRING_BUS_DESTINATION};
use rtalpha_proto::cache::CACHE_EXCHANGE;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{BusError, Delivery, reconnect_pause};

/// The channel of the current connection and the name of its subscriber queue.
struct Session {
    channel: Channel,
    queue: ShortString,
}

/// What the connection task and the publishers share; one lock, so that a topic joined
/// while the connection is being (re)established is bound exactly once it is up.
#[derive(Default)]
struct Shared {
    session: Option<Session>,
    /// The routing keys on [`CACHE_EXCHANGE`] this process listens to.
    topics: BTreeSet<String>,
}

pub(crate) struct Amqp {
    shared: Arc<Mutex<Shared>>,
    connected: Arc<AtomicBool>,
}

impl Amqp {
    pub(crate) fn start(url: String, deliveries: broadcast::Sender<Delivery>, shutdown: CancellationToken) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let connected = Arc::new(AtomicBool::new(false));
        let (slot, flag) = (shared.clone(), connected.clone());
        tokio::spawn(async move { keep_connected(url, slot, flag, deliveries, shutdown).await });
        Amqp { shared, connected }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Listens to `routing_key` on the cache exchange from now on, across reconnections.
    pub(crate) async fn join_topic(&self, routing_key: String) {
        let mut shared = self.shared.lock().await;
        if let Some(session) = &shared.session
            && let Err(err) = bind_topic(session, &routing_key).await
        {
            // The connection is failing; the next one binds every topic.
            tracing::warn!(error = %err, topic = %routing_key, "bus: cannot bind a cache topic yet");
        }
        shared.topics.insert(routing_key);
    }

    pub(crate) async fn publish(&self, event: &RemoteEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|err| BusError::Unavailable(err.to_string()))?;
        // Spring's events go to Spring's exchange, persistent as Spring sends them; cache
        // invalidations to ours, transient: after a broker restart they are stale anyway,
        // and subscribers are told `MayHaveMissed`.
        let (exchange, routing_key, delivery_mode) = match event {
            RemoteEvent::CacheInvalidation(invalidation) => (CACHE_EXCHANGE.to_owned(), invalidation.routing_key(), 1),
            _ => (SPRING_BUS_DESTINATION.to_owned(), SPRING_BUS_DESTINATION.to_owned(), 2),
        };
        let shared = self.shared.lock().await;
        let session = shared
            .session
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("not connected to the broker".to_owned()))?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(delivery_mode);
        session
            .channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(|err| BusError::Unavailable(err.to_string()))?;
        Ok(())
    }
}

async fn bind_topic(session: &Session, routing_key: &str) -> Result<(), lapin::Error> {
    session
        .channel
        .queue_bind(
            session.queue.clone(),
            CACHE_EXCHANGE.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn keep_connected(
    url: String,
    slot: Arc<Mutex<Shared>>,
    connected: Arc<AtomicBool>,
    deliveries: broadcast::Sender<Delivery>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut was_connected = false;
    loop {
        let session = tokio::select! {
            session = open(&url) => session,
            () = shutdown.cancelled() => return,
        };
        match session {
            Ok((connection, session, mut consumer)) => {
                attempt = 0;
                {
                    let mut shared = slot.lock().await;
                    for topic in &shared.topics {
                        if let Err(err) = bind_topic(&session, topic).await {
                            tracing::warn!(error = %err, topic = %topic, "bus: cannot bind a cache topic");
                        }
                    }
                    shared.session = Some(session);
                }
                connected.store(true, Ordering::Relaxed);
                if was_connected {
                    tracing::info!("bus: reconnected to the broker; events sent meanwhile may be missed");
                    let _ = deliveries.send(Delivery::MayHaveMissed);
                } else {
                    tracing::info!("bus: connected to the broker");
                }
                was_connected = true;
                loop {
                    tokio::select! {
                        next = consumer.next() => match next {
                            Some(Ok(delivery)) => match serde_json::from_slice::<RemoteEvent>(&delivery.data) {
                                Ok(event) => {
                                    let _ = deliveries.send(Delivery::Event(event));
                                }
                                Err(err) => tracing::debug!(error = %err, "bus: ignored a message that is no known event"),
                            },
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "bus: lost the broker");
                                break;
                            }
                            None => {
                                tracing::warn!("bus: the broker closed the subscription");
                                break;
                            }
                        },
                        () = shutdown.cancelled() => {
                            let _ = connection.close(200, "shutting down".into()).await;
                            return;
                        }
                    }
                }
                connected.store(false, Ordering::Relaxed);
                slot.lock().await.session = None;
                let _ = deliveries.send(Delivery::MayHaveMissed);
            }
            Err(err) => {
                if attempt == 0 {
                    tracing::warn!(error = %err, "bus: cannot reach the broker; retrying");
                }
                if was_connected && attempt == 0 {
                    let _ = deliveries.send(Delivery::MayHaveMissed);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(reconnect_pause(attempt)) => {}
            () = shutdown.cancelled() => return,
        }
        attempt = attempt.saturating_add(1);
    }
}

async fn open(url: &str) -> Result<(Connection, Session, lapin::Consumer), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for exchange in [SPRING_BUS_DESTINATION, CACHE_EXCHANGE] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let queue_name = format!(
        "{SPRING_BUS_DESTINATION}.anonymous.{}",
        crate::event_id().replace('-', "")
    );
    let queue = channel
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            SPRING_BUS_DESTINATION.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "rtalpha".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = queue.name().clone();
    Ok((connection, Session { channel, queue }, consumer))
}
