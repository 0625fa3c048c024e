//! Retries with exponential backoff and full jitter, bounded by a retry
//! budget.
//!
//! The budget (tower's `TpsBudget`, the scheme of Finagle and Envoy) lets
//! retries add at most a configured share of extra load on top of a small
//! floor per second: every first attempt deposits, every retry withdraws, so a
//! dependency that fails for everyone is not hit with `max_attempts` times its
//! normal load exactly when it can least take it.
//!
//! A failed attempt is retried only when the caller's classifier says it is
//! safe: a request that certainly never reached the server (connection
//! refused, breaker open) may always go again; one that may have reached it
//! (a timeout, a reset after sending, a 5xx) only if it is idempotent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::retry::budget::{Budget, TpsBudget};

use crate::Backoff;

/// Whether a finished attempt may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep this result: it succeeded, or trying again cannot help.
    Done,
    /// The request certainly did not reach the server; another attempt is safe.
    NotSent,
    /// The request may have reached the server; try again only if it is
    /// idempotent.
    MayHaveBeenSent,
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// Retries may add at most this share of the requests (0.2 = 20 %).
    pub budget_ratio: f32,
    /// Retries always allowed per second, whatever the ratio says.
    pub budget_min_per_second: u32,
    /// How long a deposit counts towards the budget.
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Backoff::new(Duration::from_millis(25), Duration::from_secs(1)),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// The problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push("max_attempts must be at least 1".to_owned());
        }
        if !(0.0..=1000.0).contains(&self.budget_ratio) {
            problems.push(format!(
                "budget_ratio must be within [0, 1000], not {}",
                self.budget_ratio
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.budget_window) {
            problems.push("budget_window must be between 1s and 60s".to_owned());
        }
        problems
    }
}

/// A retrier with its budget; clones share the budget.
#[derive(Clone, Debug)]
pub struct Retry {
    config: Arc<RetryConfig>,
    budget: Arc<TpsBudget>,
    retries: metrics::Counter,
    exhausted: metrics::Counter,
}

impl Retry {
    /// A retrier named `name` (for metrics). The settings must have passed
    /// [`RetryConfig::problems`].
    pub fn new(name: &str, config: RetryConfig) -> Retry {
        let budget = TpsBudget::new(config.budget_window, config.budget_min_per_second, config.budget_ratio);
        Retry {
            retries: metrics::counter!("rtalpha_retries_total", "name" => name.to_owned()),
            exhausted: metrics::counter!("rtalpha_retry_budget_exhausted_total", "name" => name.to_owned()),
            config: Arc::new(config),
            budget: Arc::new(budget),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Counts a first attempt towards the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Asks the budget for one retry.
    pub fn withdraw(&self) -> bool {
        let granted = self.budget.withdraw();
        if granted {
            self.retries.increment(1);
        } else {
            self.exhausted.increment(1);
        }
        granted
    }

    /// Whether attempt number `attempt` (0 the first) that ended with
    /// `verdict` may be followed by another, budget permitting.
    pub fn may_retry(&self, attempt: u32, verdict: Verdict, idempotent: bool) -> bool {
        let safe = match verdict {
            Verdict::Done => false,
            Verdict::NotSent => true,
            Verdict::MayHaveBeenSent => idempotent,
        };
        safe && attempt + 1 < self.config.max_attempts
    }

    /// The wait before retry number `retry` (0 the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        self.config.backoff.delay(retry)
    }

    /// Runs `attempt(0)`, and again with 1, 2, … while `classify` allows it,
    /// the attempts last and the budget holds; the last result is returned.
    pub async fn call<T, E, F, Fut>(
        &self,
        idempotent: bool,
        mut attempt: F,
        classify: impl Fn(&Result<T, E>) -> Verdict,
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.deposit();
        let mut number = 0;
        loop {
            let result = attempt(number).await;
            if !self.may_retry(number, classify(&result), idempotent) || !self.withdraw() {
                return result;
            }
            tokio::time::sleep(self.delay(number)).await;
            number += 1;
        }
    }
}

/// A tower retry policy built on [`Retry`]: `classify` judges each result,
/// `idempotent` tells which requests may be repeated after they may have been
/// sent. Requests must be `Clone`.
#[derive(Clone, Debug)]
pub struct RetryPolicy<C, I> {
    retry: Retry,
    classify: C,
    idempotent: I,
    attempt: u32,
}

impl<C, I> RetryPolicy<C, I> {
    /// A policy over `retry`.
    pub fn new(retry: Retry, classify: C, idempotent: I) -> RetryPolicy<C, I> {
        RetryPolicy {
            retry,
            classify,
            idempotent,
            attempt: 0,
        }
    }
}

impl<Req, Res, E, C, I> tower::retry::Policy<Req, Res, E> for RetryPolicy<C, I>
where
    Req: Clone,
    C: Fn(&Result<Res, E>) -> Verdict,
    I: Fn(&Req) -> bool,
{
    type Future = tokio::time::Sleep;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        let verdict = (self.classify)(result);
        if !self.retry.may_retry(self.attempt, verdict, (self.idempotent)(req)) || !self.retry.withdraw() {
            return None;
        }
        let delay = self.retry.delay(self.attempt);
        self.attempt += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        // tower asks the service's own policy before the first attempt and
        // the request's copy (attempt ≥ 1) before every retry.
        if self.attempt == 0 {
            self.retry.deposit();
        }
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn retry(max_attempts: u32, ratio: f32, floor: u32) -> Retry {
        Retry::new(
            "test",
            RetryConfig {
                max_attempts,
                backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
                budget_ratio: ratio,
                budget_min_per_second: floor,
                budget_window: Duration::from_secs(10),
            },
        )
    }

    async fn count_attempts(retry: &Retry, idempotent: bool, verdict: Verdict) -> u32 {
        let attempts = AtomicU32::new(0);
        let _ = retry
            .call(
                idempotent,
                |_| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), ()>(()) }
                },
                |_| verdict,
            )
            .await;
        attempts.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_verdict_and_idempotency() {
        let retry = retry(3, 1000.0, 1000);
        assert_eq!(count_attempts(&retry, false, Verdict::NotSent).await, 3);
        assert_eq!(count_attempts(&retry, true, Verdict::MayHaveBeenSent).await, 3);
        // A request that may have reached the server is not repeated unless
        // it is idempotent.
        assert_eq!(count_attempts(&retry, false, Verdict::MayHaveBeenSent).await, 1);
        assert_eq!(count_attempts(&retry, true, Verdict::Done).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_extra_load() {
        // No floor, 10 % of the requests: 100 failing requests may retry about
        // ten times in all, not 200.
        let retry = retry(3, 0.1, 0);
        let mut attempts = 0;
        for _ in 0..100 {
            attempts += count_attempts(&retry, true, Verdict::NotSent).await;
        }
        let retries = attempts - 100;
        assert!((5..=15).contains(&retries), "{retries} retries for 100 requests");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_a_failure_is_returned() {
        let retry = retry(3, 1000.0, 1000);
        let result = retry
            .call(
                true,
                |n| async move { if n == 0 { Err("refused") } else { Ok(n) } },
                |result| {
                    if result.is_ok() {
                        Verdict::Done
                    } else {
                        Verdict::NotSent
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tower_policy_retries_a_cloneable_request() {
        use tower::{ServiceBuilder, ServiceExt};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let flaky = tower::service_fn(move |req: &'static str| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err("down") } else { Ok(req) } }
        });
        let policy = RetryPolicy::new(
            retry(3, 1000.0, 1000),
            |result: &Result<&'static str, &'static str>| {
                if result.is_ok() {
                    Verdict::Done
                } else {
                    Verdict::NotSent
                }
            },
            |_: &&'static str| true,
        );
        let service = ServiceBuilder::new().retry(policy).service(flaky);
        assert_eq!(service.oneshot("hello").await, Ok("hello"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
