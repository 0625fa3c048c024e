//! The bulkhead: at most `max_concurrent` calls at once, and a caller waits at
//! most `max_wait` for room before it is refused. Without the bounded wait a
//! slow dependency would pile every caller up behind it, which is the failure
//! a bulkhead exists to contain (tower's `ConcurrencyLimit` waits without end).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::CallError;

/// A bulkhead's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls in flight at most.
    pub max_concurrent: usize,
    /// How long a call may wait for room; zero refuses at once.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig {
            max_concurrent: 100,
            max_wait: Duration::from_millis(50),
        }
    }
}

/// A bulkhead; clones share the same room.
#[derive(Clone, Debug)]
pub struct Bulkhead {
    name: Arc<str>,
    config: BulkheadConfig,
    room: Arc<Semaphore>,
    rejected: metrics::Counter,
}

impl Bulkhead {
    /// A bulkhead named `name`.
    pub fn new(name: impl Into<Arc<str>>, config: BulkheadConfig) -> Bulkhead {
        let name = name.into();
        let rejected = metrics::counter!("rtalpha_bulkhead_rejected_total", "bulkhead" => name.to_string());
        Bulkhead {
            room: Arc::new(Semaphore::new(config.max_concurrent)),
            name,
            config,
            rejected,
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.config.max_concurrent - self.room.available_permits()
    }

    /// Waits (at most `max_wait`) for room for one call.
    pub async fn acquire<E>(&self) -> Result<OwnedSemaphorePermit, CallError<E>> {
        if let Ok(permit) = self.room.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.config.max_wait, self.room.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is as good as full.
            Ok(Err(_)) | Err(_) => {
                self.rejected.increment(1);
                Err(CallError::BulkheadFull {
                    name: self.name.clone(),
                    max: self.config.max_concurrent,
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// Runs `call` when there is room.
    pub async fn call<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, CallError<E>> {
        let _permit = self.acquire().await?;
        call.await.map_err(CallError::Inner)
    }
}

/// Wraps a service in a bulkhead.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer over `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> BulkheadLayer {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
        }
    }
}

/// A service behind a bulkhead. Readiness is the inner service's; the wait
/// for room happens in the call, so that it is bounded by `max_wait`.
#[derive(Clone, Debug)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service that was polled ready goes into the future; a fresh
        // clone stays behind for the next call (tower's usual hand-over).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move {
            let _permit = bulkhead.acquire().await?;
            inner.call(req).await.map_err(CallError::Inner)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_refuses_after_its_wait() {
        let bulkhead = Bulkhead::new(
            "db",
            BulkheadConfig {
                max_concurrent: 2,
                max_wait: Duration::from_millis(100),
            },
        );
        let hold = |bulkhead: Bulkhead| async move {
            bulkhead
                .call(async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, ()>(())
                })
                .await
        };
        let first = tokio::spawn(hold(bulkhead.clone()));
        let second = tokio::spawn(hold(bulkhead.clone()));
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.in_flight(), 2);
        let started = tokio::time::Instant::now();
        let refused = bulkhead.call(async { Ok::<_, ()>(()) }).await;
        assert!(
            matches!(refused, Err(CallError::BulkheadFull { max: 2, .. })),
            "{refused:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        first.await.expect("first").expect("first call");
        second.await.expect("second").expect("second call");
        assert_eq!(bulkhead.in_flight(), 0);
        assert!(bulkhead.call(async { Ok::<_, ()>(1) }).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_the_room_that_frees_within_its_wait() {
        let bulkhead = Bulkhead::new(
            "db",
            BulkheadConfig {
                max_concurrent: 1,
                max_wait: Duration::from_millis(500),
            },
        );
        let holder = bulkhead.clone();
        let first = tokio::spawn(async move {
            holder
                .call(async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, ()>(())
                })
                .await
        });
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        assert!(bulkhead.call(async { Ok::<_, ()>(()) }).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        first.await.expect("first").expect("first call");
    }
}
