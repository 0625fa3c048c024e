//! The breaker as a tower layer. The response future owns its permit and
//! records the outcome when the inner future resolves; a response future
//! dropped before that counts as abandoned.

use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{CircuitBreaker, Outcome, OwnedPermit};
use crate::CallError;

/// Wraps a service in a circuit breaker; `classify` judges each result.
#[derive(Clone, Debug)]
pub struct BreakerLayer<C> {
    breaker: CircuitBreaker,
    classify: C,
}

/// A service behind a circuit breaker.
#[derive(Clone, Debug)]
pub struct BreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

pin_project_lite::pin_project! {
    /// The future of a call through [`BreakerService`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: FutureState<F>,
        permit: Option<OwnedPermit>,
        classify: C,
    }
}

pin_project_lite::pin_project! {
    #[project = FutureStateProj]
    enum FutureState<F> {
        Running { #[pin] future: F },
        Refused { rejected: Option<super::Rejected> },
    }
}

impl<C> BreakerLayer<C> {
    /// A layer over `breaker`. `classify` is any `Fn(&Result<Resp, Err>) -> Outcome`.
    pub fn new(breaker: CircuitBreaker, classify: C) -> BreakerLayer<C> {
        BreakerLayer { breaker, classify }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    C: Fn(&Result<S::Response, S::Error>) -> Outcome + Clone,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (state, permit) = match self.breaker.try_acquire_owned() {
            Ok(permit) => (
                FutureState::Running {
                    future: self.inner.call(req),
                },
                Some(permit),
            ),
            Err(rejected) => (
                FutureState::Refused {
                    rejected: Some(rejected),
                },
                None,
            ),
        };
        ResponseFuture {
            state,
            permit,
            classify: self.classify.clone(),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Fn(&Result<T, E>) -> Outcome,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            FutureStateProj::Refused { rejected } => match rejected.take() {
                Some(rejected) => Poll::Ready(Err(CallError::Rejected(rejected))),
                None => panic!("breaker response future polled after completion"),
            },
            FutureStateProj::Running { future } => {
                let result = std::task::ready!(future.poll(cx));
                if let Some(permit) = this.permit.take() {
                    permit.record((this.classify)(&result));
                }
                Poll::Ready(result.map_err(CallError::Inner))
            }
        }
    }
}
