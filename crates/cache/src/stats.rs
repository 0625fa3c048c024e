//! What a cache counts: kept in atomics for [`crate::Cache::stats`] and reported through
//! the `metrics` facade (Prometheus at `/metrics` when the runtime's recorder is
//! installed), labelled with the service and the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// A snapshot of one cache's counters since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads not answered from memory.
    pub misses: u64,
    /// Reads answered by the shared tier (Redis).
    pub shared_hits: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
    /// Entries evicted for size or expired.
    pub evictions: u64,
    /// Invalidation messages sent to the other instances.
    pub invalidations_sent: u64,
    /// Invalidation messages received from the other instances.
    pub invalidations_received: u64,
    /// Times the whole near cache was cleared because something may have been missed
    /// (a gap in a peer's numbers, a lost connection, silence) or was invalidated whole.
    pub clears: u64,
    /// Messages or shared-tier writes that could not be sent.
    pub propagation_failures: u64,
}

/// The counters of one cache and their metric handles.
pub(crate) struct Counters {
    hits: (AtomicU64, Counter),
    misses: (AtomicU64, Counter),
    shared_hits: (AtomicU64, Counter),
    loads: (AtomicU64, Counter),
    load_errors: (AtomicU64, Counter),
    load_time: Histogram,
    evictions: AtomicU64,
    evicted_size: Counter,
    evicted_expired: Counter,
    sent: (AtomicU64, Counter),
    received: (AtomicU64, Counter),
    clears: AtomicU64,
    failures: (AtomicU64, Counter),
    service: String,
    cache: String,
}

fn counter(name: &'static str, service: &str, cache: &str) -> (AtomicU64, Counter) {
    let handle = metrics::counter!(name, "service" => service.to_owned(), "cache" => cache.to_owned());
    (AtomicU64::new(0), handle)
}

fn bump(pair: &(AtomicU64, Counter)) {
    pair.0.fetch_add(1, Ordering::Relaxed);
    pair.1.increment(1);
}

impl Counters {
    pub(crate) fn new(service: &str, cache: &str) -> Self {
        let labels = |cause: &'static str| {
            metrics::counter!("rtalpha_cache_evictions_total", "service" => service.to_owned(),
                "cache" => cache.to_owned(), "cause" => cause)
        };
        Counters {
            hits: counter("rtalpha_cache_hits_total", service, cache),
            misses: counter("rtalpha_cache_misses_total", service, cache),
            shared_hits: counter("rtalpha_cache_shared_hits_total", service, cache),
            loads: counter("rtalpha_cache_loads_total", service, cache),
            load_errors: counter("rtalpha_cache_load_errors_total", service, cache),
            load_time: metrics::histogram!("rtalpha_cache_load_seconds", "service" => service.to_owned(),
                "cache" => cache.to_owned()),
            evictions: AtomicU64::new(0),
            evicted_size: labels("size"),
            evicted_expired: labels("expired"),
            sent: counter("rtalpha_cache_invalidations_sent_total", service, cache),
            received: counter("rtalpha_cache_invalidations_received_total", service, cache),
            clears: AtomicU64::new(0),
            failures: counter("rtalpha_cache_propagation_failures_total", service, cache),
            service: service.to_owned(),
            cache: cache.to_owned(),
        }
    }

    pub(crate) fn hit(&self) {
        bump(&self.hits);
    }

    pub(crate) fn miss(&self) {
        bump(&self.misses);
    }

    pub(crate) fn shared_hit(&self) {
        bump(&self.shared_hits);
    }

    pub(crate) fn loaded(&self, took: Duration, ok: bool) {
        bump(&self.loads);
        if !ok {
            bump(&self.load_errors);
        }
        self.load_time.record(took.as_secs_f64());
    }

    pub(crate) fn evicted(&self, cause: &'static str) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        match cause {
            "size" => self.evicted_size.increment(1),
            _ => self.evicted_expired.increment(1),
        }
    }

    pub(crate) fn sent(&self) {
        bump(&self.sent);
    }

    pub(crate) fn received(&self) {
        bump(&self.received);
    }

    /// The near cache was cleared; `reason` labels the metric.
    pub(crate) fn cleared(&self, reason: &'static str) {
        self.clears.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rtalpha_cache_clears_total", "service" => self.service.clone(),
            "cache" => self.cache.clone(), "reason" => reason)
        .increment(1);
    }

    pub(crate) fn propagation_failed(&self) {
        bump(&self.failures);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let read = |pair: &(AtomicU64, Counter)| pair.0.load(Ordering::Relaxed);
        CacheStats {
            hits: read(&self.hits),
            misses: read(&self.misses),
            shared_hits: read(&self.shared_hits),
            loads: read(&self.loads),
            load_errors: read(&self.load_errors),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidations_sent: read(&self.sent),
            invalidations_received: read(&self.received),
            clears: self.clears.load(Ordering::Relaxed),
            propagation_failures: read(&self.failures),
        }
    }
}
