//! Resilience primitives shared by every rtalpha client, the gateway and the
//! services: a circuit breaker, retries with exponential backoff bounded by a
//! retry budget, a bulkhead and a timeout. Each comes as a plain async call
//! and as a tower `Layer`, so one stack can be built from them in one place.
//!
//! All of them fail with [`CallError`], which tells a caller whether its call
//! ran at all: a refused call (breaker open, bulkhead full) never reached the
//! dependency and may go elsewhere at once; a timed-out one may have.

use std::time::Duration;

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod retry;
pub mod timeout;
mod window;

pub use backoff::Backoff;
pub use breaker::{BreakerConfig, CircuitBreaker, Outcome, Rejected, State};
pub use bulkhead::Bulkhead;
pub use retry::{Retry, RetryConfig, Verdict};

/// Why a guarded call did not produce the dependency's answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The circuit breaker refused the call; it never started.
    #[error(transparent)]
    Rejected(Rejected),
    /// The bulkhead had no room within its wait; the call never started.
    #[error("bulkhead {name} is full ({max} calls in flight, waited {waited:?})")]
    BulkheadFull {
        /// The bulkhead's name.
        name: std::sync::Arc<str>,
        /// Its limit of concurrent calls.
        max: usize,
        /// How long the call waited for room.
        waited: Duration,
    },
    /// The call did not finish in time; it may have reached the dependency.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The dependency's own error.
    #[error(transparent)]
    Inner(E),
}

impl<E> CallError<E> {
    /// True when the call was refused before it started, so it certainly did
    /// not reach the dependency.
    pub fn never_started(&self) -> bool {
        matches!(self, CallError::Rejected(_) | CallError::BulkheadFull { .. })
    }

    /// Maps the dependency's error.
    pub fn map_inner<F>(self, map: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            CallError::Rejected(rejected) => CallError::Rejected(rejected),
            CallError::BulkheadFull { name, max, waited } => CallError::BulkheadFull { name, max, waited },
            CallError::Timeout(after) => CallError::Timeout(after),
            CallError::Inner(err) => CallError::Inner(map(err)),
        }
    }
}
