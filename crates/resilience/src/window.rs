//! The sliding windows a closed breaker judges over, kept in atomics so that
//! concurrent callers record without a lock.
//!
//! The count window is a ring of the last N outcomes: each record claims the
//! next slot, swaps its outcome in and corrects the running totals by the
//! difference with the outcome it replaced. The time window keeps one bucket
//! per second; a record into a bucket left over from an earlier lap first
//! claims it for the current second and empties it. Totals read while others
//! record may be off by the calls in flight, which is all a rate needs.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Calls seen, and how many of them failed or were slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

/// One outcome on a cache line of its own, so that callers recording into
/// neighbouring slots do not contend for the line.
#[derive(Debug)]
#[repr(align(64))]
struct Slot(AtomicU8);

const EMPTY: u8 = 0;
const FAILED: u8 = 0b01;
const SLOW: u8 = 0b10;
const FILLED: u8 = 0b100;

/// The last N outcomes.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[Slot]>,
    next: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    pub fn new(size: u32) -> CountWindow {
        CountWindow {
            slots: (0..size.max(1)).map(|_| Slot(AtomicU8::new(EMPTY))).collect(),
            next: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    pub fn record(&self, failed: bool, slow: bool) {
        let code = FILLED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let old = self.slots[index as usize].0.swap(code, Ordering::AcqRel);
        if old == code {
            return;
        }
        if old & FILLED == 0 {
            self.calls.fetch_add(1, Ordering::AcqRel);
        }
        adjust(&self.failures, old & FAILED != 0, failed);
        adjust(&self.slow, old & SLOW != 0, slow);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            calls: self.calls.load(Ordering::Acquire),
            failures: self.failures.load(Ordering::Acquire),
            slow: self.slow.load(Ordering::Acquire),
        }
    }

    pub fn clear(&self) {
        for slot in self.slots.iter() {
            slot.0.store(EMPTY, Ordering::Release);
        }
        self.calls.store(0, Ordering::Release);
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        (true, false) => {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
        _ => {}
    }
}

/// The outcomes of the last N seconds, a bucket a second.
///
/// Counts by second add up whichever thread recorded them, so the window is
/// kept in shards, one per group of threads, each on its own cache lines:
/// concurrent callers do not contend, and the totals are the same sums.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    shards: Box<[Shard]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    buckets: Box<[Bucket]>,
}

const SHARDS: usize = 8;

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize
    };
}

#[derive(Debug)]
struct Bucket {
    /// The second this bucket counts, plus one (0: never used).
    second: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl TimeWindow {
    pub fn new(seconds: u32) -> TimeWindow {
        let shard = || Shard {
            buckets: (0..seconds.max(1))
                .map(|_| Bucket {
                    second: AtomicU64::new(0),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        };
        TimeWindow {
            shards: (0..SHARDS).map(|_| shard()).collect(),
        }
    }

    pub fn record(&self, second: u64, failed: bool, slow: bool) {
        let shard = &self.shards[SHARD.with(|shard| *shard)];
        shard.record(second, failed, slow);
    }

    pub fn totals(&self, second: u64) -> Totals {
        self.shards.iter().fold(Totals::default(), |sum, shard| {
            let totals = shard.totals(second);
            Totals {
                calls: sum.calls + totals.calls,
                failures: sum.failures + totals.failures,
                slow: sum.slow + totals.slow,
            }
        })
    }

    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.clear();
        }
    }
}

impl Shard {
    fn record(&self, second: u64, failed: bool, slow: bool) {
        let mark = second + 1;
        let bucket = &self.buckets[(second % self.buckets.len() as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != mark
            && seen < mark
            && bucket
                .second
                .compare_exchange(seen, mark, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
        }
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        if failed {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn totals(&self, second: u64) -> Totals {
        let oldest = (second + 1).saturating_sub(self.buckets.len() as u64 - 1);
        let mut totals = Totals::default();
        for bucket in self.buckets.iter() {
            let mark = bucket.second.load(Ordering::Acquire);
            if mark >= oldest && mark <= second + 1 {
                totals.calls += bucket.calls.load(Ordering::Acquire);
                totals.failures += bucket.failures.load(Ordering::Acquire);
                totals.slow += bucket.slow.load(Ordering::Acquire);
            }
        }
        totals
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.second.store(0, Ordering::Release);
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_only_the_last_n_outcomes() {
        let window = CountWindow::new(4);
        for _ in 0..4 {
            window.record(true, false);
        }
        assert_eq!(
            window.totals(),
            Totals {
                calls: 4,
                failures: 4,
                slow: 0
            }
        );
        window.record(false, true);
        window.record(false, false);
        assert_eq!(
            window.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
        for _ in 0..4 {
            window.record(false, false);
        }
        assert_eq!(
            window.totals(),
            Totals {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        window.clear();
        assert_eq!(window.totals(), Totals::default());
    }

    #[test]
    fn time_window_forgets_seconds_that_left_it() {
        let window = TimeWindow::new(3);
        window.record(10, true, false);
        window.record(11, false, false);
        window.record(12, false, true);
        assert_eq!(
            window.totals(12),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // Second 13 reuses second 10's bucket and second 10 has left the window.
        window.record(13, false, false);
        assert_eq!(
            window.totals(13),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        // Nothing recorded for a while: everything is out of the window.
        assert_eq!(window.totals(20), Totals::default());
    }

    #[test]
    fn concurrent_records_keep_exact_totals() {
        let window = std::sync::Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let window = window.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        window.record((i + n) % 2 == 0, false);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let totals = window.totals();
        assert_eq!(totals.calls, 64);
        let failed = window
            .slots
            .iter()
            .filter(|s| s.0.load(Ordering::Relaxed) & FAILED != 0)
            .count();
        assert_eq!(totals.failures as usize, failed);
    }

    #[test]
    fn time_window_totals_add_up_the_shards_of_every_thread() {
        let window = std::sync::Arc::new(TimeWindow::new(5));
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let window = window.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        window.record(100, i % 4 == 0, i % 10 == 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let threads = (SHARDS + 3) as u32;
        assert_eq!(
            window.totals(100),
            Totals {
                calls: 1000 * threads,
                failures: 250 * threads,
                slow: 100 * threads
            }
        );
    }
}
