//! What the breaker adds to a call on its closed-state path, and whether
//! concurrent callers slow each other down. Run with
//! `cargo bench -p rtalpha-resilience --bench breaker`.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use rtalpha_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, WindowKind};

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new("bench", BreakerConfig::default())
}

/// Runs `per_call` `iters` times on each of `threads` threads at once and
/// returns the wall time divided by the threads, so a result equal to the
/// one-thread figure means the callers did not slow each other.
fn concurrent(threads: usize, iters: u64, per_call: impl Fn() + Send + Sync + 'static) -> Duration {
    let per_call = Arc::new(per_call);
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (per_call, start) = (per_call.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                for _ in 0..iters {
                    per_call();
                }
                began.elapsed()
            })
        })
        .collect();
    start.wait();
    workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .max()
        .unwrap_or_default()
}

fn closed_path(c: &mut Criterion) {
    // Calls go through a real Prometheus recorder, as they do in a server.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder).expect("recorder");

    let mut group = c.benchmark_group("breaker");
    let shared = breaker();
    group.bench_function("acquire_and_record", |b| {
        b.iter(|| {
            shared
                .try_acquire()
                .expect("closed")
                .record(black_box(Outcome::Success))
        })
    });
    group.bench_function("async_call", |b| {
        b.iter(|| {
            shared
                .call(async { Ok::<_, ()>(black_box(1)) })
                .now_or_never()
                .expect("ready")
        })
    });
    group.bench_function("baseline_async_without_breaker", |b| {
        b.iter(|| async { Ok::<_, ()>(black_box(1)) }.now_or_never().expect("ready"))
    });
    group.bench_function("failure_recorded_and_judged", |b| {
        // A 30 % failure rate keeps the breaker closed while every failure
        // is judged against the window.
        let breaker = breaker();
        let mut n = 0u32;
        b.iter(|| {
            n = n.wrapping_add(1);
            let outcome = if n % 10 < 3 { Outcome::Failure } else { Outcome::Success };
            breaker.try_acquire().expect("closed").record(outcome)
        })
    });
    group.bench_function("baseline_mutex_counter", |b| {
        let counter = Mutex::new(0u64);
        b.iter(|| *counter.lock().expect("lock") += black_box(1))
    });
    for threads in [1, 2] {
        for (kind, window) in [("count", WindowKind::Count), ("time", WindowKind::Time)] {
            let name = format!("acquire_and_record_{kind}_window_{threads}_threads");
            group.bench_function(&name, |b| {
                let breaker = CircuitBreaker::new(
                    "bench",
                    BreakerConfig {
                        window,
                        window_size: if window == WindowKind::Time { 10 } else { 100 },
                        ..BreakerConfig::default()
                    },
                );
                b.iter_custom(|iters| {
                    let breaker = breaker.clone();
                    concurrent(threads, iters, move || {
                        breaker.try_acquire().expect("closed").record(Outcome::Success)
                    })
                })
            });
        }
        let name = format!("baseline_mutex_counter_{threads}_threads");
        group.bench_function(&name, |b| {
            let counter = Arc::new(Mutex::new(0u64));
            b.iter_custom(|iters| {
                let counter = counter.clone();
                concurrent(threads, iters, move || *counter.lock().expect("lock") += black_box(1))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, closed_path);
criterion_main!(benches);
