//! Keeping near caches of one service and cache name in step: numbered invalidations
//! out, gap detection in, and a watchdog on the path itself.
//!
//! Each cache of each process is a *publisher* with a random id. Its messages carry a
//! sequence number that grows by one per invalidation; when it has sent nothing for a
//! heartbeat it repeats its last number. A receiver remembers the last number of every
//! peer: a number that skips one means a message was lost, so the receiver clears its
//! near cache rather than serve what the lost message would have removed. A publisher
//! whose send fails keeps the number spent, so the peers see the gap as soon as any
//! later message (at the latest the next heartbeat) gets through.
//!
//! Every cache also hears its own messages. Until it has heard one sent after the last
//! doubt (start-up, a `MayHaveMissed`, a lost subscription, silence longer than
//! `silence_timeout`), it does not serve from memory at all: reads go to the shared
//! tier or the loader. That bounds staleness even when the path fails without a sound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use rtalpha_bus::{Bus, Delivery};
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_proto::cache::CacheInvalidation;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stats::Counters;

/// The most keys one message carries; more wait for the next message.
const MAX_KEYS_PER_MESSAGE: usize = 256;
/// A peer not heard from for this many silence timeouts is forgotten.
const FORGET_AFTER_SILENCES: u32 = 10;
/// The pause between attempts to (re)subscribe to Redis.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);

/// What the synchronisation needs of a near cache.
pub(crate) trait NearControl: Send + Sync {
    /// Drops these keys.
    fn invalidate<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, ()>;
    /// Drops everything.
    fn clear(&self);
}

/// Where the messages travel.
#[derive(Clone)]
pub(crate) enum Channel {
    /// The service's bus (the config server's relay or RabbitMQ).
    Bus(Bus),
    /// Redis pub/sub on the shared tier's server.
    Redis(RedisChannel),
}

/// Redis pub/sub: publishing on the data connection (after the write it announces),
/// subscribing on a connection of its own.
#[derive(Clone)]
pub(crate) struct RedisChannel {
    pub(crate) client: redis::Client,
    pub(crate) connection: redis::aio::ConnectionManager,
    pub(crate) name: String,
    pub(crate) timeout: Duration,
}

impl Channel {
    async fn send(&self, message: &CacheInvalidation) -> Result<(), String> {
        match self {
            Channel::Bus(bus) => bus
                .publish(&RemoteEvent::CacheInvalidation(message.clone()))
                .await
                .map_err(|err| err.to_string()),
            Channel::Redis(redis) => {
                let payload = serde_json::to_vec(message).map_err(|err| err.to_string())?;
                let mut connection = redis.connection.clone();
                let mut command = redis::cmd("PUBLISH");
                command.arg(&redis.name).arg(payload);
                match tokio::time::timeout(redis.timeout, command.query_async::<i64>(&mut connection)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err("Redis did not answer in time".to_owned()),
                }
            }
        }
    }
}

/// One request to announce: some keys or everything; told whether it went out.
struct Announcement {
    keys: Vec<String>,
    all: bool,
    done: oneshot::Sender<bool>,
}

/// What a receiver knows of one peer.
struct Peer {
    last_sequence: u64,
    last_heard: Instant,
}

/// The synchronisation of one cache.
pub(crate) struct Synchroniser {
    publisher: String,
    service: String,
    cache: String,
    destination: String,
    /// Whether the near cache may serve: the path is known to work.
    healthy: AtomicBool,
    /// The timestamp of the last own message stamped before the last doubt; only an own
    /// message stamped later restores health.
    doubt_since_ms: AtomicU64,
    /// The last timestamp given to an own message. Own timestamps strictly increase, so
    /// "stamped after the doubt" holds even if the wall clock steps back.
    last_stamp_ms: AtomicU64,
    last_echo: Mutex<Instant>,
    peers: Mutex<HashMap<String, Peer>>,
    heartbeat: Duration,
    silence_timeout: Duration,
    near: Arc<dyn NearControl>,
    counters: Arc<Counters>,
    announcements: mpsc::Sender<Announcement>,
}

/// How a [`Synchroniser`] is set up.
pub(crate) struct SyncSetup {
    pub(crate) service: String,
    pub(crate) cache: String,
    pub(crate) heartbeat: Duration,
    pub(crate) silence_timeout: Duration,
    pub(crate) channel: Channel,
    pub(crate) near: Arc<dyn NearControl>,
    pub(crate) counters: Arc<Counters>,
}

impl Synchroniser {
    /// Starts the publisher and the receiver of one cache; both stop at `shutdown` or
    /// when the cache is dropped.
    pub(crate) fn start(setup: SyncSetup, shutdown: CancellationToken) -> Arc<Synchroniser> {
        let (announcements, queue) = mpsc::channel(1024);
        let random: u64 = rand::random();
        let sync = Arc::new(Synchroniser {
            publisher: format!("{}:{}:{random:016x}", setup.service, setup.cache),
            destination: CacheInvalidation::destination_of(&setup.service),
            service: setup.service,
            cache: setup.cache,
            healthy: AtomicBool::new(false),
            doubt_since_ms: AtomicU64::new(0),
            last_stamp_ms: AtomicU64::new(0),
            last_echo: Mutex::new(Instant::now()),
            peers: Mutex::new(HashMap::new()),
            heartbeat: setup.heartbeat,
            silence_timeout: setup.silence_timeout,
            near: setup.near,
            counters: setup.counters,
            announcements,
        });
        let weak = Arc::downgrade(&sync);
        let (channel, token) = (setup.channel.clone(), shutdown.clone());
        tokio::spawn(publish_loop(weak.clone(), channel, queue, token));
        match setup.channel {
            Channel::Bus(bus) => {
                // Subscribe before joining, so nothing sent after the join is missed.
                let deliveries = bus.subscribe();
                let (service, cache) = (sync.service.clone(), sync.cache.clone());
                tokio::spawn(async move {
                    bus.join_cache_topic(&service, &cache).await;
                    receive_from_bus(weak, bus, deliveries, shutdown).await;
                });
            }
            Channel::Redis(redis) => {
                tokio::spawn(receive_from_redis(weak, redis, shutdown));
            }
        }
        sync
    }

    /// Whether the near cache may serve and store.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// This cache's publisher id.
    #[cfg(test)]
    pub(crate) fn publisher(&self) -> &str {
        &self.publisher
    }

    /// Tells the other instances to drop `keys` (or everything); whether it went out.
    pub(crate) async fn announce(&self, keys: Vec<String>, all: bool) -> bool {
        let (done, outcome) = oneshot::channel();
        if self.announcements.send(Announcement { keys, all, done }).await.is_err() {
            return false;
        }
        outcome.await.unwrap_or(false)
    }

    /// Something may have been missed: clear, and stop serving until the own messages
    /// are heard again.
    pub(crate) fn doubt(&self, reason: &'static str) {
        self.doubt_since_ms
            .store(self.last_stamp_ms.load(Ordering::Acquire), Ordering::Release);
        let was_healthy = self.healthy.swap(false, Ordering::AcqRel);
        self.near.clear();
        self.counters.cleared(reason);
        if was_healthy {
            tracing::warn!(service = %self.service, cache = %self.cache, reason, "cache: cleared; serving from the source until the invalidation path is proven again");
        }
    }

    /// Applies one message heard on the channel.
    async fn handle(&self, message: CacheInvalidation) {
        if message.cache != self.cache || message.destination_service != self.destination {
            return;
        }
        if message.origin_service == self.publisher {
            self.heard_own(&message);
            return;
        }
        let heartbeat = message.is_heartbeat();
        let gap = {
            let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            match peers.get_mut(&message.origin_service) {
                None => {
                    peers.insert(
                        message.origin_service.clone(),
                        Peer {
                            last_sequence: message.sequence,
                            last_heard: now,
                        },
                    );
                    // A peer first heard past its first message may have sent others
                    // that were lost, or sent them before this cache existed; the two
                    // cannot be told apart, so assume the worse once.
                    if heartbeat {
                        message.sequence > 0
                    } else {
                        message.sequence > 1
                    }
                }
                Some(peer) => {
                    peer.last_heard = now;
                    if !heartbeat && message.sequence <= peer.last_sequence {
                        return; // a duplicate
                    }
                    let expected = if heartbeat {
                        peer.last_sequence
                    } else {
                        peer.last_sequence + 1
                    };
                    peer.last_sequence = peer.last_sequence.max(message.sequence);
                    message.sequence > expected
                }
            }
        };
        if !heartbeat {
            self.counters.received();
        }
        if gap {
            tracing::info!(service = %self.service, cache = %self.cache, peer = %message.origin_service,
                sequence = message.sequence, "cache: a peer's invalidation was lost; cleared");
            self.near.clear();
            self.counters.cleared("gap");
        } else if message.all {
            self.near.clear();
            self.counters.cleared("invalidate_all");
        } else if !message.keys.is_empty() {
            self.near.invalidate(&message.keys).await;
        }
    }

    fn heard_own(&self, message: &CacheInvalidation) {
        *self.last_echo.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        if !self.is_healthy() && message.timestamp > self.doubt_since_ms.load(Ordering::Acquire) {
            // Entries stored while in doubt belong to an older epoch after this.
            self.near.clear();
            self.healthy.store(true, Ordering::Release);
            tracing::debug!(service = %self.service, cache = %self.cache, "cache: invalidation path proven; serving from memory");
        }
    }

    /// The periodic check: a disconnected or silent path makes the cache doubt.
    fn watch(&self, connected: bool) {
        if self.is_healthy() {
            let since_echo = self
                .last_echo
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .elapsed();
            if !connected {
                self.doubt("disconnected");
            } else if since_echo > self.silence_timeout {
                self.doubt("silence");
            }
        }
        let forget = self.silence_timeout * FORGET_AFTER_SILENCES;
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, peer| peer.last_heard.elapsed() < forget);
    }

    fn message(&self, sequence: u64, keys: Vec<String>, all: bool) -> CacheInvalidation {
        let now = rtalpha_bus::now_ms();
        let previous = self
            .last_stamp_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)))
            .unwrap_or(now);
        CacheInvalidation {
            timestamp: now.max(previous + 1),
            origin_service: self.publisher.clone(),
            destination_service: self.destination.clone(),
            cache: self.cache.clone(),
            sequence,
            keys,
            all,
        }
    }

    /// How often the watchdog looks and an unproven cache repeats its heartbeat.
    fn tick(&self) -> Duration {
        (self.heartbeat / 4).max(Duration::from_millis(10))
    }
}

/// Sends announcements in order, one numbered message per batch, and heartbeats when
/// there is nothing else to say.
async fn publish_loop(
    sync: Weak<Synchroniser>,
    channel: Channel,
    mut queue: mpsc::Receiver<Announcement>,
    shutdown: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut last_sent: Option<Instant> = None;
    let tick = match sync.upgrade() {
        Some(sync) => sync.tick(),
        None => return,
    };
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(announcement) => Some(announcement),
                None => return,
            },
            () = tokio::time::sleep(tick) => None,
            () = shutdown.cancelled() => return,
        };
        let Some(sync) = sync.upgrade() else { return };
        let Some(first) = first else {
            // Heartbeat: every `heartbeat`, or every tick while the path is unproven.
            let due = last_sent.is_none_or(|at| at.elapsed() >= sync.heartbeat || !sync.is_healthy());
            if due {
                let _ = channel.send(&sync.message(sequence, Vec::new(), false)).await;
                last_sent = Some(Instant::now());
            }
            continue;
        };
        let mut batch = vec![first];
        while batch.iter().map(|a| a.keys.len()).sum::<usize>() < MAX_KEYS_PER_MESSAGE {
            match queue.try_recv() {
                Ok(announcement) => batch.push(announcement),
                Err(_) => break,
            }
        }
        let all = batch.iter().any(|a| a.all);
        let mut keys: Vec<String> = if all {
            Vec::new()
        } else {
            batch.iter().flat_map(|a| a.keys.iter().cloned()).collect()
        };
        keys.sort_unstable();
        keys.dedup();
        // The number is spent whether or not the send succeeds: a failed send becomes a
        // gap that the peers see with the next message that gets through.
        sequence += 1;
        let outcome = channel.send(&sync.message(sequence, keys, all)).await;
        last_sent = Some(Instant::now());
        let ok = match outcome {
            Ok(()) => {
                sync.counters.sent();
                true
            }
            Err(err) => {
                sync.counters.propagation_failed();
                tracing::warn!(cache = %sync.cache, error = %err, "cache: cannot send an invalidation; peers will see the gap");
                false
            }
        };
        for announcement in batch {
            let _ = announcement.done.send(ok);
        }
    }
}

async fn receive_from_bus(
    sync: Weak<Synchroniser>,
    bus: Bus,
    mut deliveries: broadcast::Receiver<Delivery>,
    shutdown: CancellationToken,
) {
    let tick = match sync.upgrade() {
        Some(sync) => sync.tick(),
        None => return,
    };
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            delivery = deliveries.recv() => {
                let Some(sync) = sync.upgrade() else { return };
                match delivery {
                    Ok(Delivery::Event(RemoteEvent::CacheInvalidation(message))) => sync.handle(message).await,
                    Ok(Delivery::Event(_)) => {}
                    Ok(Delivery::MayHaveMissed) => sync.doubt("bus_reconnected"),
                    Err(broadcast::error::RecvError::Lagged(_)) => sync.doubt("lagged"),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            _ = ticks.tick() => {
                let Some(sync) = sync.upgrade() else { return };
                sync.watch(bus.is_connected());
            }
            () = shutdown.cancelled() => return,
        }
    }
}

async fn receive_from_redis(sync: Weak<Synchroniser>, redis: RedisChannel, shutdown: CancellationToken) {
    let tick = match sync.upgrade() {
        Some(sync) => sync.tick(),
        None => return,
    };
    let mut ticks = tokio::time::interval(tick);
    loop {
        let subscription = async {
            let mut pubsub = redis.client.get_async_pubsub().await?;
            pubsub.subscribe(&redis.name).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            subscribed = tokio::time::timeout(redis.timeout.max(Duration::from_secs(1)), subscription) => subscribed,
            () = shutdown.cancelled() => return,
        };
        if let Ok(Ok(pubsub)) = subscribed {
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(sync) = sync.upgrade() else { return };
                        let Some(message) = message else { break };
                        match serde_json::from_slice::<CacheInvalidation>(message.get_payload_bytes()) {
                            Ok(message) => sync.handle(message).await,
                            Err(err) => tracing::debug!(error = %err, "cache: ignored a message that is no invalidation"),
                        }
                    }
                    _ = ticks.tick() => {
                        let Some(sync) = sync.upgrade() else { return };
                        sync.watch(true);
                    }
                    () = shutdown.cancelled() => return,
                }
            }
            match sync.upgrade() {
                Some(sync) => sync.doubt("redis_subscription_lost"),
                None => return,
            }
        } else if let Some(sync) = sync.upgrade() {
            sync.watch(false);
        } else {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtalpha_bus::Relay;

    /// A near cache stand-in that records what it was told.
    #[derive(Default)]
    struct Recorder {
        invalidated: Mutex<Vec<String>>,
        clears: AtomicU64,
    }

    impl NearControl for Recorder {
        fn invalidate<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, ()> {
            self.invalidated.lock().unwrap().extend(keys.iter().cloned());
            Box::pin(async {})
        }

        fn clear(&self) {
            self.clears.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn setup(bus: &Bus, near: Arc<Recorder>) -> SyncSetup {
        SyncSetup {
            service: "svc".into(),
            cache: "c".into(),
            heartbeat: Duration::from_millis(40),
            silence_timeout: Duration::from_millis(200),
            channel: Channel::Bus(bus.clone()),
            near,
            counters: Arc::new(Counters::new("svc", "c")),
        }
    }

    fn peer_message(sequence: u64, keys: &[&str]) -> RemoteEvent {
        RemoteEvent::CacheInvalidation(CacheInvalidation {
            timestamp: rtalpha_bus::now_ms(),
            origin_service: "svc:c:peer".into(),
            destination_service: "svc:**".into(),
            cache: "c".into(),
            sequence,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            all: false,
        })
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} within 2 s");
    }

    #[tokio::test]
    async fn becomes_healthy_only_after_hearing_itself() {
        let relay = Relay::default();
        let bus = Bus::local(relay);
        let near = Arc::new(Recorder::default());
        let sync = Synchroniser::start(setup(&bus, near.clone()), CancellationToken::new());
        assert!(!sync.is_healthy(), "unproven at start");
        until("healthy", || sync.is_healthy()).await;
    }

    #[tokio::test]
    async fn a_skipped_number_clears_and_consecutive_ones_invalidate_keys() {
        let relay = Relay::default();
        let bus = Bus::local(relay.clone());
        let near = Arc::new(Recorder::default());
        let sync = Synchroniser::start(setup(&bus, near.clone()), CancellationToken::new());
        until("healthy", || sync.is_healthy()).await;
        let clears_before = near.clears.load(Ordering::SeqCst);
        relay.publish(peer_message(1, &["a"]));
        relay.publish(peer_message(2, &["b"]));
        until("keys invalidated", || near.invalidated.lock().unwrap().len() == 2).await;
        assert_eq!(near.clears.load(Ordering::SeqCst), clears_before, "no gap, no clear");
        // Number 3 is lost; 4 arrives.
        relay.publish(peer_message(4, &["d"]));
        until("cleared on the gap", || {
            near.clears.load(Ordering::SeqCst) == clears_before + 1
        })
        .await;
        // A duplicate changes nothing; a heartbeat that repeats the last number neither.
        relay.publish(peer_message(4, &["d"]));
        relay.publish(peer_message(4, &[]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(near.clears.load(Ordering::SeqCst), clears_before + 1);
        // A heartbeat past the last number reveals a lost message.
        relay.publish(peer_message(5, &[]));
        until("cleared on the heartbeat's gap", || {
            near.clears.load(Ordering::SeqCst) == clears_before + 2
        })
        .await;
    }

    #[tokio::test]
    async fn a_missed_delivery_clears_and_suspends_until_heard_again() {
        let relay = Relay::default();
        let bus = Bus::local(relay.clone());
        let near = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let sync = Synchroniser::start(setup(&bus, near.clone()), shutdown.clone());
        until("healthy", || sync.is_healthy()).await;
        let clears_before = near.clears.load(Ordering::SeqCst);
        let _ = relay.deliveries().send(Delivery::MayHaveMissed);
        until("cleared", || near.clears.load(Ordering::SeqCst) > clears_before).await;
        until("healthy again", || sync.is_healthy()).await;

        // Without the background heartbeats: a doubt suspends at once, and only an own
        // message stamped after it lifts it.
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stamped_before = sync.message(0, Vec::new(), false);
        sync.doubt("test");
        assert!(!sync.is_healthy());
        sync.heard_own(&stamped_before);
        assert!(!sync.is_healthy(), "a message stamped before the doubt proves nothing");
        let stamped_after = sync.message(0, Vec::new(), false);
        assert!(
            stamped_after.timestamp > stamped_before.timestamp,
            "own stamps increase"
        );
        sync.heard_own(&stamped_after);
        assert!(sync.is_healthy());
    }

    #[tokio::test]
    async fn announcements_are_numbered_from_one() {
        let relay = Relay::default();
        let bus = Bus::local(relay.clone());
        let mut heard = relay.deliveries().subscribe();
        let near = Arc::new(Recorder::default());
        let sync = Synchroniser::start(setup(&bus, near), CancellationToken::new());
        assert!(sync.announce(vec!["x".into()], false).await);
        assert!(sync.announce(Vec::new(), true).await);
        let mut numbers = Vec::new();
        while numbers.len() < 2 {
            if let Ok(Delivery::Event(RemoteEvent::CacheInvalidation(m))) = heard.recv().await
                && !m.is_heartbeat()
            {
                assert_eq!(m.origin_service, sync.publisher());
                numbers.push((m.sequence, m.keys.clone(), m.all));
            }
        }
        assert_eq!(numbers, vec![(1, vec!["x".to_owned()], false), (2, Vec::new(), true)]);
    }
}
