//! The breaker's state machine on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::{advance, sleep};

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count,
        window_size: 10,
        minimum_calls: 10,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 100.0,
        slow_call_duration: Duration::from_secs(2),
        open_wait: Duration::from_secs(1),
        open_wait_multiplier: 2.0,
        open_wait_max: Duration::from_secs(3),
        half_open_calls: 2,
        half_open_max_time: Duration::from_secs(5),
    }
}

async fn succeed(breaker: &CircuitBreaker) -> Result<(), CallError<()>> {
    breaker.call(async { Ok::<_, ()>(()) }).await
}

async fn fail(breaker: &CircuitBreaker) -> Result<(), CallError<()>> {
    breaker.call(async { Err::<(), _>(()) }).await
}

async fn trip(breaker: &CircuitBreaker) {
    for _ in 0..10 {
        let _ = fail(breaker).await;
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_rate_reaches_the_threshold_after_the_minimum_calls() {
    let breaker = CircuitBreaker::new("orders", config());
    for _ in 0..5 {
        succeed(&breaker).await.expect("admitted");
    }
    for _ in 0..4 {
        assert!(matches!(fail(&breaker).await, Err(CallError::Inner(()))));
    }
    // Nine calls: below the minimum, no judgement yet.
    assert_eq!(breaker.state(), State::Closed);
    let _ = fail(&breaker).await;
    // Ten calls, five failed: 50 % reaches the threshold.
    assert_eq!(breaker.state(), State::Open);
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (10, 5));
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold() {
    let breaker = CircuitBreaker::new("orders", config());
    for round in 0..50 {
        if round % 3 == 0 {
            let _ = fail(&breaker).await;
        } else {
            succeed(&breaker).await.expect("admitted");
        }
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_at_once_and_never_runs_the_call() {
    let breaker = CircuitBreaker::new("orders", config());
    trip(&breaker).await;
    let ran = AtomicU32::new(0);
    for _ in 0..5 {
        let result = breaker
            .call(async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(())
            })
            .await;
        let Err(CallError::Rejected(rejected)) = result else {
            panic!("an open breaker let a call through: {result:?}");
        };
        assert_eq!((&*rejected.breaker, rejected.state), ("orders", State::Open));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let answer = breaker
        .call_with_fallback(async { Ok::<_, ()>("upstream") }, |err| async move {
            assert!(err.never_started());
            Ok("fallback")
        })
        .await;
    assert_eq!(answer, Ok("fallback"));
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_the_permitted_trials_through_and_their_success_closes_it() {
    let breaker = CircuitBreaker::new("orders", config());
    trip(&breaker).await;
    advance(Duration::from_millis(999)).await;
    assert!(matches!(succeed(&breaker).await, Err(CallError::Rejected(_))));
    advance(Duration::from_millis(1)).await;
    let first = breaker.try_acquire().expect("first trial");
    let second = breaker.try_acquire().expect("second trial");
    assert_eq!(breaker.state(), State::HalfOpen);
    let third = breaker.try_acquire();
    assert!(matches!(
        third,
        Err(Rejected {
            state: State::HalfOpen,
            ..
        })
    ));
    first.record(Outcome::Success);
    assert_eq!(breaker.state(), State::HalfOpen);
    second.record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
    // Closed again with a fresh window: one failure does not reopen it.
    let _ = fail(&breaker).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn failed_trials_reopen_it_with_a_growing_wait() {
    let breaker = CircuitBreaker::new("orders", config());
    trip(&breaker).await;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let opened = tokio::time::Instant::now();
        // Poll every 10 ms until the breaker admits a trial.
        loop {
            if let Ok(permit) = breaker.try_acquire() {
                waits.push(opened.elapsed());
                permit.record(Outcome::Failure);
                break;
            }
            advance(Duration::from_millis(10)).await;
        }
        let permit = breaker.try_acquire().expect("second trial");
        permit.record(Outcome::Failure);
        assert_eq!(breaker.state(), State::Open);
    }
    let waits: Vec<_> = waits.iter().map(|d| d.as_millis()).collect();
    // 1 s, doubling per consecutive trip, capped at 3 s.
    assert_eq!(waits, [1000, 2000, 3000, 3000]);
    assert_eq!(breaker.snapshot().consecutive_trips, 5);
}

#[tokio::test(start_paused = true)]
async fn hanging_trials_send_it_back_to_open_after_the_half_open_limit() {
    let breaker = CircuitBreaker::new("orders", config());
    trip(&breaker).await;
    advance(Duration::from_secs(1)).await;
    // Two trial calls that never answer hold both half-open slots.
    let hung = breaker.clone();
    let trials: Vec<_> = (0..2)
        .map(|_| {
            let breaker = hung.clone();
            tokio::spawn(async move { breaker.call(std::future::pending::<Result<(), ()>>()).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(matches!(succeed(&breaker).await, Err(CallError::Rejected(_))));
    advance(Duration::from_secs(5)).await;
    assert_eq!(breaker.state(), State::Open, "stuck in half-open behind hanging trials");
    // The next opening waits twice as long; after it, new trials can run and
    // close the breaker although the old ones still hang.
    advance(Duration::from_secs(2)).await;
    succeed(&breaker).await.expect("new trial");
    succeed(&breaker).await.expect("new trial");
    assert_eq!(breaker.state(), State::Closed);
    for trial in trials {
        trial.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_trial_gives_its_slot_back() {
    let breaker = CircuitBreaker::new("orders", config());
    trip(&breaker).await;
    advance(Duration::from_secs(1)).await;
    let first = breaker.try_acquire().expect("trial");
    let second = breaker.try_acquire().expect("trial");
    assert!(breaker.try_acquire().is_err());
    drop(first);
    let third = breaker.try_acquire().expect("the abandoned slot is free again");
    second.record(Outcome::Success);
    third.record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_an_earlier_state_does_not_judge_the_trials() {
    let breaker = CircuitBreaker::new("orders", config());
    let late = breaker.try_acquire_owned().expect("admitted while closed");
    trip(&breaker).await;
    advance(Duration::from_secs(1)).await;
    let trial = breaker.try_acquire().expect("trial");
    // The call admitted while closed ends now, failing: it must not count as
    // a failed trial.
    late.record(Outcome::Failure);
    trial.record(Outcome::Success);
    breaker.try_acquire().expect("trial").record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_it_by_their_own_rate() {
    let breaker = CircuitBreaker::new(
        "search",
        BreakerConfig {
            slow_call_rate_threshold: 60.0,
            ..config()
        },
    );
    let slow = || {
        breaker.call(async {
            sleep(Duration::from_secs(2)).await;
            Ok::<_, ()>(())
        })
    };
    for _ in 0..4 {
        succeed(&breaker).await.expect("fast call");
    }
    for _ in 0..5 {
        slow().await.expect("slow call succeeds");
    }
    assert_eq!(breaker.state(), State::Closed);
    slow().await.expect("slow call succeeds");
    // Six slow of ten: 60 %.
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().slow, 6);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_judged() {
    let breaker = CircuitBreaker::new("orders", config());
    for _ in 0..20 {
        let _ = breaker
            .call_classified(async { Err::<(), _>(404) }, |result| match result {
                Err(404) => Outcome::Ignored,
                Err(_) => Outcome::Failure,
                Ok(_) => Outcome::Success,
            })
            .await;
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_judges_the_calls_of_its_seconds() {
    let breaker = CircuitBreaker::new(
        "orders",
        BreakerConfig {
            window: WindowKind::Time,
            window_size: 2,
            minimum_calls: 4,
            ..config()
        },
    );
    let _ = fail(&breaker).await;
    let _ = fail(&breaker).await;
    let _ = fail(&breaker).await;
    // Those failures leave the two-second window before the next calls.
    advance(Duration::from_secs(3)).await;
    succeed(&breaker).await.expect("admitted");
    let _ = fail(&breaker).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().calls, 2);
    let _ = fail(&breaker).await;
    let _ = fail(&breaker).await;
    // Four calls in the window, three failed.
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn operators_can_disable_force_open_and_reset_it() {
    let breaker = CircuitBreaker::new("orders", config());
    breaker.disable();
    for _ in 0..30 {
        assert!(matches!(fail(&breaker).await, Err(CallError::Inner(()))));
    }
    assert_eq!(breaker.state(), State::Disabled);
    breaker.force_open();
    advance(Duration::from_secs(600)).await;
    assert!(matches!(
        succeed(&breaker).await,
        Err(CallError::Rejected(Rejected {
            state: State::ForcedOpen,
            ..
        }))
    ));
    breaker.reset();
    succeed(&breaker).await.expect("closed again");
    assert_eq!(breaker.snapshot().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_transition_in_order() {
    let breaker = CircuitBreaker::new("orders", config());
    let mut events = breaker.subscribe();
    trip(&breaker).await;
    advance(Duration::from_secs(1)).await;
    succeed(&breaker).await.expect("trial");
    succeed(&breaker).await.expect("trial");
    let mut seen = Vec::new();
    while let Ok(transition) = events.try_recv() {
        seen.push((transition.from, transition.to));
    }
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_tower_layer_guards_a_service() {
    use tower::{Layer, ServiceExt};
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let failing = tower::service_fn(move |_: ()| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("503") }
    });
    let breaker = CircuitBreaker::new("orders", config());
    let layer = BreakerLayer::new(breaker.clone(), |result: &Result<(), &str>| {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    });
    let service = layer.layer(failing);
    for _ in 0..15 {
        let _ = service.clone().oneshot(()).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "the breaker opened after ten failures"
    );
    assert!(matches!(service.oneshot(()).await, Err(CallError::Rejected(_))));
}

#[test]
fn bad_settings_are_named() {
    let problems = BreakerConfig {
        window_size: 0,
        failure_rate_threshold: 0.0,
        half_open_calls: 0,
        open_wait_max: Duration::from_millis(1),
        ..BreakerConfig::default()
    }
    .problems();
    for key in [
        "window_size",
        "failure_rate_threshold",
        "half_open_calls",
        "open_wait_max",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{key} not named in {problems:?}"
        );
    }
    assert!(BreakerConfig::default().problems().is_empty());
}
