//! The AMQP transport: Spring Cloud Bus's topic exchange on RabbitMQ.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rtalpha_proto::bus::{RemoteEvent, SPRING_BUS_DESTINATION};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{BusError, Delivery, reconnect_pause};

pub(crate) struct Amqp {
    channel: Arc<Mutex<Option<Channel>>>,
    connected: Arc<AtomicBool>,
}

impl Amqp {
    pub(crate) fn start(url: String, deliveries: broadcast::Sender<Delivery>, shutdown: CancellationToken) -> Self {
        let channel = Arc::new(Mutex::new(None));
        let connected = Arc::new(AtomicBool::new(false));
        let (slot, flag) = (channel.clone(), connected.clone());
        tokio::spawn(async move { keep_connected(url, slot, flag, deliveries, shutdown).await });
        Amqp { channel, connected }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) async fn publish(&self, event: &RemoteEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|err| BusError::Unavailable(err.to_string()))?;
        let guard = self.channel.lock().await;
        let channel = guard
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("not connected to the broker".to_owned()))?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        channel
            .basic_publish(
                SPRING_BUS_DESTINATION.into(),
                SPRING_BUS_DESTINATION.into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(|err| BusError::Unavailable(err.to_string()))?;
        Ok(())
    }
}

async fn keep_connected(
    url: String,
    slot: Arc<Mutex<Option<Channel>>>,
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
            Ok((connection, channel, mut consumer)) => {
                attempt = 0;
                *slot.lock().await = Some(channel);
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
                *slot.lock().await = None;
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

async fn open(url: &str) -> Result<(Connection, Channel, lapin::Consumer), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            SPRING_BUS_DESTINATION.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
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
    Ok((connection, channel, consumer))
}
