//! The AMQP transport against a real RabbitMQ (`RTALPHA_TEST_AMQP_URL`): Spring Cloud
//! Bus's exchange and JSON, recovery after the broker drops the connection, and cache
//! invalidations on their own exchange.

use std::process::Command;
use std::time::Duration;

use rtalpha_bus::{Bus, Delivery, refresh_event};
use rtalpha_proto::bus::{RemoteEvent, SPRING_BUS_DESTINATION};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One test at a time: the recovery test drops every connection of the broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> Option<String> {
    match std::env::var("RTALPHA_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("RTALPHA_TEST_AMQP_URL is unset but CI=true"),
        _ => {
            println!("skipped: RTALPHA_TEST_AMQP_URL is unset");
            None
        }
    }
}

async fn connected(bus: &Bus) {
    for _ in 0..100 {
        if bus.is_connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not connected to the broker within 5 s");
}

/// The next event with this id, skipping others (the exchange is shared).
async fn next_event(receiver: &mut broadcast::Receiver<Delivery>, wanted: &str) -> Option<RemoteEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let delivery = tokio::time::timeout_at(deadline, receiver.recv()).await.ok()?.ok()?;
        if let Delivery::Event(event) = delivery
            && matches!(&event, RemoteEvent::RefreshRemoteApplicationEvent { id, .. } if id == wanted)
        {
            return Some(event);
        }
    }
}

#[tokio::test]
async fn refresh_events_travel_between_participants_in_springs_format() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let publisher = Bus::connect(&url, shutdown.clone()).expect("bus");
    let subscriber = Bus::connect(&url, shutdown.clone()).expect("bus");
    connected(&publisher).await;
    connected(&subscriber).await;
    let mut received = subscriber.subscribe();
    let event = refresh_event("config-server:8888:test", "user-service");
    let RemoteEvent::RefreshRemoteApplicationEvent { id, .. } = &event else {
        unreachable!()
    };
    publisher.publish(&event).await.expect("published");
    let got = next_event(&mut received, id).await.expect("delivered");
    assert_eq!(got, event);
    assert_eq!(got.destination(), "user-service:**", "Spring's normalisation");

    // What a Spring Boot service on the broker would see: the raw message on the exchange.
    let raw = serde_json::to_value(&event).expect("json");
    assert_eq!(raw["type"], "RefreshRemoteApplicationEvent");
    assert_eq!(
        raw.as_object().map(|o| o.len()),
        Some(5),
        "exactly Spring's fields: {raw}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_dropped_connection_is_recovered_and_subscribers_are_told() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let bus = Bus::connect(&url, shutdown.clone()).expect("bus");
    connected(&bus).await;
    let mut received = bus.subscribe();
    // The broker drops every client connection.
    let closed = Command::new("rabbitmqctl")
        .args(["close_all_connections", "rtalpha bus test: dropping connections"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    let told = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Delivery::MayHaveMissed) = received.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "subscribers hear that events may have been missed");
    connected(&bus).await;
    // The subscription works again after the reconnection.
    let mut after = bus.subscribe();
    let event = refresh_event("test:0:x", "**");
    let RemoteEvent::RefreshRemoteApplicationEvent { id, .. } = &event else {
        unreachable!()
    };
    let mut delivered = None;
    for _ in 0..20 {
        if bus.publish(&event).await.is_ok() {
            delivered = next_event(&mut after, id).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(delivered, Some(event), "an event after recovery arrives");
    shutdown.cancel();
}

/// A raw consumer of `exchange` with `routing_key`, as a Spring Boot service (on
/// `springCloudBus`, `#`) or anyone else would bind.
async fn raw_consumer(url: &str, exchange: &str, routing_key: &str) -> (lapin::Connection, lapin::Consumer) {
    use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "raw".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (connection, consumer)
}

/// Whether `consumer` gets a message whose JSON has this `originService` within `wait`.
async fn receives_from(consumer: &mut lapin::Consumer, origin: &str, wait: Duration) -> bool {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        let json: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
        if json["originService"] == origin {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn cache_invalidations_travel_on_their_own_exchange_to_the_caches_that_joined() {
    use rtalpha_proto::cache::{CACHE_EXCHANGE, CacheInvalidation};
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let shutdown = CancellationToken::new();
    let service = format!("bus-test-{}", rtalpha_bus::event_id());
    let joined = Bus::connect(&url, shutdown.clone()).expect("bus");
    let not_joined = Bus::connect(&url, shutdown.clone()).expect("bus");
    connected(&joined).await;
    connected(&not_joined).await;
    joined.join_cache_topic(&service, "products").await;
    let (_spring_connection, mut spring) = raw_consumer(&url, SPRING_BUS_DESTINATION, "#").await;
    let (_cache_connection, mut raw_cache) = raw_consumer(
        &url,
        CACHE_EXCHANGE,
        &rtalpha_proto::cache::routing_key(&service, "products"),
    )
    .await;
    let (mut to_joined, mut to_not_joined) = (joined.subscribe(), not_joined.subscribe());

    let origin = format!("{service}:products:test");
    let event = RemoteEvent::CacheInvalidation(CacheInvalidation {
        timestamp: rtalpha_bus::now_ms(),
        origin_service: origin.clone(),
        destination_service: CacheInvalidation::destination_of(&service),
        cache: "products".into(),
        sequence: 1,
        keys: vec!["p-1".into()],
        all: false,
    });
    not_joined.publish(&event).await.expect("published");

    assert!(
        receives_from(&mut raw_cache, &origin, Duration::from_secs(5)).await,
        "on the cache exchange, by service and cache"
    );
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Delivery::Event(got)) = to_joined.recv().await
                && got == event
            {
                return;
            }
        }
    })
    .await;
    assert!(delivered.is_ok(), "the bus that joined the topic delivers it");
    assert!(
        !receives_from(&mut spring, &origin, Duration::from_millis(500)).await,
        "Spring's exchange never carries it"
    );
    let stray = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(Delivery::Event(RemoteEvent::CacheInvalidation(_))) = to_not_joined.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(stray.is_err(), "a bus that did not join hears nothing of it");
    shutdown.cancel();
}
