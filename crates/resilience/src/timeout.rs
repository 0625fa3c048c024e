//! A deadline for one call. tower's own `Timeout` answers with a boxed error;
//! this one answers with [`CallError::Timeout`], so that a stack of breaker,
//! bulkhead and timeout has one error type a caller can match on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::CallError;

/// Runs `call` with a deadline of `after`.
pub async fn timeout<T, E>(after: Duration, call: impl Future<Output = Result<T, E>>) -> Result<T, CallError<E>> {
    match tokio::time::timeout(after, call).await {
        Ok(result) => result.map_err(CallError::Inner),
        Err(_) => Err(CallError::Timeout(after)),
    }
}

/// Puts a deadline on every call of a service.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// A layer that gives each call `after`.
    pub fn new(after: Duration) -> TimeoutLayer {
        TimeoutLayer { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            after: self.after,
        }
    }
}

/// A service whose calls each have a deadline.
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    after: Duration,
}

pin_project_lite::pin_project! {
    /// The future of a call through [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: tokio::time::Sleep,
        after: Duration,
    }
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TimeoutFuture {
            future: self.inner.call(req),
            sleep: tokio::time::sleep(self.after),
            after: self.after,
        }
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            return Poll::Ready(result.map_err(CallError::Inner));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(CallError::Timeout(*this.after))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_a_timeout() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, ()>(())
        };
        let started = tokio::time::Instant::now();
        let result = timeout(Duration::from_millis(250), slow).await;
        assert!(matches!(result, Err(CallError::Timeout(d)) if d == Duration::from_millis(250)));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(matches!(
            timeout(Duration::from_secs(1), async { Ok::<_, ()>(7) }).await,
            Ok(7)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_times_out_a_hanging_service() {
        let hanging = tower::service_fn(|_: ()| std::future::pending::<Result<(), ()>>());
        let service = TimeoutLayer::new(Duration::from_millis(100)).layer(hanging);
        let result = service.oneshot(()).await;
        assert!(matches!(result, Err(CallError::Timeout(_))));
    }
}
