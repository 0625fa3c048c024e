//! The in-process tier: a moka cache of decoded values, plus what keeps it honest while
//! values are being loaded.
//!
//! A value is only as good as the moment its load began: an invalidation that arrives
//! while a load is in flight must win over the load's result, even when the result is
//! inserted after the invalidation was applied. So every load is a *flight* registered
//! before it reads anything, with a `revoked` flag that the entry it inserts shares;
//! invalidating a key revokes its flights, and a read ignores an entry whose flag is
//! set. Clearing the cache bumps an epoch that entries carry, with the same effect for
//! every key at once. Concurrent misses on one key join one flight, so the source is
//! asked once (no stampede).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use tokio::sync::OnceCell;

use crate::config::{CacheSettings, SizeBound};
use crate::stats::Counters;

/// What a flight produces: a value, nothing (a probe of the shared tier that found
/// nothing), or the loader's error, type-erased so flights of one key can be shared.
pub(crate) type FlightResult<V> = Result<Option<Arc<V>>, Arc<dyn Any + Send + Sync>>;

/// A load or probe in progress for one key.
pub(crate) struct Flight<V> {
    cell: OnceCell<FlightResult<V>>,
    /// Set when the key is invalidated while (or after) this flight reads.
    revoked: Arc<AtomicBool>,
    /// The near cache's epoch when the flight began.
    epoch: u64,
}

impl<V> Flight<V> {
    /// Runs `init` unless another member of the flight already does or did.
    pub(crate) async fn run<F, Fut>(&self, init: F) -> FlightResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = FlightResult<V>>,
    {
        self.cell.get_or_init(init).await.clone()
    }
}

/// Which flight a caller joins: a load (shared tier, then the loader) or a probe
/// (shared tier only, for `get`). They are kept apart because a probe may find nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlightKind {
    /// `get_or_load`.
    Load,
    /// `get` in the distributed mode.
    Probe,
}

#[derive(Default)]
struct KeyFlights<V> {
    load: Option<Arc<Flight<V>>>,
    probe: Option<Arc<Flight<V>>>,
}

/// An entry: the value, the flag of the flight that loaded it, and the epoch it belongs to.
struct Slot<V> {
    value: Arc<V>,
    revoked: Arc<AtomicBool>,
    epoch: u64,
    weight: u32,
    /// A per-entry lifetime shorter than the cache's TTL (the shared tier's remaining
    /// expiry), so that an expiry in Redis is an expiry here too.
    expires_in: Option<Duration>,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Slot {
            value: self.value.clone(),
            revoked: self.revoked.clone(),
            epoch: self.epoch,
            weight: self.weight,
            expires_in: self.expires_in,
        }
    }
}

struct SlotExpiry;

impl<V> Expiry<String, Slot<V>> for SlotExpiry {
    fn expire_after_create(&self, _key: &String, slot: &Slot<V>, _created_at: Instant) -> Option<Duration> {
        slot.expires_in
    }

    fn expire_after_update(
        &self,
        _key: &String,
        slot: &Slot<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        slot.expires_in
    }
}

/// The near tier of one cache.
pub(crate) struct Near<V> {
    store: moka::future::Cache<String, Slot<V>>,
    epoch: AtomicU64,
    flights: Mutex<HashMap<String, KeyFlights<V>>>,
    weigh_bytes: bool,
}

impl<V: Send + Sync + 'static> Near<V> {
    pub(crate) fn new(name: &str, settings: &CacheSettings, counters: Arc<Counters>) -> Self {
        let mut builder = moka::future::Cache::builder()
            .name(name)
            .expire_after(SlotExpiry)
            .eviction_listener(move |_key, _slot, cause| match cause {
                RemovalCause::Size => counters.evicted("size"),
                RemovalCause::Expired => counters.evicted("expired"),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            });
        let weigh_bytes = match settings.size_bound() {
            SizeBound::Entries(entries) => {
                builder = builder.max_capacity(entries);
                false
            }
            SizeBound::Bytes(bytes) => {
                builder = builder
                    .max_capacity(bytes)
                    .weigher(|_key: &String, slot: &Slot<V>| slot.weight);
                true
            }
        };
        if let Some(ttl) = settings.time_to_live() {
            builder = builder.time_to_live(ttl);
        }
        if let Some(tti) = settings.time_to_idle() {
            builder = builder.time_to_idle(tti);
        }
        Near {
            store: builder.build(),
            epoch: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            weigh_bytes,
        }
    }

    /// Whether entries are weighed by their encoded size (so inserts need it).
    pub(crate) fn weighs_bytes(&self) -> bool {
        self.weigh_bytes
    }

    /// The value for `key`, if an entry is present and still valid.
    pub(crate) async fn get(&self, key: &str) -> Option<Arc<V>> {
        let slot = self.store.get(key).await?;
        let valid = slot.epoch == self.epoch.load(Ordering::Acquire) && !slot.revoked.load(Ordering::Acquire);
        valid.then_some(slot.value)
    }

    /// Joins the flight of `kind` for `key`, or starts one.
    pub(crate) fn join(&self, key: &str, kind: FlightKind) -> Arc<Flight<V>> {
        let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = flights.entry(key.to_owned()).or_insert_with(|| KeyFlights {
            load: None,
            probe: None,
        });
        let slot = match kind {
            FlightKind::Load => &mut entry.load,
            FlightKind::Probe => &mut entry.probe,
        };
        slot.get_or_insert_with(|| {
            Arc::new(Flight {
                cell: OnceCell::new(),
                revoked: Arc::new(AtomicBool::new(false)),
                epoch: self.epoch.load(Ordering::Acquire),
            })
        })
        .clone()
    }

    /// Leaves a flight: the first member to leave a finished flight unregisters it, so
    /// the next miss starts afresh.
    pub(crate) fn leave(&self, key: &str, kind: FlightKind, flight: &Arc<Flight<V>>) {
        let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = flights.get_mut(key) {
            let slot = match kind {
                FlightKind::Load => &mut entry.load,
                FlightKind::Probe => &mut entry.probe,
            };
            if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, flight)) {
                *slot = None;
            }
            if entry.load.is_none() && entry.probe.is_none() {
                flights.remove(key);
            }
        }
    }

    /// Stores what `flight` read for `key`. The entry shares the flight's flag and
    /// epoch, so an invalidation or a clear since the flight began makes it invisible.
    pub(crate) async fn insert_from(
        &self,
        key: &str,
        flight: &Flight<V>,
        value: Arc<V>,
        weight: u32,
        expires_in: Option<Duration>,
    ) {
        let slot = Slot {
            value,
            revoked: flight.revoked.clone(),
            epoch: flight.epoch,
            weight,
            expires_in,
        };
        self.store.insert(key.to_owned(), slot).await;
    }

    /// Stores a value written by this process (`put`): in-flight loads of the key are
    /// revoked first, so none of them can replace it with what it read before.
    pub(crate) async fn insert_written(&self, key: &str, value: Arc<V>, weight: u32, expires_in: Option<Duration>) {
        self.revoke_flights(key);
        let slot = Slot {
            value,
            revoked: Arc::new(AtomicBool::new(false)),
            epoch: self.epoch.load(Ordering::Acquire),
            weight,
            expires_in,
        };
        self.store.insert(key.to_owned(), slot).await;
    }

    /// Drops `key`: its entry and whatever its in-flight loads will bring.
    pub(crate) async fn invalidate(&self, key: &str) {
        self.revoke_flights(key);
        self.store.invalidate(key).await;
    }

    /// Drops everything, including what in-flight loads will bring.
    pub(crate) fn clear(&self) {
        // The epoch first: from here on no entry of before is valid, whatever the
        // store still holds while it empties itself.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let flights = std::mem::take(&mut *self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for flight in flights
            .values()
            .flat_map(|entry| entry.load.iter().chain(entry.probe.iter()))
        {
            flight.revoked.store(true, Ordering::Release);
        }
        self.store.invalidate_all();
    }

    /// The number of entries (approximate, as moka counts).
    pub(crate) fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }

    /// Runs moka's pending maintenance (evictions, counts) now.
    pub(crate) async fn run_pending_tasks(&self) {
        self.store.run_pending_tasks().await;
    }

    fn revoke_flights(&self, key: &str) {
        let removed = self
            .flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        if let Some(entry) = removed {
            for flight in entry.load.iter().chain(entry.probe.iter()) {
                flight.revoked.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(settings: CacheSettings) -> Near<String> {
        Near::new("test", &settings, Arc::new(Counters::new("svc", "test")))
    }

    #[tokio::test]
    async fn a_load_overtaken_by_an_invalidation_is_never_served() {
        let near = near(CacheSettings::default());
        let flight = near.join("k", FlightKind::Load);
        // The load read "old"; meanwhile the key was invalidated.
        near.invalidate("k").await;
        near.insert_from("k", &flight, Arc::new("old".to_owned()), 1, None)
            .await;
        assert_eq!(near.get("k").await, None, "the revoked load's entry is invisible");
        near.leave("k", FlightKind::Load, &flight);

        // A load that nothing overtook is served.
        let flight = near.join("k", FlightKind::Load);
        near.insert_from("k", &flight, Arc::new("new".to_owned()), 1, None)
            .await;
        near.leave("k", FlightKind::Load, &flight);
        assert_eq!(near.get("k").await.as_deref().map(String::as_str), Some("new"));
    }

    #[tokio::test]
    async fn a_clear_during_a_load_wins_over_it() {
        let near = near(CacheSettings::default());
        near.insert_written("a", Arc::new("a".to_owned()), 1, None).await;
        let flight = near.join("b", FlightKind::Load);
        near.clear();
        near.insert_from("b", &flight, Arc::new("b".to_owned()), 1, None).await;
        assert_eq!(near.get("a").await, None);
        assert_eq!(near.get("b").await, None);
    }

    #[tokio::test]
    async fn a_write_revokes_loads_in_flight() {
        let near = near(CacheSettings::default());
        let flight = near.join("k", FlightKind::Load);
        near.insert_written("k", Arc::new("written".to_owned()), 1, None).await;
        // The slow load lands after the write.
        near.insert_from("k", &flight, Arc::new("read before".to_owned()), 1, None)
            .await;
        assert_eq!(
            near.get("k").await,
            None,
            "neither the stale read nor a guess is served"
        );
    }

    #[tokio::test]
    async fn members_of_a_flight_share_one_run() {
        let near = near(CacheSettings::default());
        let first = near.join("k", FlightKind::Load);
        let second = near.join("k", FlightKind::Load);
        assert!(Arc::ptr_eq(&first, &second));
        let probe = near.join("k", FlightKind::Probe);
        assert!(!Arc::ptr_eq(&first, &probe), "probes and loads are apart");
        near.leave("k", FlightKind::Load, &first);
        let third = near.join("k", FlightKind::Load);
        assert!(!Arc::ptr_eq(&first, &third), "a finished flight is not joined again");
    }

    #[tokio::test]
    async fn the_byte_bound_evicts_by_encoded_size() {
        let near = near(CacheSettings {
            max_bytes: Some(1000),
            ..CacheSettings::default()
        });
        assert!(near.weighs_bytes());
        for i in 0..20 {
            near.insert_written(&format!("k{i}"), Arc::new("x".repeat(100)), 100, None)
                .await;
        }
        near.run_pending_tasks().await;
        assert!(
            near.entry_count() <= 10,
            "{} entries of 100 bytes in 1000",
            near.entry_count()
        );
    }

    #[tokio::test]
    async fn a_per_entry_expiry_shorter_than_the_ttl_applies() {
        let near = near(CacheSettings::default());
        near.insert_written("k", Arc::new("v".to_owned()), 1, Some(Duration::from_millis(50)))
            .await;
        assert!(near.get("k").await.is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(near.get("k").await, None, "expired with the shared tier's expiry");
    }
}
