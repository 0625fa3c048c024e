//! The circuit breaker.
//!
//! A breaker watches the outcomes of calls to one dependency and stops calling
//! it while it fails, so that callers fail fast (or fall back) instead of
//! queueing behind a dead upstream. States: closed (calls pass and are
//! judged), open (calls are refused), half-open (a few trial calls decide),
//! disabled (calls pass unjudged) and forced-open (refused until reset).
//!
//! The closed-state path takes no lock: admission is one atomic load of the
//! state word, and recording an outcome touches a few atomics of the sliding
//! window. Transitions, which are rare, take a mutex so that the fields of the
//! new state are set before any caller can see it. Every permit carries the
//! generation of the state that admitted it; outcomes from an older generation
//! (a slow call admitted while closed that ends after the breaker tripped) are
//! not counted, so they cannot decide a later half-open trial.
//!
//! Half-open cannot stick: if the trial calls have not all reported within
//! `half_open_max_time`, the next caller (or a look at the state) sends the
//! breaker back to open, even when the trial calls hang forever.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::CallError;
use crate::window::{CountWindow, TimeWindow, Totals};

mod layer;

pub use layer::{BreakerLayer, BreakerService, ResponseFuture};

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Calls pass; their outcomes fill the sliding window.
    Closed,
    /// Calls are refused until the open wait has passed.
    Open,
    /// A limited number of trial calls pass; their outcomes decide.
    HalfOpen,
    /// Calls pass and nothing is judged.
    Disabled,
    /// Calls are refused until the breaker is reset.
    ForcedOpen,
}

impl State {
    const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
    ];

    /// The name used in logs, metrics and health output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced-open",
        }
    }

    fn code(self) -> u64 {
        self as u64
    }

    fn from_word(word: u64) -> State {
        State::ALL[(word & STATE_MASK) as usize]
    }
}

/// The kind of sliding window the closed state judges over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowKind {
    /// The last `window_size` calls.
    Count,
    /// The calls of the last `window_size` seconds.
    Time,
}

/// How a call ended, as far as the breaker is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed; counts towards the failure rate.
    Failure,
    /// Neither (a client error, say): not counted, and in half-open the trial
    /// slot is given back.
    Ignored,
}

/// A breaker's settings; every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Count- or time-based sliding window.
    pub window: WindowKind,
    /// Calls (count window) or seconds (time window) in the window.
    pub window_size: u32,
    /// No judgement before the window has seen this many calls.
    pub minimum_calls: u32,
    /// Trip when this percentage of the window's calls failed.
    pub failure_rate_threshold: f64,
    /// Trip when this percentage of the window's calls were slow (100 turns it
    /// off unless every call is slow).
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this long is slow.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// How long the breaker stays open after its first trip.
    #[serde(with = "humantime_serde")]
    pub open_wait: Duration,
    /// Each consecutive trip (half-open failing again) multiplies the open wait
    /// by this; 1 keeps it constant.
    pub open_wait_multiplier: f64,
    /// The open wait never grows past this.
    #[serde(with = "humantime_serde")]
    pub open_wait_max: Duration,
    /// Trial calls let through in half-open.
    pub half_open_calls: u32,
    /// After this long in half-open without a decision, the breaker opens again.
    #[serde(with = "humantime_serde")]
    pub half_open_max_time: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: WindowKind::Count,
            window_size: 100,
            minimum_calls: 20,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(5),
            open_wait: Duration::from_secs(10),
            open_wait_multiplier: 2.0,
            open_wait_max: Duration::from_secs(120),
            half_open_calls: 5,
            half_open_max_time: Duration::from_secs(10),
        }
    }
}

impl BreakerConfig {
    /// The problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window_size == 0 {
            problems.push("window_size must be at least 1".to_owned());
        }
        if self.window == WindowKind::Time && self.window_size > 3600 {
            problems.push("window_size of a time window is at most 3600 seconds".to_owned());
        }
        for (key, value) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                problems.push(format!("{key} must be a percentage in (0, 100], not {value}"));
            }
        }
        if self.half_open_calls == 0 {
            problems.push("half_open_calls must be at least 1".to_owned());
        }
        if self.open_wait_multiplier < 1.0 || !self.open_wait_multiplier.is_finite() {
            problems.push("open_wait_multiplier must be at least 1".to_owned());
        }
        if self.open_wait_max < self.open_wait {
            problems.push("open_wait_max must not be shorter than open_wait".to_owned());
        }
        problems
    }
}

/// A change of state, as told to subscribers.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Why, in a few words.
    pub reason: &'static str,
}

/// A call the breaker refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {breaker} is {}", state.as_str())]
pub struct Rejected {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// Its state when it refused.
    pub state: State,
}

/// What a breaker has seen, for health pages and tests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// Its state now.
    pub state: State,
    /// Calls in the sliding window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow: u32,
    /// Trips since the breaker last closed.
    pub consecutive_trips: u32,
}

/// A circuit breaker; clones share one state.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// The admission to one call; record its outcome, or drop it if the call was
/// abandoned (which gives a half-open trial slot back).
#[derive(Debug)]
pub struct Permit<'a> {
    inner: &'a Inner,
    admission: Admission,
}

/// A [`Permit`] that owns a handle on its breaker, for futures that must be
/// `'static`.
#[derive(Debug)]
pub struct OwnedPermit {
    inner: Arc<Inner>,
    admission: Admission,
}

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

#[derive(Debug)]
struct Admission {
    word: u64,
    started: Instant,
    recorded: bool,
}

#[derive(Debug)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    config: BreakerConfig,
    /// Generation in the high bits, state in the low three.
    word: AtomicU64,
    /// Serialises transitions; never taken on the call path.
    transitions: Mutex<()>,
    epoch: Instant,
    window: Window,
    /// When the breaker opened, in nanoseconds since `epoch`.
    opened_at: AtomicU64,
    /// How long this opening lasts, in nanoseconds.
    open_for: AtomicU64,
    consecutive_trips: AtomicU32,
    half_open_since: AtomicU64,
    half_open_admitted: AtomicU32,
    half_open_done: AtomicU32,
    half_open_failures: AtomicU32,
    half_open_slow: AtomicU32,
    events: broadcast::Sender<Transition>,
    metrics: BreakerMetrics,
}

#[derive(Debug)]
struct BreakerMetrics {
    failure: metrics::Counter,
    slow: metrics::Counter,
    ignored: metrics::Counter,
    rejected: metrics::Counter,
    state: metrics::Gauge,
}

impl BreakerMetrics {
    fn new(name: &Arc<str>) -> BreakerMetrics {
        let calls = |outcome: &'static str| metrics::counter!("rtalpha_breaker_calls_total", "breaker" => name.to_string(), "outcome" => outcome);
        BreakerMetrics {
            failure: calls("failure"),
            slow: calls("slow"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            state: metrics::gauge!("rtalpha_breaker_state", "breaker" => name.to_string()),
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the name appears in errors, logs and
    /// metrics). The settings must have passed [`BreakerConfig::problems`].
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> CircuitBreaker {
        let name = name.into();
        let window = match config.window {
            WindowKind::Count => Window::Count(CountWindow::new(config.window_size.max(1))),
            WindowKind::Time => Window::Time(TimeWindow::new(config.window_size.max(1))),
        };
        let metrics = BreakerMetrics::new(&name);
        metrics.state.set(State::Closed.code() as f64);
        CircuitBreaker {
            inner: Arc::new(Inner {
                name,
                window,
                word: AtomicU64::new(State::Closed.code()),
                transitions: Mutex::new(()),
                epoch: Instant::now(),
                opened_at: AtomicU64::new(0),
                open_for: AtomicU64::new(0),
                consecutive_trips: AtomicU32::new(0),
                half_open_since: AtomicU64::new(0),
                half_open_admitted: AtomicU32::new(0),
                half_open_done: AtomicU32::new(0),
                half_open_failures: AtomicU32::new(0),
                half_open_slow: AtomicU32::new(0),
                events: broadcast::channel(64).0,
                metrics,
                config,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// The state now. An open breaker whose wait has passed still reads open
    /// until a call asks; a half-open one past its limit reads open at once.
    pub fn state(&self) -> State {
        self.inner.expire_half_open(Instant::now());
        State::from_word(self.inner.word.load(Ordering::Acquire))
    }

    /// Subscribes to state changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// What the breaker has seen.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let totals = self.inner.totals(Instant::now());
        BreakerSnapshot {
            name: self.inner.name.clone(),
            state: self.state(),
            calls: totals.calls,
            failures: totals.failures,
            slow: totals.slow,
            consecutive_trips: self.inner.consecutive_trips.load(Ordering::Relaxed),
        }
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let admission = self.inner.admit()?;
        Ok(Permit {
            inner: &self.inner,
            admission,
        })
    }

    /// Asks to make a call from a future that must own its permit.
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        let admission = self.inner.admit()?;
        Ok(OwnedPermit {
            inner: self.inner.clone(),
            admission,
        })
    }

    /// Runs `call` if the breaker admits it; an `Err` counts as a failure.
    pub async fn call<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, CallError<E>> {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = call.await;
        permit.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(CallError::Inner)
    }

    /// Runs `call` if the breaker admits it, judging its result with `classify`.
    pub async fn call_classified<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        classify: impl FnOnce(&Result<T, E>) -> Outcome,
    ) -> Result<T, CallError<E>> {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = call.await;
        permit.record(classify(&result));
        result.map_err(CallError::Inner)
    }

    /// Runs `call` if admitted; when the breaker refuses or the call fails, the
    /// answer comes from `fallback`, which is told why.
    pub async fn call_with_fallback<T, E, F>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        fallback: impl FnOnce(CallError<E>) -> F,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        match self.call(call).await {
            Ok(value) => Ok(value),
            Err(err) => fallback(err).await,
        }
    }

    /// Opens the breaker until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.inner.transition_any(State::ForcedOpen, "forced open");
    }

    /// Lets every call through unjudged until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.inner.transition_any(State::Disabled, "disabled");
    }

    /// Closes the breaker and forgets what it has seen.
    pub fn reset(&self) {
        self.inner.transition_any(State::Closed, "reset");
    }
}

impl Permit<'_> {
    /// Records how the call ended.
    pub fn record(mut self, outcome: Outcome) {
        self.admission.recorded = true;
        self.inner.record(&self.admission, outcome, Instant::now());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.admission.recorded {
            self.inner.abandon(&self.admission);
        }
    }
}

impl OwnedPermit {
    /// Records how the call ended.
    pub fn record(mut self, outcome: Outcome) {
        self.admission.recorded = true;
        self.inner.record(&self.admission, outcome, Instant::now());
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if !self.admission.recorded {
            self.inner.abandon(&self.admission);
        }
    }
}

impl Inner {
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn admit(&self) -> Result<Admission, Rejected> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            match State::from_word(word) {
                State::Closed | State::Disabled => {
                    return Ok(Admission {
                        word,
                        started: Instant::now(),
                        recorded: false,
                    });
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen)),
                State::Open => {
                    let now = Instant::now();
                    let opened = self.opened_at.load(Ordering::Acquire);
                    let open_for = self.open_for.load(Ordering::Acquire);
                    if self.nanos(now) < opened.saturating_add(open_for) {
                        return Err(self.reject(State::Open));
                    }
                    self.transition(word, State::HalfOpen, "open wait over", now);
                }
                State::HalfOpen => {
                    let now = Instant::now();
                    if self.expire_half_open(now) {
                        continue;
                    }
                    let admitted = self.half_open_admitted.fetch_add(1, Ordering::AcqRel);
                    if admitted < self.config.half_open_calls {
                        return Ok(Admission {
                            word,
                            started: now,
                            recorded: false,
                        });
                    }
                    self.half_open_admitted.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.reject(State::HalfOpen));
                }
            }
        }
    }

    fn reject(&self, state: State) -> Rejected {
        self.metrics.rejected.increment(1);
        Rejected {
            breaker: self.name.clone(),
            state,
        }
    }

    /// Sends a half-open breaker that has waited too long for its trial calls
    /// back to open; true when it did.
    fn expire_half_open(&self, now: Instant) -> bool {
        let word = self.word.load(Ordering::Acquire);
        if State::from_word(word) != State::HalfOpen {
            return false;
        }
        let since = self.half_open_since.load(Ordering::Acquire);
        let limit = self.config.half_open_max_time.as_nanos() as u64;
        if self.nanos(now) < since.saturating_add(limit) {
            return false;
        }
        self.transition(word, State::Open, "trial calls did not finish in time", now);
        true
    }

    fn record(&self, admission: &Admission, outcome: Outcome, now: Instant) {
        let slow = now.saturating_duration_since(admission.started) >= self.config.slow_call_duration;
        // Plain successes are not counted here: a shared counter bumped on
        // every call would make concurrent callers contend for its cache
        // line, and the callers' own request metrics count calls anyway.
        match (outcome, slow) {
            (Outcome::Ignored, _) => self.metrics.ignored.increment(1),
            (Outcome::Failure, _) => self.metrics.failure.increment(1),
            (Outcome::Success, true) => self.metrics.slow.increment(1),
            (Outcome::Success, false) => {}
        }
        let word = admission.word;
        if self.word.load(Ordering::Acquire) != word {
            // Admitted by a state that has since ended: its outcome describes
            // the past and must not judge the present state.
            return;
        }
        match State::from_word(word) {
            State::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let failed = outcome == Outcome::Failure;
                let sample = self.window_record(failed, slow, now);
                if (failed || slow) && self.should_trip(sample) {
                    self.transition(word, State::Open, "failure or slow-call rate over the threshold", now);
                }
            }
            State::HalfOpen => {
                if outcome == Outcome::Ignored {
                    self.half_open_admitted.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                if outcome == Outcome::Failure {
                    self.half_open_failures.fetch_add(1, Ordering::AcqRel);
                }
                if slow {
                    self.half_open_slow.fetch_add(1, Ordering::AcqRel);
                }
                let done = self.half_open_done.fetch_add(1, Ordering::AcqRel) + 1;
                if done < self.config.half_open_calls {
                    return;
                }
                let trials = Totals {
                    calls: done,
                    failures: self.half_open_failures.load(Ordering::Acquire),
                    slow: self.half_open_slow.load(Ordering::Acquire),
                };
                if self.over_threshold(trials) {
                    self.transition(word, State::Open, "trial calls failed", now);
                } else {
                    self.transition(word, State::Closed, "trial calls succeeded", now);
                }
            }
            State::Open | State::Disabled | State::ForcedOpen => {}
        }
    }

    /// A permit dropped without an outcome: the call was abandoned by its
    /// caller. In half-open its trial slot is given back so that another call
    /// can probe; elsewhere nothing is counted.
    fn abandon(&self, admission: &Admission) {
        if State::from_word(admission.word) == State::HalfOpen && self.word.load(Ordering::Acquire) == admission.word {
            self.half_open_admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn window_record(&self, failed: bool, slow: bool, now: Instant) -> Option<Totals> {
        match &self.window {
            Window::Count(window) => {
                window.record(failed, slow);
                (failed || slow).then(|| window.totals())
            }
            Window::Time(window) => {
                let second = self.nanos(now) / 1_000_000_000;
                window.record(second, failed, slow);
                (failed || slow).then(|| window.totals(second))
            }
        }
    }

    fn totals(&self, now: Instant) -> Totals {
        match &self.window {
            Window::Count(window) => window.totals(),
            Window::Time(window) => window.totals(self.nanos(now) / 1_000_000_000),
        }
    }

    fn should_trip(&self, sample: Option<Totals>) -> bool {
        sample.is_some_and(|totals| totals.calls >= self.config.minimum_calls.max(1) && self.over_threshold(totals))
    }

    fn over_threshold(&self, totals: Totals) -> bool {
        if totals.calls == 0 {
            return false;
        }
        let rate = |count: u32| 100.0 * f64::from(count) / f64::from(totals.calls);
        rate(totals.failures) >= self.config.failure_rate_threshold
            || rate(totals.slow) >= self.config.slow_call_rate_threshold
    }

    /// Moves from the state in `from` (exactly that generation) to `to`;
    /// false when another caller moved first.
    fn transition(&self, from: u64, to: State, reason: &'static str, now: Instant) -> bool {
        let Ok(_guard) = self.transitions.lock() else {
            return false;
        };
        if self.word.load(Ordering::Acquire) != from {
            return false;
        }
        self.enter(from, to, reason, now);
        true
    }

    /// An operator's transition, from whatever state the breaker is in.
    fn transition_any(&self, to: State, reason: &'static str) {
        let Ok(_guard) = self.transitions.lock() else {
            return;
        };
        let from = self.word.load(Ordering::Acquire);
        self.enter(from, to, reason, Instant::now());
    }

    /// Sets up `to` and publishes it; the caller holds the transition lock.
    fn enter(&self, from: u64, to: State, reason: &'static str, now: Instant) {
        let from_state = State::from_word(from);
        let at = self.nanos(now);
        match to {
            State::Open => {
                // A trip straight after a failed trial counts as consecutive;
                // the open wait grows with each.
                let trips = if from_state == State::HalfOpen {
                    self.consecutive_trips.fetch_add(1, Ordering::AcqRel) + 1
                } else {
                    self.consecutive_trips.store(1, Ordering::Release);
                    1
                };
                let factor = self
                    .config
                    .open_wait_multiplier
                    .max(1.0)
                    .powi(trips.saturating_sub(1).min(64) as i32);
                let wait = (self.config.open_wait.as_secs_f64() * factor).min(self.config.open_wait_max.as_secs_f64());
                self.open_for.store((wait * 1e9) as u64, Ordering::Release);
                self.opened_at.store(at, Ordering::Release);
            }
            State::HalfOpen => {
                self.half_open_admitted.store(0, Ordering::Release);
                self.half_open_done.store(0, Ordering::Release);
                self.half_open_failures.store(0, Ordering::Release);
                self.half_open_slow.store(0, Ordering::Release);
                self.half_open_since.store(at, Ordering::Release);
            }
            State::Closed => {
                self.consecutive_trips.store(0, Ordering::Release);
                match &self.window {
                    Window::Count(window) => window.clear(),
                    Window::Time(window) => window.clear(),
                }
            }
            State::Disabled | State::ForcedOpen => {}
        }
        let generation = (from >> STATE_BITS).wrapping_add(1);
        self.word
            .store((generation << STATE_BITS) | to.code(), Ordering::Release);
        self.metrics.state.set(to.code() as f64);
        metrics::counter!("rtalpha_breaker_transitions_total", "breaker" => self.name.to_string(), "to" => to.as_str())
            .increment(1);
        if to == State::Open || to == State::ForcedOpen {
            tracing::warn!(breaker = %self.name, from = from_state.as_str(), to = to.as_str(), reason, "circuit breaker opened");
        } else {
            tracing::info!(breaker = %self.name, from = from_state.as_str(), to = to.as_str(), reason, "circuit breaker changed state");
        }
        let _ = self.events.send(Transition {
            breaker: self.name.clone(),
            from: from_state,
            to,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
